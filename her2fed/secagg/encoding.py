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
32-bit limbs and every limb carries the sign of ``v`` (so each limb lies in
``(-2^32, 2^32)``); each limb is one ring element. A limb-wise sum over fewer
than 2^31 sites stays inside int64, so no limb wraps, and the decoder
recombines ``sum_k S_k * 2^(32k) / 2^F``. Values must satisfy
``|v| < 2^(32L - 1 - F)`` (defaults L = 3, F = 48: ``|v| < 2^47 ~ 1.4e14``);
NaN, infinities and larger magnitudes are refused.

Error bound (floats). Each site's rounding to a multiple of ``2^-F`` is at most
``2^-(F+1)``; the limb sums are exact integers; the decoder converts the exact
fixed-point sum to float64 with one final rounding of at most one ulp. So for
``n`` contributing sites and exact real sum ``S``::

    |decoded - S| <= n * 2^-(F+1) + 2^-52 * (|S| + n * 2^-(F+1))

(defaults: ``n * 1.78e-15`` absolute plus float64's own relative rounding).
The arithmetic is float64 throughout and exact where it must be: scaling by a
power of two, rounding to an integer, and splitting a non-negative integer-
valued float at a power of two only ever produce values with at most 53
significant bits, so no step rounds except the documented two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from her2fed.secagg.errors import ConfigError, EncodingError

LIMB_BITS = 32
MAX_SITES = 1 << 20
"""Beyond this the top limb's sum would not convert to float64 exactly."""

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
    the coordinator must use the same value.
    """

    n_ints: int
    n_floats: int
    max_sites: int
    limbs: int = 3
    frac_bits: int = 48

    def __post_init__(self) -> None:
        if self.n_ints < 0 or self.n_floats < 0:
            raise ConfigError(f"vector lengths must be >= 0, got {self.n_ints}/{self.n_floats}")
        if not 1 <= self.max_sites <= MAX_SITES:
            raise ConfigError(f"max_sites must be in 1..{MAX_SITES}, got {self.max_sites}")
        if not 1 <= self.limbs <= 8:
            raise ConfigError(f"limbs must be in 1..8, got {self.limbs}")
        if not 0 <= self.frac_bits <= LIMB_BITS * self.limbs - 2:
            raise ConfigError(
                f"frac_bits must be in 0..{LIMB_BITS * self.limbs - 2} for {self.limbs} limbs, "
                f"got {self.frac_bits}"
            )

    @property
    def ring_length(self) -> int:
        return self.n_ints + self.limbs * self.n_floats

    @property
    def int_max(self) -> int:
        """Largest accepted ``|x|``: ``max_sites`` of them still sum inside int64."""
        return (2**63 - 1) // self.max_sites

    @property
    def float_limit_log2(self) -> int:
        return LIMB_BITS * self.limbs - 1 - self.frac_bits

    @property
    def float_limit(self) -> float:
        """Floats must satisfy ``|v| < float_limit``."""
        return float(2.0**self.float_limit_log2)

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
            too_big = finite & (np.abs(f) >= self.float_limit)
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
                f"with |v| >= 2^{self.float_limit_log2} = {self.float_limit:.6g}); largest "
                f"magnitude {largest}, first at index {int(np.flatnonzero(bad)[0])}"
            )
        return f

    # ------------------------------------------------------------ encode / decode

    def float_limbs(self, floats: Floats) -> NDArray[np.int64]:
        """``(limbs, n)`` signed limbs of checked floats; limb 0 is the least significant.

        Multiplying by a power of two is exact (no overflow below the range
        limit, and scaling up never rounds), as is ``rint``; the split of
        ``|z|`` is exact as argued in the module docstring.
        """
        z = floats * 2.0**self.frac_bits
        np.rint(z, out=z)
        negative = np.signbit(z)
        rest = np.abs(z, out=z)  # in place: the split below works on |z|, signs come last
        out = np.empty((self.limbs, floats.shape[0]), np.int64)
        top = np.empty_like(rest)
        for k in range(self.limbs - 1, 0, -1):
            np.multiply(rest, 2.0 ** (-LIMB_BITS * k), out=top)
            np.floor(top, out=top)
            out[k] = top
            np.multiply(top, 2.0 ** (LIMB_BITS * k), out=top)
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
        low_max = self.max_sites * (2**LIMB_BITS - 1)
        top_max = self.max_sites * (2 ** (LIMB_BITS - 1) - 1)  # |z| < 2^(32L-1)
        if (np.abs(s[:-1]) > low_max).any() or (np.abs(s[-1]) > top_max).any():
            raise EncodingError(
                f"ring vector is not the sum of at most {self.max_sites} encodings (a limb is out "
                "of range): a mask was not removed or the vector was corrupted"
            )
        for k in range(self.limbs - 1):  # carry into the next limb; lower limbs become [0, 2^32)
            carry = s[k] >> LIMB_BITS
            s[k] -= carry << LIMB_BITS
            s[k + 1] += carry
        total = np.ldexp(s[-1].astype(np.float64), LIMB_BITS * (self.limbs - 1))
        err = np.zeros(self.n_floats, np.float64)
        for k in range(self.limbs - 2, -1, -1):
            total, e = _two_sum(total, np.ldexp(s[k].astype(np.float64), LIMB_BITS * k))
            err += e
        return ints, np.ldexp(total + err, -self.frac_bits)
