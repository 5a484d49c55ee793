"""The consortium lead's files: FEDERATION.toml, CA, coordinator key, registry, site cards.

``her2fed consortium init DIR`` creates::

    DIR/federation.toml     what `consortium serve` and `study run` read (below)
    DIR/pki/ca.pem          the consortium CA            -> send to every site
    DIR/pki/ca.key          the CA's private key         (keep offline once certificates are made)
    DIR/pki/server.pem/.key the coordinator's TLS certificate (gateway, SuperLink, aggregation)
    DIR/coordinator.key     the coordinator's Ed25519 signing key (private)
    DIR/coordinator.pub     its public key               -> send to every site
    DIR/consortium.toml     the registry: coordinator + site Ed25519 keys -> send to every site
    DIR/sites/              pinned site cards (one per site, from `consortium add-site`)

FEDERATION.toml (paths relative to the file)::

    [federation]
    name = "her2fed consortium"
    sites = ["athens", "oslo", "munich"]     # a study runs on these; omit = every pinned site

    [superlink]
    address = "127.0.0.1:9093"      # Flower's one port for Control + Fleet + Runtime: loopback only
    database = "state/superlink.db" # node registrations and runs survive a restart

    [fleet]
    bind = "0.0.0.0:9092"           # the fleet gateway (forwards /v1/fleet/* only)
    public = "consortium.example.org:9092"   # what sites pass to `site start --superlink`

    [aggregation]
    bind = "0.0.0.0:9443"           # the gRPC/TLS aggregation service during `study run`
    public = "consortium.example.org:9443"   # sent to sites; they dial it only if its host is
                                             # one of their --coordinator-host names

    [tls]
    ca_cert = "pki/ca.pem"
    server_cert = "pki/server.pem"
    server_key = "pki/server.key"

    [keys]
    coordinator_key = "coordinator.key"
    consortium_registry = "consortium.toml"
    site_cards = "sites"

Unknown keys are errors. The SuperLink address must be a loopback address:
Flower's Control API (start runs, register nodes) has no authentication in
the open-source edition, so it must never be reachable from the network.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.federation.pki import RunPki, make_run_pki
from coordinator.federation.sites import SiteKeys
from her2fed.errors import Her2fedError, SpecError
from her2fed.secagg.registry import Registry, registry_to_toml
from site_agent.federation.card import SiteCard, public_key_der
from site_agent.federation.keys import (
    generate_key,
    load_consortium,
    read_private_key,
    write_private_key,
    write_public_key,
)
from site_agent.federation.wire import SITE_ID

LOOPBACK_NAMES = ("localhost",)
DEFAULT_PORTS = {"fleet": 9092, "superlink": 9093, "aggregation": 9443}
_SCHEMA: dict[str, set[str]] = {
    "federation": {"name", "sites"},
    "superlink": {"address", "database"},
    "fleet": {"bind", "public"},
    "aggregation": {"bind", "public"},
    "tls": {"ca_cert", "server_cert", "server_key"},
    "keys": {"coordinator_key", "consortium_registry", "site_cards"},
}
_REQUIRED: dict[str, set[str]] = {
    "superlink": {"address"},
    "fleet": {"bind", "public"},
    "aggregation": {"bind", "public"},
    "tls": {"ca_cert", "server_cert", "server_key"},
    "keys": {"coordinator_key", "consortium_registry", "site_cards"},
}


def split_address(text: str, where: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SpecError(where, f"{text!r} is not HOST:PORT", 'write e.g. "0.0.0.0:9443"')
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class FederationConfig:
    path: Path
    name: str
    sites: tuple[str, ...] | None
    """Expected sites of a study; None = every pinned site."""
    superlink: str
    database: Path | None
    fleet_bind: tuple[str, int]
    fleet_public: str
    aggregation_bind: tuple[str, int]
    aggregation_public: str
    ca_cert: Path
    server_cert: Path
    server_key: Path
    coordinator_key: Path
    registry: Path
    site_cards: Path

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def pki(self) -> RunPki:
        return RunPki(
            directory=self.ca_cert.parent,
            ca_cert=self.ca_cert,
            ca_key=None,
            server_cert=self.server_cert,
            server_key=self.server_key,
        )

    def require_files(self) -> None:
        """One error naming the first configured file that is missing."""
        for field_name, file in (
            ("tls.ca_cert", self.ca_cert),
            ("tls.server_cert", self.server_cert),
            ("tls.server_key", self.server_key),
            ("keys.coordinator_key", self.coordinator_key),
            ("keys.consortium_registry", self.registry),
        ):
            if not file.is_file():
                raise SpecError(
                    f"{self.path}: {field_name}",
                    f"{file} does not exist",
                    "run `her2fed consortium init` to create the consortium's files, or fix it",
                )

    def load_coordinator_key(self) -> Ed25519PrivateKey:
        try:
            return read_private_key(self.coordinator_key)
        except Her2fedError as err:
            raise SpecError(
                f"{self.path}: keys.coordinator_key", str(err).rstrip("."), "fix the path"
            ) from None

    def cards(self) -> dict[str, SiteCard]:
        """The pinned site cards, by site id (a card's file name must match its id)."""
        out: dict[str, SiteCard] = {}
        if not self.site_cards.is_dir():
            return out
        for file in sorted(self.site_cards.glob("*.toml")):
            card = SiteCard.load(file)
            if file.stem != card.site_id:
                raise SpecError(
                    str(file),
                    f"holds the card of {card.site_id!r}",
                    f"name it {card.site_id}.toml (use `her2fed consortium add-site`)",
                )
            out[card.site_id] = card
        return out

    def expected_sites(self, cards: dict[str, SiteCard]) -> list[str]:
        """The sites a study runs on; every one must have a pinned card."""
        sites = list(self.sites) if self.sites is not None else sorted(cards)
        missing = [s for s in sites if s not in cards]
        if missing:
            raise SpecError(
                f"{self.path}: federation.sites",
                f"no site card pinned for {missing}",
                "add each with `her2fed consortium add-site "
                f"{self.path} CARD.toml` (the card `her2fed site keys` wrote at the site)",
            )
        return sites


def _load_doc(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(
            str(path), "file not found", "give the federation.toml `her2fed consortium init` wrote"
        ) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise SpecError(str(path), f"not valid TOML ({err})", "fix the syntax") from None


def load_federation(path: str | Path) -> FederationConfig:
    path = Path(path)
    doc = _load_doc(path)
    for table, value in doc.items():
        if table not in _SCHEMA:
            raise SpecError(str(path), f"unknown table [{table}]", f"use {sorted(_SCHEMA)}")
        if not isinstance(value, dict):
            raise SpecError(f"{path}: {table}", "must be a table", f"write [{table}]")
        unknown = set(value) - _SCHEMA[table]
        if unknown:
            raise SpecError(
                f"{path}: {table}.{sorted(unknown)[0]}",
                "unknown key",
                f"use {sorted(_SCHEMA[table])}",
            )
    for table, keys in _REQUIRED.items():
        for key in sorted(keys):
            value = doc.get(table, {}).get(key)
            if not isinstance(value, str) or not value:
                raise SpecError(
                    f"{path}: {table}.{key}",
                    "is missing" if value is None else f"must be a string, got {value!r}",
                    "see docs/deploy.md for the file format",
                )
    fed = doc.get("federation", {})
    name = fed.get("name", "her2fed consortium")
    if not isinstance(name, str):
        raise SpecError(f"{path}: federation.name", "must be a string", 'e.g. name = "HER2+ EU"')
    sites = fed.get("sites")
    if sites is not None:
        if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
            raise SpecError(
                f"{path}: federation.sites", "must be a list of site ids", 'e.g. ["athens", "oslo"]'
            )
        bad = [s for s in sites if SITE_ID.fullmatch(s) is None]
        if bad or len(set(sites)) != len(sites):
            raise SpecError(
                f"{path}: federation.sites",
                f"ids must be unique plain ids, got {sites}",
                "use letters, digits, '.', '_', '-'",
            )
    link = doc["superlink"]["address"]
    host, _ = split_address(link, f"{path}: superlink.address")
    if not is_loopback(host):
        raise SpecError(
            f"{path}: superlink.address",
            f"{link} is not a loopback address, so Flower's unauthenticated Control API would be "
            "reachable from the network",
            'bind the SuperLink to "127.0.0.1:PORT"; sites reach the fleet gateway ([fleet])',
        )
    base = path.parent
    database = doc["superlink"].get("database")
    if database is not None and (not isinstance(database, str) or not database):
        raise SpecError(f"{path}: superlink.database", "must be a file path", "or omit it")
    fleet_bind = split_address(doc["fleet"]["bind"], f"{path}: fleet.bind")
    split_address(doc["fleet"]["public"], f"{path}: fleet.public")
    agg_bind = split_address(doc["aggregation"]["bind"], f"{path}: aggregation.bind")
    split_address(doc["aggregation"]["public"], f"{path}: aggregation.public")
    return FederationConfig(
        path=path,
        name=name,
        sites=tuple(sites) if sites is not None else None,
        superlink=link,
        database=base / database if database else None,
        fleet_bind=fleet_bind,
        fleet_public=doc["fleet"]["public"],
        aggregation_bind=agg_bind,
        aggregation_public=doc["aggregation"]["public"],
        ca_cert=base / doc["tls"]["ca_cert"],
        server_cert=base / doc["tls"]["server_cert"],
        server_key=base / doc["tls"]["server_key"],
        coordinator_key=base / doc["keys"]["coordinator_key"],
        registry=base / doc["keys"]["consortium_registry"],
        site_cards=base / doc["keys"]["site_cards"],
    )


# ---------------------------------------------------------------------- registry


def load_registry(path: Path) -> Registry:
    """The consortium registry, which may list no site yet (right after ``consortium init``)."""
    try:
        return load_consortium(path)
    except Her2fedError as err:
        raise SpecError(
            str(path), str(err).removeprefix(f"{path}: "), "restore it (`consortium init` wrote it)"
        ) from None


def site_keys(registry: Registry) -> SiteKeys:
    """The aggregation service's view of the registry (site id -> Ed25519 public key)."""
    return SiteKeys({site: registry.site_key(site) for site in registry.sites})


def _write_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _federation_toml(
    *,
    name: str,
    sites: Sequence[str],
    public_host: str,
    bind: str,
    ports: dict[str, int],
) -> str:
    listed = ", ".join(f'"{s}"' for s in sites)
    sites_line = (
        f"sites = [{listed}]"
        if sites
        else '# sites = ["athens", "oslo"]   # default: every pinned site'
    )
    host = f"[{public_host}]" if ":" in public_host else public_host
    bind_host = f"[{bind}]" if ":" in bind else bind
    return f"""# her2fed federation: read by `her2fed consortium serve` and `her2fed study run`.
# Paths are relative to this file; docs/deploy.md explains every key.
[federation]
name = "{name}"
{sites_line}

# Flower's SuperLink: one port for its Control, Fleet and Runtime APIs. Loopback only:
# the Control API (start runs, register nodes) has no authentication.
[superlink]
address = "127.0.0.1:{ports["superlink"]}"
database = "state/superlink.db"

# The fleet gateway: the only Flower port sites reach (forwards /v1/fleet/* only).
# Sites run: her2fed site start SITE.toml --superlink <public>
[fleet]
bind = "{bind_host}:{ports["fleet"]}"
public = "{host}:{ports["fleet"]}"

# The aggregation service (gRPC/TLS) while `her2fed study run` runs. Sites dial <public>
# only if its host is one of their --coordinator-host names (default: the --superlink host).
[aggregation]
bind = "{bind_host}:{ports["aggregation"]}"
public = "{host}:{ports["aggregation"]}"

[tls]
ca_cert = "pki/ca.pem"
server_cert = "pki/server.pem"
server_key = "pki/server.key"

[keys]
coordinator_key = "coordinator.key"
consortium_registry = "consortium.toml"
site_cards = "sites"
"""


@dataclass(frozen=True)
class InitResult:
    federation: Path
    ca_cert: Path
    coordinator_pub: Path
    registry: Path
    ca_key: Path


def init_consortium(
    directory: str | Path,
    *,
    hosts: Sequence[str],
    sites: Sequence[str] = (),
    name: str = "her2fed consortium",
    bind: str = "0.0.0.0",
    ports: dict[str, int] | None = None,
    valid_days: int = 825,
) -> InitResult:
    """Create a consortium's CA, server certificate, coordinator key, empty registry and config."""
    directory = Path(directory)
    federation = directory / "federation.toml"
    if federation.exists():
        raise SpecError(
            str(federation),
            "exists already: this directory holds a consortium",
            "use it as it is, or choose a new directory (a new CA would lock out every site)",
        )
    if not hosts:
        raise SpecError(
            "--host", "is missing", "give the name (or IP) sites use to reach this host"
        )
    bad = [s for s in sites if SITE_ID.fullmatch(s) is None]
    if bad or len(set(sites)) != len(sites):
        raise SpecError(
            "--site", f"site ids must be unique plain ids, got {list(sites)}", "fix them"
        )
    all_ports = {**DEFAULT_PORTS, **(ports or {})}
    directory.mkdir(parents=True, exist_ok=True)
    names = tuple(dict.fromkeys([*hosts, "127.0.0.1", "localhost"]))
    pki = make_run_pki(directory / "pki", names, name=name, valid_days=valid_days)
    key = generate_key()
    write_private_key(key, directory / "coordinator.key")
    pub = write_public_key(key, directory / "coordinator.pub")
    registry = directory / "consortium.toml"
    registry.write_text(
        f'[coordinator]\npublic_key = "{key.public_key().public_bytes_raw().hex()}"\n\n[sites]\n',
        encoding="utf-8",
    )
    (directory / "sites").mkdir(exist_ok=True)
    _write_private_dir(directory / "state")
    federation.write_text(
        _federation_toml(name=name, sites=sites, public_host=hosts[0], bind=bind, ports=all_ports),
        encoding="utf-8",
    )
    assert pki.ca_key is not None
    return InitResult(federation, pki.ca_cert, pub, registry, pki.ca_key)


# ---------------------------------------------------------------------- add-site


@dataclass(frozen=True)
class AddResult:
    card: SiteCard
    changed: bool
    replaced: SiteCard | None
    sites: tuple[str, ...]


def add_site(config: FederationConfig, card: SiteCard, *, replace: bool = False) -> AddResult:
    """Pin a site's card and rewrite the registry; refuses conflicts unless ``replace``."""
    if config.sites is not None and card.site_id not in config.sites:
        raise SpecError(
            f"{config.path}: federation.sites",
            f"does not list {card.site_id!r} (the card's site id)",
            f"add it to sites there first, or check the card (sites: {list(config.sites)})",
        )
    cards = config.cards()
    old = cards.get(card.site_id)
    if old is not None and _same(old, card):
        return AddResult(card, False, None, tuple(sorted(cards)))
    if old is not None and not replace:
        raise SpecError(
            str(config.site_cards / f"{card.site_id}.toml"),
            f"site {card.site_id!r} is pinned with other keys",
            "if the site made new keys (confirm the fingerprints by phone), run again with "
            "--replace",
        )
    for other in cards.values():
        if other.site_id == card.site_id:
            continue
        if other.public_hex == card.public_hex or public_key_der(
            other.node_public_key
        ) == public_key_der(card.node_public_key):
            raise SpecError(
                str(config.site_cards / f"{other.site_id}.toml"),
                f"site {other.site_id!r} is pinned with the same key as {card.site_id!r}",
                "every site makes its own keys with `her2fed site keys`; ask for a fresh card",
            )
    registry = load_registry(config.registry)
    config.site_cards.mkdir(parents=True, exist_ok=True)
    (config.site_cards / f"{card.site_id}.toml").write_text(card.to_toml(), encoding="utf-8")
    cards[card.site_id] = card
    updated = Registry(
        sites={sid: c.public_key.public_bytes_raw() for sid, c in sorted(cards.items())},
        coordinator=registry.coordinator,
    )
    tmp = config.registry.with_suffix(".tmp")
    tmp.write_text(registry_to_toml(updated), encoding="utf-8")
    os.replace(tmp, config.registry)
    return AddResult(card, True, old, tuple(sorted(cards)))


def _same(a: SiteCard, b: SiteCard) -> bool:
    return (
        a.public_hex == b.public_hex
        and public_key_der(a.node_public_key) == public_key_der(b.node_public_key)
        and a.country == b.country
    )
