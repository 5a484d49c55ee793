"""Shamir secret sharing of 256-bit secrets over the prime field GF(2^256 + 297).

The secrets are X25519 private keys and 32-byte mask seeds; the field must be
larger than 2^256 so that every such secret is a field element, and
2^256 + 297 is the smallest prime that is (tests/test_secagg_shamir.py checks
its primality). Any ``threshold`` shares determine the secret; fewer are
consistent with every possible secret, which is what lets the coordinator
recover a dropped site's masks from survivors without any smaller group
learning anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from her2fed.secagg.randomness import RandomSource, random_below

PRIME = 2**256 + 297
SECRET_BYTES = 32
SHARE_BYTES = 33  # PRIME < 2^257


def split(secret: bytes, threshold: int, xs: Sequence[int], rng: RandomSource) -> list[int]:
    """``f(x)`` for each ``x``; f is random of degree ``threshold - 1`` with f(0) = secret."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1, got {threshold}")
    if any(not 0 < x < PRIME for x in xs) or len(set(xs)) != len(xs):
        raise ValueError("share points must be distinct and non-zero")
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [random_below(rng, PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % PRIME
        shares.append(acc)
    return shares


def lagrange_at(xs: Sequence[int], x: int) -> list[int]:
    """Weights ``w_i`` with ``f(x) = sum w_i f(x_i)`` for any polynomial of degree < len(xs).

    Computed once per set of share holders and reused for every secret they
    reveal in a round; ``x = 0`` gives the secret, any other ``x`` the share
    an honest holder at ``x`` must have revealed.
    """
    if len(set(xs)) != len(xs) or any(not 0 < xi < PRIME for xi in xs):
        raise ValueError("share points must be distinct and non-zero")
    weights = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (xj - x) % PRIME
                den = den * (xj - xi) % PRIME
        weights.append(num * pow(den, -1, PRIME) % PRIME)
    return weights


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    return lagrange_at(xs, 0)


def combine(weights: Sequence[int], shares: Sequence[int]) -> int:
    """The field element ``sum w_i s_i``; the secret when the shares are honest."""
    return sum(w * s for w, s in zip(weights, shares, strict=True)) % PRIME


def to_secret(value: int) -> bytes | None:
    """The 32-byte secret, or ``None`` if the value cannot be one (a sign of bad shares)."""
    return value.to_bytes(SECRET_BYTES, "big") if value < 2 ** (8 * SECRET_BYTES) else None


def reconstruct(points: Sequence[tuple[int, int]]) -> bytes | None:
    """The secret from ``(x, share)`` pairs (all of them are used)."""
    xs = [x for x, _ in points]
    return to_secret(combine(lagrange_at_zero(xs), [s for _, s in points]))


def share_to_bytes(share: int) -> bytes:
    return share.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int | None:
    """The share as a field element, or ``None`` if the bytes are not one."""
    if len(data) != SHARE_BYTES:
        return None
    value = int.from_bytes(data, "big")
    return value if value < PRIME else None
