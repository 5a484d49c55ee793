"""Test helper: the real steps that make sites ready to answer a study.

``her2fed local`` and the site agents answer only studies that each site's
privacy officer approved, signed by the lead key pinned at the site. Tests
take the same steps a consortium rehearsal does, through the real commands:
``study keygen`` (once per test session), ``study sign``, and per site
``site keys`` and ``site approve --yes``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tempfile
from collections.abc import Iterable
from pathlib import Path

from coordinator.cli import main

_LEAD_DIR = Path(tempfile.mkdtemp(prefix="her2fed-test-lead-"))
LEAD_KEY = _LEAD_DIR / "lead.key"
LEAD_PUB = _LEAD_DIR / "lead.pub"


def her2fed(*args: str) -> str:
    """Run a her2fed command in this process; fail the test with its stderr if it fails."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    assert code == 0, f"her2fed {' '.join(args)} exited {code}: {err.getvalue()}"
    return out.getvalue()


def approve(study: Path, site_configs: Iterable[Path | str]) -> Path:
    """Sign ``study`` with the session's lead key and approve it at every site; the .sig path."""
    if not LEAD_KEY.exists():
        her2fed("study", "keygen", "--out", str(LEAD_KEY))
    digest = hashlib.sha256(Path(study).read_bytes()).hexdigest()[:16]
    sig = _LEAD_DIR / f"{digest}.sig"
    if not sig.exists():
        her2fed("study", "sign", str(study), "--key", str(LEAD_KEY), "--out", str(sig))
    for cfg in dict.fromkeys(map(str, site_configs)):
        her2fed("site", "keys", cfg)
        her2fed(
            "site", "approve", cfg, str(study), "--signature", str(sig),
            "--lead-key", str(LEAD_PUB), "--yes",
        )  # fmt: skip
    return sig
