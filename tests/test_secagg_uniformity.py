"""The coordinator's view of one site's masked vector is indistinguishable from uniform.

Many sessions are run with the same, very structured input at site ``a``
(small integers, round floats) and all-zero input at site ``b``; the vectors
the coordinator receives from them are tested as the coordinator would see
them: byte frequencies, the high bits of every vector position across
sessions, the whole 64-bit values, and ``a`` against ``b``. The same
statistics are then computed with the masks switched off or weakened (by
monkeypatching the keystream), and they must fail there - otherwise the
test could not tell broken masking from good masking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import stats

from her2fed.secagg import messages, prg
from her2fed.secagg.driver import Consortium, run_secure_sum, simulated_consortium
from her2fed.secagg.encoding import default_format
from her2fed.secagg.randomness import SeededRandom

N_INTS, N_FLOATS = 16, 16
LIMBS = default_format(3)[0]  # 2 limbs of 48 bits: ring length 16 + 2 * 16 = 48
ALPHA = 1e-3  # fixed seeds: the p-values are deterministic, not flaky


@pytest.fixture(scope="module")
def consortium() -> Consortium:
    return simulated_consortium(["a", "b", "c"], SeededRandom("uniformity-keys"))


def views(consortium: Consortium, sessions: int, seed: str) -> dict[str, NDArray[np.uint64]]:
    """``site -> (sessions, ring length)`` masked vectors exactly as the coordinator got them."""
    rng = SeededRandom(seed)
    structured = (np.arange(N_INTS, dtype=np.int64), np.arange(N_FLOATS) * 0.5)
    zero = (np.zeros(N_INTS, np.int64), np.zeros(N_FLOATS))
    data: dict[str, list[tuple[NDArray[Any], NDArray[Any]]]]
    data = {"a": [structured], "b": [zero], "c": [structured]}
    seen: dict[str, list[NDArray[np.uint64]]] = {"a": [], "b": []}
    for _ in range(sessions):
        run = run_secure_sum(
            data, consortium=consortium, n_ints=N_INTS, n_floats=N_FLOATS, rng=rng, record=True
        )
        for hop, raw in run.transcript:
            if hop.step is messages.Step.MASKED_INPUT and hop.sender in seen:
                seen[hop.sender].append(messages.MaskedInput.from_bytes(raw).ring())
        # masking must not cost exactness
        assert run.sums[0].ints.tolist() == (2 * structured[0]).tolist()
    return {s: np.stack(v) for s, v in seen.items()}


def p_values(view: dict[str, NDArray[np.uint64]]) -> dict[str, float]:
    a, b = view["a"], view["b"]
    out: dict[str, float] = {}
    byte_counts = np.bincount(a.view(np.uint8).ravel(), minlength=256)
    out["bytes"] = float(stats.chisquare(byte_counts).pvalue)
    nibbles = (a >> np.uint64(60)).astype(np.int64)  # top 4 bits, per position
    chi2 = 0.0
    for j in range(a.shape[1]):
        counts = np.bincount(nibbles[:, j], minlength=16)
        expected = a.shape[0] / 16
        chi2 += float(((counts - expected) ** 2 / expected).sum())
    out["high bits per position"] = float(stats.chi2.sf(chi2, df=15 * a.shape[1]))
    unit = a.ravel().astype(np.float64) / 2.0**64
    out["values (KS)"] = float(stats.kstest(unit, "uniform").pvalue)
    unit_b = b.ravel().astype(np.float64) / 2.0**64
    out["a vs b (KS)"] = float(stats.ks_2samp(unit, unit_b).pvalue)
    return out


def test_masked_vectors_look_uniform(consortium: Consortium) -> None:
    view = views(consortium, 150, "uniform")
    assert view["a"].shape == (150, N_INTS + LIMBS * N_FLOATS)
    assert len({row.tobytes() for row in view["a"]}) == 150  # fresh masks every session
    ps = p_values(view)
    assert all(p > ALPHA for p in ps.values()), ps


def _patched(
    monkeypatch: pytest.MonkeyPatch, make: Callable[[NDArray[np.uint64]], NDArray[np.uint64]]
) -> None:
    """Every mask (`prg.apply_mask`, called by sites and coordinator) uses `make(keystream)`."""
    real = prg.keystream

    def apply_mask(acc: NDArray[np.uint64], key: bytes, sign: int) -> None:
        mask = make(real(key, acc.shape[0]))
        (np.add if sign > 0 else np.subtract)(acc, mask, out=acc)

    monkeypatch.setattr(prg, "apply_mask", apply_mask)


def test_the_statistics_catch_disabled_masks(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patched(monkeypatch, np.zeros_like)
    ps = p_values(views(consortium, 40, "no-mask"))
    assert all(p < 1e-10 for p in ps.values()), ps


def test_the_statistics_catch_a_weak_mask(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Masks with only 32 random bits: the low bytes look fine, the high bits do not."""
    _patched(monkeypatch, lambda ks: ks & np.uint64(0xFFFFFFFF))
    ps = p_values(views(consortium, 40, "weak-mask"))
    assert ps["bytes"] < 1e-10 and ps["high bits per position"] < 1e-10, ps
    assert ps["values (KS)"] < 1e-10, ps


def test_the_statistics_catch_a_mask_reused_across_sessions(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keystream that ignores its key (same mask every session) leaves the input visible."""
    fixed = prg.keystream(b"\x01" * 32, N_INTS + 3 * N_FLOATS)
    _patched(monkeypatch, lambda ks: fixed[: ks.shape[0]].copy())
    ps = p_values(views(consortium, 40, "reused-mask"))
    assert ps["high bits per position"] < 1e-10, ps
