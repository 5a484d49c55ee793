"""A throwaway PostgreSQL server for tests: initdb into a temporary directory, stop at the end.

Tests never touch a cluster of the machine (no systemd in CI): the server
listens on a free loopback port and a Unix socket inside its own directory. As
PostgreSQL refuses to run as root, under root it runs as the ``postgres``
system user that the Debian package creates.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ADMIN = "her2fed_admin"
ADMIN_PASSWORD = "admin-secret-for-tests-only"
READER = "her2fed_reader"
READER_PASSWORD = "Reader-Pw-7f3a9c"  # distinctive, so tests can grep output for it
DATABASE = "her2fed"
BIN_DIRS = (
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
)


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    data: Path

    def url(self, user: str = READER, database: str = DATABASE) -> str:
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"


def _bin_dir() -> Path:
    for d in (os.environ.get("PG_BIN", ""), *BIN_DIRS):
        if d and (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file():
            return Path(d)
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    pytest.fail(
        "PostgreSQL server binaries (initdb, pg_ctl) are not installed; `make sysdeps` installs "
        "them (Debian package postgresql), or set PG_BIN to their directory"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(args: list[str], as_user: str | None) -> None:
    cmd = ["runuser", "-u", as_user, "--", *args] if as_user else args
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args[:2])} failed: {proc.stdout[-800:]} {proc.stderr[-800:]}")


@contextmanager
def postgres_server() -> Iterator[PgServer]:
    """Start a private server with an admin and a reader role; always stop it afterwards."""
    bindir = _bin_dir()
    as_user: str | None = None
    if os.getuid() == 0:
        as_user = "postgres"
        # under /tmp: a TMPDIR below /root would not be reachable for the postgres user
        root = tempfile.mkdtemp(prefix="her2fed-pg-", dir="/tmp")
        try:
            pw = pwd.getpwnam(as_user)
        except KeyError:
            pytest.fail("running as root needs the 'postgres' user: `make sysdeps` creates it")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    else:
        root = tempfile.mkdtemp(prefix="her2fed-pg-")
    data = Path(root) / "data"
    pwfile = Path(root) / "pw"
    pwfile.write_text(ADMIN_PASSWORD + "\n")
    if as_user:
        pw = pwd.getpwnam(as_user)
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    _run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            ADMIN,
            f"--pwfile={pwfile}",
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-instructions",
        ],
        as_user,
    )
    port = _free_port()
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    _run(
        [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", f"{root}/log", "-w", "start"],
        as_user,
    )
    server = PgServer("127.0.0.1", port, data)
    try:
        _setup_roles(server)
        yield server
    finally:
        subprocess.run(
            [
                *(["runuser", "-u", as_user, "--"] if as_user else []),
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def _setup_roles(server: PgServer) -> None:
    import psycopg

    with psycopg.connect(
        server.url(ADMIN, "postgres"), password=ADMIN_PASSWORD, autocommit=True
    ) as db:
        db.execute(f"CREATE DATABASE {DATABASE}")
        db.execute(f"CREATE ROLE {READER} LOGIN PASSWORD '{READER_PASSWORD}'")
