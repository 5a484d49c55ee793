"""The consortium registry: which Ed25519 key speaks for which site and for the coordinator.

Keys are pinned here, out of band (the consortium distributes this file), and
nothing in a session can add or replace one: a message is believed only if it
verifies under the key registered for its claimed sender. Parsing and
serialising are pure functions over TOML text; reading and writing the file is
the caller's job.

TOML layout (keys are the 32 raw public-key bytes in hex)::

    [coordinator]
    public_key = "3b6a27bc..."

    [sites]
    athens-1 = "d75a9801..."
    oslo = "3d4017c3..."
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from her2fed.secagg import wire
from her2fed.secagg.errors import ConfigError, KeyMismatchError, UnknownSiteError

PUBLIC_KEY_BYTES = 32


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key, the form the registry stores."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes_raw()


def _load_key(raw: bytes, owner: str) -> Ed25519PublicKey:
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ConfigError(
            f"registry: public key of {owner} is {len(raw)} bytes; Ed25519 keys are "
            f"{PUBLIC_KEY_BYTES}"
        )
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise ConfigError(f"registry: public key of {owner} is not a valid Ed25519 key") from None


@dataclass(frozen=True)
class Registry:
    """Site id -> raw Ed25519 public key, plus the coordinator's key."""

    sites: Mapping[str, bytes]
    coordinator: bytes
    _keys: Mapping[str, Ed25519PublicKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sites = {str(k): bytes(v) for k, v in dict(self.sites).items()}
        for site in sites:
            if not wire.is_site_id(site):
                raise ConfigError(
                    f"registry: {site!r} is not a valid site id (letters, digits, '.', '_', "
                    "'-', at most 64 characters, starting with a letter or digit)"
                )
        keys = {site: _load_key(raw, f"site {site!r}") for site, raw in sorted(sites.items())}
        keys[wire.COORDINATOR] = _load_key(bytes(self.coordinator), "the coordinator")
        object.__setattr__(self, "sites", MappingProxyType(dict(sorted(sites.items()))))
        object.__setattr__(self, "coordinator", bytes(self.coordinator))
        object.__setattr__(self, "_keys", MappingProxyType(keys))

    def site_key(self, site: str) -> Ed25519PublicKey:
        if site == wire.COORDINATOR or site not in self._keys:
            raise UnknownSiteError(
                f"site {site!r} is not in the consortium registry; it cannot take part",
                site=site,
            )
        return self._keys[site]

    def coordinator_key(self) -> Ed25519PublicKey:
        return self._keys[wire.COORDINATOR]

    def key_of(self, party: str) -> Ed25519PublicKey:
        """The registered key of a site or of the coordinator."""
        return self.coordinator_key() if party == wire.COORDINATOR else self.site_key(party)

    def require_key(self, party: str, key: Ed25519PrivateKey | Ed25519PublicKey) -> None:
        """Refuse a key that is not the one pinned for ``party`` (e.g. a node's transport key)."""
        if public_key_bytes(key) != public_key_bytes(self.key_of(party)):
            who = "the coordinator" if party == wire.COORDINATOR else f"site {party!r}"
            raise KeyMismatchError(
                f"the key presented for {who} does not match the consortium registry",
                site=None if party == wire.COORDINATOR else party,
            )


def parse_registry_toml(text: str, where: str = "registry") -> Registry:
    """A registry from TOML text (see the module docstring); errors name ``where``."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from None
    unknown = set(doc) - {"coordinator", "sites"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown tables {sorted(unknown)}; expected [coordinator], [sites]"
        )
    coord = doc.get("coordinator")
    sites = doc.get("sites")
    if not isinstance(coord, dict) or set(coord) != {"public_key"}:
        raise ConfigError(f'{where}: [coordinator] must hold exactly public_key = "<hex>"')
    if not isinstance(sites, dict) or not sites:
        raise ConfigError(f'{where}: [sites] must list site-id = "<hex public key>" entries')

    def unhex(value: object, owner: str) -> bytes:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key of {owner} must be a hex string")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise ConfigError(f"{where}: key of {owner} is not valid hex") from None

    return Registry(
        sites={k: unhex(v, f"site {k!r}") for k, v in sites.items()},
        coordinator=unhex(coord["public_key"], "the coordinator"),
    )


def registry_to_toml(registry: Registry) -> str:
    """The registry as TOML text; ``parse_registry_toml`` reads it back unchanged."""
    lines = ["[coordinator]", f'public_key = "{registry.coordinator.hex()}"', "", "[sites]"]
    lines += [f'"{site}" = "{key.hex()}"' for site, key in registry.sites.items()]
    return "\n".join(lines) + "\n"
