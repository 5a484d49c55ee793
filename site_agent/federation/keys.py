"""Ed25519 identity keys: the site's long-term key and the coordinator's session-signing key.

A site's public key is pinned in the consortium's key registry (site id ->
key); the coordinator's public key is pinned at every site. Both are written
as 64 lowercase hex characters (the raw 32-byte key), short enough to read
out over the phone when a privacy officer checks a fingerprint.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from her2fed.errors import Her2fedError
from her2fed.secagg.registry import Registry, parse_registry_toml


class KeyFileError(Her2fedError):
    """A key file or key text that cannot be used (names the file and the fix)."""


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_private_key(key: Ed25519PrivateKey, path: str | Path) -> Path:
    """PKCS#8 PEM, unencrypted, readable by the owner only."""
    path = Path(path)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return path


def read_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: key file not found. Fix: give the path of the site's key"
        ) from None
    except (ValueError, TypeError) as err:
        raise KeyFileError(
            f"{path}: not an unencrypted PEM private key ({type(err).__name__}). Fix: write the "
            "key with her2fed's key tool or `openssl genpkey -algorithm ed25519`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: the key is not Ed25519. Fix: use an Ed25519 key")
    return key


def public_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def parse_public_hex(text: str, where: str) -> Ed25519PublicKey:
    text = text.strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise KeyFileError(
            f"{where}: expected an Ed25519 public key as 64 hex characters. Fix: paste the "
            "site's public key as printed by its agent"
        )
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))


def read_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    try:
        return parse_public_hex(path.read_text(encoding="ascii"), str(path))
    except FileNotFoundError:
        raise KeyFileError(f"{path}: public key file not found") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a hex public key file") from None


def write_public_key(key: Ed25519PrivateKey | Ed25519PublicKey, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(public_hex(key) + "\n", encoding="ascii")
    return path


def verify(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def write_supernode_key(path: str | Path) -> bytes:
    """A Flower SuperNode authentication key (EC P-256, OpenSSH format, owner-only).

    Flower 1.41 authenticates SuperNodes with NIST-curve EC keys, not Ed25519, so a
    site has two keys: this one for the Flower fleet connection and its Ed25519
    identity key for the aggregation channel. Returns the public key as PEM, the
    form the SuperLink's Control API registers.
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    key = ec.generate_private_key(ec.SECP256R1())
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_consortium(path: str | Path) -> Registry:
    """The consortium registry file (``[coordinator]`` and ``[sites]`` public keys).

    A registry whose ``[sites]`` is still empty (right after ``her2fed
    consortium init``) is read as listing no site, so the caller can say
    "your site is not listed" instead of a syntax complaint.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"{p}: consortium registry not found; ask the consortium lead") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"{p}: not a text file; ask the consortium lead for it again") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        doc = {}  # parse_registry_toml below reports the syntax error with its position
    coordinator = doc.get("coordinator")
    if (
        doc.get("sites") == {}
        and isinstance(coordinator, dict)
        and set(coordinator) == {"public_key"}
    ):
        key = parse_public_hex(str(coordinator["public_key"]), f"{p}: coordinator.public_key")
        return Registry(sites={}, coordinator=key.public_bytes_raw())
    return parse_registry_toml(text, str(p))
