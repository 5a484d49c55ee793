"""Attacks on what a site releases, each of which must fail for the attacker.

The rest of the attack table lives with the mechanism it tests (docs/privacy.md
lists every row and its test): tiny cohort, 1-day grid and the Cox iteration
cap in test_policy.py; differencing by one patient in test_cohorts.py;
line-count differencing in test_disclosure.py; audit edits, deletions and
truncation in test_audit.py; unapproved and re-signed studies in
test_approval.py and test_grpc_federation.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from her2fed.counts import EventTable, event_table
from her2fed.disclosure import ReleaseRule, release_table
from her2fed.grid import TimeGrid
from her2fed.protocol import Query
from site_agent.config import Policy
from site_agent.handlers import SiteAgent
from tests.fedrun import DATASET, analysis, load, site_config, study_of

GRID = TimeGrid(30, 3650)


def _auc(members: NDArray[np.float64], others: NDArray[np.float64]) -> float:
    """P(score of a member > score of a non-member), ties counted half (Mann-Whitney)."""
    both = np.concatenate([members, others])
    ranks = pd.Series(both).rank().to_numpy()
    n1, n0 = len(members), len(others)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _table(time: NDArray[np.float64], event: NDArray[np.int64]) -> EventTable:
    zeros = np.zeros(len(time), np.int64)
    return event_table(GRID, time, event, zeros, zeros, n_groups=1, n_causes=1, n_strata=1)


def membership_auc(n: int, rule: ReleaseRule | None, trials: int = 400, seed: int = 0) -> float:
    """A strong attacker against a released KM table.

    The attacker knows the target's exact record and the population's hazard
    per grid bin, sees the released table, and scores the released events in
    the target's released bin against the number the population's hazard
    predicts for that bin's released risk set (more events than expected ->
    "member" if the target had an event there, fewer if censored). Cohorts of
    ``n`` are drawn from a 200,000-patient population, half with the target.
    """
    rng = np.random.default_rng(seed)
    size = 200_000
    death = np.ceil(rng.exponential(700, size))
    censor = np.ceil(rng.uniform(0, 3000, size))
    time = np.minimum(death, censor)
    event = (death <= censor).astype(np.int64)
    population = _table(time, event)
    hazard = population.events[0, 0, 0] / np.maximum(population.at_risk()[0, 0], 1)
    scores: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(trials):
        target = int(rng.integers(size))
        for member in (True, False):
            cohort = rng.choice(size, n, replace=False)
            cohort = cohort[cohort != target][: n - 1]
            if member:
                cohort = np.append(cohort, target)
            released = _table(time[cohort], event[cohort])
            if rule is not None:
                released, _ = release_table(released, rule)
            events = released.events[0, 0, 0]
            shown = np.flatnonzero(events + released.censored[0, 0])
            at_risk = released.at_risk()[0, 0]
            b = min(int(np.ceil(time[target] / GRID.grid_days)), GRID.n_bins - 1)
            i = int(np.searchsorted(shown, b))
            if i == len(shown):  # the target's time is past the released curve
                scores[member].append(0.0)
                continue
            start, end = (shown[i - 1] + 1 if i else 0), shown[i]
            expected = float((hazard[start : end + 1] * at_risk[start : end + 1]).sum())
            excess = (events[end] - expected) / np.sqrt(max(expected, 1.0))
            scores[member].append(excess if event[target] else -excess)
    return _auc(np.array(scores[True]), np.array(scores[False]))


def test_membership_inference_on_a_km_release_under_the_default_policy() -> None:
    """Under the default policy (30-day grid, min_cell 5, truncation below 10 at risk) the
    attack's AUC on a 1,000-patient pooled curve is at most 0.55 (measured 0.527; the
    standard error over 400 trials is about 0.02). The same attacker against an unprotected
    release (the 30-day table as summed, no release rule) of 50 patients is right often
    (measured 0.71): the test can tell."""
    assert membership_auc(1000, ReleaseRule(5, 10)) <= 0.55
    small_raw = membership_auc(50, None)
    assert small_raw > 0.65, small_raw


def test_repeated_and_reordered_queries_learn_nothing_new() -> None:
    """Asking again, or in another order, gives the same numbers (exact summaries; under DP
    the noise is seeded by the query, test_dp.py), so repeats cannot average anything out."""
    km = analysis(id="km", kind="km", time="week", event="arrest")
    na = analysis(id="na", kind="nelson_aalen", time="week", event="arrest")
    agent = SiteAgent(
        site_config(0, Policy()),
        study_of(km, na, grid_days=30, horizon_days=60),
        tables={DATASET: load("rossi")},
    )
    first = agent.answer([Query("km", "table"), Query("na", "table")])
    again = agent.answer([Query("na", "table"), Query("km", "table")])
    for a, b in zip(first, reversed(again), strict=True):
        for name, value in a.arrays().items():
            np.testing.assert_array_equal(value, b.arrays()[name])
