"""Which Flower app bundles this site accepts a run for.

A run names a FAB by id, version and SHA-256 hash. The site agent accepts a
run only if all three match an entry here *and* the bundle's bytes hash to
that value; otherwise it answers Flower with an error and runs nothing.
Accepting a run still never means executing the bundle: the agent always
runs its own installed ClientApp. The allowlist is how the site notices that
a coordinator asks for anything else (another app, a modified bundle, an
older or newer her2fed).

File format (TOML), kept by the site's IT / privacy officer::

    [[app]]
    id = "her2fed/her2fed-study"
    version = "0.1.0"
    sha256 = "c3cc5e46…"          # as printed by `her2fed-site-agent --print-fab`

Without a file the allowlist holds exactly the bundle of the installed
her2fed version, computed locally.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from her2fed import __version__
from her2fed.errors import SpecError
from site_agent.federation.fab import her2fed_fab

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class AllowedApp:
    fab_id: str
    version: str
    sha256: str


class Allowlist:
    def __init__(self, apps: Iterable[AllowedApp]) -> None:
        self.apps = frozenset(apps)

    @classmethod
    def installed(cls) -> Allowlist:
        fab = her2fed_fab(__version__)
        return cls([AllowedApp(fab.fab_id, fab.version, fab.sha256)])

    @classmethod
    def load(cls, path: str | Path) -> Allowlist:
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpecError(
                str(path), "allowlist not found", "give the path of allowlist.toml"
            ) from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise SpecError(str(path), f"not valid TOML ({err})", "fix the syntax") from None
        if set(doc) - {"app"} or not isinstance(doc.get("app"), list):
            raise SpecError(str(path), "expected [[app]] tables only", "see docs/federation.md")
        apps = []
        for i, entry in enumerate(doc["app"]):
            where = f"{path}: app[{i}]"
            if not isinstance(entry, dict) or set(entry) != {"id", "version", "sha256"}:
                raise SpecError(where, "needs exactly id, version, sha256", "add the missing keys")
            if not all(isinstance(entry[k], str) for k in entry):
                raise SpecError(where, "values must be strings", "quote them")
            if _HEX64.fullmatch(entry["sha256"]) is None:
                raise SpecError(where, "sha256 is not 64 lowercase hex", "paste the full hash")
            apps.append(AllowedApp(entry["id"], entry["version"], entry["sha256"]))
        return cls(apps)

    def check(
        self, fab_id: str, fab_version: str, run_fab_hash: str, fab_hash: str, content: bytes
    ) -> str | None:
        """``None`` if the run may proceed, else the reason it is refused (safe to send)."""
        actual = hashlib.sha256(content).hexdigest()
        if actual != fab_hash or actual != run_fab_hash:
            return "the app bundle's bytes do not match its announced hash"
        if AllowedApp(fab_id, fab_version, actual) not in self.apps:
            return (
                f"app bundle {fab_id} {fab_version} (sha256 {actual[:12]}…) is not on this "
                "site's allowlist; the site runs only the her2fed version it installed"
            )
        return None
