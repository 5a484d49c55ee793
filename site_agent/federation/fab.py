"""her2fed's Flower app bundle (FAB): a manifest that names installed code, and nothing else.

Flower ships a run's code to its nodes as a FAB (a zip with pyproject.toml).
her2fed's FAB carries no Python at all: its components point at modules of
the installed her2fed package (``coordinator.federation.serverapp:app``,
``site_agent.federation.clientapp:app``) and its config declares the run
settings the ServerApp reads. It is built byte-for-byte reproducibly with
Flower's own builder (fixed timestamps, sorted entries), so a site can
compute the hash of the bundle that belongs to its installed version and put
exactly that on its allowlist.

A site never installs or imports a FAB's content either way: the site agent
runs its installed ClientApp and only uses the FAB's id, version and hash to
decide whether the coordinator asked for the app the site installed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from her2fed import __version__

FAB_PUBLISHER = "her2fed"
FAB_NAME = "her2fed-study"
FAB_ID = f"{FAB_PUBLISHER}/{FAB_NAME}"
SERVERAPP = "coordinator.federation.serverapp:app"
CLIENTAPP = "site_agent.federation.clientapp:app"

RUN_CONFIG_DEFAULTS: dict[str, str | int | float] = {
    "session-id": "",
    "study-hash": "",
    "aggregation-address": "",
    "expected-sites": 0,
    "node-ids": "",
    "open-timeout": 60.0,
    "nodes-timeout": 60.0,
    "status-path": "",
    "flower-ping-rounds": 0,
}
"""Run settings the ServerApp reads (overridden per run by the coordinator)."""


@dataclass(frozen=True)
class FabBundle:
    fab_id: str
    version: str
    sha256: str
    content: bytes


def _toml_value(value: str | int | float) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def pyproject(
    version: str = __version__, serverapp: str = SERVERAPP, clientapp: str = CLIENTAPP
) -> str:
    config = "\n".join(f"{k} = {_toml_value(v)}" for k, v in RUN_CONFIG_DEFAULTS.items())
    return f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{FAB_NAME}"
version = "{version}"
description = "her2fed study session: opens the aggregation channel at each site (no code inside)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "{FAB_PUBLISHER}"

[tool.flwr.app.components]
serverapp = "{serverapp}"
clientapp = "{clientapp}"

[tool.flwr.app.config]
{config}
"""


def build_fab(files: Mapping[str, bytes]) -> FabBundle:
    """Any FAB from in-memory files (must include pyproject.toml), with its id, version, hash."""
    import tomllib

    from flwr.cli.build import build_fab_from_files

    content, _ = build_fab_from_files(dict(files))
    doc = tomllib.loads(files["pyproject.toml"].decode("utf-8"))
    fab_id = f"{doc['tool']['flwr']['app']['publisher']}/{doc['project']['name']}"
    return FabBundle(
        fab_id, str(doc["project"]["version"]), hashlib.sha256(content).hexdigest(), content
    )


def her2fed_fab(version: str = __version__) -> FabBundle:
    """The canonical FAB of this her2fed version (what the coordinator submits)."""
    return build_fab({"pyproject.toml": pyproject(version).encode("utf-8")})
