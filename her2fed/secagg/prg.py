"""Key derivation and mask expansion.

Every symmetric key the protocol uses comes from HKDF-SHA256 with the session
id as salt and an info string naming the purpose, the round and the parties,
so a key is never used for two purposes, two rounds, two sessions or two pairs
of sites. Masks are ChaCha20 keystreams under such keys (256-bit keys; a
zero nonce is safe because each derived key encrypts exactly one stream).
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

from her2fed.secagg import wire

DOMAIN = b"her2fed-secagg-v1"
KEY_BYTES = 32

PAIRWISE_MASK = "pairwise-mask"
SELF_MASK = "self-mask"
SHARE_ENCRYPTION = "share-encryption"


def derive_key(secret: bytes, session_id: bytes, purpose: str, *context: str | int) -> bytes:
    """A 32-byte key bound to this secret, session, purpose and context."""
    info = DOMAIN + wire.encode(purpose, session_id, *context)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=session_id, info=info).derive(
        secret
    )


def pairwise_key(shared: bytes, session_id: bytes, round_index: int, a: str, b: str) -> bytes:
    """The round's mask key of a pair of sites; symmetric in ``a`` and ``b``."""
    lo, hi = sorted((a, b))
    return derive_key(shared, session_id, PAIRWISE_MASK, round_index, lo, hi)


def self_mask_key(seed: bytes, session_id: bytes, round_index: int, site: str) -> bytes:
    return derive_key(seed, session_id, SELF_MASK, round_index, site)


def seed_commitment(seed: bytes, session_id: bytes, round_index: int, site: str) -> bytes:
    """SHA-256 commitment to a self-mask seed, so a wrong reconstruction is caught."""
    data = DOMAIN + wire.encode("seed-commitment", session_id, round_index, site, seed)
    return hashlib.sha256(data).digest()


_ZEROS = memoryview(bytes(1 << 20))  # encrypted chunk by chunk into the output


def keystream(key: bytes, length: int) -> NDArray[np.uint64]:
    """``length`` pseudo-random ring elements (little-endian 64-bit words of the keystream)."""
    out = bytearray(8 * length)
    view = memoryview(out)
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    chunk = len(_ZEROS)
    for start in range(0, len(out), chunk):
        n = min(chunk, len(out) - start)
        encryptor.update_into(_ZEROS[:n], view[start : start + n])
    return np.frombuffer(out, dtype="<u8").astype(np.uint64, copy=False)


def apply_mask(acc: NDArray[np.uint64], key: bytes, sign: int) -> None:
    """``acc += sign * keystream(key)`` in Z_2^64, in place.

    The keystream is made chunk by chunk into one small buffer and added while
    that chunk is still in cache, instead of being materialised whole: for the
    tens of megabytes a Cox round masks (1-day grid) this takes about half the
    time, since no fresh pages are faulted in and nothing is read back from
    memory. The words are the same as ``keystream(key, len(acc))``'s.
    """
    n = acc.shape[0]
    if n == 0:
        return
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    size = min(len(_ZEROS) // 8, n)
    buf = bytearray(8 * size)
    view = memoryview(buf)
    words = np.frombuffer(buf, dtype="<u8")
    op = np.add if sign > 0 else np.subtract
    for start in range(0, n, size):
        m = min(size, n - start)
        encryptor.update_into(_ZEROS[: 8 * m], view[: 8 * m])
        part = acc[start : start + m]
        op(part, words[:m], out=part)


def pair_sign(me: str, other: str) -> int:
    """+1 for the lexicographically smaller site of a pair, -1 for the other, so masks cancel."""
    return 1 if me < other else -1
