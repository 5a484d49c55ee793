"""Summaries as vectors in the ring Z_2^64, exactly, or refused.

Masks only cancel in a ring, so a site's ``(ints, floats)`` pair (what
``Additive.flatten()`` returns) is mapped to one ``uint64`` vector whose
wrap-around sum over the sites decodes to the plain sum. The mapping is chosen
so that the sum can never wrap: anything that could make it wrap is refused
here, before any masking, with an ``EncodingError`` - a wrapped sum would be a
silently wrong pooled estimate.

Integers (int64) travel as their two's-complement bit pattern. With at most
``max_sites`` contributors, every ``|x| <= (2^63 - 1) // max_sites`` keeps the
true sum inside int64, so the ring sum reinterpreted as int64 *is* the sum, bit
for bit. Larger values are refused.

Floats travel in fixed point split into limbs. ``v`` becomes the integer
``z = round_half_even(v * 2^F)``; ``|z|`` is split into ``L`` little-endian
limbs of ``b`` bits and every limb carries the sign of ``v`` (so each limb lies
in ``(-2^b, 2^b)``); each limb is one ring element. Values must satisfy
``|v| < 2^(b*L - 1 - F)``; NaN, infinities and larger magnitudes are refused.
The format ``(L, b)`` is a public session parameter with two standard choices
(``default_format``), both with ``F = 48`` and so the same range ``|v| < 2^47
~ 1.4e14``, the same precision and bit-identical decoded sums:

- 2 limbs of 48 bits (16 bytes a float) for rosters of up to 2^14 sites;
- 3 limbs of 32 bits (24 bytes a float) for larger ones, up to ``MAX_SITES``.

A limb-wise sum must not wrap int64. Every format requires ``max_sites * 2^b
<= 2^62``, so a sum of limbs stays below 2^62 in magnitude and the carries the
decoder moves between limbs (each at most ``max_sites``) keep it below 2^63:
that is what caps 48-bit limbs at 2^14 sites, while 32-bit limbs would allow
2^30 and ``MAX_SITES`` is the tighter limit. A format spans at most
``b * L <= 96`` bits (three 32-bit digits, below).

Decoding is exact up to one final, correct rounding. After range checks (a
limb out of range means a mask was not removed) the limb sums ``S_k`` satisfy
``|T| < max_sites * 2^(b*L - 1) <= 2^20 * 2^95 = 2^115`` for the exact
fixed-point sum ``T = sum_k S_k * 2^(b*k)``. Then, in int64 throughout:

1. Carries make the lower limbs ``[0, 2^b)`` (``S_k >> b`` moves up; every
   intermediate is below ``max_sites * 2^b <= 2^62``). ``T`` is unchanged, and
   its two's-complement bit string is now the lower limbs side by side under
   the sign-extended top limb.
2. ``T`` is re-read as three 32-bit digits, ``T = d2 * 2^64 + d1 * 2^32 + d0``
   with ``d0, d1`` the bits ``[0, 32)`` and ``[32, 64)`` of ``T`` and ``d2 = T >>
   64`` (floor). Each digit is assembled from disjoint bit fields of the limbs
   (shift, mask, shift, add), so no addition carries: ``0 <= d0, d1 < 2^32``
   and ``|d2| <= 2^51``; all three convert to float64 exactly. For 3 x 32 this
   is the identity (``d_k = S_k``); for 2 x 48 it is ``d0 = S0 & (2^32 - 1)``,
   ``d1 = (S0 >> 32) + ((S1 & (2^16 - 1)) << 16)``, ``d2 = S1 >> 16``.
3. ``a = d2 * 2^64`` and ``c = d1 * 2^32`` are exact; Knuth's two-sum gives
   ``h + l == a + c`` exactly, ``h = fl(a + c)``, ``l`` a multiple of 2^32
   with ``|l| <= ulp(h) / 2 <= 2^62``.
   If ``|d2| <= 2^19``, ``a + c = 2^32 * (d2 * 2^32 + d1)`` with ``|d2 * 2^32 +
   d1| < 2^53`` is itself a float, so ``l = 0`` and ``h + d0`` (one IEEE
   addition) is ``T`` correctly rounded.
   If ``|d2| > 2^19``, then ``|T| > 2^83``, where every float and every midpoint
   between floats is a multiple of 2^30. Replacing the low 30 bits of ``d0`` by
   ``2^29`` if any was set (a "sticky" bit, i.e. rounding to odd) leaves ``T``
   in the same open interval between such points or on the same point, so it
   rounds the same; and now ``m = l + d0'`` is a multiple of 2^29 below 2^63 in
   magnitude (34 significant bits), so it is computed exactly, and ``fl(h +
   m)`` is ``T`` correctly rounded.
4. Multiplying by ``2^-F`` is exact (``F <= 94``, no underflow), so the decoded
   float is the exact fixed-point sum ``T * 2^-F`` rounded half-even to float64.

Error bound (floats). Each site's rounding to a multiple of ``2^-F`` is at most
``2^-(F+1)``; the limb sums are exact integers; the decoder rounds the exact
fixed-point sum to float64 once, correctly (at most half an ulp). So for ``n``
contributing sites and exact real sum ``S``::

    |decoded - S| <= n * 2^-(F+1) + 2^-52 * (|S| + n * 2^-(F+1))

(``F = 48``: ``n * 1.78e-15`` absolute plus float64's own relative rounding;
the second term allows a whole ulp, twice what the decoder needs). The encoder
is float64 too and exact: scaling by a power of two, rounding to an integer,
and splitting a non-negative integer-valued float at a power of two only ever
produce values with at most 53 significant bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from her2fed.secagg.errors import ConfigError, EncodingError

MAX_SITES = 1 << 20
"""Beyond this the top digit of a sum would not convert to float64 exactly."""
LIMB_HEADROOM_LOG2 = 62
"""Every format needs ``max_sites * 2^limb_bits <= 2^62`` (limb sums and carries stay in int64)."""
DIGIT_BITS = 32
DIGITS = 3
MAX_FORMAT_BITS = DIGIT_BITS * DIGITS
"""A format spans at most 96 bits: the decoder's three 32-bit digits (module docstring)."""
WIDE_LIMB_BITS = 48
FRAC_BITS = 48


def max_sites_for(limb_bits: int) -> int:
    """The largest roster whose limb-wise sums of ``limb_bits``-bit limbs cannot wrap int64."""
    return min(MAX_SITES, 1 << max(LIMB_HEADROOM_LOG2 - limb_bits, 0))


def default_format(n_sites: int) -> tuple[int, int]:
    """``(limbs, limb_bits)`` for a roster of ``n_sites``: the one place the choice is made.

    Both formats carry ``|v| < 2^47`` with 48 fractional bits and decode to the
    same floats; 2 x 48 bits costs 16 bytes a float instead of 24 (a third less
    to encode, mask, hash, send and unmask) but only fits rosters of up to
    ``max_sites_for(48) = 2^14`` sites.
    """
    if n_sites <= max_sites_for(WIDE_LIMB_BITS):
        return 2, WIDE_LIMB_BITS
    return 3, DIGIT_BITS


def describe_format(limbs: int, limb_bits: int, frac_bits: int) -> str:
    """The float format in words, for provenance (what a report says was used)."""
    return f"fixed point, {limbs} x {limb_bits}-bit limbs, {frac_bits} fractional bits"


def check_format(limbs: int, limb_bits: int, frac_bits: int, max_sites: int) -> None:
    """Refuse a float format that could wrap, lose exactness or overflow for ``max_sites``.

    Sites run this on the format a coordinator proposes (through ``Encoding``),
    so a session whose limbs are too wide for its roster is refused before any
    input is encoded.
    """
    if limbs == 0 or limb_bits == 0:
        raise ConfigError(
            f"give both limbs and limb_bits, or neither (the default for the roster); got "
            f"limbs={limbs}, limb_bits={limb_bits}"
        )
    if not 1 <= limbs <= 8:
        raise ConfigError(f"limbs must be in 1..8, got {limbs}")
    if not 1 <= limb_bits <= LIMB_HEADROOM_LOG2:
        raise ConfigError(f"limb_bits must be in 1..{LIMB_HEADROOM_LOG2}, got {limb_bits}")
    if limbs * limb_bits > MAX_FORMAT_BITS:
        raise ConfigError(
            f"{limbs} x {limb_bits}-bit limbs span {limbs * limb_bits} bits; at most "
            f"{MAX_FORMAT_BITS} (three 32-bit digits) decode exactly"
        )
    if max_sites > max_sites_for(limb_bits):
        raise ConfigError(
            f"{limb_bits}-bit limbs allow at most {max_sites_for(limb_bits)} sites (a limb-wise "
            f"sum over n sites needs n * 2^{limb_bits} <= 2^{LIMB_HEADROOM_LOG2} not to wrap "
            f"int64), got {max_sites}; use {DIGIT_BITS}-bit limbs for a roster this large"
        )
    if not 0 <= frac_bits <= limbs * limb_bits - 2:
        raise ConfigError(
            f"frac_bits must be in 0..{limbs * limb_bits - 2} for {limbs} x {limb_bits}-bit "
            f"limbs, got {frac_bits}"
        )


Ints = NDArray[np.int64]
Floats = NDArray[np.float64]
Ring = NDArray[np.uint64]


def _two_sum(a: Floats, b: Floats) -> tuple[Floats, Floats]:
    """``s + e == a + b`` exactly (Knuth), so rounding errors can be carried along."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


@dataclass(frozen=True)
class Encoding:
    """The public shape and fixed-point format of one secure sum.

    ``max_sites`` is the largest number of sites whose vectors can be added
    (the session's roster size): it sets the integer range, so every site and
    the coordinator must use the same value. Floats travel as ``limbs`` limbs
    of ``limb_bits`` bits; ``limbs = limb_bits = 0`` picks
    ``default_format(max_sites)``.
    """

    n_ints: int
    n_floats: int
    max_sites: int
    limbs: int = 0
    frac_bits: int = FRAC_BITS
    limb_bits: int = 0

    def __post_init__(self) -> None:
        if self.n_ints < 0 or self.n_floats < 0:
            raise ConfigError(f"vector lengths must be >= 0, got {self.n_ints}/{self.n_floats}")
        if not 1 <= self.max_sites <= MAX_SITES:
            raise ConfigError(f"max_sites must be in 1..{MAX_SITES}, got {self.max_sites}")
        if self.limbs == 0 and self.limb_bits == 0:  # the standard format for this roster
            limbs, limb_bits = default_format(self.max_sites)
            object.__setattr__(self, "limbs", limbs)
            object.__setattr__(self, "limb_bits", limb_bits)
        check_format(self.limbs, self.limb_bits, self.frac_bits, self.max_sites)

    @property
    def format_bits(self) -> int:
        """Bits of fixed point per float, sign included: ``|z| < 2^(format_bits - 1)``."""
        return self.limbs * self.limb_bits

    @property
    def description(self) -> str:
        return describe_format(self.limbs, self.limb_bits, self.frac_bits)

    @property
    def ring_length(self) -> int:
        return self.n_ints + self.limbs * self.n_floats

    @property
    def int_max(self) -> int:
        """Largest accepted ``|x|``: ``max_sites`` of them still sum inside int64."""
        return (2**63 - 1) // self.max_sites

    @property
    def float_limit_log2(self) -> int:
        return self.format_bits - 1 - self.frac_bits

    @property
    def float_limit(self) -> float:
        """Floats must satisfy ``|v| < float_limit`` (a hair less in narrow formats, below)."""
        return float(2.0**self.float_limit_log2)

    @property
    def _float_refused_from(self) -> float:
        """The smallest refused ``|v|``: ``float_limit``, or just below it in narrow formats.

        Where ``format_bits - 1 <= 52``, floats exist with ``|v| * 2^F`` in
        ``[2^(format_bits - 1) - 1/2, 2^(format_bits - 1))``; they would round
        to ``2^(format_bits - 1)``, out of the top limb's range, so they are
        refused too (``float_limit - 2^-(F+1)`` is a float there). In wider
        formats every float that close to the limit is already an integer
        multiple of ``2^-F`` and rounds to itself.
        """
        if self.format_bits - 1 > 52:
            return self.float_limit
        return self.float_limit - 2.0 ** -(self.frac_bits + 1)

    @property
    def _limit_text(self) -> str:
        k = self.float_limit_log2
        if self._float_refused_from == self.float_limit:
            return f"2^{k} = {self.float_limit:.6g}"
        below = f"2^{k} - 2^-{self.frac_bits + 1} = {self._float_refused_from!r}"
        return f"{below}, which rounds to 2^{k}"

    def float_error_bound(self, n_sites: int, exact_sum: ArrayLike) -> Floats:
        """Largest ``|decoded - exact|`` for a sum over ``n_sites`` (see the module docstring)."""
        quant = n_sites * 2.0 ** -(self.frac_bits + 1)
        mag = np.abs(np.asarray(exact_sum, dtype=np.float64))
        return np.asarray(quant + 2.0**-52 * (mag + quant), dtype=np.float64)

    # ------------------------------------------------------------ checking

    def check(self, ints: ArrayLike, floats: ArrayLike) -> tuple[Ints, Floats]:
        """The inputs as int64/float64 vectors, or an ``EncodingError`` saying what cannot go."""
        i = np.asarray(ints)
        f = np.asarray(floats)
        if i.ndim != 1 or i.shape[0] != self.n_ints:
            raise EncodingError(
                f"integer vector has shape {i.shape}; the session expects ({self.n_ints},)"
            )
        if f.ndim != 1 or f.shape[0] != self.n_floats:
            raise EncodingError(
                f"float vector has shape {f.shape}; the session expects ({self.n_floats},)"
            )
        if i.dtype.kind not in "iu" and i.size:
            raise EncodingError(f"integer vector has dtype {i.dtype}; expected an integer dtype")
        if f.dtype.kind not in "f" and f.size:
            raise EncodingError(f"float vector has dtype {f.dtype}; expected float64")
        if f.dtype.kind == "f" and f.dtype.itemsize > 8:
            raise EncodingError(f"float vector has dtype {f.dtype}; float64 is the widest carried")
        return self._check_ints(i), self._check_floats(f.astype(np.float64, copy=False))

    def _check_ints(self, i: NDArray[np.generic]) -> Ints:
        if i.size == 0:
            return np.zeros(0, np.int64)
        limit = self.int_max
        bad: NDArray[np.bool_]
        if i.dtype.kind == "u":
            bad = np.asarray(i > np.uint64(limit))
        else:
            wide = i.astype(np.int64)
            bad = (wide > limit) | (wide < -limit)
        if bad.any():
            vals = [abs(int(v)) for v in i[bad]]
            raise EncodingError(
                f"site input refused before masking: {len(vals)} of {i.size} integer values "
                f"have |x| > {limit} = (2^63 - 1) // {self.max_sites} (a sum over up to "
                f"{self.max_sites} sites could wrap); largest magnitude {max(vals)}, first at "
                f"index {int(np.flatnonzero(bad)[0])}"
            )
        return i.astype(np.int64)

    def _check_floats(self, f: Floats) -> Floats:
        if f.size == 0:
            return np.zeros(0, np.float64)
        finite = np.isfinite(f)
        with np.errstate(invalid="ignore"):
            too_big = finite & (np.abs(f) >= self._float_refused_from)
        bad = ~finite | too_big
        if bad.any():
            n_nonfinite = int((~finite).sum())
            mags = np.abs(f[bad])
            largest = "inf" if np.isinf(mags).any() else f"{float(np.nanmax(mags, initial=0)):.6g}"
            if np.isnan(mags).all():
                largest = "nan"
            raise EncodingError(
                f"site input refused before masking: {int(bad.sum())} of {f.size} float values "
                f"cannot be carried exactly ({n_nonfinite} not finite, {int(too_big.sum())} "
                f"with |v| >= {self._limit_text}); largest magnitude {largest}, first at "
                f"index {int(np.flatnonzero(bad)[0])}"
            )
        return f

    # ------------------------------------------------------------ encode / decode

    def float_limbs(self, floats: Floats) -> NDArray[np.int64]:
        """``(limbs, n)`` signed limbs of checked floats; limb 0 is the least significant.

        Multiplying by a power of two is exact (no overflow below the range
        limit, and scaling up never rounds), as is ``rint``; the split of
        ``|z|`` is exact as argued in the module docstring. It runs on every
        float of every round, so every step after the first works in place.
        """
        bits = self.limb_bits
        z = floats * 2.0**self.frac_bits
        np.rint(z, out=z)
        negative = np.signbit(z)
        rest = np.abs(z, out=z)  # in place: the split below works on |z|, signs come last
        out = np.empty((self.limbs, floats.shape[0]), np.int64)
        top = np.empty_like(rest)
        for k in range(self.limbs - 1, 0, -1):
            np.multiply(rest, 2.0 ** (-bits * k), out=top)
            np.floor(top, out=top)
            out[k] = top
            np.multiply(top, 2.0 ** (bits * k), out=top)
            rest -= top
        out[0] = rest
        np.negative(out, out=out, where=negative)  # every limb carries the sign of z
        return out

    def encode(self, ints: ArrayLike, floats: ArrayLike) -> Ring:
        """One site's ring vector: ints, then limb 0 of every float, then limb 1, ..."""
        i, f = self.check(ints, floats)
        out = np.empty(self.ring_length, np.uint64)
        out[: self.n_ints] = i.view(np.uint64)
        out[self.n_ints :] = self.float_limbs(f).reshape(-1).view(np.uint64)
        return out

    def decode(self, ring: ArrayLike) -> tuple[Ints, Floats]:
        """The plain sums from the ring sum of at most ``max_sites`` encodings.

        A vector that cannot be such a sum (for example one left with a mask
        that was not removed) is refused rather than decoded into nonsense.
        Floats come back as the exact fixed-point sum correctly rounded; the
        steps and why each is exact are in the module docstring.
        """
        r = np.asarray(ring)
        if r.dtype != np.uint64 or r.shape != (self.ring_length,):
            raise EncodingError(
                f"ring vector has dtype {r.dtype} and shape {r.shape}; expected uint64 "
                f"({self.ring_length},)"
            )
        ints = r[: self.n_ints].view(np.int64).copy()
        s = r[self.n_ints :].view(np.int64).reshape(self.limbs, self.n_floats).copy()
        if self.n_floats == 0:
            return ints, np.zeros(0, np.float64)
        bits = self.limb_bits
        low_max = self.max_sites * (2**bits - 1)
        top_max = self.max_sites * (2 ** (bits - 1) - 1)  # |z| < 2^(bits * limbs - 1)
        if _beyond(s[:-1], low_max) or _beyond(s[-1], top_max):
            raise EncodingError(
                f"ring vector is not the sum of at most {self.max_sites} encodings (a limb is out "
                "of range): a mask was not removed or the vector was corrupted"
            )
        low = (1 << bits) - 1
        for k in range(self.limbs - 1):  # carry into the next limb; lower limbs become [0, 2^b)
            s[k + 1] += s[k] >> bits
            s[k] &= low
        d0, d1, d2 = self._digits(s)
        return ints, _round_digits(d0, d1, d2, self.frac_bits)

    def _digits(self, s: NDArray[np.int64]) -> list[NDArray[np.int64]]:
        """The 32-bit digits ``d0, d1, d2`` of ``T = sum_k s[k] * 2^(b*k)`` (lower limbs normal).

        Digit ``j`` is assembled from the bit fields of the limbs that overlap
        its bits ``[32j, 32j + 32)``; the top digit reaches up without bound
        (``T >> 64``), and the top limb's field reaches up without bound too
        (its sign extends). The fields are disjoint, so the additions never
        carry (module docstring, step 2). Where a limb is exactly one digit the
        limb array itself is the digit and no work is done.
        """
        bits, last = self.limb_bits, self.limbs - 1
        digits: list[NDArray[np.int64]] = []
        for j in range(DIGITS):
            lo = DIGIT_BITS * j
            hi = lo + DIGIT_BITS if j < DIGITS - 1 else None
            digit: NDArray[np.int64] | None = None
            for k in range(self.limbs):
                start = bits * k
                end = start + bits if k < last else None
                field_lo = max(lo, start)
                field_hi = min((x for x in (hi, end) if x is not None), default=None)
                if field_hi is not None and field_lo >= field_hi:
                    continue  # limb k has no bits in digit j
                piece = s[k]
                if field_lo > start:  # arithmetic shift: floor, sign kept (|s| < 2^63)
                    piece = piece >> min(field_lo - start, 63)
                if field_hi is not None and (end is None or end > field_hi):
                    piece = piece & ((1 << (field_hi - field_lo)) - 1)
                if field_lo > lo:
                    piece = piece << (field_lo - lo)
                digit = piece if digit is None else digit + piece
            digits.append(np.zeros(self.n_floats, np.int64) if digit is None else digit)
        return digits


def _beyond(x: NDArray[np.int64], bound: int) -> bool:
    """Whether any ``x`` lies outside ``[-bound, bound]``, for any int64 ``x``.

    Shifting by ``bound`` in unsigned arithmetic maps the interval onto
    ``[0, 2 * bound]`` and everything else above it (``np.abs`` would miss
    ``-2^63``, which it leaves negative).
    """
    shifted = x.view(np.uint64) + np.uint64(bound)
    return bool((shifted > np.uint64(2 * bound)).any())


STICKY_BITS = 30
"""Low bits of ``d0`` that only matter as "some were set" when ``|d2| > 2^(83 - 64)``."""


def _round_digits(
    d0: NDArray[np.int64], d1: NDArray[np.int64], d2: NDArray[np.int64], frac_bits: int
) -> Floats:
    """``(d2 * 2^64 + d1 * 2^32 + d0) * 2^-frac_bits`` correctly rounded (module docstring, 3-4).

    ``0 <= d0, d1 < 2^32`` and ``|d2| <= 2^51``. ``d0`` may be modified in place.
    """
    big = np.flatnonzero(d2.view(np.uint64) + np.uint64(2**19) > np.uint64(2**20))
    if big.size:  # |T| > 2^83: the low bits of d0 only decide ties, as a sticky bit
        low = d0[big]
        sticky = (low & ((1 << STICKY_BITS) - 1)) != 0
        d0[big] = (low & ~((1 << STICKY_BITS) - 1)) | (sticky.astype(np.int64) << (STICKY_BITS - 1))
    a = d2.astype(np.float64)
    a *= 2.0**64
    c = d1.astype(np.float64)
    c *= 2.0**32
    h, low_part = _two_sum(a, c)
    low_part += d0  # exact: see the module docstring
    h += low_part  # the one rounding
    h *= 2.0**-frac_bits
    return h
