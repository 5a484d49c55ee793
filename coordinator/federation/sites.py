"""The consortium's key registry: which Ed25519 key speaks for which site.

A TOML file kept by the consortium lead, one line per site::

    [sites]
    athens-1 = "5f0c…64 hex characters…"
    oslo = "…"

The aggregation service accepts a site's stream only if its hello is signed
by the key pinned here, and every reply the site sends later is checked
against the same key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from her2fed.errors import SpecError
from site_agent.federation.keys import KeyFileError, parse_public_hex, public_hex
from site_agent.federation.wire import SITE_ID


class SiteKeys(Mapping[str, Ed25519PublicKey]):
    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        for site in keys:
            if SITE_ID.fullmatch(site) is None:
                raise SpecError(
                    "site key registry",
                    f"site id {site!r} is not a plain id",
                    "use letters, digits, '.', '_' and '-' (at most 64, not starting with one "
                    "of '.', '_', '-')",
                )
        self._keys = dict(keys)

    def __getitem__(self, site: str) -> Ed25519PublicKey:
        return self._keys[site]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def load(cls, path: str | Path) -> SiteKeys:
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpecError(
                str(path), "file not found", "give the consortium key registry"
            ) from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise SpecError(str(path), f"not valid TOML ({err})", "fix the syntax") from None
        unknown = set(doc) - {"sites"}
        if unknown or not isinstance(doc.get("sites"), dict):
            raise SpecError(
                str(path), "expected exactly one table [sites]", 'write [sites] then site = "hex"'
            )
        keys: dict[str, Ed25519PublicKey] = {}
        for site, text in doc["sites"].items():
            if not isinstance(text, str):
                raise SpecError(f"{path}: sites.{site}", "not a string", "quote the hex key")
            try:
                keys[site] = parse_public_hex(text, f"{path}: sites.{site}")
            except KeyFileError as err:
                raise SpecError(f"{path}: sites.{site}", str(err), "paste the 64-hex key") from None
        return cls(keys)

    def dump(self, path: str | Path) -> Path:
        path = Path(path)
        lines = ["# her2fed consortium key registry: site id = Ed25519 public key (hex)", "[sites]"]
        lines += [f'"{site}" = "{public_hex(key)}"' for site, key in sorted(self._keys.items())]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
