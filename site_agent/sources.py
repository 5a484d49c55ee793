"""One entry point from a site config to its tables, whether files or a database.

The site agent and ``her2fed site check`` call these so that neither needs to
know where a site keeps its data; both then run the same validation.
"""

from __future__ import annotations

import pandas as pd

from her2fed.errors import DataError
from site_agent.config import SiteConfig
from site_agent.data import load_table
from site_agent.omop import read_omop, read_queries
from site_agent.registry import Origin, Registry, load_registry, validate_registry
from site_agent.sql_source import load_db_table


def declared_tables(cfg: SiteConfig) -> list[str]:
    """Names of the generic tables the site declares, files and queries alike."""
    return [*cfg.tables, *cfg.db_tables]


def load_site_table(cfg: SiteConfig, name: str) -> pd.DataFrame:
    """A generic table by name, from its file or its query."""
    if name in cfg.db_tables:
        return load_db_table(cfg.db_tables[name], name)
    if name in cfg.tables:
        return load_table(cfg.tables[name], f"{cfg.path} [data.{name}]")
    raise DataError(
        f"{cfg.path}: data.{name}",
        f"the study reads dataset {name!r}, which this site does not declare",
        f'add [data.{name}] path = "{name}.csv" to the site config',
    )


def load_site_registry_noted(cfg: SiteConfig) -> tuple[Registry, list[str]]:
    """The validated registry plus notes about how it was read (for ``site check``)."""
    src = cfg.registry_db
    if src is None:
        return load_registry(cfg.registry), []
    if src.schema is not None:
        frames, report = read_omop(src)
        notes = report.lines()
    else:
        frames, notes = read_queries(src), [f"registry read with the queries of {cfg.path}"]
    origins = {
        table: Origin(f"{src.label}: registry table {table!r}", f"{src.label} {table}")
        for table in frames
    }
    return validate_registry(frames, origins), notes


def load_site_registry(cfg: SiteConfig) -> Registry:
    """The validated registry, from files or from the database the config names."""
    return load_site_registry_noted(cfg)[0]
