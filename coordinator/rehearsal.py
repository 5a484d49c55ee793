"""The real steps that make sites ready to answer a study, for rehearsals and benchmarks.

Sites answer only studies their privacy officer approved, signed by the lead
key pinned at the site. A rehearsal on synthetic sites (tests, benchmarks)
takes the same steps through the same commands a consortium does:
``study keygen`` (once), ``study sign``, and per site ``site keys`` and
``site approve --yes``. ``make demo`` spells them out in the Makefile.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

from her2fed.errors import Her2fedError


def her2fed_quiet(*args: str) -> str:
    """Run a her2fed command in this process; its stdout, or an error naming its stderr."""
    from coordinator.cli import main  # the CLI imports this module's package

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    if code != 0:
        raise Her2fedError(f"her2fed {' '.join(args)} exited {code}: {err.getvalue().strip()}")
    return out.getvalue()


def approve_everywhere(study: Path, site_configs: Iterable[Path | str], lead_dir: Path) -> Path:
    """Sign ``study`` with the lead key in ``lead_dir`` (made if missing) and approve it at
    every site (keys made if missing); returns the signature's path."""
    lead_dir.mkdir(parents=True, exist_ok=True)
    key = lead_dir / "lead.key"
    if not key.exists():
        her2fed_quiet("study", "keygen", "--out", str(key))
    digest = hashlib.sha256(Path(study).read_bytes()).hexdigest()[:16]
    sig = lead_dir / f"{digest}.sig"
    if not sig.exists():
        her2fed_quiet("study", "sign", str(study), "--key", str(key), "--out", str(sig))
    for cfg in dict.fromkeys(map(str, site_configs)):
        her2fed_quiet("site", "keys", cfg)
        her2fed_quiet(
            "site", "approve", cfg, str(study), "--signature", str(sig),
            "--lead-key", str(key.with_suffix(".pub")), "--yes",
        )  # fmt: skip
    return sig
