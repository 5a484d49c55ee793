"""The linear-time IJ variance of the Aalen-Johansen CIF equals its definition.

The reference below follows the definition literally: every subject type's
influence on each cause's hazard increments, carried through S and the CIF
row by row, squared and weighted (time rows x types). The estimator in
her2fed/cif.py never forms these influences; this test is what says it may.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from her2fed.cif import aalen_johansen


def reference_std_err(events: np.ndarray, censored: np.ndarray) -> np.ndarray:
    leaving = events.sum(axis=0) + censored
    keep = leaving > 0
    dk = events[:, keep].T
    c = censored[keep]
    n = np.cumsum(leaving[::-1])[::-1][keep].astype(float)
    lam_k = dk / n[:, None]
    surv = np.cumprod(1.0 - lam_k.sum(axis=1))
    s_before = np.concatenate(([1.0], surv[:-1]))
    rows, causes = lam_k.shape
    types = [(m, s, float(cnt)) for m in range(rows) for s, cnt in enumerate([c[m], *dk[m]]) if cnt]
    m = np.array([t[0] for t in types])
    s = np.array([t[1] for t in types])
    w = np.array([t[2] for t in types])
    d_surv = np.zeros(m.size)
    d_cif = np.zeros((m.size, causes))
    var = np.empty((rows, causes))
    for j in range(rows):
        d_lam = -(m >= j).astype(float)[:, None] * lam_k[j][None, :]
        jump = (m == j) & (s > 0)
        d_lam[jump, s[jump] - 1] += 1.0
        d_lam /= n[j]
        d_cif = d_cif + d_surv[:, None] * lam_k[j] + s_before[j] * d_lam
        d_surv = d_surv * (1.0 - lam_k[j].sum()) - s_before[j] * d_lam.sum(axis=1)
        var[j] = (w[:, None] * d_cif**2).sum(axis=0)
    return np.sqrt(var)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    bins=st.integers(1, 60),
    causes=st.integers(1, 3),
    ends_in_events=st.booleans(),
)
def test_linear_time_ij_variance_equals_the_definition(
    seed: int, bins: int, causes: int, ends_in_events: bool
) -> None:
    rng = np.random.default_rng(seed)
    events = rng.integers(0, 4, (causes, bins)) * (rng.random((causes, bins)) < 0.7)
    censored = rng.integers(0, 4, bins) * (rng.random(bins) < 0.6)
    if ends_in_events:  # the last ones at risk all have an event: S drops to 0
        censored[-1] = 0
        events[0, -1] = max(int(events[0, -1]), 1)
    if events.sum() + censored.sum() == 0:
        censored[0] = 1
    curve = aalen_johansen(np.arange(bins, dtype=float), events, censored)
    np.testing.assert_allclose(
        curve.std_err, reference_std_err(events, censored), rtol=1e-10, atol=1e-14
    )


def test_a_long_curve_keeps_full_precision() -> None:
    rng = np.random.default_rng(11)
    events = rng.integers(0, 40, (2, 3651))
    censored = rng.integers(0, 60, 3651)
    curve = aalen_johansen(np.arange(3651, dtype=float), events, censored)
    np.testing.assert_allclose(
        curve.std_err, reference_std_err(events, censored), rtol=1e-11, atol=0
    )
