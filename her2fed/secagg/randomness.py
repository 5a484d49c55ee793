"""Where the protocol's randomness comes from: always an injected source.

Keys, seeds, Shamir coefficients and nonces are drawn only from a callable
``rng(n) -> n bytes`` handed to each state machine, never from a global RNG, so
production code passes ``os.urandom`` and tests pass a seeded stream and get
reproducible sessions without touching process-wide state.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

RandomSource = Callable[[int], bytes]
"""``rng(n)`` returns ``n`` bytes; ``os.urandom`` is the production source."""

SYSTEM_RANDOM: RandomSource = os.urandom


class SeededRandom:
    """A reproducible byte stream for tests and benchmarks (never for real sessions).

    It is a ChaCha20 keystream keyed by SHA-256 of the seed, so its output is
    as good as a CSPRNG's for statistical tests while being replayable.
    """

    def __init__(self, seed: int | bytes | str) -> None:
        raw = seed if isinstance(seed, bytes) else str(seed).encode()
        key = hashlib.sha256(b"her2fed-secagg-v1 test rng\x00" + raw).digest()
        self._stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()

    def __call__(self, n: int) -> bytes:
        if n < 0:
            raise ValueError(f"cannot draw {n} random bytes")
        return self._stream.update(bytes(n))


def random_below(rng: RandomSource, bound: int) -> int:
    """A uniform integer in [0, bound), by rejection so that there is no modulo bias."""
    if bound < 1:
        raise ValueError(f"bound must be positive, got {bound}")
    bits = (bound - 1).bit_length()
    nbytes = max(1, (bits + 7) // 8)
    mask = (1 << bits) - 1
    while True:
        candidate = int.from_bytes(rng(nbytes), "big") & mask
        if candidate < bound:
            return candidate
