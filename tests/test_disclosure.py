"""Disclosure control on the pooled release: every released cell passes, and the release
is still an exact estimator of the pooled rows (on coarser, documented times)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from her2fed.attrition import AttritionCounts
from her2fed.counts import EventTable, event_table
from her2fed.disclosure import (
    ReleaseRule,
    coarsen,
    conform,
    leave_one_out,
    release_attrition,
    release_table,
)
from her2fed.grid import TimeGrid
from her2fed.km import kaplan_meier

RULE = ReleaseRule(min_cell=5, min_at_risk=10)


def rows(seed: int, n: int, n_groups: int = 2, n_causes: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "time": np.ceil(rng.exponential(400, n)),
        "event": rng.integers(0, n_causes + 1, n),
        "group": rng.integers(0, n_groups, n),
    }


def table_of(r: dict[str, np.ndarray], grid: TimeGrid, n_groups: int, n_causes: int) -> EventTable:
    return event_table(
        grid,
        r["time"].astype(np.float64),
        r["event"].astype(np.int64),
        r["group"].astype(np.int64),
        np.zeros(len(r["time"]), np.int64),
        n_groups=n_groups,
        n_causes=n_causes,
        n_strata=1,
    )


def assert_passes(t: EventTable, rule: ReleaseRule) -> None:
    """Every released cell is 0 or >= min_cell, and no released bin has few at risk."""
    leaving = t.events.sum(axis=2) + t.censored
    for cells in (t.events, leaving):
        small = (cells > 0) & (cells < rule.min_cell)
        assert not small.any(), np.argwhere(small)[:5]
    at_risk = t.at_risk()
    shown = leaving > 0
    assert (at_risk[shown] >= rule.min_at_risk).all()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(0, 400),
    n_groups=st.integers(1, 3),
    n_causes=st.integers(1, 2),
)
def test_every_released_cell_passes(seed: int, n: int, n_groups: int, n_causes: int) -> None:
    grid = TimeGrid(30, 1800)
    pooled = table_of(rows(seed, n, n_groups, n_causes), grid, n_groups, n_causes)
    released, info = release_table(pooled, RULE)
    assert_passes(released, RULE)
    assert released.events.shape == (1, n_groups, n_causes, grid.n_bins)
    assert info.released_bins <= grid.n_bins * n_groups


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(30, 500))
def test_the_release_is_the_pooled_table_of_rows_on_coarser_times(seed: int, n: int) -> None:
    """Rebuild the release from the rows themselves: each row's bin rounded up to the end of
    its merged bin, and rows past the truncation censored at the last released bin. The
    released table must equal the event table of those rows, cell for cell."""
    grid = TimeGrid(30, 1800)
    r = rows(seed, n)
    pooled = table_of(r, grid, 2, 1)
    released, info = release_table(pooled, RULE)
    for g in range(2):
        leaving = released.events[0, g].sum(axis=0) + released.censored[0, g]
        ends = np.flatnonzero(leaving)
        mine = r["group"] == g
        if ends.size == 0:  # nothing released: said so, or never ten at risk
            assert g in info.suppressed_series or pooled.at_risk()[0, g, 0] < RULE.min_at_risk
            continue
        bins, event = grid.bin(r["time"][mine], r["event"][mine])
        last = ends[-1]
        late = bins > last
        event[late] = 0  # administratively censored at the last released bin
        bins = np.where(late, last, bins)
        moved = ends[np.searchsorted(ends, bins)]
        expect_events = np.bincount(moved[event == 1], minlength=grid.n_bins)
        expect_cens = np.bincount(moved[event == 0], minlength=grid.n_bins)
        np.testing.assert_array_equal(released.events[0, g, 0], expect_events)
        np.testing.assert_array_equal(released.censored[0, g], expect_cens)


def test_a_small_group_is_suppressed_and_a_large_one_released() -> None:
    grid = TimeGrid(30, 900)
    events = np.zeros((1, 2, 1, grid.n_bins), np.int64)
    censored = np.zeros((1, 2, grid.n_bins), np.int64)
    events[0, 0, 0, :10] = 6  # 60 events, 6 per bin: released bin by bin
    censored[0, 0, 20] = 30
    events[0, 1, 0, 3] = 3  # three events in the whole series: never releasable
    censored[0, 1, 5] = 20
    released, info = release_table(EventTable(events, censored, np.zeros(1, np.int64)), RULE)
    assert info.suppressed_series == (1,)
    assert released.events[0, 1].sum() == 0 and released.censored[0, 1].sum() == 0
    np.testing.assert_array_equal(released.events[0, 0, 0, :10], 6)
    assert_passes(released, RULE)


def test_the_tail_is_truncated_where_fewer_than_ten_remain() -> None:
    grid = TimeGrid(30, 900)
    events = np.zeros((1, 1, 1, grid.n_bins), np.int64)
    censored = np.zeros((1, 1, grid.n_bins), np.int64)
    events[0, 0, 0, :8] = 5  # 40 events early
    events[0, 0, 0, 20:29] = 1  # nine late events, one per bin, among the last nine
    released, info = release_table(EventTable(events, censored, np.zeros(1, np.int64)), RULE)
    assert info.truncated_series == 1
    at_risk = released.at_risk()[0, 0]
    leaving = released.events[0, 0].sum(axis=0) + released.censored[0, 0]
    assert at_risk[leaving > 0].min() >= 10
    assert released.events[0, 0, 0, 20:].sum() == 0  # the late deaths are not shown one by one
    km = kaplan_meier(grid.times, released.events[0, 0].sum(axis=0), released.censored[0, 0])
    assert km.n_risk.min() >= 10


def attrition(reached: list[list[int]], **cells: list[list[int]]) -> AttritionCounts:
    r = np.array(reached, np.int64)
    g, k = r.shape
    started = np.array(cells.get("started", reached), np.int64)
    zeros = np.zeros((g, k), np.int64)
    end_state = np.zeros((g, k, 7), np.int64)
    end_state[:, :, 0] = started
    return AttritionCounts(
        patients=r[:, 0] + 10,
        reached=r,
        started=started,
        started_anti_her2=started,
        finished=started,
        no_next=np.array(cells.get("no_next", zeros), np.int64),
        no_next_finished=zeros,
        no_next_death=np.array(cells.get("no_next_death", zeros), np.int64),
        end_state=end_state,
        dropped=np.zeros(1, np.int64),
    )


def empty_a3(g: int, k: int) -> EventTable:
    grid = TimeGrid(30, 300)
    return EventTable(
        np.zeros((k, g, 2, grid.n_bins), np.int64),
        np.zeros((k, g, grid.n_bins), np.int64),
        np.zeros(1, np.int64),
    )


def test_late_lines_are_top_coded_when_line_counts_get_small() -> None:
    """Line 4 has 3 patients in group 1 (and 2 stopped after line 3 in group 0): lines 3, 4
    and 5+ are released as one "3+" slot, counts added, A3 strata merged the same way."""
    counts = attrition([[100, 60, 30, 28, 20], [80, 50, 20, 3, 0]])
    rel = release_attrition(counts, empty_a3(2, 5), RULE)
    assert rel.release.top_slot == 2
    np.testing.assert_array_equal(rel.counts.reached[:, 3:], 0)
    np.testing.assert_array_equal(rel.counts.started[:, 2], [30 + 28 + 20, 20 + 3 + 0])
    assert rel.release.as_json()["top_line"] == 3


def test_a_small_cell_is_withheld_with_a_complement_so_the_total_does_not_give_it_away() -> None:
    counts = attrition(
        [[100, 60], [80, 50], [90, 40]], no_next=[[40, 10], [3, 9], [50, 20]]
    )
    rel = release_attrition(counts, empty_a3(3, 2), RULE)
    hidden = rel.withheld["no_next"]
    assert hidden[1, 0]  # the 3
    assert hidden[:, 0].sum() == 2 and hidden[0, 0]  # and the smallest other cell, 40
    assert not rel.withheld_total["no_next"][0]  # 43 withheld in all: the total may show
    assert not hidden[:, 1].any()


@pytest.mark.parametrize("min_cell", [0, 1])
def test_the_rule_can_be_off(min_cell: int) -> None:
    assert not ReleaseRule(min_cell, 0).active


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(40, 600), n_sites=st.integers(3, 6))
def test_leave_one_out_rounds_end_with_every_site_agreeing(seed: int, n: int, n_sites: int) -> None:
    """The coordinator's rounds: release, every site checks the release minus its own rows,
    refused bins are merged with a neighbour. They end, and then no site can learn a count
    of 1-4 of other hospitals' patients, while the release still passes on its own."""
    grid = TimeGrid(30, 1800)
    r = rows(seed, n, 2, 2)
    owner = np.random.default_rng(seed + 1).integers(0, n_sites, n)
    own = [table_of({k: v[owner == i] for k, v in r.items()}, grid, 2, 2) for i in range(n_sites)]
    pooled = table_of(r, grid, 2, 2)
    blocks: dict[int, tuple[tuple[int, int], ...]] = {}
    for _ in range(grid.n_bins):
        released, info = release_table(pooled, RULE, blocks)
        failing: dict[int, set[int]] = {}
        for mine in own:
            for series, ends in leave_one_out(released, mine, RULE).items():
                failing.setdefault(series, set()).update(ends)
        if not failing:
            break
        for series, ends in failing.items():
            blocks[series] = coarsen(info.blocks[series], ends)
    assert not failing
    assert_passes(released, RULE)
    for mine in own:  # what the others contributed passes too
        others = EventTable(
            released.events - conform(mine, released).events,
            released.censored - conform(mine, released).censored,
            released.dropped,
        )
        assert_passes_cells(others, RULE)


def assert_passes_cells(t: EventTable, rule: ReleaseRule) -> None:
    leaving = t.events.sum(axis=2) + t.censored
    for cells in (t.events, leaving):
        assert not ((cells > 0) & (cells < rule.min_cell)).any()


def test_coarsen_merges_each_refused_bin_once() -> None:
    blocks = ((0, 1), (2, 4), (5, 5), (6, 9))
    assert coarsen(blocks, {4}) == ((0, 1), (2, 5), (6, 9))
    assert coarsen(blocks, {9}) == ((0, 1), (2, 4), (5, 9))
    assert coarsen(blocks, {1, 5}) == ((0, 4), (5, 9))
    assert coarsen(((0, 3),), {3}) == ()  # one refused bin left: suppressed


def test_cox_risk_sets_are_merged_so_each_bin_loses_at_least_five() -> None:
    """Per-bin Cox sums would give a lone leaver's covariates away (exit sums of w*x over one
    patient). Under the release rules the coordinator merges risk-set bins from the Cox
    rows' event table and the sites send sums on those bins: the fit equals the exact Cox
    model of the same rows with times moved to the end of their merged bin."""
    from coordinator.orchestrate import run_study
    from coordinator.transport import InProcessTransport
    from her2fed.cox import CoxResult
    from site_agent.config import Policy, SiteConfig
    from site_agent.handlers import SiteAgent
    from tests.fedrun import DATASET, analysis, load, site_config, split, study_of

    cox = analysis(id="cox", kind="cox", time="time", event="cens", covariates=["age", "pnodes"])
    study = study_of(cox, grid_days=30, horizon_days=2880)
    frames = split(load("gbsg2"), 3, seed=4)
    policy = Policy(min_grid_days=30)
    agents = [
        SiteAgent(SiteConfig(Path(f"s{i}.toml"), f"s{i}", "XX", policy=policy), study,
                  tables={DATASET: f})
        for i, f in enumerate(frames)
    ]  # fmt: skip
    outcome = run_study(study, InProcessTransport(agents))
    merged = outcome.releases["cox"]
    ends = np.array([end for _, end in merged.blocks[0]])
    assert 0 < ends.size < study.grid.n_bins - 1
    # every merged bin loses at least five patients, pooled
    pooled = pd.concat(frames)
    bins, _ = study.grid.bin(pooled["time"].to_numpy(float), pooled["cens"].to_numpy(int))
    last = ends[-1]
    at = ends[np.minimum(np.searchsorted(ends, bins), ends.size - 1)]
    leaving = np.bincount(np.where(bins > last, last, at), minlength=study.grid.n_bins)
    assert (leaving[leaving > 0] >= 5).all()
    # ...and the fit is the exact Cox model on those coarser times
    moved = pooled.copy()
    moved["cens"] = np.where(bins > last, 0, pooled["cens"])
    moved["time"] = np.where(bins > last, last, at) * study.grid.grid_days
    exact = SiteAgent(site_config(0), study, tables={DATASET: moved.reset_index(drop=True)})
    ref = run_study(study, InProcessTransport([exact], secure=False)).results["cox"]
    got = outcome.results["cox"]
    assert isinstance(got, CoxResult) and isinstance(ref, CoxResult)
    np.testing.assert_allclose(got.coef, ref.coef, rtol=1e-8)
    np.testing.assert_allclose(got.se, ref.se, rtol=1e-8)


def test_a_cox_query_with_bins_out_of_order_is_refused() -> None:
    from her2fed.errors import ProtocolError
    from her2fed.protocol import Query, check_query
    from tests.fedrun import analysis

    cox = analysis(id="cox", kind="cox", time="time", event="cens", covariates=["age"])
    with pytest.raises(ProtocolError, match="not increasing"):
        check_query(cox, Query("cox", "cox_sums", (0.0,), (50.0,), (5, 3)))
    with pytest.raises(ProtocolError, match="takes no merged bins"):
        check_query(cox, Query("cox", "table", (), (), (3,)))
