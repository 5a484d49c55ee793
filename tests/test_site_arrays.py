"""The fast paths a site takes from rows to summaries give what the plain definitions give.

Each shortcut (reading a numeric column as is, mapping distinct level values
once, one bincount for the event table, Cox rows summed chunk by chunk and
re-centred instead of re-arranged) is checked against a direct, slow
computation of the same numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import her2fed.cox as cox
from her2fed.counts import event_table
from her2fed.errors import DataError
from her2fed.grid import TimeGrid
from her2fed.levels import Levels
from site_agent.data import level_codes, prepare
from tests.fedrun import analysis

GRID = TimeGrid(7, 70)


def _naive_sums(
    grid: TimeGrid, time: np.ndarray, event: np.ndarray, x: np.ndarray, beta: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-bin Cox sums by one loop over the rows."""
    bins, ev = grid.bin(time, event)
    p = x.shape[1]
    iu, ju = np.triu_indices(p)
    out = {
        "exit_w": np.zeros(grid.n_bins),
        "exit_wxx": np.zeros((grid.n_bins, iu.size)),
        "death_w": np.zeros(grid.n_bins),
        "death_wx": np.zeros((grid.n_bins, p)),
    }
    for b, e, row in zip(bins, ev, x, strict=True):
        w = float(np.exp(row @ beta))
        out["exit_w"][b] += w
        out["exit_wxx"][b] += w * row[iu] * row[ju]
        if e:
            out["death_w"][b] += w
            out["death_wx"][b] += w * row
    return out


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 400),
    chunk=st.integers(1, 50),
)
def test_chunked_cox_sums_equal_the_sums_row_by_row(seed: int, n: int, chunk: int) -> None:
    """Chunks cut through cells (a cell's run split across chunks is added up, not lost)."""
    rng = np.random.default_rng(seed)
    time = rng.integers(0, 90, n).astype(float)  # some beyond the horizon
    event = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 3))
    beta = rng.normal(scale=0.3, size=3)
    center = tuple(float(v) for v in x.mean(axis=0))
    rows = cox.cox_rows(GRID, time, event, np.zeros(n, np.int64), x, center, 1)
    old = cox.CHUNK_ROWS
    cox.CHUNK_ROWS = chunk
    try:
        sums = cox.cox_sums(rows, beta)
    finally:
        cox.CHUNK_ROWS = old
    want = _naive_sums(GRID, time, event, x - np.asarray(center), beta)
    for name, expected in want.items():
        got = getattr(sums, name).reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12, err_msg=name)


def test_recentred_rows_give_the_same_derivatives_as_rows_arranged_again() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    time = rng.integers(0, 70, n).astype(float)
    event = rng.integers(0, 2, n)
    x = rng.normal(loc=[50.0, 0.3], scale=[10.0, 1.0], size=(n, 2))
    own = cox.cox_rows(GRID, time, event, np.zeros(n, np.int64), x, (49.0, 0.0), 1)
    pooled_center = (51.5, 0.25)
    fresh = cox.cox_rows(GRID, time, event, np.zeros(n, np.int64), x, pooled_center, 1)
    moved = cox.recentred(own, pooled_center)
    assert moved.center == pooled_center
    beta = np.array([0.02, -0.4])
    a = cox.derivs_from_sums(cox.cox_sums(moved, beta), beta, "efron")
    b = cox.derivs_from_sums(cox.cox_sums(fresh, beta), beta, "efron")
    np.testing.assert_allclose(a.loglik, b.loglik, rtol=1e-12)
    np.testing.assert_allclose(a.grad, b.grad, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.info, b.info, rtol=1e-10)


def test_event_table_counts_each_row_once_in_its_cell() -> None:
    rng = np.random.default_rng(5)
    n = 2000
    time = rng.integers(0, 90, n).astype(float)
    event = rng.integers(0, 3, n)  # two causes
    group = rng.integers(0, 2, n)
    stratum = rng.integers(0, 3, n)
    table = event_table(GRID, time, event, group, stratum, n_groups=2, n_causes=2, n_strata=3)
    bins, ev = GRID.bin(time, event)
    events = np.zeros_like(table.events)
    censored = np.zeros_like(table.censored)
    for s, g, e, b in zip(stratum, group, ev, bins, strict=True):
        if e:
            events[s, g, e - 1, b] += 1
        else:
            censored[s, g, b] += 1
    assert np.array_equal(table.events, events)
    assert np.array_equal(table.censored, censored)
    assert table.events.flags.c_contiguous and table.censored.flags.c_contiguous


def test_level_values_are_matched_in_canonical_form() -> None:
    df = pd.DataFrame({"hr": [2, "2", 2.0, None, float("nan"), " 3 ", 3]}, dtype=object)
    codes = level_codes(df, Levels("hr", ("3", "2")), "site.csv")
    assert codes.tolist() == [1, 1, 1, -1, -1, 0, 0]


def test_undeclared_levels_are_named_once_each() -> None:
    df = pd.DataFrame({"hr": ["POS", "NEG", "unknown", "unknown", "n/a"]})
    with pytest.raises(DataError) as err:
        level_codes(df, Levels("hr", ("POS", "NEG")), "site.csv")
    assert "'n/a', 'unknown' are not among the declared levels" in str(err.value)


def test_a_table_without_missing_values_is_not_copied_but_cannot_be_changed() -> None:
    df = pd.DataFrame({"time": [5.0, 10.0, 20.0], "event": [1, 0, 1]})
    rows = prepare(df, analysis(kind="km", time="time", event="event"), "site.csv")
    assert rows.time.tolist() == [5.0, 10.0, 20.0] and rows.event.tolist() == [1, 0, 1]
    assert rows.rows.tolist() == [0, 1, 2] and rows.dropped == 0
    with pytest.raises(ValueError):
        rows.time[0] = 1.0


def test_missing_and_text_values_in_numeric_columns() -> None:
    df = pd.DataFrame({"time": [5.0, None, 20.0], "event": [1, 0, None]})
    rows = prepare(df, analysis(kind="km", time="time", event="event"), "site.csv")
    assert rows.time.tolist() == [5.0] and rows.rows.tolist() == [0] and rows.dropped == 2
    bad = pd.DataFrame({"time": ["5", "ten", "20"], "event": [1, 0, 1]})
    with pytest.raises(DataError, match="1 non-numeric value"):
        prepare(bad, analysis(kind="km", time="time", event="event"), "site.csv")
