"""A site card: the public half of a site's identity, which hospital IT sends to the lead.

``her2fed site keys`` writes it next to the keys; ``her2fed consortium
add-site`` reads it. It holds public keys only, so it can travel by e-mail;
the fingerprints it prints are short enough to confirm over the phone, which
is how the lead makes sure the card came from the site::

    # her2fed site card: public keys only. Send this file to the consortium lead.
    [site]
    id = "athens"
    country = "GR"
    public_key = "5f0c…"            # Ed25519 identity: aggregation channel, secure aggregation
    node_public_key = \"\"\"
    -----BEGIN PUBLIC KEY-----
    …
    -----END PUBLIC KEY-----
    \"\"\"                            # Flower SuperNode key (EC P-256): fleet authentication

Two keys because Flower 1.41 authenticates SuperNodes with NIST-curve EC keys
only, while her2fed's protocol signs with Ed25519.
"""

from __future__ import annotations

import base64
import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from her2fed.errors import SpecError
from site_agent.federation.keys import KeyFileError, parse_public_hex, public_hex
from site_agent.federation.wire import SITE_ID

NIST_CURVES = ("secp256r1", "secp384r1", "secp521r1")
_FIX = "ask the site for the card `her2fed site keys` wrote (do not edit it by hand)"


def node_public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM: the form Flower's Control API registers."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_der(pem: bytes) -> bytes:
    """A SuperNode public key in one canonical form, to compare keys written differently."""
    key = serialization.load_pem_public_key(pem)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_node_public(pem: bytes, where: str) -> ec.EllipticCurvePublicKey:
    """A SuperNode public key from PEM, refusing what Flower would refuse (non-NIST curves)."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise SpecError(where, "is not a PEM public key", _FIX) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in NIST_CURVES:
        raise SpecError(where, "is not a NIST EC (P-256) public key", _FIX)
    return key


def read_node_key(path: Path, where: str) -> ec.EllipticCurvePrivateKey:
    """The site's SuperNode private key (OpenSSH format, as ``flower-supernode`` reads it)."""
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise SpecError(where, f"{path} does not exist", "run `her2fed site keys`") from None
    except (ValueError, TypeError):
        raise SpecError(
            where,
            f"{path} is not an unencrypted OpenSSH EC private key",
            "run `her2fed site keys` to create one (then send the new card to the lead)",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in NIST_CURVES:
        raise SpecError(where, f"{path} is not a NIST EC (P-256) key", "run `her2fed site keys`")
    return key


def node_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """``SHA256:…`` as ``ssh-keygen -l`` prints it, to read out over the phone."""
    blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    digest = hashlib.sha256(base64.b64decode(blob.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class SiteCard:
    site_id: str
    country: str
    public_key: Ed25519PublicKey
    node_public_key: bytes
    """PEM (SubjectPublicKeyInfo) of the SuperNode key."""

    @property
    def public_hex(self) -> str:
        return public_hex(self.public_key)

    @property
    def node_fingerprint(self) -> str:
        return node_fingerprint(load_node_public(self.node_public_key, "node key"))

    def to_toml(self) -> str:
        pem = self.node_public_key.decode("ascii").strip()
        return (
            "# her2fed site card: public keys only. Send this file to the consortium lead,\n"
            "# who adds it with `her2fed consortium add-site`; confirm the fingerprints by phone:\n"
            f"#   identity key {self.public_hex}\n"
            f"#   node key     {self.node_fingerprint}\n"
            "[site]\n"
            f'id = "{self.site_id}"\n'
            f'country = "{self.country}"\n'
            f'public_key = "{self.public_hex}"\n'
            f'node_public_key = """\n{pem}\n"""\n'
        )

    @classmethod
    def parse(cls, text: str, where: str) -> SiteCard:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SpecError(where, f"not valid TOML ({err})", _FIX) from None
        site = doc.get("site")
        keys = {"id", "country", "public_key", "node_public_key"}
        if set(doc) != {"site"} or not isinstance(site, dict) or set(site) != keys:
            raise SpecError(where, f"expected one [site] table with {sorted(keys)}", _FIX)
        if not all(isinstance(site[k], str) for k in keys):
            raise SpecError(where, "every value must be a string", _FIX)
        if SITE_ID.fullmatch(site["id"]) is None:
            raise SpecError(
                f"{where}: site.id",
                f"{site['id']!r} is not a plain site id",
                "use letters, digits, '.', '_' and '-' (at most 64), in the site's site.toml",
            )
        try:
            public = parse_public_hex(site["public_key"], f"{where}: site.public_key")
        except KeyFileError as err:
            raise SpecError(f"{where}: site.public_key", str(err), _FIX) from None
        pem = site["node_public_key"].strip().encode("ascii", errors="replace") + b"\n"
        node = load_node_public(pem, f"{where}: site.node_public_key")
        return cls(site["id"], site["country"], public, node_public_pem(node))

    @classmethod
    def load(cls, path: str | Path) -> SiteCard:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SpecError(
                str(path), "file not found", "give the path of the site card the site sent"
            ) from None
        except UnicodeDecodeError:
            raise SpecError(str(path), "is not a text file", _FIX) from None
        return cls.parse(text, str(path))
