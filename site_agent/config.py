"""Site configuration (TOML): who the site is, where its tables are, its policy, its keys.

Paths are relative to the config file, so a site directory can be moved or
copied whole. A ``[data.NAME]`` table with a ``url`` names a PostgreSQL source
instead of a file (an OMOP CDM schema or SQL queries; docs/omop.md); its
password is never part of the config. Unknown keys are errors: a misspelt policy key must not
silently fall back to a default the privacy officer did not choose.

``[keys]`` names the files a deployed site needs (``her2fed site start``)::

    [keys]
    site_key = "keys/site.key"                        # Ed25519 identity, private (site keys)
    node_key = "keys/node.key"                        # Flower SuperNode key, private (site keys)
    coordinator_key = "consortium/coordinator.pub"    # from the consortium lead
    ca_cert = "consortium/ca.pem"                     # from the consortium lead
    consortium_registry = "consortium/consortium.toml"  # from the consortium lead
    lead_key = "consortium/lead.pub"                  # the lead's study-signing key (approvals)
    allowlist = "allowlist.toml"                      # optional: app bundles this site accepts

Every key is optional and defaults to the path shown (``allowlist`` to "the
installed her2fed version only"). Parsing only resolves the paths; whether the
files exist is checked by ``require_key_files`` when the site starts, because
``site check`` and ``her2fed local`` need no keys. ``lead_key`` is read by the
study-approval commands (``site_agent.site_files``), not required to start.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from her2fed.errors import SpecError
from site_agent.omop import OmopSource, parse_db_registry
from site_agent.sql_source import DbTable, is_db_spec, parse_db_table

TABLE_SUFFIXES = (".csv", ".parquet")
REGISTRY_KEYS = ("patients", "treatments", "progressions", "care_events")


@dataclass(frozen=True)
class Policy:
    """The site's release policy; every key has the safe default of DESIGN.md."""

    min_cell: int = 5
    min_at_risk: int = 10
    min_cohort: int = 10
    min_sites: int = 3
    min_grid_days: int = 30
    per_site_release: bool = False
    max_levels: int = 40
    cox_max_params_per_row: float = 0.33
    cox_max_iterations: int = 50
    # empty = everything the study may ask for
    allowed_kinds: tuple[str, ...] = ()
    allowed_datasets: tuple[str, ...] = ()
    allowed_endpoints: tuple[str, ...] = ()
    allowed_covariates: tuple[str, ...] = ()
    # Differential privacy (docs/privacy.md). 0 = off: summaries stay exact. A positive
    # value is the least total noise variance this site accepts; a study must declare
    # at least this much or it is refused.
    dp_noise_variance: float = 0.0
    # budget rho each study may spend here (docs/privacy.md; 0.5 is eps ~ 5.8 at delta 1e-6)
    dp_rho_per_study: float = 0.5
    # rows one patient may add to a per-line or registry summary (the sensitivity bound)
    dp_max_lines_per_patient: int = 10


RESEARCH_POLICY = Policy(
    min_grid_days=1,
    min_cohort=0,
    min_sites=1,
    cox_max_params_per_row=float("inf"),
    min_cell=0,
    min_at_risk=0,
)
"""For comparing the statistics with R and lifelines on the pooled rows (tests, benchmarks):
1-day grids, sites that may hold no rows, and no release rules (they coarsen the release).
Never a site's policy."""


KEY_DEFAULTS: dict[str, str] = {
    "site_key": "keys/site.key",
    "node_key": "keys/node.key",
    "coordinator_key": "consortium/coordinator.pub",
    "ca_cert": "consortium/ca.pem",
    "consortium_registry": "consortium/consortium.toml",
}
"""Default key paths, relative to site.toml (the layout ``her2fed site keys`` creates)."""
OPTIONAL_KEY_DEFAULTS: dict[str, str] = {"lead_key": "consortium/lead.pub"}
"""Files with a default path that ``site start`` does not require."""


@dataclass(frozen=True)
class KeyPaths:
    """Absolute-or-config-relative paths of the site's keys and the consortium's public files."""

    site_key: Path
    node_key: Path
    coordinator_key: Path
    ca_cert: Path
    consortium_registry: Path
    lead_key: Path
    allowlist: Path | None = None

    @classmethod
    def defaults(cls, config_path: Path) -> KeyPaths:
        base = config_path.parent
        paths = {**KEY_DEFAULTS, **OPTIONAL_KEY_DEFAULTS}
        return cls(**{k: base / v for k, v in paths.items()})


@dataclass(frozen=True)
class SiteConfig:
    path: Path
    site_id: str
    country: str
    tables: dict[str, Path] = field(default_factory=dict)
    registry: dict[str, Path] = field(default_factory=dict)
    policy: Policy = Policy()
    keys: KeyPaths | None = None
    """Set by ``parse_site`` (defaults without a [keys] table); None for in-memory configs."""
    registry_db: OmopSource | None = None
    """``[data.registry]`` given as a database (``url = ...``) instead of files."""
    db_tables: dict[str, DbTable] = field(default_factory=dict)
    """Generic tables given as ``[data.NAME] url = ..., query = ...``."""

    @property
    def has_registry(self) -> bool:
        return bool(self.registry) or self.registry_db is not None

    @property
    def key_paths(self) -> KeyPaths:
        return self.keys or KeyPaths.defaults(self.path)


def _where(path: Path, key: str) -> str:
    return f"{path}: {key}"


def parse_site(doc: dict[str, Any], path: Path) -> SiteConfig:
    base = path.parent
    unknown = set(doc) - {"site", "data", "policy", "keys"}
    if unknown:
        raise SpecError(
            str(path),
            f"unknown table(s) {sorted(unknown)}",
            "use only [site], [data.NAME], [policy] and [keys]",
        )
    site = doc.get("site")
    if not isinstance(site, dict) or not isinstance(site.get("id"), str) or not site["id"]:
        raise SpecError(
            _where(path, "site.id"),
            "is missing",
            'add [site] with id = "hospital-1" and country = "GR"',
        )
    country = site.get("country")
    if not isinstance(country, str) or not country:
        raise SpecError(_where(path, "site.country"), "is missing", 'add country = "GR" to [site]')
    data = doc.get("data", {})
    if not isinstance(data, dict) or not data:
        raise SpecError(
            _where(path, "data"),
            "no data tables are declared",
            'add [data.analysis] with path = "analysis.csv"',
        )
    tables: dict[str, Path] = {}
    registry: dict[str, Path] = {}
    registry_db: OmopSource | None = None
    db_tables: dict[str, DbTable] = {}
    for name, spec in data.items():
        key = f"data.{name}"
        if not isinstance(spec, dict):
            raise SpecError(
                _where(path, key), "must be a table", f'write [{key}] path = "file.csv"'
            )
        if is_db_spec(spec):  # a database source (docs/omop.md)
            if name == "registry":
                registry_db = parse_db_registry(spec, _where(path, key), base)
            else:
                db_tables[name] = parse_db_table(spec, _where(path, key), base)
            continue
        if name == "registry":
            bad = set(spec) - set(REGISTRY_KEYS)
            if bad:
                raise SpecError(
                    _where(path, key),
                    f"unknown key(s) {sorted(bad)}",
                    f'use {list(REGISTRY_KEYS)}, or url = "postgresql://..." for a database',
                )
            registry = {k: base / str(v) for k, v in spec.items()}
            continue
        if set(spec) != {"path"} or not isinstance(spec["path"], str):
            raise SpecError(
                _where(path, key),
                "must have exactly one key, path",
                f'write [{key}] path = "{name}.csv" (CSV or Parquet)',
            )
        file = base / spec["path"]
        if file.suffix.lower() not in TABLE_SUFFIXES:
            raise SpecError(
                _where(path, f"{key}.path"),
                f"unsupported file type {file.suffix!r}",
                "give a .csv or .parquet file",
            )
        tables[name] = file
    return SiteConfig(
        path,
        site["id"],
        country,
        tables,
        registry,
        _policy(doc.get("policy", {}), path),
        _keys(doc.get("keys", {}), path),
        registry_db,
        db_tables,
    )


def _keys(raw: Any, path: Path) -> KeyPaths:
    if not isinstance(raw, dict):
        raise SpecError(
            _where(path, "keys"), "must be a table", 'write [keys] with site_key = "keys/site.key"'
        )
    known_defaults = {**KEY_DEFAULTS, **OPTIONAL_KEY_DEFAULTS}
    known = [*known_defaults, "allowlist"]
    values: dict[str, Path] = {}
    for key, value in raw.items():
        if key not in known:
            raise SpecError(_where(path, f"keys.{key}"), "unknown key", f"use {known}")
        if not isinstance(value, str) or not value:
            raise SpecError(
                _where(path, f"keys.{key}"),
                f"must be a file path, got {value!r}",
                f'e.g. {key} = "{known_defaults.get(key, "allowlist.toml")}" (relative path)',
            )
        values[key] = path.parent / value
    defaults = KeyPaths.defaults(path)
    return KeyPaths(
        site_key=values.get("site_key", defaults.site_key),
        node_key=values.get("node_key", defaults.node_key),
        coordinator_key=values.get("coordinator_key", defaults.coordinator_key),
        ca_cert=values.get("ca_cert", defaults.ca_cert),
        consortium_registry=values.get("consortium_registry", defaults.consortium_registry),
        lead_key=values.get("lead_key", defaults.lead_key),
        allowlist=values.get("allowlist"),
    )


_FROM_LEAD = "the consortium lead sends it (her2fed consortium init writes it)"
KEY_FILE_FIXES: dict[str, str] = {
    "site_key": "run `her2fed site keys {config}` to create the site's keys, or point "
    "keys.site_key in {config} at the existing Ed25519 key",
    "node_key": "run `her2fed site keys {config}` to create the site's keys, or point "
    "keys.node_key in {config} at the existing SuperNode key",
    "coordinator_key": "copy coordinator.pub there (" + _FROM_LEAD + "), or set "
    "keys.coordinator_key in {config}",
    "ca_cert": "copy the consortium's ca.pem there (" + _FROM_LEAD + "), or set keys.ca_cert in "
    "{config}",
    "consortium_registry": "copy consortium.toml there (" + _FROM_LEAD + " and updates it after "
    "every `her2fed consortium add-site`), or set keys.consortium_registry in {config}",
    "allowlist": "write the allowlist (`her2fed-site-agent --print-fab` prints the entry of the "
    "installed version) or remove keys.allowlist from {config}",
}


def require_key_files(cfg: SiteConfig) -> KeyPaths:
    """The site's key paths, after checking every file exists (one error naming the first gap)."""
    keys = cfg.key_paths
    for name in [*KEY_DEFAULTS, "allowlist"]:
        file: Path | None = getattr(keys, name)
        if file is not None and not file.is_file():
            problem = "is a directory, not a file" if file.is_dir() else "does not exist"
            raise SpecError(
                _where(cfg.path, f"keys.{name}"),
                f"{file} {problem}",
                KEY_FILE_FIXES[name].format(config=cfg.path),
            )
    return keys


def _policy(raw: Any, path: Path) -> Policy:
    if not isinstance(raw, dict):
        raise SpecError(
            _where(path, "policy"), "must be a table", "write [policy] with key = value lines"
        )
    defaults = Policy()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if not hasattr(defaults, key):
            raise SpecError(
                _where(path, f"policy.{key}"),
                "unknown policy key",
                f"use {sorted(defaults.__dataclass_fields__)}",
            )
        want = type(getattr(defaults, key))
        if want is tuple:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SpecError(
                    _where(path, f"policy.{key}"),
                    f"must be a list of names, got {value!r}",
                    f'e.g. {key} = ["km", "cox"] (omit the key to allow everything)',
                )
            values[key] = tuple(value)
            continue
        if want is float and type(value) is int:
            value = float(value)
        if type(value) is not want or (want in (int, float) and value < 0):
            kind = {bool: "true or false", int: "a whole number >= 0", float: "a number >= 0"}
            raise SpecError(
                _where(path, f"policy.{key}"),
                f"must be {kind.get(want, want.__name__)}, got {value!r}",
                f"e.g. {key} = {getattr(defaults, key)!r}".replace("False", "false"),
            )
        values[key] = value
    return Policy(**values)


def load_site(path: str | Path) -> SiteConfig:
    """Read and validate a site config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(p), "file not found", "check the path to the site config") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(
            str(p), f"is not valid TOML ({err})", "fix the TOML syntax at that line"
        ) from None
    return parse_site(doc, p)
