"""Aalen-Johansen cumulative incidence for k competing causes.

Standard error: the infinitesimal jackknife (IJ), the estimator R's
``survfit`` reports for multi-state curves. Its variance is the sum over
subjects of the squared influence of each subject's weight on CIF_k(t). Two
subjects who leave at the same grid time with the same status have the same
influence, so the variance is a function of the pooled event table alone and
federates exactly: we compute the influence once per (exit row, status) type
and weight it by the number of subjects of that type.
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


def _ij_std_err(
    lam_k: FloatArray, n: FloatArray, s_before: FloatArray, dk: IntArray, c: IntArray
) -> FloatArray:
    rows, causes = lam_k.shape
    # Subject types: (exit row m, status s) with s = 0 censored, 1..K cause; weight = count.
    m_idx, s_idx, weight = [], [], []
    for status, counts in enumerate([c, *dk.T]):
        nz = np.nonzero(counts)[0]
        m_idx.append(nz)
        s_idx.append(np.full(nz.size, status))
        weight.append(counts[nz].astype(np.float64))
    m = np.concatenate(m_idx)
    s = np.concatenate(s_idx)
    w = np.concatenate(weight)
    d_surv = np.zeros(m.size)  # influence on S(t_{j-1}), updated row by row
    d_cif = np.zeros((m.size, causes))
    var = np.empty((rows, causes))
    for j in range(rows):
        at_risk = (m >= j).astype(np.float64)
        # influence on each cause-specific hazard increment at row j
        d_lam_k = -at_risk[:, None] * lam_k[j][None, :]
        jumps = (m == j) & (s > 0)
        d_lam_k[jumps, s[jumps] - 1] += 1.0
        d_lam_k /= n[j]
        d_cif = d_cif + d_surv[:, None] * lam_k[j][None, :] + s_before[j] * d_lam_k
        d_surv = d_surv * (1.0 - lam_k[j].sum()) - s_before[j] * d_lam_k.sum(axis=1)
        var[j] = (w[:, None] * d_cif**2).sum(axis=0)
    return np.sqrt(var)
