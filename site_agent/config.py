"""Site configuration (TOML): who the site is, where its tables are, its policy.

Paths are relative to the config file, so a site directory can be moved or
copied whole. Unknown keys are errors: a misspelt policy key must not
silently fall back to a default the privacy officer did not choose.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from her2fed.errors import SpecError

TABLE_SUFFIXES = (".csv", ".parquet")
REGISTRY_KEYS = ("patients", "treatments", "progressions", "care_events")


@dataclass(frozen=True)
class Policy:
    """The site's release policy; every key has the safe default of DESIGN.md."""

    min_cell: int = 5
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


@dataclass(frozen=True)
class SiteConfig:
    path: Path
    site_id: str
    country: str
    tables: dict[str, Path] = field(default_factory=dict)
    registry: dict[str, Path] = field(default_factory=dict)
    policy: Policy = Policy()


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
    for name, spec in data.items():
        key = f"data.{name}"
        if not isinstance(spec, dict):
            raise SpecError(
                _where(path, key), "must be a table", f'write [{key}] path = "file.csv"'
            )
        if name == "registry":
            bad = set(spec) - set(REGISTRY_KEYS)
            if bad:
                raise SpecError(
                    _where(path, key), f"unknown key(s) {sorted(bad)}", f"use {list(REGISTRY_KEYS)}"
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
        path, site["id"], country, tables, registry, _policy(doc.get("policy", {}), path)
    )


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
            raise SpecError(
                _where(path, f"policy.{key}"),
                f"must be a {want.__name__}, got {value!r}",
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
