"""Encrypted Shamir shares: what a site sends another site through the coordinator.

The key comes from X25519 between the two sites' advertised share keys (signed,
so the coordinator cannot substitute its own) and HKDF bound to the session and
the direction sender -> recipient; AES-256-GCM's associated data names the
session and both parties, and the plaintext repeats them, so a ciphertext
moved to another pair, direction or session fails authentication.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from her2fed.secagg import prg, wire
from her2fed.secagg.errors import KeyMismatchError, MalformedMessageError, TamperedCiphertextError
from her2fed.secagg.randomness import RandomSource
from her2fed.secagg.shamir import SHARE_BYTES, share_from_bytes, share_to_bytes

NONCE_BYTES = 12


@dataclass(frozen=True)
class HeldShares:
    """One site's shares of another site's per-round secrets (index = round)."""

    mask_key: tuple[int, ...]
    self_seed: tuple[int, ...]


def agree(private: X25519PrivateKey, public: bytes, peer: str) -> bytes:
    """X25519, refusing a low-order public key (it would make the shared secret all zero)."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise KeyMismatchError(
            f"site {peer!r} advertised an invalid X25519 public key", site=peer
        ) from None


def _aad(session_id: bytes, sender: str, recipient: str) -> bytes:
    return prg.DOMAIN + wire.encode("shares", session_id, sender, recipient)


def seal(
    private: X25519PrivateKey,
    peer_public: bytes,
    session_id: bytes,
    sender: str,
    recipient: str,
    shares: HeldShares,
    rng: RandomSource,
) -> tuple[bytes, bytes]:
    """``(nonce, ciphertext)`` of the shares ``sender`` gives ``recipient``."""
    key = prg.derive_key(
        agree(private, peer_public, recipient), session_id, prg.SHARE_ENCRYPTION, sender, recipient
    )
    w = wire.Writer().text(sender).text(recipient).u32(len(shares.mask_key))
    for s in (*shares.mask_key, *shares.self_seed):
        w.fixed(share_to_bytes(s), SHARE_BYTES)
    nonce = rng(NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, w.to_bytes(), _aad(session_id, sender, recipient))


def open_sealed(
    private: X25519PrivateKey,
    peer_public: bytes,
    session_id: bytes,
    sender: str,
    recipient: str,
    nonce: bytes,
    ciphertext: bytes,
    n_rounds: int,
) -> HeldShares:
    """The shares, or ``TamperedCiphertextError`` naming the sender if anything was altered."""
    key = prg.derive_key(
        agree(private, peer_public, sender), session_id, prg.SHARE_ENCRYPTION, sender, recipient
    )
    try:
        plain = AESGCM(key).decrypt(nonce, ciphertext, _aad(session_id, sender, recipient))
    except (InvalidTag, ValueError):
        raise TamperedCiphertextError(
            f"encrypted shares from site {sender!r} to {recipient!r} fail AES-GCM "
            "authentication: altered in transit, or not meant for this session or pair",
            site=sender,
        ) from None
    r = wire.Reader(plain, f"shares from {sender!r}")
    if (r.text(), r.text(), r.u32()) != (sender, recipient, n_rounds):
        raise MalformedMessageError(
            f"shares from site {sender!r} name the wrong parties or round count", site=sender
        )
    values: list[int] = []
    for _ in range(2 * n_rounds):
        v = share_from_bytes(r.fixed(SHARE_BYTES))
        if v is None:
            raise MalformedMessageError(f"site {sender!r} sent a share outside the field")
        values.append(v)
    r.end()
    return HeldShares(tuple(values[:n_rounds]), tuple(values[n_rounds:]))
