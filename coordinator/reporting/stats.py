"""The little arithmetic the report adds on top of ``results.json``.

Everything here reads released numbers only: numbers at risk at the plot's
time ticks, landmark values of step functions, and the between-site
heterogeneity of released per-site estimates. Nothing is re-estimated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.reporting.fmt import DAYS_PER_MONTH, fnum
from her2fed.dists import chi2_sf, z_two_sided


def z_value(conf_level: float) -> float:
    return z_two_sided(conf_level)


def at_risk_at(
    time: Sequence[object],
    n_risk: Sequence[object],
    n_event: Sequence[object],
    n_censor: Sequence[object] | None,
    t_days: float,
) -> float | None:
    """Number at risk at ``t_days`` as R's ``summary.survfit(times=)`` gives it.

    The n at risk of the first row at or after ``t``; after the last row, the
    last row's n at risk minus those who left there. Without censoring counts
    (Nelson-Aalen rows) the value after the last row is unknown (None).
    """
    if not time:
        return 0.0
    for i, ti in enumerate(time):
        v = fnum(ti)
        if v is not None and v >= t_days - 1e-9:
            return fnum(n_risk[i])
    if n_censor is None:
        return None
    last = len(time) - 1
    parts = (fnum(n_risk[last]), fnum(n_event[last]), fnum(n_censor[last]))
    if any(p is None for p in parts):
        return None
    r, e, c = (p for p in parts if p is not None)
    return r - e - c


def value_at(
    time: Sequence[object], values: Sequence[object], t_days: float, start: float | None
) -> float | None:
    """A right-continuous step function at ``t``; None after the last row (not observed)."""
    if not time:
        return None
    last_t = fnum(time[-1])
    if last_t is None or t_days > last_t + 1e-9:
        return None
    out: float | None = start
    for ti, vi in zip(time, values, strict=False):
        v = fnum(ti)
        if v is None or v > t_days + 1e-9:
            break
        out = fnum(vi)
    return out


def month_ticks(max_months: float) -> tuple[list[float], float]:
    """Regular ticks every 1/2/3/6/12/24 months, at most ~10 over the follow-up."""
    for step in (1.0, 2.0, 3.0, 6.0, 12.0, 24.0, 48.0):
        if max_months / step <= 10:
            break
    n = math.floor(max_months / step + 1e-9)
    return [i * step for i in range(n + 1)], step


def landmarks(max_months: float) -> list[float]:
    """The landmark times papers report (1, 2, 3, 5 years), or earlier ones for short follow-up."""
    years = [m for m in (12.0, 24.0, 36.0, 60.0, 120.0) if m <= max_months + 1e-9]
    if len(years) >= 2:
        return years
    return [m for m in (3.0, 6.0, 12.0) if m <= max_months + 1e-9]


def months_to_days(m: float) -> float:
    return m * DAYS_PER_MONTH


@dataclass(frozen=True)
class Heterogeneity:
    """Cochran's Q around the inverse-variance mean of k site estimates, and I²."""

    q: float
    df: int
    p: float
    i2: float
    k: int


def heterogeneity(estimates: Sequence[float], std_errs: Sequence[float]) -> Heterogeneity | None:
    """None when fewer than two sites have an estimate with a positive standard error."""
    pairs = [(y, s) for y, s in zip(estimates, std_errs, strict=True) if s > 0]
    if len(pairs) < 2:
        return None
    w = [1.0 / (s * s) for _, s in pairs]
    mean = sum(wi * y for wi, (y, _) in zip(w, pairs, strict=True)) / sum(w)
    q = sum(wi * (y - mean) ** 2 for wi, (y, _) in zip(w, pairs, strict=True))
    df = len(pairs) - 1
    i2 = max(0.0, (q - df) / q) if q > 0 else 0.0
    return Heterogeneity(q=q, df=df, p=chi2_sf(q, df), i2=i2, k=len(pairs))


def log_se_from_ci(lo: object, hi: object, conf_level: float) -> float | None:
    """SE on the log scale recovered from a CI (approximate for medians: CIs are not Wald)."""
    a, b = fnum(lo), fnum(hi)
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return (math.log(b) - math.log(a)) / (2.0 * z_value(conf_level))


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def logit_se_from_ci(lo: object, hi: object, conf_level: float) -> float | None:
    a, b = fnum(lo), fnum(hi)
    if a is None or b is None or not (0 < a < 1) or not (0 < b < 1):
        return None
    return (logit(b) - logit(a)) / (2.0 * z_value(conf_level))
