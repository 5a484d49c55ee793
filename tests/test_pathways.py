"""Regimen-sequence counts for the Sankey: hand example, exact pooling, rare-regimen grouping."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings

from her2fed.lot import REGIMENS
from her2fed.pathways import TERMINAL_STATES, group_rare, pathway_counts
from her2fed.summary import merge
from tests.test_attrition import line_rows

R = {name: i for i, name in enumerate(REGIMENS)}
T = {name: len(REGIMENS) + i for i, name in enumerate(TERMINAL_STATES)}


def frame(rows: list[tuple[str, int, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": [r[0] for r in rows],
            "line": [r[1] for r in rows],
            "regimen": [r[2] for r in rows],
            "end_state": [r[3] for r in rows],
        }
    )


ROWS = [
    ("a", 1, "THP", "next_line"),
    ("a", 2, "T-DXd", "next_line"),
    ("a", 3, "TTC", "death"),
    ("b", 2, "T-DM1", "on_treatment"),  # rows in any order
    ("b", 1, "THP", "next_line"),
    ("c", 1, "HP+ET", "palliative"),
    ("d", 1, "PyrCap", "next_line"),
    ("d", 2, "LapCap", "next_line"),
    ("d", 3, "T-DXd", "next_line"),
    ("d", 4, "chemo alone", "next_line"),
    ("d", 5, "chemo alone", "death"),
]


def test_transitions_by_hand() -> None:
    c = pathway_counts(frame(ROWS), [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1], 2, K=3)
    assert c.first.shape == (2, len(REGIMENS))
    assert c.transitions.shape == (2, 2, len(REGIMENS), len(REGIMENS) + len(TERMINAL_STATES))
    assert c.first[0, R["THP"]] == 2 and c.first[1, R["HP+ET"]] == 1
    assert c.first[1, R["PyrCap"]] == 1 and c.first.sum() == 4
    t = c.transitions
    assert t[0, 0, R["THP"], R["T-DXd"]] == 1
    assert t[0, 0, R["THP"], R["T-DM1"]] == 1
    assert t[0, 1, R["T-DXd"], R["TTC"]] == 1
    assert t[1, 0, R["HP+ET"], T["palliative"]] == 1
    assert t[1, 0, R["PyrCap"], R["LapCap"]] == 1
    assert t[1, 1, R["LapCap"], R["T-DXd"]] == 1
    assert t[0, 1, R["T-DM1"], T["on_treatment"]] == 1
    assert t.sum() == 7  # d's lines 4 and 5 lie beyond K = 3
    assert c.dropped.tolist() == [0]


def test_rare_regimens_are_grouped_after_pooling() -> None:
    site1 = pathway_counts(frame(ROWS[:5]), [0] * 5, 1, K=3)
    site2 = pathway_counts(frame(ROWS[5:]), [0] * 6, 1, K=3)
    pooled = merge([site1, site2])
    table = group_rare(pooled, min_count=2)
    # counts of lines 1..3: THP 2, T-DXd 2, others 1 -> merged into OTHER
    assert table.labels == ("THP", "T-DXd", "OTHER")
    assert set(table.merged) == {"TTC", "T-DM1", "HP+ET", "PyrCap", "LapCap"}
    o, thp, tdxd = 2, 0, 1
    assert table.first[0].tolist() == [2, 0, 2]
    tr = table.transitions[0]
    assert tr[0, thp, tdxd] == 1 and tr[0, thp, o] == 1  # THP -> T-DM1 becomes THP -> OTHER
    assert tr[0, o, o] == 1  # PyrCap -> LapCap
    assert tr[0, o, 3 + TERMINAL_STATES.index("palliative")] == 1
    assert tr[1, o, tdxd] == 1 and tr[1, tdxd, o] == 1
    assert table.transitions.sum() == pooled.transitions.sum()
    # grouping is a sum: pooling then grouping == grouping the pooled rows' counts
    whole = group_rare(pathway_counts(frame(ROWS), [0] * 11, 1, K=3), min_count=2)
    np.testing.assert_array_equal(whole.transitions, table.transitions)
    links = table.links()
    assert {"source": "L1 THP", "target": "L2 T-DXd", "count": 1} in links
    assert {"source": "L1 OTHER", "target": "palliative after L1", "count": 1} in links
    assert group_rare(pooled, min_count=0).labels == REGIMENS


def test_inconsistent_rows_are_refused() -> None:
    bad = frame([("a", 1, "THP", "next_line")])
    with pytest.raises(ValueError, match="next_line"):
        pathway_counts(bad, [0], 1)
    with pytest.raises(ValueError, match="regimen"):
        pathway_counts(frame([("a", 1, "XYZ", "death")]), [0], 1)


@settings(max_examples=60, deadline=None)
@given(data=line_rows())
def test_split_counts_sum_to_pooled_counts(
    data: tuple[pd.DataFrame, list[int], list[int], list[int]],
) -> None:
    df, groups, _, sites = data
    row_site = np.array(sites[: len(df)])
    g = np.array(groups, dtype=np.int64)
    pooled = pathway_counts(df, g, 3, K=4)
    parts = [
        pathway_counts(df[row_site == s].reset_index(drop=True), g[row_site == s], 3, K=4)
        for s in range(5)
    ]
    total = merge(parts)
    for name, value in pooled.arrays().items():
        np.testing.assert_array_equal(total.arrays()[name], value, err_msg=name)
    a: Any = group_rare(total, 3)
    b: Any = group_rare(pooled, 3)
    assert a.labels == b.labels
    np.testing.assert_array_equal(a.transitions, b.transitions)
    np.testing.assert_array_equal(a.first, b.first)
