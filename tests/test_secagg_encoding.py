"""The ring encoding: exact for integers, bounded error for floats, refusal instead of wrap.

A wrong encoding would make every secure sum wrong however good the masking,
so these tests compare against exact rational arithmetic (``Fraction``) and
Python integers, not against numpy's own float sums. Both standard float
formats are covered (2 limbs of 48 bits, 3 of 32), each up to its largest
roster: sums over many sites are built as ``count * encode(v)`` in the ring,
which is bit for bit what ``count`` sites sending ``encode(v)`` produce.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from her2fed.errors import Her2fedError
from her2fed.secagg.encoding import (
    MAX_SITES,
    Encoding,
    default_format,
    max_sites_for,
)
from her2fed.secagg.errors import ConfigError, EncodingError, SecAggError

F = 48
LIMIT = 2.0**47
FORMATS = [(2, 48), (3, 32)]  # (limbs, limb_bits): the two standard formats
CAP = {(2, 48): 2**14, (3, 32): MAX_SITES}  # the largest roster each format allows
formats = pytest.mark.parametrize(("limbs", "bits"), FORMATS, ids=["2x48", "3x32"])


def ring_sum(enc: Encoding, parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    total = np.zeros(enc.ring_length, np.uint64)
    for ints, floats in parts:
        np.add(total, enc.encode(ints, floats), out=total)
    return total


def weighted_ring_sum(enc: Encoding, sites: list[tuple[int, list[float]]]) -> np.ndarray:
    """The ring sum over ``count`` sites sending each float vector (wrap-around, as uint64)."""
    total = np.zeros(enc.ring_length, np.uint64)
    for count, floats in sites:
        ring = enc.encode(np.zeros(0, np.int64), np.array(floats))
        np.add(total, ring * np.uint64(count), out=total)  # uint64 products wrap like sums
    return total


def fixed(v: float) -> int:
    """round_half_even(v * 2^F) in exact integer arithmetic."""
    return round_half_even(Fraction(v) * 2**F)


def correctly_rounded(z: int) -> float:
    """``z * 2^-F`` rounded half-even to float64 (int / int division is correctly rounded)."""
    return z / 2**F


def limb_sums(z_sum: int, n: int, limbs: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    """A ring vector that ``n`` encodings with fixed-point values summing to ``z_sum`` add up to.

    A few sites get random values, the rest share what is left evenly (so every
    value stays in range); each value is split into sign-carrying limbs as the
    encoder does, in Python integers.
    """
    top = 2 ** (limbs * bits - 1) - 1
    assert abs(z_sum) <= n * top

    def split(z: int) -> list[int]:
        sign = -1 if z < 0 else 1
        return [sign * ((abs(z) >> (bits * k)) & ((1 << bits) - 1)) for k in range(limbs)]

    sums = [0] * limbs
    rest = z_sum
    n_random = min(n - 1, int(rng.integers(0, 6)))
    for i in range(n_random):
        left = n - i - 1
        lo, hi = max(-top, rest - left * top), min(top, rest + left * top)
        z = lo + int(rng.integers(0, 2**62)) * (hi - lo) // 2**62
        rest -= z
        sums = [a + b for a, b in zip(sums, split(z), strict=True)]
    k = n - n_random
    q, r = divmod(abs(rest), k)
    sign = -1 if rest < 0 else 1
    for count, z in ((k - r, q), (r, q + 1)):
        sums = [a + count * b for a, b in zip(sums, split(sign * z), strict=True)]
    assert sum(x << (bits * j) for j, x in enumerate(sums)) == z_sum
    return np.array([x % 2**64 for x in sums], dtype=np.uint64)


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


@formats
@settings(max_examples=200, deadline=None)
@given(values=st.lists(finite_in_range, min_size=1, max_size=30))
def test_limbs_are_exactly_the_rounded_fixed_point_value(
    limbs: int, bits: int, values: list[float]
) -> None:
    """float64 splitting is exact: limbs recombine to round_half_even(v * 2^F) in Python ints."""
    enc = Encoding(0, len(values), max_sites=10, limbs=limbs, limb_bits=bits)
    out = enc.float_limbs(np.array(values))
    assert out.shape == (limbs, len(values))
    for k, v in enumerate(values):
        z = sum(int(out[j, k]) << (bits * j) for j in range(limbs))
        assert z == fixed(v)
        assert all(abs(int(out[j, k])) < 2**bits for j in range(limbs))
        assert abs(int(out[-1, k])) < 2 ** (bits - 1)
        assert all(int(x) * z >= 0 for x in out[:, k])  # every limb carries the sign of z


@formats
def test_limbs_at_the_extremes(limbs: int, bits: int) -> None:
    values = [np.nextafter(LIMIT, 0), -np.nextafter(LIMIT, 0), 2.0**-49, 3 * 2.0**-50, -0.0]
    enc = Encoding(0, len(values), max_sites=10, limbs=limbs, limb_bits=bits)
    out = enc.float_limbs(np.array(values))
    got = [sum(int(out[j, k]) << (bits * j) for j in range(limbs)) for k in range(len(values))]
    assert got == [2**95 - 2**42, -(2**95 - 2**42), 0, 1, 0]  # ties round to even


@formats
@settings(max_examples=100, deadline=None)
@given(
    sites=st.integers(1, 60).flatmap(
        lambda n: st.lists(
            st.lists(finite_in_range, min_size=4, max_size=4), min_size=n, max_size=n
        )
    )
)
def test_float_sum_within_documented_bound(limbs: int, bits: int, sites: list[list[float]]) -> None:
    n = len(sites)
    enc = Encoding(0, 4, max_sites=60, limbs=limbs, limb_bits=bits)
    _, decoded = enc.decode(ring_sum(enc, [(np.zeros(0, np.int64), np.array(s)) for s in sites]))
    for k in range(4):
        assert exact_within_bound(enc, n, float(decoded[k]), [s[k] for s in sites])


near_limit = st.floats(2.0**46, LIMIT, exclude_max=True).flatmap(
    lambda v: st.sampled_from([v, -v])
)
site_values = st.lists(st.one_of(finite_in_range, near_limit), min_size=3, max_size=3)


@formats
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_float_sums_decode_to_the_exact_fixed_point_sum_correctly_rounded(
    limbs: int, bits: int, data: st.DataObject
) -> None:
    """Any roster up to the format's cap, including many sites at the same extreme value."""
    cap = CAP[(limbs, bits)]
    n_sites = data.draw(st.sampled_from([1, 2, 3, cap // 2, cap - 1, cap]) | st.integers(1, cap))
    cuts: list[int] = []
    if n_sites > 1:  # sites sending the same values, in up to 6 groups
        cuts = sorted(data.draw(st.sets(st.integers(1, n_sites - 1), max_size=5)))
    counts = [b - a for a, b in zip([0, *cuts], [*cuts, n_sites], strict=True)]
    sites = [(c, data.draw(site_values)) for c in counts]
    enc = Encoding(0, 3, max_sites=n_sites, limbs=limbs, limb_bits=bits)
    _, decoded = enc.decode(weighted_ring_sum(enc, sites))
    for k in range(3):
        z = sum(c * fixed(v[k]) for c, v in sites)
        assert float(decoded[k]) == correctly_rounded(z)


@formats
def test_same_sign_extremes_at_the_cap_decode_exactly(limbs: int, bits: int) -> None:
    """The largest sums a format can carry: every site at +-(2^47 - 2^-48)."""
    cap = CAP[(limbs, bits)]
    top = float(np.nextafter(LIMIT, 0))
    enc = Encoding(0, 4, max_sites=cap, limbs=limbs, limb_bits=bits)
    sites = [(cap - 1, [top, -top, top, 2.0**-48]), (1, [top, -top, -top, 2.0**-49])]
    _, decoded = enc.decode(weighted_ring_sum(enc, sites))
    want = [sum(c * fixed(v[k]) for c, v in sites) for k in range(4)]
    assert decoded.tolist() == [correctly_rounded(z) for z in want]
    assert want[0] == cap * (2**95 - 2**42)  # |sum| < cap * 2^95: the format's whole range


@formats
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_valid_limb_sum_decodes_correctly_rounded(
    limbs: int, bits: int, data: st.DataObject
) -> None:
    """Fixed-point sums anywhere in range, many next to a rounding tie, split among sites."""
    cap = CAP[(limbs, bits)]
    n = data.draw(st.sampled_from([cap, 1, 3]) | st.integers(1, cap))
    most = n * (2 ** (limbs * bits - 1) - 1)
    width = most.bit_length()  # the magnitude, biased towards the top of the range
    e = data.draw(st.sampled_from(range(max(width - 8, 0), width)) | st.integers(0, width - 1))
    z = min(most, 2**e + data.draw(st.integers(0, 2**e - 1)))
    if data.draw(st.booleans()):  # move z next to a tie of the final rounding
        shift = max(z.bit_length() - 53, 0)  # the ulp of z as a float is 2^shift
        tie = (z >> shift << shift) + (1 << shift >> 1)
        z = min(most, tie + data.draw(st.integers(-2, 2)))
    z = data.draw(st.sampled_from([z, -z]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    enc = Encoding(0, 1, max_sites=n, limbs=limbs, limb_bits=bits)
    _, decoded = enc.decode(limb_sums(z, n, limbs, bits, rng))
    assert float(decoded[0]) == correctly_rounded(z)


@formats
def test_a_tie_broken_by_the_lowest_bit_is_rounded_correctly(limbs: int, bits: int) -> None:
    """2^108 + 2^55 + 1 (units of 2^-48) lies just above a tie: it must round up.

    Adding the 32-bit digits with two-sums and then their error terms (the
    decoder before the sticky bit) lost the final 1 and rounded the tie to
    even, half an ulp off.
    """
    z = 2**108 + 2**55 + 1
    n = 2**14
    enc = Encoding(0, 1, max_sites=n, limbs=limbs, limb_bits=bits)
    _, decoded = enc.decode(limb_sums(z, n, limbs, bits, np.random.default_rng(0)))
    assert float(decoded[0]) == correctly_rounded(z) == (2**108 + 2**56) / 2**48
    _, below = enc.decode(limb_sums(z - 2, n, limbs, bits, np.random.default_rng(0)))
    assert float(below[0]) == 2**108 / 2**48


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


@formats
def test_extremes_do_not_wrap(limbs: int, bits: int) -> None:
    n = 37
    enc = Encoding(2, 2, max_sites=n, limbs=limbs, limb_bits=bits)
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


@formats
def test_largest_float_below_the_limit_is_accepted(limbs: int, bits: int) -> None:
    enc = Encoding(0, 2, max_sites=5, limbs=limbs, limb_bits=bits)
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


@formats
def test_decoder_refuses_a_vector_that_is_not_a_sum_of_encodings(limbs: int, bits: int) -> None:
    """A mask left in the sum is caught rather than decoded into a plausible number."""
    enc = Encoding(1, 50, max_sites=10, limbs=limbs, limb_bits=bits)
    masked = np.random.default_rng(0).integers(0, 2**64 - 1, enc.ring_length, dtype=np.uint64)
    with pytest.raises(EncodingError, match="not the sum"):
        enc.decode(masked)


@formats
@pytest.mark.parametrize("limb", ["low", "top"])
def test_decoder_range_checks_use_the_limb_width(limbs: int, bits: int, limb: str) -> None:
    """The largest limb sums ``n`` encodings can make pass; one more, or -2^63, is refused."""
    n = 7
    enc = Encoding(0, 3, max_sites=n, limbs=limbs, limb_bits=bits)
    row = 0 if limb == "low" else limbs - 1
    most = n * (2**bits - 1) if limb == "low" else n * (2 ** (bits - 1) - 1)
    for value in (most, -most):
        s = np.zeros((limbs, 3), np.int64)
        s[row] = [value, 0, value]
        enc.decode(s.reshape(-1).view(np.uint64))  # in range: decodes
    for value in (most + 1, -most - 1, -(2**63), 2**63 - 1, n * 2 ** (bits + 1)):
        s = np.zeros((limbs, 3), np.int64)
        s[row, 1] = value
        with pytest.raises(EncodingError, match="a limb is out of range"):
            enc.decode(s.reshape(-1).view(np.uint64))


def test_configuration_limits() -> None:
    with pytest.raises(ConfigError):
        Encoding(1, 1, max_sites=0)
    with pytest.raises(ConfigError, match="both limbs and limb_bits"):
        Encoding(1, 1, max_sites=3, limbs=2)
    with pytest.raises(ConfigError, match="both limbs and limb_bits"):
        Encoding(1, 1, max_sites=3, limb_bits=32)
    with pytest.raises(ConfigError, match=r"limbs must be in 1..8"):
        Encoding(1, 1, max_sites=3, limbs=9, limb_bits=8)
    with pytest.raises(ConfigError, match=r"limb_bits must be in 1..62"):
        Encoding(1, 1, max_sites=1, limbs=1, limb_bits=63)
    with pytest.raises(ConfigError, match=r"span 128 bits; at most 96"):
        Encoding(1, 1, max_sites=3, limbs=4, limb_bits=32)
    with pytest.raises(ConfigError, match=r"frac_bits must be in 0..62"):
        Encoding(1, 1, max_sites=3, limbs=2, limb_bits=32, frac_bits=63)
    enc = Encoding(1, 1, max_sites=3, limbs=2, limb_bits=32, frac_bits=20)
    assert enc.float_limit == 2.0**43
    assert enc.ring_length == 3


def test_the_default_format_is_two_48_bit_limbs_up_to_2_to_the_14_sites() -> None:
    assert max_sites_for(48) == 2**14 and max_sites_for(32) == MAX_SITES
    assert default_format(3) == default_format(2**14) == (2, 48)
    assert default_format(2**14 + 1) == default_format(MAX_SITES) == (3, 32)
    small, large = Encoding(2, 5, max_sites=2**14), Encoding(2, 5, max_sites=2**14 + 1)
    assert (small.limbs, small.limb_bits, small.ring_length) == (2, 48, 2 + 2 * 5)
    assert (large.limbs, large.limb_bits, large.ring_length) == (3, 32, 2 + 3 * 5)
    # the same range and precision: |v| < 2^47 with 48 fractional bits
    assert small.float_limit == large.float_limit == LIMIT
    assert small.frac_bits == large.frac_bits == F
    assert small.description == "fixed point, 2 x 48-bit limbs, 48 fractional bits"


def test_48_bit_limbs_are_refused_for_more_than_2_to_the_14_sites() -> None:
    """n * 2^48 limb sums would come within a bit of wrapping int64 (2^63) beyond 2^14 sites."""
    Encoding(1, 1, max_sites=2**14, limbs=2, limb_bits=48)
    with pytest.raises(ConfigError, match=r"48-bit limbs allow at most 16384 sites.*got 16385"):
        Encoding(1, 1, max_sites=2**14 + 1, limbs=2, limb_bits=48)
    with pytest.raises(ConfigError, match="at most 16384 sites"):
        Encoding(1, 1, max_sites=MAX_SITES, limbs=1, limb_bits=48)
    Encoding(1, 1, max_sites=MAX_SITES, limbs=3, limb_bits=32)
    with pytest.raises(ConfigError, match="50-bit limbs allow at most 4096 sites"):
        Encoding(1, 1, max_sites=2**12 + 1, limbs=1, limb_bits=50)
    with pytest.raises(ConfigError, match="62-bit limbs allow at most 1 sites"):
        Encoding(1, 1, max_sites=2, limbs=1, limb_bits=62)


@formats
def test_both_formats_decode_to_the_same_floats(limbs: int, bits: int) -> None:
    """2 x 48 is a cheaper carrier of the same numbers: decoded sums agree bit for bit."""
    rng = np.random.default_rng(11)
    sites = [
        (int(c), list(rng.standard_normal(200) * 10.0 ** rng.integers(-20, 14, 200)))
        for c in rng.integers(1, 50, 9)
    ]
    n = sum(c for c, _ in sites)
    ref = Encoding(0, 200, max_sites=n, limbs=3, limb_bits=32)
    enc = Encoding(0, 200, max_sites=n, limbs=limbs, limb_bits=bits)
    _, want = ref.decode(weighted_ring_sum(ref, sites))
    _, got = enc.decode(weighted_ring_sum(enc, sites))
    np.testing.assert_array_equal(got, want)
    assert got.tolist() == [
        correctly_rounded(sum(c * fixed(v[k]) for c, v in sites)) for k in range(200)
    ]


def test_narrow_formats_refuse_values_that_would_round_out_of_range() -> None:
    """With 31 bits of fixed point, 2^31 - 1/2 rounds (to even) to 2^31: refused, not wrapped."""
    enc = Encoding(0, 1, max_sites=3, limbs=1, limb_bits=32, frac_bits=0)
    for ok in (2.0**31 - 0.75, -(2.0**31 - 0.75), 2.0**31 - 1):
        _, out = enc.decode(enc.encode(np.zeros(0, np.int64), np.array([ok])))
        assert out.tolist() == [float(round_half_even(Fraction(ok)))]
    for bad in (2.0**31 - 0.5, -(2.0**31 - 0.5), 2.0**31 - 0.25):
        with pytest.raises(EncodingError, match=r"1 of 1 float values.*rounds to 2\^31"):
            enc.encode(np.zeros(0, np.int64), np.array([bad]))


LIMB_FORMATS = [(limbs, bits) for bits in (8, 16, 24, 32, 40, 48, 62) for limbs in range(1, 9)]


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from([f for f in LIMB_FORMATS if f[0] * f[1] <= 96]),
    st.integers(0, 94),
    st.integers(1, 4),
    st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3),
)
def test_other_limb_formats_decode_correctly_rounded(
    fmt: tuple[int, int], frac: int, n: int, values: list[float]
) -> None:
    limbs, bits = fmt
    frac = min(frac, limbs * bits - 2)
    n = min(n, max_sites_for(bits))
    enc = Encoding(0, 3, max_sites=n, limbs=limbs, limb_bits=bits, frac_bits=frac)
    vals = [v for v in values if abs(v) < enc.float_limit / 2] or [0.0]
    enc = Encoding(0, len(vals), max_sites=n, limbs=limbs, limb_bits=bits, frac_bits=frac)
    _, out = enc.decode(ring_sum(enc, [(np.zeros(0, np.int64), np.array(vals))] * n))
    for k, v in enumerate(vals):
        z = n * round_half_even(Fraction(v) * 2**frac)
        assert float(out[k]) == z / 2**frac
        exact = n * Fraction(v)
        quant = n * Fraction(1, 2 ** (frac + 1))
        assert abs(Fraction(float(out[k])) - exact) <= quant + Fraction(1, 2**52) * (
            abs(exact) + quant
        )
