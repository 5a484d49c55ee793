"""Attrition A1-A4 on a small hand-computed example, and exact pooling of the counts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from her2fed.attrition import (
    AttritionCounts,
    a1,
    a2,
    a3,
    a3_event_table,
    a4,
    attrition_counts,
    proportion_ci,
    reach,
    side_by_side,
)
from her2fed.endpoints import END_STATES
from her2fed.grid import TimeGrid
from her2fed.lot import REGIMENS
from her2fed.summary import merge

# (patient, group, line, end_state, next_line_vs_death event, time)
# group 0 = HR POS, 1 = HR NEG; P7 (NEG) has no line.
ROWS = [
    ("P1", 0, 1, "next_line", 1, 30),
    ("P1", 0, 2, "death", 2, 100),
    ("P2", 0, 1, "on_treatment", 0, 20),
    ("P3", 0, 1, "death", 2, 200),
    ("P4", 1, 1, "next_line", 1, 10),
    ("P4", 1, 2, "next_line", 1, 40),
    ("P4", 1, 3, "next_line", 1, 5),
    ("P4", 1, 4, "next_line", 1, 7),
    ("P4", 1, 5, "off_treatment_follow_up", 0, 400),
    ("P5", 1, 1, "palliative", 2, 90),
    ("P6", 1, 1, "lost_to_follow_up", 0, 50),
]
PATIENT_GROUPS = [0, 0, 0, 1, 1, 1, 1]


def frame(rows: list[tuple[str, int, int, str, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": [r[0] for r in rows],
            "line": np.array([r[2] for r in rows], dtype=np.int64),
            "end_state": [r[3] for r in rows],
            "anti_her2": [r[0] != "P3" for r in rows],
            "next_line_vs_death_event": np.array([r[4] for r in rows], dtype=np.int64),
            "next_line_vs_death_time": np.array([r[5] for r in rows], dtype=np.int64),
            "regimen": ["THP" if r[2] == 1 else "T-DXd" for r in rows],
        }
    )


@pytest.fixture(scope="module")
def counts() -> AttritionCounts:
    return attrition_counts(
        frame(ROWS), [r[1] for r in ROWS], 2, 4, patient_group_codes=PATIENT_GROUPS
    )


def test_counts_by_hand(counts: AttritionCounts) -> None:
    np.testing.assert_array_equal(counts.patients, [3, 4])
    np.testing.assert_array_equal(counts.reached, [[3, 1, 0, 0], [3, 1, 1, 1]])
    np.testing.assert_array_equal(counts.started, [[3, 1, 0, 0], [3, 1, 1, 2]])  # slot 4 = 4+
    np.testing.assert_array_equal(counts.started_anti_her2, [[2, 1, 0, 0], [3, 1, 1, 2]])
    np.testing.assert_array_equal(counts.finished, [[2, 1, 0, 0], [3, 1, 1, 2]])
    np.testing.assert_array_equal(counts.no_next, [[2, 1, 0, 0], [2, 0, 0, 1]])
    np.testing.assert_array_equal(counts.no_next_finished, [[1, 1, 0, 0], [2, 0, 0, 1]])
    np.testing.assert_array_equal(counts.no_next_death, [[0, 1, 0, 0], [1, 0, 0, 0]])
    s = {name: i for i, name in enumerate(END_STATES)}
    assert counts.end_state.shape == (2, 4, len(END_STATES))
    assert counts.end_state[1, 3, s["next_line"]] == 1
    assert counts.end_state[1, 3, s["off_treatment_follow_up"]] == 1
    assert counts.end_state[0, 0, s["on_treatment"]] == 1
    np.testing.assert_array_equal(counts.end_state.sum(axis=2), counts.started)
    assert counts.dropped.tolist() == [0]


def test_a1_a2_a4_by_hand(counts: AttritionCounts) -> None:
    r1, r2, r4 = a1(counts), a2(counts), a4(counts)
    assert r1.estimate[0, 0] == pytest.approx(2 / 3)  # P2 (on treatment) and P3
    assert r2.estimate[0, 0] == pytest.approx(1 / 2)  # P2 removed: P3 of P1, P3
    assert r4.estimate[0, 0] == 0.0  # P3 died 200 days after the line end: > 183
    assert r4.estimate[0, 1] == 1.0  # P1 died 100 days after line 2
    assert r1.estimate[1, 0] == pytest.approx(2 / 3)
    assert r2.estimate[1, 0] == pytest.approx(2 / 3)
    assert r4.estimate[1, 0] == pytest.approx(1 / 3)  # P5 died (palliative) after 90 days
    assert r1.estimate[1, 3] == pytest.approx(1 / 2)  # 4+: P4's lines 4 and 5
    assert np.isnan(r1.estimate[0, 2])  # nobody in the slot
    pooled = a1(counts.overall())
    assert pooled.numerator.tolist() == [[4, 1, 0, 1]]
    assert pooled.denominator.tolist() == [[6, 2, 1, 2]]
    share = reach(counts.overall())
    assert share.estimate[0].tolist() == pytest.approx([6 / 7, 2 / 7, 1 / 7, 1 / 7])


def test_wilson_and_exact_intervals() -> None:
    x, n = np.array([3, 0, 10, 0]), np.array([10, 10, 10, 0])
    w = proportion_ci(x, n)
    assert w.lower[0] == pytest.approx(0.10779, abs=1e-5)
    assert w.upper[0] == pytest.approx(0.60322, abs=1e-5)
    assert w.lower[1] == 0.0 and w.upper[2] == 1.0
    assert np.isnan(w.estimate[3]) and np.isnan(w.lower[3])
    e = proportion_ci(x, n, method="exact")
    assert e.lower[0] == pytest.approx(0.066739, abs=1e-6)
    assert e.upper[0] == pytest.approx(0.652453, abs=1e-6)
    assert e.lower[1] == 0.0 and e.upper[1] == pytest.approx(0.308497, abs=1e-6)
    assert e.upper[2] == 1.0
    with pytest.raises(ValueError, match="method"):
        proportion_ci(x, n, method="wald")  # type: ignore[arg-type]


def test_a3_by_hand() -> None:
    grid = TimeGrid(1, 2000)
    table = a3_event_table(frame(ROWS), [r[1] for r in ROWS], 2, grid, 4)
    res = a3(table, grid)
    # POS line 1: censored day 20 (3 at risk), next line day 30 (2 at risk), death day 200
    assert res.cif_next_line[0, 0] == pytest.approx(0.5)
    assert res.estimate[0, 0] == pytest.approx(0.5)
    assert res.cif_death[0, 0] == pytest.approx(0.5)
    # NEG line 1: next line day 10 (3 at risk), censored day 50, death day 90
    assert res.estimate[1, 0] == pytest.approx(2 / 3)
    assert res.estimate[0, 1] == pytest.approx(1.0)  # P1's line 2 ended in death
    assert np.isnan(res.estimate[0, 2])
    assert (res.lower <= res.estimate)[~np.isnan(res.estimate)].all()
    # the horizon reads the curve at 5 years, not later
    early = a3(table, grid, horizon_days=25)
    assert early.estimate[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="horizon"):
        a3(table, TimeGrid(30, 360))


def test_side_by_side_has_every_definition(counts: AttritionCounts) -> None:
    grid = TimeGrid(1, 2000)
    res = a3(a3_event_table(frame(ROWS), [r[1] for r in ROWS], 2, grid), grid)
    table = side_by_side(counts, res, group_labels=("POS", "NEG"))
    assert {r["definition"] for r in table} == {"A1", "A2", "A3", "A4"}
    assert {r["line"] for r in table} == {"1", "2", "3", "4+"}
    rec = next(r for r in table if (r["group"], r["line"], r["definition"]) == ("POS", "1", "A2"))
    assert (rec["numerator"], rec["denominator"]) == (1, 2)


def test_missing_group_is_dropped_and_counted() -> None:
    codes = [r[1] for r in ROWS]
    codes[0] = -1
    c = attrition_counts(frame(ROWS), codes, 2, 4)
    assert c.dropped.tolist() == [1]
    assert c.started.sum() == len(ROWS) - 1
    with pytest.raises(ValueError, match="level indices"):
        attrition_counts(frame(ROWS), [5] * len(ROWS), 2, 4)


# ------------------------------------------------------------------ pooling is exact


def random_line_rows(draw: Any) -> tuple[pd.DataFrame, list[int], list[int], list[int]]:
    """Consistent per-line rows of random patients: (rows, row groups, patient groups, site)."""
    n_pat = draw(st.integers(1, 25))
    rows: list[tuple[str, int, int, str, int, int]] = []
    patient_groups, patient_sites, row_sites = [], [], []
    terminal = [s for s in END_STATES if s != "next_line"]
    regimens: list[str] = []
    for p in range(n_pat):
        g = draw(st.integers(-1, 2))
        site = draw(st.integers(0, 4))
        patient_groups.append(g)
        patient_sites.append(site)
        n_lines = draw(st.integers(0, 7))
        for k in range(1, n_lines + 1):
            last = k == n_lines
            state = draw(st.sampled_from(terminal)) if last else "next_line"
            event = 1 if not last else (2 if state in ("death", "palliative") else 0)
            rows.append((f"p{p}", g, k, state, event, draw(st.integers(0, 400))))
            regimens.append(draw(st.sampled_from(REGIMENS)))
            row_sites.append(site)
    df = frame(rows)
    df["regimen"] = regimens
    df["anti_her2"] = [draw(st.booleans()) for _ in rows]
    return df, [r[1] for r in rows], patient_groups, row_sites + patient_sites


@st.composite
def line_rows(draw: Any) -> tuple[pd.DataFrame, list[int], list[int], list[int]]:
    return random_line_rows(draw)


@settings(max_examples=60, deadline=None)
@given(data=line_rows(), k=st.integers(1, 5))
def test_split_counts_sum_to_pooled_counts(
    data: tuple[pd.DataFrame, list[int], list[int], list[int]], k: int
) -> None:
    df, groups, pgroups, sites = data
    n_rows = len(df)
    row_site, pat_site = np.array(sites[:n_rows]), np.array(sites[n_rows:])
    g, pg = np.array(groups, dtype=np.int64), np.array(pgroups, dtype=np.int64)
    pooled = attrition_counts(df, g, 3, k, patient_group_codes=pg)
    grid = TimeGrid(7, 420)
    pooled_a3 = a3_event_table(df, g, 3, grid, k)
    parts, parts_a3 = [], []
    for s in range(5):
        sel = row_site == s
        parts.append(
            attrition_counts(
                df[sel].reset_index(drop=True),
                g[sel],
                3,
                k,
                patient_group_codes=pg[pat_site == s],
            )
        )
        parts_a3.append(a3_event_table(df[sel].reset_index(drop=True), g[sel], 3, grid, k))
    total = merge(parts)
    for name, value in pooled.arrays().items():
        np.testing.assert_array_equal(total.arrays()[name], value, err_msg=name)
        assert value.dtype == np.int64
    total_a3 = merge(parts_a3)
    np.testing.assert_array_equal(total_a3.events, pooled_a3.events)
    np.testing.assert_array_equal(total_a3.censored, pooled_a3.censored)
    # estimates read only the merged counts, so they are equal too
    np.testing.assert_array_equal(a1(total).numerator, a1(pooled).numerator)
    np.testing.assert_array_equal(a4(total).denominator, a4(pooled).denominator)
