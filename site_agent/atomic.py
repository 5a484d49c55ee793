"""Replacing a file so that a crash leaves the old file or the new one, never half of one.

The audit log's head, the officer's approvals, study signatures, the DP
ledger, differencing fingerprints and the coordinator's results.json are all
written this way; one implementation keeps them equally safe.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _default_mode() -> int:
    """What a plain ``open`` would create (0o666 less the umask); mkstemp alone gives 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` beside ``path``, flush it to disk, rename it over ``path``.

    The directory is flushed too, so the rename itself survives a power cut.
    ``mode`` is the new file's permission bits (default: as ``open`` would).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
