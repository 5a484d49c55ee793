"""Aalen-Johansen cumulative incidence for k competing causes.

Standard error: the infinitesimal jackknife (IJ), the estimator R's
``survfit`` reports for multi-state curves. Its variance is the sum over
subjects of the squared influence of each subject's weight on CIF_k(t). Two
subjects who leave at the same grid time with the same status have the same
influence, so the variance is a function of the pooled event table alone and
federates exactly. The influences of all types at all rows are never formed:
their weighted squares reduce to prefix sums (``_ij_std_err``), so the cost
is linear in the rows (1.8 s -> 1 ms at 3,651 rows and two causes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from her2fed.grid import FloatArray, IntArray


@dataclass(frozen=True)
class CIFCurve:
    """Cumulative incidence per cause at the event/censoring rows (cause index 0 = cause 1)."""

    time: FloatArray
    n_risk: IntArray
    n_event: IntArray  # [row, cause]
    n_censor: IntArray
    cif: FloatArray  # [row, cause]
    std_err: FloatArray  # [row, cause]
    surv: FloatArray  # overall event-free survival


def aalen_johansen(times: FloatArray, events: NDArray[np.int64], censored: IntArray) -> CIFCurve:
    """CIF per cause from ``events[cause, bin]`` and ``censored[bin]`` of one group."""
    leaving = events.sum(axis=0) + censored
    keep = leaving > 0
    t = times[keep]
    dk = events[:, keep].T.astype(np.int64)  # [row, cause]
    c = censored[keep].astype(np.int64)
    n = np.flip(np.cumsum(np.flip(leaving)))[keep].astype(np.int64)
    nf = n.astype(np.float64)
    lam_k = dk / nf[:, None]  # cause-specific hazard increments
    lam = lam_k.sum(axis=1)
    surv = np.cumprod(1.0 - lam)
    s_before = np.concatenate(([1.0], surv[:-1]))
    cif = np.cumsum(s_before[:, None] * lam_k, axis=0)
    std_err = _ij_std_err(lam_k, nf, s_before, dk, c)
    return CIFCurve(t, n, dk, c, cif, std_err, surv)


CANCELLATION_GUARD = 1e-6
"""A row whose variance is below this fraction of its expanded terms lost more than six
digits to cancellation (a curve at its end, S = 0); it is computed subject type by type."""


def _ij_std_err(
    lam_k: FloatArray, n: FloatArray, s_before: FloatArray, dk: IntArray, c: IntArray
) -> FloatArray:
    """IJ standard error of every CIF, in time linear in the rows.

    A subject type (exit row m, status s) has, at rows j < m, an influence on
    CIF_k that does not depend on the type (``P_k[j]``: it is still at risk),
    and at rows j >= m the influence ``e + (C_k[j] - C_k[m]) * G`` with
    per-type constants: ``G = A_m`` (censored) or ``A_m - B_m`` (an event),
    ``e = P_k[m]`` plus ``S(t_m-)/n_m`` for an event of cause k. So the
    weighted sum of squared influences is ``P_k[j]^2`` times the weight still
    at risk plus a quadratic in ``C_k[j]`` whose three coefficients are prefix
    sums over the types that have left. Here ``A_i`` is the sum over l <= i of
    ``lam_l / (n_l (1 - lam_l))`` (relative influence on S of one more subject
    at risk) and ``B_m = 1 / (n_m (1 - lam_m))``; a row with ``lam = 1`` ends
    the curve and its ``A``, ``B`` only ever multiply zero.
    """
    rows, causes = lam_k.shape
    lam = lam_k.sum(axis=1)
    live = lam < 1.0
    safe = np.where(live, 1.0 - lam, 1.0)
    b = np.where(live, 1.0 / (n * safe), 0.0)
    a = np.cumsum(lam * b)
    a_before = np.concatenate(([0.0], a[:-1]))
    f = s_before[:, None] * lam_k  # CIF increments
    cif = np.cumsum(f, axis=0)
    p = np.cumsum(f * (a_before - 1.0 / n)[:, None], axis=0)
    h = s_before / n
    w_cens = c.astype(np.float64)
    w_ev = dk.astype(np.float64)
    left = w_cens + w_ev.sum(axis=1)
    still_at_risk = np.concatenate((np.cumsum(left[::-1])[::-1][1:], [0.0]))
    # per type (row m, status): the influence is e + cif_k[j] * g at rows j >= m
    g = np.concatenate((a[:, None], (a - b)[:, None].repeat(causes, axis=1)), axis=1)
    w = np.concatenate((w_cens[:, None], w_ev), axis=1)  # [m, status]
    var = np.empty((rows, causes))
    for k in range(causes):
        e = p[:, k : k + 1] - cif[:, k : k + 1] * g
        e[:, 1 + k] += h
        uu = np.cumsum((w * e * e).sum(axis=1))
        uv = np.cumsum((w * e * g).sum(axis=1))
        vv = np.cumsum((w * g * g).sum(axis=1))
        ck = cif[:, k]
        terms = p[:, k] ** 2 * still_at_risk + uu + ck**2 * vv
        var[:, k] = terms + 2 * ck * uv
        for j in np.flatnonzero(var[:, k] < CANCELLATION_GUARD * terms):
            var[j, k] = _direct_var(int(j), k, p, cif, g, h, w, still_at_risk)
    return np.sqrt(np.maximum(var, 0.0))


def _direct_var(
    j: int,
    k: int,
    p: FloatArray,
    cif: FloatArray,
    g: FloatArray,
    h: FloatArray,
    w: FloatArray,
    still_at_risk: FloatArray,
) -> float:
    """One row's variance summed type by type (no expansion, so nothing cancels)."""
    d = p[: j + 1, k : k + 1] + (cif[j, k] - cif[: j + 1, k : k + 1]) * g[: j + 1]
    d[:, 1 + k] += h[: j + 1]
    return float(p[j, k] ** 2 * still_at_risk[j] + (w[: j + 1] * d * d).sum())
