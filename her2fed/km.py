"""Kaplan-Meier and Nelson-Aalen estimators read from a merged event table.

Both curves list the grid times at which at least one event or censoring
happened in the pooled data, as R's ``survfit`` does, so that pooled output
can be compared row by row with the same estimator on the pooled rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from her2fed.dists import z_two_sided
from her2fed.grid import FloatArray, IntArray

ConfType = Literal["log", "log-log", "plain"]
CONF_TYPES: tuple[ConfType, ...] = ("log", "log-log", "plain")
# R's quantile.survfit compares survival to 1 - p within this tolerance.
_QUANTILE_TOL = float(np.sqrt(np.finfo(np.float64).eps))


@dataclass(frozen=True)
class Quantile:
    """A survival-time quantile and its confidence limits (NaN when not reached)."""

    prob: float
    estimate: float
    lower: float
    upper: float


@dataclass(frozen=True)
class KMCurve:
    """One group's Kaplan-Meier curve at the event/censoring rows."""

    time: FloatArray
    n_risk: IntArray
    n_event: IntArray
    n_censor: IntArray
    surv: FloatArray
    std_err: FloatArray  # Greenwood standard error of S(t)
    lower: FloatArray
    upper: FloatArray
    conf_type: ConfType
    conf_level: float
    quantiles: tuple[Quantile, ...]

    @property
    def median(self) -> Quantile:
        for q in self.quantiles:
            if q.prob == 0.5:
                return q
        return Quantile(0.5, *_quantile_triplet(self.time, self.surv, self.lower, self.upper, 0.5))


@dataclass(frozen=True)
class NACurve:
    """Nelson-Aalen cumulative hazard with its (Aalen) standard error."""

    time: FloatArray
    n_risk: IntArray
    n_event: IntArray
    cumhaz: FloatArray
    std_err: FloatArray


def _rows(
    times: FloatArray, events: IntArray, censored: IntArray
) -> tuple[FloatArray, IntArray, IntArray, IntArray]:
    leaving = events + censored
    n_risk = np.flip(np.cumsum(np.flip(leaving)))
    keep = leaving > 0
    return times[keep], n_risk[keep], events[keep], censored[keep]


def greenwood_terms(n_risk: IntArray, n_event: IntArray) -> FloatArray:
    """d / (n (n - d)) per row; infinite where everyone at risk has the event."""
    n = n_risk.astype(np.float64)
    d = n_event.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d > 0, d / (n * (n - d)), 0.0)


def confidence_band(
    surv: FloatArray, se_log: FloatArray, conf_type: ConfType, conf_level: float
) -> tuple[FloatArray, FloatArray]:
    """Pointwise limits for S(t) given the SE of log S(t) (R's survfit rules)."""
    z = z_two_sided(conf_level)
    with np.errstate(divide="ignore", invalid="ignore"):
        if conf_type == "log":
            s = np.where(surv == 0, np.nan, surv)
            lower = np.exp(np.log(s) - z * se_log)
            upper = np.minimum(np.exp(np.log(s) + z * se_log), 1.0)
        elif conf_type == "log-log":
            s = np.where((surv == 0) | (surv == 1), np.nan, surv)
            ll = np.log(-np.log(s))
            width = z * se_log / np.log(s)
            lower = np.exp(-np.exp(ll - width))
            upper = np.exp(-np.exp(ll + width))
        elif conf_type == "plain":
            lower = np.maximum(surv - z * se_log * surv, 0.0)
            upper = np.minimum(surv + z * se_log * surv, 1.0)
        else:  # pragma: no cover - guarded by the study parser
            raise ValueError(f"unknown conf_type {conf_type!r}")
    return lower.astype(np.float64), upper.astype(np.float64)


def step_quantile(time: FloatArray, curve: FloatArray, prob: float) -> float:
    """Where a decreasing step curve (1 before the first row) crosses ``1 - prob``.

    R's rule (``quantile.survfit``): on the distribution scale F = 1 - S, the
    first time F reaches ``prob``; if F sits exactly on ``prob`` (within
    tolerance) the midpoint between that time and the next time F moves, or
    the last listed time if it never moves again. Rows where the curve is
    undefined (a CI where S = 0) are skipped.
    """
    x = np.concatenate(([0.0], time))
    y = np.concatenate(([0.0], 1.0 - curve))
    if np.nanmax(y) < prob:
        return float("nan")
    if prob == 0:
        return 0.0
    x_last = float(x[-1])
    # keep the first occurrence of each distinct value (all NaNs count as one)
    key = np.where(np.isnan(y), np.inf, y)
    _, first = np.unique(key, return_index=True)
    first.sort()
    x, y = x[first], y[first]
    y_end = y[-1]
    ok = ~np.isnan(y)
    x, y = x[ok], y[ok]
    tol = _QUANTILE_TOL

    def first_at_least(level: float) -> float:
        hit = np.nonzero(y >= level)[0]
        return float(x[hit[0]]) if hit.size else float("nan")

    lo, hi = first_at_least(prob - tol), first_at_least(prob + tol)
    if not np.isnan(y_end) and abs(prob - y_end) < tol:
        return (lo + x_last) / 2
    return (lo + hi) / 2


def _quantile_triplet(
    time: FloatArray, surv: FloatArray, lower: FloatArray, upper: FloatArray, prob: float
) -> tuple[float, float, float]:
    return (
        step_quantile(time, surv, prob),
        step_quantile(time, lower, prob),
        step_quantile(time, upper, prob),
    )


def kaplan_meier(
    times: FloatArray,
    events: IntArray,
    censored: IntArray,
    *,
    conf_type: ConfType = "log",
    conf_level: float = 0.95,
    probs: tuple[float, ...] = (0.25, 0.5, 0.75),
) -> KMCurve:
    """KM for one group from per-bin event and censoring counts."""
    t, n, d, c = _rows(times, events, censored)
    with np.errstate(divide="ignore", invalid="ignore"):
        surv: FloatArray = np.cumprod(1.0 - d / n.astype(np.float64)).astype(np.float64)
        se_log: FloatArray = np.sqrt(np.cumsum(greenwood_terms(n, d)))
        std_err: FloatArray = surv * se_log
    lower, upper = confidence_band(surv, se_log, conf_type, conf_level)
    quantiles = tuple(Quantile(p, *_quantile_triplet(t, surv, lower, upper, p)) for p in probs)
    return KMCurve(t, n, d, c, surv, std_err, lower, upper, conf_type, conf_level, quantiles)


def nelson_aalen(times: FloatArray, events: IntArray, censored: IntArray) -> NACurve:
    """Cumulative hazard sum d/n with the Aalen variance sum d/n^2."""
    t, n, d, _ = _rows(times, events, censored)
    nf = n.astype(np.float64)
    cumhaz = np.cumsum(d / nf)
    std_err = np.sqrt(np.cumsum(d / nf**2))
    return NACurve(t, n, d, cumhaz, std_err)
