"""Reading site tables from a PostgreSQL database, read-only and in chunks.

Hospitals keep their research extract in a database more often than in files;
the site agent reads it where it lives so that no export step (and no second
copy of patient rows on disk) is needed. Three promises shape this module:

* **Read-only by construction.** Every session is opened with
  ``default_transaction_read_only`` and each read runs in one ``REPEATABLE READ``
  read-only transaction: a bug or a hostile query cannot change the hospital's
  data, and all tables are read from one consistent snapshot.
* **Credentials never live in the config or in messages.** The URL in site.toml
  names user, host and database only; the password comes from an environment
  variable or from a file only the service user can read (mode 0600). Every
  message that may quote a driver error is scrubbed of the password.
* **Streaming.** Rows are fetched through a server-side cursor in chunks of
  ``fetch_rows`` and turned into DataFrames chunk by chunk, so the peak memory
  is the final frame plus one chunk, not the driver's copy of the whole result.

Fatal problems (unreachable server, bad credentials, missing schema or table)
raise ``SourceError``: nothing can be read, so ``her2fed site check`` stops with
exit status 2 and the message names the table and the fix.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pandas as pd

from her2fed.errors import DataError, SpecError

if TYPE_CHECKING:
    import psycopg

DEFAULT_PASSWORD_ENV = "HER2FED_DB_PASSWORD"
DEFAULT_FETCH_ROWS = 50_000
URL_SCHEMES = ("postgresql", "postgres")
CONNECT_TIMEOUT_S = 10


class SourceError(DataError):
    """The database cannot be read at all (connection, schema, tables, vocabulary).

    A subclass so front ends can tell "the source is unusable" (stop, exit 2)
    from row-level problems that are reported and counted.
    """


# ---------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class DbConnection:
    """Where a database is and how to get its password; never holds the password itself."""

    url: str
    password_env: str = DEFAULT_PASSWORD_ENV
    password_file: Path | None = None
    fetch_rows: int = DEFAULT_FETCH_ROWS
    declared_in: str = "site.toml"

    @property
    def shown(self) -> str:
        """The URL as messages print it (it never contains a password: parsing refuses that)."""
        return self.url


CONNECTION_KEYS = ("url", "password_env", "password_file", "fetch_rows")


def is_db_spec(spec: Mapping[str, Any]) -> bool:
    """A ``[data.NAME]`` table describes a database source when it has a ``url``."""
    return "url" in spec


def parse_connection(spec: Mapping[str, Any], where: str, base: Path) -> DbConnection:
    """The connection keys of a ``[data.NAME]`` table; refuses passwords in the file."""
    url = spec.get("url")
    if not isinstance(url, str) or not url:
        raise SpecError(
            f"{where}.url",
            "must be a database URL",
            'e.g. url = "postgresql://her2fed_reader@db.hospital.local:5432/cdm"',
        )
    parts = urlsplit(url)
    if parts.scheme not in URL_SCHEMES:
        raise SpecError(
            f"{where}.url",
            f"scheme {parts.scheme!r} is not supported",
            'use a PostgreSQL URL, e.g. "postgresql://user@host:5432/database"',
        )
    query = parts.query.lower()
    if parts.password is not None or re.search(r"(^|&)password=", query):
        # the URL is not echoed: it holds the secret
        raise SpecError(
            f"{where}.url",
            "contains a password; site.toml is copied, backed up and shown, so it must not "
            "hold credentials",
            f"remove the password from the URL and give it in the environment variable "
            f"{DEFAULT_PASSWORD_ENV} or in a file named by password_file (mode 0600)",
        )
    env = spec.get("password_env", DEFAULT_PASSWORD_ENV)
    if not isinstance(env, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
        raise SpecError(
            f"{where}.password_env",
            "must be the name of an environment variable",
            f'e.g. password_env = "{DEFAULT_PASSWORD_ENV}"',
        )
    pw_file = spec.get("password_file")
    file: Path | None = None
    if pw_file is not None:
        if not isinstance(pw_file, str) or not pw_file:
            raise SpecError(
                f"{where}.password_file",
                "must be a file path",
                'e.g. password_file = "/etc/her2fed/db_password" (mode 0600)',
            )
        file = base / pw_file
    rows = spec.get("fetch_rows", DEFAULT_FETCH_ROWS)
    if type(rows) is not int or rows < 1:
        raise SpecError(
            f"{where}.fetch_rows",
            f"must be a positive integer, got {rows!r}",
            f"e.g. fetch_rows = {DEFAULT_FETCH_ROWS}",
        )
    return DbConnection(url, env, file, rows, where.split(":")[0])


def _password(conn: DbConnection) -> str | None:
    """The password from the file (if configured) or the environment; None lets libpq decide."""
    if conn.password_file is not None:
        path = conn.password_file
        try:
            info = path.stat()
        except FileNotFoundError:
            raise SourceError(
                f"{conn.declared_in}: password_file",
                f"{path} does not exist",
                "create it with the database password on one line, owned by the service "
                f"user, mode 0600 (chmod 600 {path})",
            ) from None
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise SourceError(
                f"{conn.declared_in}: password_file",
                f"{path} is readable by others (mode {mode:04o}); a database password must be "
                "readable by the service user only",
                f"run chmod 600 {path} (and chown it to the user running the site agent)",
            )
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise SourceError(
                f"{conn.declared_in}: password_file",
                f"{path} is not owned by the user running the site agent",
                f"chown it to that user and keep mode 0600 (chmod 600 {path})",
            )
        text = path.read_text(encoding="utf-8").strip()
        if not text:
            raise SourceError(
                f"{conn.declared_in}: password_file",
                f"{path} is empty",
                "write the database password on the first line",
            )
        return text.splitlines()[0]
    return os.environ.get(conn.password_env) or None


def _scrub(text: str, secret: str | None) -> str:
    """Driver messages are quoted to users; make sure the password is never among them."""
    if secret:
        text = text.replace(secret, "***")
    return text.strip().splitlines()[0][:300] if text.strip() else "no message"


# ---------------------------------------------------------------------------
# sessions


@contextmanager
def read_only_session(conn: DbConnection) -> Iterator[psycopg.Connection[Any]]:
    """One read-only, repeatable-read session; every read sees the same snapshot."""
    import psycopg

    secret = _password(conn)
    try:
        db = psycopg.connect(
            conn.url,
            password=secret,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="her2fed-site-agent",
            # read-only from the first statement; and plan cursors for reading every row
            # (the default plans for a fast first few, which is slow for a whole table)
            options="-c default_transaction_read_only=on -c cursor_tuple_fraction=1",
        )
    except psycopg.OperationalError as err:
        message = _scrub(str(err), secret)
        auth = "password authentication failed" in message or "no password" in message
        raise SourceError(
            f"{conn.declared_in}: database {conn.shown}",
            f"cannot connect ({message})",
            (
                f"check the user in the URL and the password in ${conn.password_env}"
                + (f" or {conn.password_file}" if conn.password_file else "")
                if auth
                else "check host, port and database name in the URL, that the server runs and "
                "accepts connections from this machine (pg_hba.conf, firewall)"
            ),
        ) from None
    try:
        db.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        db.read_only = True
        yield db
    finally:
        db.rollback()  # nothing to commit, ever
        db.close()


def query_error(conn: DbConnection, what: str, err: Exception, fix: str) -> SourceError:
    """A SourceError for a failed statement, its driver text scrubbed of the password."""
    return SourceError(
        f"{conn.declared_in}: database {conn.shown}",
        f"{what} failed ({_scrub(str(err), _password_or_none(conn))})",
        fix,
    )


def _password_or_none(conn: DbConnection) -> str | None:
    try:
        return _password(conn)
    except SourceError:
        return None


_CURSOR_SEQ = iter(range(1, 1 << 62))


def stream_frame(
    db: psycopg.Connection[Any],
    sql: str,
    params: Mapping[str, Any] | Sequence[Any] | None,
    fetch_rows: int,
    transform: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Run ``sql`` through a server-side cursor and build the frame chunk by chunk.

    Each chunk becomes a small DataFrame at once, so the Python tuples of only
    one chunk exist at a time; ``transform`` turns a chunk into the caller's
    shape right away (so the query's own columns never exist for the whole
    table); the final ``concat`` is the frame the caller keeps anyway.
    """
    name = f"her2fed_{next(_CURSOR_SEQ)}"
    chunks: list[pd.DataFrame] = []
    with db.cursor(name=name) as cur:
        cur.itersize = fetch_rows
        cur.execute(sql, params)
        columns = [d.name for d in cur.description or ()]
        while True:
            rows = cur.fetchmany(fetch_rows)
            if not rows:
                break
            chunk = pd.DataFrame.from_records(rows, columns=columns)
            del rows
            chunks.append(transform(chunk) if transform is not None else chunk)
    if not chunks:
        empty = pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
        return transform(empty) if transform is not None else empty
    if len(chunks) == 1:
        return chunks[0]
    with warnings.catch_warnings():
        # A column that is all NULL in one chunk may come out as object instead of a number
        # type; validation reads every value as text, so both give the same registry.
        warnings.simplefilter("ignore", FutureWarning)
        return pd.concat(chunks, ignore_index=True)


def table_names(db: psycopg.Connection[Any], schema: str) -> set[str]:
    """Tables and views of one schema, lower case (OMOP names are case-insensitive)."""
    rows = db.execute(
        "SELECT lower(table_name) FROM information_schema.tables WHERE table_schema = %s",
        (schema,),
    ).fetchall()
    return {str(r[0]) for r in rows}


def schemas_with(db: psycopg.Connection[Any], table: str) -> list[str]:
    """Schemas that hold a table of this name: the likely intended ones when a name is wrong."""
    rows = db.execute(
        "SELECT DISTINCT table_schema FROM information_schema.tables "
        "WHERE lower(table_name) = %s ORDER BY 1",
        (table.lower(),),
    ).fetchall()
    return [str(r[0]) for r in rows]


def schema_exists(db: psycopg.Connection[Any], schema: str) -> bool:
    row = db.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return row is not None


# ---------------------------------------------------------------------------
# a generic table from a query


@dataclass(frozen=True)
class DbTable:
    """A generic analysis table (``[data.NAME]``) produced by one SQL query."""

    connection: DbConnection
    query: str


def parse_db_table(spec: Mapping[str, Any], where: str, base: Path) -> DbTable:
    """``[data.NAME] url = ..., query = "SELECT ..."`` (a view: ``SELECT * FROM view``)."""
    known = {*CONNECTION_KEYS, "query"}
    bad = sorted(set(spec) - known)
    if bad:
        raise SpecError(where, f"unknown key(s) {bad}", f"use {sorted(known)}")
    query = spec.get("query")
    if not isinstance(query, str) or not query.strip():
        raise SpecError(
            f"{where}.query",
            "is missing",
            'give the SQL that returns the table, e.g. query = "SELECT * FROM research.analysis"',
        )
    return DbTable(parse_connection(spec, where, base), query.strip().rstrip(";"))


def load_db_table(table: DbTable, name: str) -> pd.DataFrame:
    """Read a generic table from its query, streamed; SQL errors name the table and the fix."""
    import psycopg

    conn = table.connection
    with read_only_session(conn) as db:
        try:
            return stream_frame(db, table.query, None, conn.fetch_rows)
        except psycopg.Error as err:
            raise query_error(
                conn,
                f"the query of [data.{name}]",
                err,
                f"run the query of [data.{name}] in psql as the same user and fix it; it must "
                "only read (SELECT)",
            ) from None
