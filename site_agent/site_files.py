"""Where a site keeps its approval store, audit log and the keys they need.

``site_agent.config`` owns ``[keys]`` (``SiteConfig.key_paths``); this
module only adds the officer's files around it, so the approval and audit
commands and the session handler agree on one layout:

    site.toml
    audit.jsonl, audit.jsonl.head   the signed audit log and its anchor
    approvals.toml                  the officer's study approvals
    keys/site.key                   [keys] site_key: signs the audit log
    consortium/lead.pub             [keys] lead_key: the consortium lead's public key
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from site_agent.config import SiteConfig

AUDIT_LOG_NAME = "audit.jsonl"
APPROVALS_NAME = "approvals.toml"
LEAD_KEY_FIELD = "lead_key"
SITE_KEY_FIELD = "site_key"
DEFAULT_LEAD_KEY = "consortium/lead.pub"


@dataclass(frozen=True)
class SiteFiles:
    """The officer's files of one site, as absolute or config-relative paths."""

    config: Path
    audit_log: Path
    approvals: Path
    lead_key: Path
    site_key: Path


def site_files(cfg: SiteConfig) -> SiteFiles:
    """Paths of the approval store, audit log and keys of a loaded site config."""
    base = cfg.path.parent
    keys = cfg.key_paths
    return SiteFiles(
        config=cfg.path,
        audit_log=base / AUDIT_LOG_NAME,
        approvals=base / APPROVALS_NAME,
        lead_key=keys.lead_key,
        site_key=keys.site_key,
    )
