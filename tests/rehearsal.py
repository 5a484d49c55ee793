"""Test helper: the real steps that make sites ready to answer a study.

``her2fed local`` and the site agents answer only studies that each site's
privacy officer approved, signed by the lead key pinned at the site. Tests
take the same steps a rehearsal does (``coordinator.rehearsal``), with one
lead key per test session.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

from coordinator.rehearsal import approve_everywhere

_LEAD_DIR = Path(tempfile.mkdtemp(prefix="her2fed-test-lead-"))


def approve(study: Path, site_configs: Iterable[Path | str]) -> Path:
    """Sign ``study`` with the session's lead key and approve it at every site; the .sig path."""
    return approve_everywhere(Path(study), site_configs, _LEAD_DIR)
