"""Log-rank and Fleming-Harrington tests for k groups, optionally stratified.

The per-stratum observed, expected and variance (O, E, V) are additive over
strata. A test stratified by a variable computes them per stratum from the
merged event table; a test stratified *by site* has each site compute them on
its own rows and the sums of (O, E, V) are merged, which is exactly R's
``survdiff(... + strata(site))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from her2fed.counts import EventTable
from her2fed.dists import chi2_sf
from her2fed.summary import Additive


@dataclass(frozen=True)
class LogrankParts(Additive):
    """Weighted observed and expected events per group and their covariance."""

    observed: NDArray[np.float64]
    expected: NDArray[np.float64]
    variance: NDArray[np.float64]
    dropped: NDArray[np.int64]


@dataclass(frozen=True)
class LogrankResult:
    chisq: float
    df: int
    p: float
    observed: NDArray[np.float64]
    expected: NDArray[np.float64]
    variance: NDArray[np.float64]
    rho: float


def stratum_parts(
    events: NDArray[np.int64], at_risk: NDArray[np.int64], rho: float
) -> LogrankParts:
    """(O, E, V) for one stratum from per-group ``[g, b]`` events and numbers at risk.

    The Fleming-Harrington weight is the pooled (all groups) Kaplan-Meier
    estimate just before each time, raised to ``rho``.
    """
    d_g = events.astype(np.float64)
    n_g = at_risk.astype(np.float64)
    d = d_g.sum(axis=0)
    n = n_g.sum(axis=0)
    use = (d > 0) & (n > 0)
    d_g, n_g, d, n = d_g[:, use], n_g[:, use], d[use], n[use]
    surv = np.cumprod(1.0 - d / n)
    s_before = np.concatenate(([1.0], surv[:-1]))
    w = s_before**rho if rho != 0 else np.ones_like(d)
    share = n_g / n
    observed = (w * d_g).sum(axis=1)
    expected = (w * d * share).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(n > 1, w**2 * d * (n - d) / (n - 1), 0.0)
    variance = np.einsum("t,gt->g", factor, share)[:, None] * np.eye(len(share)) - np.einsum(
        "t,gt,ht->gh", factor, share, share
    )
    return LogrankParts(observed, expected, variance, np.zeros(1, np.int64))


def parts_from_table(table: EventTable, rho: float) -> LogrankParts:
    """Sum of per-stratum (O, E, V) over the strata of an event table."""
    events, at_risk = table.any_event(), table.at_risk()
    total = stratum_parts(events[0], at_risk[0], rho)
    for s in range(1, table.n_strata):
        total = total + stratum_parts(events[s], at_risk[s], rho)
    return LogrankParts(total.observed, total.expected, total.variance, table.dropped)


def logrank_test(parts: LogrankParts, rho: float) -> LogrankResult:
    """Chi-square on the groups that had anyone at risk at an event, one left out.

    Groups with zero expected events carry no information (as in R, they do
    not count towards the degrees of freedom).
    """
    o, e, v = parts.observed, parts.expected, parts.variance
    live = np.nonzero(e > 0)[0]
    df = max(len(live) - 1, 0)
    if df == 0:
        return LogrankResult(0.0, 0, float("nan"), o, e, v, rho)
    keep = live[1:]
    diff = (o - e)[keep]
    sub = v[np.ix_(keep, keep)]
    stat = float(diff @ np.linalg.lstsq(sub, diff, rcond=None)[0])
    return LogrankResult(stat, df, chi2_sf(stat, df), o, e, v, rho)
