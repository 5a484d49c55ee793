"""The ring encoding: exact for integers, bounded error for floats, refusal instead of wrap.

A wrong encoding would make every secure sum wrong however good the masking,
so these tests compare against exact rational arithmetic (``Fraction``), not
against numpy's own float sums.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from her2fed.errors import Her2fedError
from her2fed.secagg.encoding import Encoding
from her2fed.secagg.errors import ConfigError, EncodingError, SecAggError

F = 48
LIMIT = 2.0**47


def ring_sum(enc: Encoding, parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    total = np.zeros(enc.ring_length, np.uint64)
    for ints, floats in parts:
        np.add(total, enc.encode(ints, floats), out=total)
    return total


def round_half_even(q: Fraction) -> int:
    fl = q.numerator // q.denominator
    rem = q - fl
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2):
        return fl + 1
    return fl


def exact_within_bound(enc: Encoding, n: int, decoded: float, values: list[float]) -> bool:
    exact = sum((Fraction(v) for v in values), Fraction(0))
    quant = n * Fraction(1, 2 ** (F + 1))
    bound = quant + Fraction(1, 2**52) * (abs(exact) + quant)
    return abs(Fraction(decoded) - exact) <= bound


finite_in_range = st.floats(
    min_value=-LIMIT, max_value=LIMIT, exclude_min=True, exclude_max=True, allow_subnormal=True
)


def test_errors_are_her2fed_errors() -> None:
    assert issubclass(EncodingError, SecAggError)
    assert issubclass(SecAggError, Her2fedError)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite_in_range, min_size=1, max_size=30))
def test_limbs_are_exactly_the_rounded_fixed_point_value(values: list[float]) -> None:
    """float64 splitting is exact: limbs recombine to round_half_even(v * 2^F) in Python ints."""
    enc = Encoding(0, len(values), max_sites=10)
    limbs = enc.float_limbs(np.array(values))
    for k, v in enumerate(values):
        z = sum(int(limbs[j, k]) << (32 * j) for j in range(enc.limbs))
        assert z == round_half_even(Fraction(v) * 2**F)
        assert all(abs(int(limbs[j, k])) < 2**32 for j in range(enc.limbs))


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 60).flatmap(
        lambda n: st.lists(
            st.lists(finite_in_range, min_size=4, max_size=4), min_size=n, max_size=n
        )
    )
)
def test_float_sum_within_documented_bound(sites: list[list[float]]) -> None:
    n = len(sites)
    enc = Encoding(0, 4, max_sites=60)
    _, decoded = enc.decode(ring_sum(enc, [(np.zeros(0, np.int64), np.array(s)) for s in sites]))
    for k in range(4):
        assert exact_within_bound(enc, n, float(decoded[k]), [s[k] for s in sites])


def test_bound_is_attained_but_not_exceeded_by_correlated_rounding() -> None:
    """Equal values round the same way at every site: the error adds up to n * 2^-(F+1)."""
    v = 3 * 2.0 ** -(F + 2)  # exactly 0.75 units of 2^-F: rounds to 1 unit at every site
    enc = Encoding(0, 1, max_sites=50)
    _, decoded = enc.decode(ring_sum(enc, [(np.zeros(0, np.int64), np.array([v]))] * 50))
    err = abs(float(decoded[0]) - 50 * v)
    assert err == pytest.approx(50 * 2.0 ** -(F + 2))
    assert err <= float(enc.float_error_bound(50, 50 * v))


def test_dyadic_floats_sum_exactly() -> None:
    rng = np.random.default_rng(3)
    parts = [
        (np.zeros(0, np.int64), rng.integers(-(2**40), 2**40, 100) / 2.0**8) for _ in range(40)
    ]
    enc = Encoding(0, 100, max_sites=40)
    _, decoded = enc.decode(ring_sum(enc, parts))
    np.testing.assert_array_equal(decoded, sum(p[1] for p in parts))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 50), st.data())
def test_int_sums_are_bit_exact_up_to_the_limit(n: int, data: st.DataObject) -> None:
    enc = Encoding(6, 0, max_sites=n)
    m = enc.int_max
    vals = [data.draw(st.lists(st.integers(-m, m), min_size=6, max_size=6)) for _ in range(n)]
    ints, _ = enc.decode(ring_sum(enc, [(np.array(v, np.int64), np.zeros(0)) for v in vals]))
    assert [int(x) for x in ints] == [sum(v[k] for v in vals) for k in range(6)]


def test_extremes_do_not_wrap() -> None:
    n = 37
    enc = Encoding(2, 2, max_sites=n)
    top = np.nextafter(LIMIT, 0)
    parts = [(np.array([enc.int_max, -enc.int_max]), np.array([top, -top]))] * n
    ints, floats = enc.decode(ring_sum(enc, parts))
    assert [int(x) for x in ints] == [n * enc.int_max, -n * enc.int_max]
    assert floats.tolist() == [n * top, -n * top]  # top is a multiple of 2^-F: exact


def test_int_limit_is_refused_not_wrapped() -> None:
    enc = Encoding(3, 0, max_sites=50)
    assert enc.int_max == (2**63 - 1) // 50
    enc.encode(np.array([enc.int_max, -enc.int_max, 0]), np.zeros(0))
    with pytest.raises(EncodingError, match=r"2 of 3 integer values.*largest magnitude") as e:
        enc.encode(np.array([enc.int_max + 1, 0, -(2**63)]), np.zeros(0))
    assert str(2**63) in str(e.value)  # names the largest magnitude exactly
    with pytest.raises(EncodingError, match="1 of 1 integer"):
        Encoding(1, 0, max_sites=3).encode(np.array([2**64 - 1], np.uint64), np.zeros(0))


@pytest.mark.parametrize(
    ("bad", "nonfinite", "largest"),
    [
        ([np.nan], 1, "nan"),
        ([np.inf, 1.0], 1, "inf"),
        ([-np.inf], 1, "inf"),
        ([LIMIT], 0, "1.40737e+14"),
        ([-LIMIT, 3e15], 0, "3e+15"),
    ],
)
def test_non_finite_and_out_of_range_floats_are_refused(
    bad: list[float], nonfinite: int, largest: str
) -> None:
    values = [0.5, *bad]
    enc = Encoding(0, len(values), max_sites=5)
    with pytest.raises(EncodingError) as e:
        enc.encode(np.zeros(0, np.int64), np.array(values))
    msg = str(e.value)
    n_bad = sum(1 for b in bad if not (np.isfinite(b) and abs(b) < LIMIT))
    assert f"{n_bad} of {len(values)} float values" in msg
    assert f"{nonfinite} not finite" in msg
    assert f"largest magnitude {largest}" in msg
    assert "first at index 1" in msg


def test_largest_float_below_the_limit_is_accepted() -> None:
    enc = Encoding(0, 2, max_sites=5)
    top = np.nextafter(LIMIT, 0)
    _, out = enc.decode(enc.encode(np.zeros(0, np.int64), np.array([top, -top])))
    assert out.tolist() == [top, -top]


def test_shapes_and_dtypes_are_checked() -> None:
    enc = Encoding(2, 2, max_sites=3)
    with pytest.raises(EncodingError, match=r"expects \(2,\)"):
        enc.encode(np.zeros(3, np.int64), np.zeros(2))
    with pytest.raises(EncodingError, match=r"expects \(2,\)"):
        enc.encode(np.zeros(2, np.int64), np.zeros((2, 1)))
    with pytest.raises(EncodingError, match="integer dtype"):
        enc.encode(np.zeros(2), np.zeros(2))
    with pytest.raises(EncodingError, match="float64"):
        enc.encode(np.zeros(2, np.int64), np.zeros(2, np.int64))


def test_decoder_refuses_a_vector_that_is_not_a_sum_of_encodings() -> None:
    """A mask left in the sum is caught rather than decoded into a plausible number."""
    enc = Encoding(1, 50, max_sites=10)
    masked = np.random.default_rng(0).integers(0, 2**64 - 1, enc.ring_length, dtype=np.uint64)
    with pytest.raises(EncodingError, match="not the sum"):
        enc.decode(masked)


def test_configuration_limits() -> None:
    with pytest.raises(ConfigError):
        Encoding(1, 1, max_sites=0)
    with pytest.raises(ConfigError):
        Encoding(1, 1, max_sites=3, limbs=0)
    with pytest.raises(ConfigError):
        Encoding(1, 1, max_sites=3, limbs=2, frac_bits=63)
    enc = Encoding(1, 1, max_sites=3, limbs=2, frac_bits=20)
    assert enc.float_limit == 2.0**43
    assert enc.ring_length == 3


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 4), st.integers(0, 60), st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3)
)
def test_other_limb_formats_round_trip(limbs: int, frac: int, values: list[float]) -> None:
    frac = min(frac, 32 * limbs - 2)
    enc = Encoding(0, 3, max_sites=4, limbs=limbs, frac_bits=frac)
    vals = [v for v in values if abs(v) < enc.float_limit] or [0.0]
    enc = Encoding(0, len(vals), max_sites=4, limbs=limbs, frac_bits=frac)
    _, out = enc.decode(ring_sum(enc, [(np.zeros(0, np.int64), np.array(vals))] * 4))
    for k, v in enumerate(vals):
        exact = 4 * Fraction(v)
        quant = 4 * Fraction(1, 2 ** (frac + 1))
        assert abs(Fraction(float(out[k])) - exact) <= quant + Fraction(1, 2**52) * (
            abs(exact) + quant
        )
