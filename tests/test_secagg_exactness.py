"""Secure sums equal plain sums: bit for bit for integers, within the bound for floats.

Dropouts are placed at every step of every round, singly and several at a
time, and the expected outcome (who contributes to each round, or whether the
session must abort) comes from a small independent model of the dropout
rules, not from the code under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from her2fed.secagg import SecureSum, default_threshold, messages
from her2fed.secagg.driver import (
    SETUP_STEPS,
    SITE_STEPS,
    Consortium,
    Dropout,
    SecureSumRun,
    SiteStep,
    run_secure_sum,
    simulated_consortium,
)
from her2fed.secagg.encoding import Encoding
from her2fed.secagg.errors import SessionAbortedError, TooFewSitesError
from her2fed.secagg.randomness import SeededRandom

F = 48
N_INTS, N_FLOATS = 5, 6


def names(n: int) -> list[str]:
    return [f"site-{i:02d}" for i in range(n)]


_CONSORTIA: dict[int, Consortium] = {}


def consortium(n: int) -> Consortium:
    """Keys are slow-ish to make and irrelevant to exactness: one consortium per size."""
    if n not in _CONSORTIA:
        _CONSORTIA[n] = simulated_consortium(names(n), SeededRandom(f"consortium-{n}"))
    return _CONSORTIA[n]


def make_inputs(
    sites: list[str], n_rounds: int, seed: int
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Counts, signed sums, the largest accepted magnitudes, tiny and subnormal floats."""
    rng = np.random.default_rng(seed)
    imax = Encoding(N_INTS, N_FLOATS, max_sites=len(sites)).int_max
    top = float(np.nextafter(2.0**47, 0))
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for s in sites:
        rounds = []
        for _ in range(n_rounds):
            ints = np.array(
                [
                    rng.integers(0, 1000),
                    rng.integers(-(10**12), 10**12),
                    imax if rng.random() < 0.5 else -imax,
                    rng.integers(-imax, imax),
                    0,
                ],
                np.int64,
            )
            floats = np.array(
                [
                    rng.standard_normal() * 10.0 ** rng.integers(-12, 12),
                    top if rng.random() < 0.5 else -top,
                    rng.random() * 1e-15,
                    5e-324,
                    rng.integers(0, 50) * 0.25,
                    -rng.random() * 1e9,
                ]
            )
            rounds.append((ints, floats))
        out[s] = rounds
    return out


@dataclass
class Expected:
    rounds: list[tuple[list[str], list[str]]]  # (contributors, declared dropped) per round
    aborted: bool


def model(sites: list[str], n_rounds: int, plan: list[Dropout], threshold: int) -> Expected:
    """Who is in each round's sum, from the protocol's rules alone."""
    order = {step: i for i, step in enumerate(SITE_STEPS)}
    gone = {d.site: (d.round if d.step not in SETUP_STEPS else -1, order[d.step]) for d in plan}

    def sends(site: str, r: int, step: SiteStep) -> bool:
        when = (r if step not in SETUP_STEPS else -1, order[step])
        return site not in gone or when < gone[site]

    out: list[tuple[list[str], list[str]]] = []
    u1 = [s for s in sites if sends(s, 0, "advertise")]
    u2 = [s for s in u1 if sends(s, 0, "share_keys")]
    if len(u1) < threshold or len(u2) < threshold:
        return Expected(out, True)
    eligible = u2
    for r in range(n_rounds):
        part = eligible
        u3 = [s for s in part if sends(s, r, "masked_input")]
        u4 = [s for s in u3 if sends(s, r, "consistency")]
        u5 = [s for s in u4 if sends(s, r, "unmask")]
        if min(len(part), len(u3), len(u4), len(u5)) < threshold:
            return Expected(out, True)
        out.append((u3, [s for s in part if s not in u3]))
        eligible = u5
    return Expected(out, False)


def check_run(n: int, n_rounds: int, plan: list[Dropout], seed: int) -> Expected:
    sites = names(n)
    data = make_inputs(sites, n_rounds, seed)
    expected = model(sites, n_rounds, plan, default_threshold(n))
    kwargs: dict[str, Any] = {"consortium": consortium(n), "n_ints": N_INTS, "n_floats": N_FLOATS}
    sums: Sequence[SecureSum]
    if expected.aborted:
        with pytest.raises(SessionAbortedError) as e:
            run_secure_sum(data, n_rounds=n_rounds, dropouts=plan, rng=SeededRandom(seed), **kwargs)
        assert isinstance(e.value.cause, TooFewSitesError)
        sums = cast(Sequence[SecureSum], e.value.sums)
        assert not e.value.site_errors
    else:
        run = run_secure_sum(
            data, n_rounds=n_rounds, dropouts=plan, rng=SeededRandom(seed), **kwargs
        )
        assert not run.site_errors and not run.rejected
        sums = run.sums
    assert len(sums) == len(expected.rounds)  # an aborted round releases nothing
    for r, (got, (contributors, dropped)) in enumerate(zip(sums, expected.rounds, strict=True)):
        assert got.round == r
        assert list(got.contributors) == contributors
        assert list(got.dropped) == dropped
        plain_ints = [sum(int(data[s][r][0][k]) for s in contributors) for k in range(N_INTS)]
        assert [int(x) for x in got.ints] == plain_ints
        assert got.ints.dtype == np.int64
        m = len(contributors)
        quant = m * Fraction(1, 2 ** (F + 1))
        for k in range(N_FLOATS):
            exact = sum((Fraction(float(data[s][r][1][k])) for s in contributors), Fraction(0))
            err = abs(Fraction(float(got.floats[k])) - exact)
            assert err <= quant + Fraction(1, 2**52) * (abs(exact) + quant)
    return expected


def test_three_sites_no_dropout_is_exact() -> None:
    assert not check_run(3, 2, [], seed=1).aborted


@pytest.mark.parametrize("n", [3, 5, 17, 33, 50])
@pytest.mark.parametrize("dropouts", [0, 1])
def test_site_counts_from_3_to_50(n: int, dropouts: int) -> None:
    plan = [Dropout(names(n)[1], "masked_input", 0)] if dropouts else []
    expected = check_run(n, 1, plan, seed=100 + n)
    assert expected.aborted == (n == 3 and dropouts == 1)


def test_three_sites_one_dropout_aborts_and_releases_nothing() -> None:
    assert check_run(3, 1, [Dropout("site-01", "masked_input", 0)], seed=2).aborted


def test_abort_in_a_later_round_keeps_only_the_earlier_rounds() -> None:
    plan = [Dropout("site-00", "consistency", 1), Dropout("site-01", "masked_input", 1)]
    expected = check_run(4, 3, plan, seed=3)
    assert expected.aborted and len(expected.rounds) == 1


ROUND_STEPS: tuple[SiteStep, ...] = ("masked_input", "consistency", "unmask")
STEP_ROUNDS = [(step, 0) for step in SETUP_STEPS] + [
    (step, r) for r in range(3) for step in SITE_STEPS if step not in SETUP_STEPS
]


@pytest.mark.parametrize(("step", "r"), STEP_ROUNDS)
@pytest.mark.parametrize("how_many", [1, 3])
def test_dropouts_at_every_step_of_every_round(step: SiteStep, r: int, how_many: int) -> None:
    """10 sites (threshold 6), 3 rounds; 1 or 3 sites vanish just before this step."""
    plan = [Dropout(s, step, r) for s in names(10)[2 : 2 + how_many]]
    seed = 10 * STEP_ROUNDS.index((step, r)) + how_many
    assert not check_run(10, 3, plan, seed=seed).aborted


def test_fifty_sites_with_several_dropouts_at_every_step_of_every_round() -> None:
    sites = names(50)
    plan = [Dropout(sites[0], "advertise"), Dropout(sites[1], "advertise")]
    plan += [Dropout(sites[2], "share_keys"), Dropout(sites[3], "share_keys")]
    k = 4
    for r in range(3):
        for step in ROUND_STEPS:
            plan += [Dropout(sites[k], step, r), Dropout(sites[k + 1], step, r)]
            k += 2
    expected = check_run(50, 3, plan, seed=50)
    assert not expected.aborted
    assert [len(c) for c, _ in expected.rounds] == [44, 38, 32]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, int, list[Dropout], int]:
    n = draw(st.integers(3, 12))
    n_rounds = draw(st.integers(1, 3))
    who = draw(st.permutations(names(n)))[: draw(st.integers(0, n))]
    plan = []
    for site in who:
        step = draw(st.sampled_from(SITE_STEPS))
        r = 0 if step in SETUP_STEPS else draw(st.integers(0, n_rounds - 1))
        plan.append(Dropout(site, step, r))
    return n, n_rounds, plan, draw(st.integers(0, 2**16))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_sessions_match_plain_sums_or_abort(
    scenario: tuple[int, int, list[Dropout], int],
) -> None:
    check_run(*scenario)


def test_cox_like_loop_feeds_each_round_from_the_previous_sum() -> None:
    """Inputs of round r may depend on round r-1's sum; ``stop`` ends the session early."""
    sites = names(5)
    base = {s: float(i + 1) for i, s in enumerate(sites)}

    def inputs(site: str, r: int, sums: object) -> tuple[np.ndarray, np.ndarray]:
        prev = 0.0 if r == 0 else float(sums[-1].floats[0])  # type: ignore[index]
        return np.array([r], np.int64), np.array([base[site] + prev / 100])

    run = run_secure_sum(
        inputs,
        consortium=consortium(5),
        n_ints=1,
        n_floats=1,
        n_rounds=10,
        rng=SeededRandom(5),
        stop=lambda sums: len(sums) == 4,
    )
    value = 0.0
    for r, s in enumerate(run.sums):
        value = sum(base[x] + value / 100 for x in sites)
        assert s.floats[0] == pytest.approx(value, abs=1e-12)
        assert s.ints.tolist() == [5 * r]
    assert len(run.sums) == 4


def _fixed(v: float) -> int:
    """round_half_even(v * 2^F), exactly."""
    q = Fraction(v) * 2**F
    fl = q.numerator // q.denominator
    rem = q - fl
    return fl + (1 if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2) else 0)


@pytest.mark.parametrize("n", [4, 20])
def test_both_float_formats_release_the_same_correctly_rounded_sums(n: int) -> None:
    """The default 2 x 48-bit limbs carry a third fewer bytes and change no released bit.

    Both formats decode to the exact sum of the sites' fixed-point values
    rounded once, half-even, to float64 - with a site dropping out, too.
    """
    sites = names(n)
    data = make_inputs(sites, 2, seed=7)

    def run(**fmt: int) -> SecureSumRun:
        return run_secure_sum(
            data,
            consortium=consortium(n),
            n_ints=N_INTS,
            n_floats=N_FLOATS,
            n_rounds=2,
            dropouts=[Dropout(sites[-1], "masked_input", 1)],
            rng=SeededRandom(f"formats-{n}"),
            record=True,
            **fmt,
        )

    default, wide = run(), run(limbs=3, limb_bits=32)
    lengths = {
        name: {
            len(messages.MaskedInput.from_bytes(raw).ring())
            for hop, raw in r.transcript
            if hop.step is messages.Step.MASKED_INPUT
        }
        for name, r in (("default", default), ("3x32", wide))
    }
    assert lengths == {"default": {N_INTS + 2 * N_FLOATS}, "3x32": {N_INTS + 3 * N_FLOATS}}
    for got, ref in zip(default.sums, wide.sums, strict=True):
        assert got.contributors == ref.contributors
        np.testing.assert_array_equal(got.ints, ref.ints)
        np.testing.assert_array_equal(got.floats, ref.floats)
        for k in range(N_FLOATS):
            z = sum(_fixed(float(data[s][got.round][1][k])) for s in got.contributors)
            assert float(got.floats[k]) == z / 2**F
    assert len(default.sums[1].contributors) == n - 1
