"""``her2fed report``: results.json -> one self-contained, printable HTML file.

``results.json`` is for machines; the report is what a statistician, a
clinician and a privacy officer read. Rendering is a pure function of the
results document (no clock, no environment), so the same results always give
byte-identical HTML and a report can be regenerated and diffed.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from coordinator.reporting.page import render
from her2fed.errors import SpecError

__all__ = ["render_report", "write_report"]


def render_report(doc: dict[str, Any]) -> str:
    """The report for a results document, as HTML text."""
    return render(doc)


def _load(results_path: Path) -> dict[str, Any]:
    try:
        text = results_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            str(results_path), "file not found", "give the path to a results.json"
        ) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(
            str(results_path),
            f"is not valid JSON ({err})",
            "pass the results.json written by `her2fed local`",
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("analyses"), dict):
        raise SpecError(
            str(results_path),
            "has no 'analyses' object",
            "pass the results.json written by `her2fed local`",
        )
    return doc


def write_report(results_path: Path, out_path: Path) -> None:
    """Render ``results_path`` to ``out_path``; a crash never leaves half a report."""
    html_text = render_report(_load(Path(results_path)))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # "x" mode honours the umask (mkstemp would leave a report only its owner can read)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(html_text)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
