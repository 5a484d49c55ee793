"""One atomic writer for every file a site or the coordinator replaces."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from site_agent.atomic import write_atomic


def test_replaces_the_file_with_the_requested_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "head.json"
    write_atomic(target, b"old", mode=0o640)
    write_atomic(target, b"new", mode=0o640)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["head.json"]


def test_default_mode_is_what_open_would_give(tmp_path: Path) -> None:
    umask = os.umask(0o027)
    try:
        write_atomic(tmp_path / "results.json", b"{}")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o640


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "approvals.toml"
    write_atomic(target, b"approved", mode=0o644)
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes", mode=0o644)  # type: ignore[arg-type]
    assert target.read_bytes() == b"approved"
    assert [p.name for p in tmp_path.iterdir()] == ["approvals.toml"]
