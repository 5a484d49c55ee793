"""The site's audit log: every query received and every payload sent, signed and chained.

The privacy officer must never have to trust the coordinator's word for what
left the site (DESIGN.md, "Privacy and security"), so the site keeps its own
record: one JSON line per event, in an append-only file next to ``site.toml``.

Record format (one line, canonical JSON: sorted keys, no spaces, ASCII)::

    {"analyses": ["os_km"], "details": {...}, "hash": "<64 hex>", "kind": "payload_sent",
     "prev": "<64 hex>", "query_id": "...", "seq": 7, "session_id": "...",
     "sha256": "<64 hex>", "sig": "<128 hex>", "site_id": "athens", "size": 4096,
     "steps": ["table"], "study_hash": "sha256:...", "summary": "sent 4,096 bytes ...",
     "time": "2026-01-01T12:00:00.000000Z", "v": 1}

- ``hash`` is SHA-256 of the canonical JSON of the record without ``hash`` and
  ``sig``; ``prev`` is the previous record's ``hash`` (64 zeros for the first),
  so editing, deleting, inserting or reordering a record breaks the chain at
  that line.
- ``sig`` is Ed25519 by the site key over ``RECORD_DOMAIN + hash`` (the domain
  keeps an audit signature from being replayed as any other message the same
  key signs); without the key nobody can write a record that verifies.
- Removing whole records from the *end* leaves a valid chain, so every append
  also rewrites ``<log>.head`` atomically: the last ``seq`` and ``hash``,
  signed (``HEAD_DOMAIN``). ``verify`` compares the log's end with it.

Append order is: line written and fsynced, then the head replaced (temp
file, fsync, rename, fsync of the directory). A crash mid-line leaves a
partial last line, which ``verify`` reports as truncation at that line; the
next append ends that line, records a signed ``log_recovered`` event naming
its size and SHA-256, and carries on (``verify`` then lists it as a warning).
A crash between line and head leaves one signed record beyond the head: a
warning, not a problem. Appending refuses (fails closed: the site then sends
nothing it could not record) when the log's end disagrees with the head in
any other way, until the officer re-anchors (``reanchor``), which is itself a
signed record that ``verify`` shows for ever.

Limit: rolling the log *and* its head back together to an earlier signed
state cannot be seen locally. ``verify(expect=...)`` checks anchors the
officer took earlier (the head printed by ``verify`` and ``export``), and
anchors kept off the site (e.g. sent to the coordinator) close that gap.

Everything written is public fact: ids, rule names, thresholds, byte counts
and digests. Callers must never put patient values into ``details``.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from her2fed.errors import Her2fedError
from her2fed.protocol import Query
from site_agent.atomic import write_atomic
from site_agent.policy import PolicyRefusal

FORMAT_VERSION = 1
GENESIS = "0" * 64
RECORD_DOMAIN = b"her2fed-audit-v1 record\x00"
HEAD_DOMAIN = b"her2fed-audit-v1 head\x00"
HEAD_SUFFIX = ".head"

# Kinds the site agent writes; any lowercase name is accepted so new events need no schema change.
KINDS: tuple[str, ...] = (
    "session_opened",
    "query_received",
    "payload_sent",
    "refusal",
    "study_approved",
    "study_revoked",
    "log_recovered",
    "log_reanchored",
)
RECORD_FIELDS = frozenset(
    [
        "v",
        "seq",
        "time",
        "site_id",
        "kind",
        "session_id",
        "query_id",
        "study_hash",
        "analyses",
        "steps",
        "details",
        "sha256",
        "size",
        "summary",
        "prev",
        "hash",
        "sig",
    ]
)
_EVENT_FIELDS = frozenset(
    [
        "kind",
        "session_id",
        "query_id",
        "study_hash",
        "analyses",
        "steps",
        "details",
        "sha256",
        "size",
        "payload",
        "summary",
    ]
)
_KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
MAX_SUMMARY = 400
MAX_ID = 200

Record = dict[str, Any]
_MakeEvents = Callable[["_Tail", "Head | None"], list[dict[str, Any]]]


class AuditError(Her2fedError):
    """The audit log cannot be written as asked (names the problem and the fix)."""


def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON value that is hashed, signed and written."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a record's canonical JSON without ``hash`` and ``sig``."""
    body = {k: v for k, v in record.items() if k not in ("hash", "sig")}
    return hashlib.sha256(canonical(body)).hexdigest()


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_time(t: datetime) -> str:
    """UTC, microseconds, ``Z``: sorts as text and reads the same at every site."""
    if t.tzinfo is None:
        raise AuditError("audit times must carry a time zone. Fix: pass datetime.now(UTC)")
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def head_path(log_path: str | Path) -> Path:
    p = Path(log_path)
    return p.with_name(p.name + HEAD_SUFFIX)


def fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as 64 hex characters (the form site keys are pinned in)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes_raw().hex()


def _verify_sig(key: Ed25519PublicKey, sig_hex: Any, data: bytes) -> bool:
    if not isinstance(sig_hex, str) or _HEX128.fullmatch(sig_hex) is None:
        return False
    try:
        key.verify(bytes.fromhex(sig_hex), data)
    except InvalidSignature:
        return False
    return True


def _one_line(text: str, limit: int = MAX_SUMMARY) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _jsonable(value: object) -> Any:
    """A policy threshold or similar as JSON (lists stay lists, anything else becomes text)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


# ---------------------------------------------------------------- typed event parts


@dataclass(frozen=True)
class Check:
    """One disclosure or policy check applied before a payload left (public facts only)."""

    name: str
    passed: bool
    threshold: object = None
    analysis: str | None = None
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "passed": self.passed}
        if self.threshold is not None:
            out["threshold"] = _jsonable(self.threshold)
        if self.analysis is not None:
            out["analysis"] = self.analysis
        if self.note:
            out["note"] = _one_line(self.note)
        return out


@dataclass(frozen=True)
class Suppression:
    """Cells withheld or merged by a disclosure rule (how many, never which values)."""

    analysis: str
    rule: str
    cells: int
    what: str = ""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"analysis": self.analysis, "rule": self.rule, "cells": self.cells}
        if self.what:
            out["what"] = self.what
        return out


@dataclass(frozen=True)
class DPSpend:
    """Differential-privacy budget spent by one payload."""

    epsilon: float
    delta: float = 0.0
    mechanism: str = ""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epsilon": self.epsilon, "delta": self.delta}
        if self.mechanism:
            out["mechanism"] = self.mechanism
        return out


# ---------------------------------------------------------------- reading the file


@dataclass(frozen=True)
class Line:
    """One line of the log file: its 1-based number, raw bytes and record if readable."""

    number: int
    raw: bytes
    terminated: bool
    record: Record | None


def read_lines(path: str | Path) -> list[Line]:
    """Every line of the log, parsed where possible (a missing file has no lines)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    parts = data.split(b"\n")
    out: list[Line] = []
    last = len(parts) - 1
    for i, raw in enumerate(parts):
        if i == last and raw == b"":
            break  # the file ends with a newline
        out.append(Line(i + 1, raw, i < last, _parse(raw)))
    return out


def _parse(raw: bytes) -> Record | None:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _shape_problem(rec: Record) -> str | None:
    """Why a parsed line is not a well-formed record (None if it is)."""
    keys = set(rec)
    if keys != RECORD_FIELDS:
        missing, extra = sorted(RECORD_FIELDS - keys), sorted(keys - RECORD_FIELDS)
        return f"fields differ from the record format (missing {missing}, unexpected {extra})"
    if rec["v"] != FORMAT_VERSION:
        return f"format version {rec['v']!r} is not {FORMAT_VERSION}"
    seq = rec["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return "seq is not a whole number >= 0"
    for name in ("hash", "prev"):
        if not isinstance(rec[name], str) or _HEX64.fullmatch(rec[name]) is None:
            return f"{name} is not 64 hex characters"
    if not isinstance(rec["kind"], str) or not isinstance(rec["summary"], str):
        return "kind or summary is not text"
    if not isinstance(rec["details"], dict):
        return "details is not a table"
    return None


# ---------------------------------------------------------------- the head anchor


@dataclass(frozen=True)
class Head:
    """The signed anchor of the log's last record (``<log>.head``)."""

    site_id: str
    seq: int
    hash: str
    time: str
    sig: str | None

    def body(self) -> dict[str, Any]:
        return {
            "v": FORMAT_VERSION,
            "kind": "head",
            "site_id": self.site_id,
            "seq": self.seq,
            "hash": self.hash,
            "time": self.time,
        }

    def signing_bytes(self) -> bytes:
        return HEAD_DOMAIN + canonical(self.body())

    def to_bytes(self) -> bytes:
        return canonical({**self.body(), "sig": self.sig}) + b"\n"


class HeadUnreadable(Exception):
    """The head file exists but is not a head (internal: reported by verify / append)."""


def read_head(path: str | Path) -> Head | None:
    """The head anchor of a log (``None`` if the head file does not exist)."""
    try:
        raw = head_path(path).read_bytes()
    except FileNotFoundError:
        return None
    doc = _parse(raw.rstrip(b"\n"))
    if (
        doc is None
        or set(doc) != {"v", "kind", "site_id", "seq", "hash", "time", "sig"}
        or doc["kind"] != "head"
        or not isinstance(doc["seq"], int)
        or not isinstance(doc["hash"], str)
        or not isinstance(doc["site_id"], str)
        or not isinstance(doc["time"], str)
        or not (doc["sig"] is None or isinstance(doc["sig"], str))
    ):
        raise HeadUnreadable(str(head_path(path)))
    return Head(doc["site_id"], doc["seq"], doc["hash"], doc["time"], doc["sig"])


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Tail:
    """The end of the log as an appender needs it."""

    last_raw: bytes | None  # the last complete line (None: the file has no complete line)
    last: Record | None  # that line parsed (None: no line, or not JSON)
    partial: bytes | None  # bytes after the last newline (a crash mid-write)
    size: int


def _read_tail(fh: IO[bytes]) -> _Tail:
    """Read backwards from the end just far enough for the last complete line."""
    size = fh.seek(0, os.SEEK_END)
    buf, pos = b"", size
    while True:
        step = min(1 << 16, pos)
        pos -= step
        fh.seek(pos)
        buf = fh.read(step) + buf
        end = buf.rfind(b"\n")
        if end == -1 and pos > 0:
            continue
        partial = buf[end + 1 :] if end != len(buf) - 1 else None
        if end == -1:  # empty, or the whole file is one unterminated line
            return _Tail(None, None, partial or None, size)
        start = buf.rfind(b"\n", 0, end)
        if start == -1 and pos > 0:
            continue
        raw = buf[start + 1 : end]
        return _Tail(raw, _parse(raw), partial, size)


def _count_newlines(fh: IO[bytes], upto: int) -> int:
    fh.seek(0)
    n, left = 0, upto
    while left > 0:
        chunk = fh.read(min(1 << 20, left))
        if not chunk:
            break
        n += chunk.count(b"\n")
        left -= len(chunk)
    return n


class AuditLog:
    """Append-only, hash-chained, signed JSON-lines log of what a site received and sent.

    Several ``AuditLog`` objects (threads, processes: the agent and the
    officer's CLI) may write the same file: every append takes an exclusive
    ``flock`` and reads the file's current end, so the chain never forks.
    ``signing_key=None`` writes unsigned records (tests of the chain alone);
    ``verify`` with a key reports each as a problem.
    """

    def __init__(
        self,
        path: str | Path,
        signing_key: Ed25519PrivateKey | None,
        site_id: str,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not site_id or "\n" in site_id:
            raise AuditError("the audit log needs the site id. Fix: pass [site] id")
        self.path = Path(path)
        self.signing_key = signing_key
        self.site_id = site_id
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def head_path(self) -> Path:
        return head_path(self.path)

    @property
    def public_key(self) -> Ed25519PublicKey | None:
        return None if self.signing_key is None else self.signing_key.public_key()

    # -------------------------------------------------------- the one writer

    def append(self, event: Mapping[str, Any]) -> Record:
        """Write one event as the next record and move the head to it; returns the record.

        ``event`` keys: ``kind`` (required), ``summary`` (one human line;
        required), ``session_id``, ``query_id``, ``study_hash``, ``analyses``,
        ``steps``, ``details`` (JSON table), and for ``payload_sent`` either
        ``payload`` (the exact bytes; only their SHA-256 and size are kept)
        or ``sha256`` and ``size``.
        """
        fields = self._event_fields(event)
        return self._locked_append(lambda tail, head: [fields])[-1]

    def reanchor(self, note: str, officer: str = "") -> Record:
        """The officer's signed acknowledgement that the log's end and its head disagree.

        Needed after the head file was lost or the log was cut (restored from
        a backup): appending refuses until then. The record states what the
        head said and where the log ended, so ``verify`` shows the loss for ever.
        """
        if not note.strip():
            raise AuditError("re-anchoring needs a note saying why. Fix: pass --note")

        def fields(tail: _Tail, head: Head | None) -> list[dict[str, Any]]:
            last = tail.last
            before = None if head is None else {"seq": head.seq, "hash": head.hash}
            end = None if last is None else {"seq": last.get("seq"), "hash": last.get("hash")}
            said = "missing" if head is None else f"seq {head.seq}"
            ended = "no records" if last is None else f"seq {last.get('seq')}"
            return [
                {
                    "kind": "log_reanchored",
                    "details": {
                        "head_before": before,
                        "log_end": end,
                        "note": _one_line(note),
                        "officer": officer,
                    },
                    "summary": f"log re-anchored by {officer or 'the officer'}: head was "
                    f"{said}, log ended at {ended} ({_one_line(note, 120)})",
                }
            ]

        return self._locked_append(fields, reanchor=True)[-1]

    # -------------------------------------------------------- convenience API for the query path

    def record_session_opened(
        self,
        *,
        session_id: str,
        study_hash: str,
        coordinator: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Record:
        """The coordinator opened a study session at this site."""
        details: dict[str, Any] = dict(extra or {})
        if coordinator:
            details["coordinator"] = coordinator
        return self.append(
            {
                "kind": "session_opened",
                "session_id": session_id,
                "study_hash": study_hash,
                "details": details,
                "summary": f"session {session_id[:8]} opened for study {_short(study_hash)}"
                + (f" by {coordinator}" if coordinator else ""),
            }
        )

    def record_query(
        self,
        *,
        session_id: str | None,
        study_hash: str | None,
        step: str,
        queries: Sequence[Query] = (),
        received: bytes | None = None,
        query_id: str | None = None,
        analyses: Sequence[str] = (),
        extra: Mapping[str, Any] | None = None,
        summary: str | None = None,
    ) -> Record:
        """A request received: its step, each query's analysis, step and parameters.

        ``received`` (the request's exact bytes) is kept as SHA-256 and size;
        ``query_id`` defaults to the first 16 hex digits of that digest, so a
        payload record can name the query it answers (pass the same id).
        """
        digest = hashlib.sha256(received).hexdigest() if received is not None else None
        qid = query_id if query_id is not None else (digest[:16] if digest else None)
        ids = list(dict.fromkeys([*analyses, *(q.analysis_id for q in queries)]))
        steps: list[str] = list(dict.fromkeys(str(q.step) for q in queries)) or [step]
        details: dict[str, Any] = {"step": step, **dict(extra or {})}
        if queries:
            details["queries"] = [
                {
                    "analysis": q.analysis_id,
                    "step": q.step,
                    "beta": list(q.beta),
                    "center": list(q.center),
                    **({"merged_bins": list(q.bins)} if q.bins else {}),
                }
                for q in queries
            ]
        if digest is not None and received is not None:
            details["received_sha256"] = digest
            details["received_size"] = len(received)
        what = f"{len(queries)} quer{'y' if len(queries) == 1 else 'ies'}" if queries else step
        default = (
            f"received {what} ({step})"
            + _in_session(session_id)
            + (f" for {', '.join(ids)}" if ids else "")
        )
        return self.append(
            {
                "kind": "query_received",
                "session_id": session_id,
                "query_id": qid,
                "study_hash": study_hash,
                "analyses": ids,
                "steps": steps,
                "details": details,
                "summary": summary or default,
            }
        )

    def record_payload(
        self,
        *,
        session_id: str | None,
        study_hash: str | None,
        payload: bytes,
        step: str,
        analyses: Sequence[str] = (),
        steps: Sequence[str] = (),
        checks: Sequence[Check] = (),
        suppressions: Sequence[Suppression] = (),
        dp: DPSpend | None = None,
        participants: Sequence[str] = (),
        query_id: str | None = None,
        recipient: str = "coordinator",
        what: str = "",
        extra: Mapping[str, Any] | None = None,
        summary: str | None = None,
    ) -> Record:
        """A payload about to be sent: call it with the exact bytes, before they leave.

        Recording first means a payload that could not be recorded is never
        sent (fail closed). Only the SHA-256 and size of ``payload`` are kept.
        """
        details: dict[str, Any] = {
            "step": step,
            "recipient": recipient,
            "checks": [c.as_json() for c in checks],
            "suppressions": [s.as_json() for s in suppressions],
            "dp": None if dp is None else dp.as_json(),
            "participants": list(participants),
            **dict(extra or {}),
        }
        if what:
            details["what"] = what
        failed = [c.name for c in checks if not c.passed]
        parts = [
            f"sent {len(payload):,} bytes ({what or step}) to {recipient}"
            + _in_session(session_id)
            + (f" for {', '.join(analyses)}" if analyses else "")
        ]
        if checks:
            parts.append(
                f"{len(checks) - len(failed)}/{len(checks)} checks passed"
                + (f" (failed: {', '.join(failed)})" if failed else "")
            )
        if suppressions:
            parts.append(f"{sum(s.cells for s in suppressions)} cell(s) suppressed")
        if dp is not None:
            parts.append(f"DP budget spent epsilon={dp.epsilon:g} delta={dp.delta:g}")
        if participants:
            parts.append(f"secure aggregation with {len(participants)} sites")
        return self.append(
            {
                "kind": "payload_sent",
                "session_id": session_id,
                "query_id": query_id,
                "study_hash": study_hash,
                "analyses": list(analyses),
                "steps": list(steps) or [step],
                "details": details,
                "payload": payload,
                "summary": summary or "; ".join(parts),
            }
        )

    def record_refusal(
        self,
        *,
        session_id: str | None,
        study_hash: str | None,
        reason: str | Exception,
        rule: str | None = None,
        threshold: object = None,
        analyses: Sequence[str] = (),
        step: str | None = None,
        query_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Record:
        """A request the site refused, with the reason it sent (rule and threshold if any).

        ``reason`` may be the ``PolicyRefusal`` itself: its rule and
        threshold are taken from it. Only her2fed's own refusal texts belong
        here (they name rules, files and columns, never values).
        """
        if isinstance(reason, PolicyRefusal):
            rule = rule or reason.rule
            threshold = threshold if threshold is not None else reason.threshold
        text = _one_line(str(reason), 1000)
        details: dict[str, Any] = {"reason": text, **dict(extra or {})}
        if rule is not None:
            details["rule"] = rule
            details["threshold"] = _jsonable(threshold)
        if step is not None:
            details["step"] = step
        short = text
        if isinstance(reason, PolicyRefusal):  # the summary names the rule once
            short = short.removeprefix(f"refused by site policy {reason.rule} = ")
            short = short.split(": ", 1)[-1]
        head = f"refused ({rule})" if rule else "refused"
        where = f" in session {_short(session_id)}" if session_id else ""
        return self.append(
            {
                "kind": "refusal",
                "session_id": session_id,
                "query_id": query_id,
                "study_hash": study_hash,
                "analyses": list(analyses),
                "steps": [step] if step else [],
                "details": details,
                "summary": f"{head}{where}: {_one_line(short, 300)}",
            }
        )

    # -------------------------------------------------------- internals

    def _event_fields(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Validate a caller's event and turn it into record fields (without seq/chain)."""
        unknown = set(event) - _EVENT_FIELDS
        if unknown:
            raise AuditError(
                f"audit event has unknown field(s) {sorted(unknown)}. Fix: use only "
                f"{sorted(_EVENT_FIELDS)}"
            )
        kind = event.get("kind")
        if not isinstance(kind, str) or _KIND_RE.fullmatch(kind) is None:
            raise AuditError(
                f"audit event kind {kind!r} is not a lowercase name. Fix: e.g. kind = "
                "'payload_sent'"
            )
        out: dict[str, Any] = {"kind": kind}
        for name in ("session_id", "query_id", "study_hash"):
            value = event.get(name)
            if value is not None and (
                not isinstance(value, str) or len(value) > MAX_ID or "\n" in value
            ):
                raise AuditError(f"audit event {name} must be one short line of text")
            out[name] = value
        for name in ("analyses", "steps"):
            items = event.get(name, ())
            if isinstance(items, str | bytes) or not all(isinstance(v, str) for v in items):
                raise AuditError(f"audit event {name} must be a list of names")
            out[name] = list(items)
        details = event.get("details", {})
        if not isinstance(details, Mapping):
            raise AuditError("audit event details must be a table")
        try:
            canonical(dict(details))
        except (TypeError, ValueError) as err:
            raise AuditError(
                f"audit event details are not plain JSON ({type(err).__name__}). Fix: use "
                "text, finite numbers, true/false, lists and tables only"
            ) from None
        out["details"] = dict(details)
        payload = event.get("payload")
        sha, size = event.get("sha256"), event.get("size")
        if payload is not None:
            if not isinstance(payload, bytes | bytearray | memoryview):
                raise AuditError("audit event payload must be the exact bytes sent")
            data = bytes(payload)
            if sha is not None or size is not None:
                raise AuditError("give either payload or sha256 and size, not both")
            sha, size = hashlib.sha256(data).hexdigest(), len(data)
        if (sha is None) != (size is None):
            raise AuditError("give sha256 and size together")
        if sha is not None and (not isinstance(sha, str) or _HEX64.fullmatch(sha) is None):
            raise AuditError("sha256 must be 64 lowercase hex characters")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise AuditError("size must be a whole number of bytes")
        if kind == "payload_sent" and sha is None:
            raise AuditError("a payload_sent event needs the payload bytes (or sha256 and size)")
        out["sha256"], out["size"] = sha, size
        summary = event.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            raise AuditError("every audit event needs a one-line human summary")
        out["summary"] = _one_line(summary)
        return out

    def _build(self, fields: Mapping[str, Any], seq: int, prev: str) -> tuple[Record, bytes]:
        body: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "seq": seq,
            "time": iso_time(self._clock()),
            "site_id": self.site_id,
            "session_id": None,
            "query_id": None,
            "study_hash": None,
            "analyses": [],
            "steps": [],
            "details": {},
            "sha256": None,
            "size": None,
            **fields,
            "prev": prev,
        }
        body = json.loads(canonical(body))  # exactly what verify will re-read
        digest = hashlib.sha256(canonical(body)).hexdigest()
        sig = None
        if self.signing_key is not None:
            sig = self.signing_key.sign(RECORD_DOMAIN + bytes.fromhex(digest)).hex()
        record = {**body, "hash": digest, "sig": sig}
        return record, canonical(record) + b"\n"

    def _tail_ok(self, rec: Record) -> bool:
        """Whether the last record is intact (hash and, with a key, signature)."""
        if _shape_problem(rec) is not None or record_hash(rec) != rec["hash"]:
            return False
        key = self.public_key
        return key is None or _verify_sig(key, rec["sig"], _record_signed_bytes(rec))

    def _state_problem(self, tail: _Tail, head: Head | None) -> str | None:
        """Why appending now could hide tampering (None: the log's end and its head agree)."""
        if tail.last_raw is None:  # no complete line yet (maybe a crash mid-first-write)
            if head is not None:
                return (
                    f"the log holds no complete record but its head anchors seq {head.seq}: "
                    "records were removed"
                )
            return None
        last = tail.last
        if last is None:
            return "the last complete line of the audit log is not a record"
        if not self._tail_ok(last):
            return "the last record of the audit log does not verify (edited or forged)"
        if head is None:
            return "the head anchor is missing, so records removed from the end would not show"
        if head.site_id != self.site_id:
            return f"the head anchor belongs to site {head.site_id!r}"
        key = self.public_key
        if key is not None and not _verify_sig(key, head.sig, head.signing_bytes()):
            return "the head anchor's signature does not verify"
        seq, digest = last["seq"], last["hash"]
        if seq == head.seq and digest == head.hash:
            return None
        if seq == head.seq + 1 and last["prev"] == head.hash:
            return None  # the agent stopped between writing the line and moving the head
        return (
            f"the log ends at seq {seq} but its head anchors seq {head.seq}"
            + (" with another hash" if seq == head.seq else "")
            + ": records were removed or replaced"
        )

    def _locked_append(self, make: _MakeEvents, *, reanchor: bool = False) -> list[Record]:
        """Under the thread lock and an exclusive flock: check the end, recover, append."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
            with os.fdopen(fd, "a+b") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                try:
                    return self._append_locked(fh, make, reanchor)
                finally:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _append_locked(self, fh: IO[bytes], make: _MakeEvents, reanchor: bool) -> list[Record]:
        tail = _read_tail(fh)
        fix = (
            "Fix: the privacy officer runs `her2fed site audit verify SITE.toml`, then restores "
            "the log and its head from a backup or runs `her2fed site audit reanchor SITE.toml "
            "--note ...`"
        )
        try:
            head = read_head(self.path)
        except HeadUnreadable:
            if not reanchor:
                raise AuditError(
                    f"{self.head_path}: the head anchor is unreadable; nothing is written or "
                    f"sent. {fix}"
                ) from None
            head = None
        if reanchor:
            if tail.last_raw is not None and (
                tail.last is None or _shape_problem(tail.last) is not None
            ):
                raise AuditError(
                    f"{self.path}: the last complete line is not a record, so nothing can chain "
                    "to it. Fix: restore the log from a backup"
                )
        else:
            problem = self._state_problem(tail, head)
            if problem is not None:
                raise AuditError(f"{self.path}: {problem}; nothing is written or sent. {fix}")
        events: list[dict[str, Any]] = []
        if tail.partial is not None:
            line_no = _count_newlines(fh, tail.size) + 1
            events.append(
                {
                    "kind": "log_recovered",
                    "details": {
                        "line": line_no,
                        "partial_sha256": hashlib.sha256(tail.partial).hexdigest(),
                        "partial_size": len(tail.partial),
                    },
                    "summary": f"recovered after a crash: line {line_no} held an incomplete "
                    f"record ({len(tail.partial)} bytes), left in place and skipped",
                }
            )
        events += make(tail, head)
        built: list[tuple[Record, bytes]] = []
        last = tail.last
        seq = 0 if last is None else int(last["seq"]) + 1
        prev = GENESIS if last is None else str(last["hash"])
        for fields in events:
            record, line = self._build(self._event_fields(fields), seq, prev)
            built.append((record, line))
            seq, prev = seq + 1, record["hash"]
        # one write: the partial line's end (it stays as evidence) and every new line
        fh.write((b"\n" if tail.partial is not None else b"") + b"".join(ln for _, ln in built))
        fh.flush()
        os.fsync(fh.fileno())
        final = built[-1][0]
        head_new = Head(self.site_id, final["seq"], final["hash"], final["time"], None)
        if self.signing_key is not None:
            sig = self.signing_key.sign(head_new.signing_bytes()).hex()
            head_new = Head(head_new.site_id, head_new.seq, head_new.hash, head_new.time, sig)
        write_atomic(self.head_path, head_new.to_bytes(), mode=0o640)
        return [r for r, _ in built]


def _record_signed_bytes(rec: Mapping[str, Any]) -> bytes:
    """What the site key signs for a record: the domain, then the 32-byte hash."""
    return RECORD_DOMAIN + bytes.fromhex(str(rec["hash"]))


def _in_session(session_id: str | None) -> str:
    return f" in session {_short(session_id)}" if session_id else ""


def _short(value: str | None) -> str:
    if value is None:
        return "-"
    return value.removeprefix("sha256:")[:8]


# ---------------------------------------------------------------- verify


Severity = Literal["problem", "warning"]


@dataclass(frozen=True)
class Finding:
    """One thing ``verify`` found, located by 1-based line number (and seq when known)."""

    line: int
    seq: int | None
    code: str  # unreadable | truncated | noncanonical | malformed | edited | signature |
    # unsigned | out_of_order | chain | head | site | anchor | recovered | reanchored | unanchored
    message: str

    def text(self) -> str:
        where = f"line {self.line}" + (f" (seq {self.seq})" if self.seq is not None else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class VerifyReport:
    """The result of ``verify``: ok only if no problem; warnings are acknowledged events."""

    path: Path
    lines: int
    records: int
    last_seq: int | None
    last_hash: str | None
    head: Head | None
    key_fingerprint: str | None
    problems: tuple[Finding, ...] = ()
    warnings: tuple[Finding, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> Finding | None:
        return self.problems[0] if self.problems else None

    def as_json(self) -> dict[str, Any]:
        return {
            "log": str(self.path),
            "ok": self.ok,
            "lines": self.lines,
            "records": self.records,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "head": None if self.head is None else {"seq": self.head.seq, "hash": self.head.hash},
            "key": self.key_fingerprint,
            "problems": [_finding_json(f) for f in self.problems],
            "warnings": [_finding_json(f) for f in self.warnings],
        }

    def text(self) -> str:
        """What ``her2fed site audit verify`` prints."""
        out = [f"audit log {self.path}: {self.records} record(s) on {self.lines} line(s)"]
        if self.key_fingerprint:
            out.append(f"verified with site key {self.key_fingerprint}")
        else:
            out.append("WARNING: no site key given: signatures were NOT checked")
        if self.head is not None:
            out.append(f"head anchor: seq {self.head.seq} hash {self.head.hash}")
        for w in self.warnings:
            out.append(f"  [WARN] {w.text()}")
        for p in self.problems:
            out.append(f"  [FAIL] {p.text()}")
        if self.ok:
            out.append("verify passed: no edit, deletion, reordering or truncation found")
        else:
            first = self.problems[0]
            out.append(
                f"verify FAILED: {len(self.problems)} problem(s); the first is at line {first.line}"
            )
        return "\n".join(out)


def _finding_json(f: Finding) -> dict[str, Any]:
    return {"line": f.line, "seq": f.seq, "code": f.code, "message": f.message}


@dataclass
class _Walk:
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    expected_seq: int = 0
    prev: str = GENESIS
    site: str | None = None
    records: int = 0
    last: Record | None = None
    last_line: int = 0
    hashes: dict[int, str] = field(default_factory=dict)


def verify(
    path: str | Path,
    public_key: Ed25519PublicKey | None,
    *,
    site_id: str | None = None,
    expect: Iterable[tuple[int, str]] = (),
) -> VerifyReport:
    """Check every line of the log and its head; locate each problem by line number.

    Finds: unreadable or cut lines (truncation), lines not in canonical form
    (hand edits that keep the content), edited fields (hash), forged or
    foreign records (signature under ``public_key``), deleted, inserted or
    reordered records (seq and ``prev``), records removed from the end (the
    signed head), and anchors from earlier reports that no longer hold
    (``expect``: ``(seq, hash)`` pairs). ``public_key=None`` checks the chain
    only and says so.
    """
    p = Path(path)
    lines = read_lines(p)
    w = _Walk(site=site_id)
    for i, ln in enumerate(lines):
        rec = ln.record
        if rec is None:
            _unreadable(w, ln, lines[i + 1] if i + 1 < len(lines) else None, public_key)
            continue
        _check_record(w, ln, rec, public_key)
    head: Head | None = None
    try:
        head = read_head(p)
    except HeadUnreadable:
        w.problems.append(
            Finding(
                w.last_line + 1,
                None,
                "head",
                f"the head anchor {head_path(p).name} is unreadable (edited or damaged)",
            )
        )
    else:
        _check_head(w, p, head, lines, public_key)
    for seq, digest in expect:
        have = w.hashes.get(seq)
        if have is None:
            w.problems.append(
                Finding(
                    w.last_line + 1,
                    seq,
                    "anchor",
                    f"an earlier report anchored seq {seq}, which the log no longer holds: "
                    "the log was rolled back or cut",
                )
            )
        elif have != digest:
            w.problems.append(
                Finding(
                    _line_of(lines, seq),
                    seq,
                    "anchor",
                    f"an earlier report anchored seq {seq} with hash {digest[:16]}…, the log "
                    f"now holds {have[:16]}…: the record was replaced",
                )
            )
    last = w.last
    return VerifyReport(
        path=p,
        lines=len(lines),
        records=w.records,
        last_seq=None if last is None else last.get("seq"),
        last_hash=None if last is None else last.get("hash"),
        head=head,
        key_fingerprint=None if public_key is None else fingerprint(public_key),
        problems=tuple(sorted(w.problems, key=lambda f: f.line)),
        warnings=tuple(w.warnings),
    )


def _line_of(lines: Sequence[Line], seq: int) -> int:
    for ln in lines:
        if ln.record is not None and ln.record.get("seq") == seq:
            return ln.number
    return 0


def _unreadable(w: _Walk, ln: Line, nxt: Line | None, key: Ed25519PublicKey | None) -> None:
    """A line that is not a JSON record: a crash remnant (acknowledged or not) or an edit."""
    if not ln.terminated:
        w.problems.append(
            Finding(
                ln.number,
                None,
                "truncated",
                f"the last record is incomplete ({len(ln.raw)} bytes, no line end): the file "
                "was cut mid-record, or the agent crashed while writing",
            )
        )
        return
    ack = None if nxt is None else nxt.record
    if (
        ack is not None
        and ack.get("kind") == "log_recovered"
        and isinstance(ack.get("details"), dict)
        and ack["details"].get("line") == ln.number
        and ack["details"].get("partial_sha256") == hashlib.sha256(ln.raw).hexdigest()
        and _shape_problem(ack) is None
        and record_hash(ack) == ack["hash"]
        and (key is None or _verify_sig(key, ack["sig"], _record_signed_bytes(ack)))
    ):
        w.warnings.append(
            Finding(
                ln.number,
                None,
                "recovered",
                f"incomplete record left by a crash ({len(ln.raw)} bytes), acknowledged by the "
                f"signed recovery record on line {nxt.number if nxt else '?'}",
            )
        )
        return
    what = "an empty line" if not ln.raw.strip() else "not a JSON record"
    w.problems.append(
        Finding(ln.number, None, "unreadable", f"{what}: the line was edited or damaged")
    )


def _check_record(w: _Walk, ln: Line, rec: Record, key: Ed25519PublicKey | None) -> None:
    n = ln.number
    shape = _shape_problem(rec)
    if shape is not None:
        w.problems.append(Finding(n, None, "malformed", f"not an audit record: {shape}"))
        return
    seq: int = rec["seq"]
    w.records += 1
    w.hashes.setdefault(seq, rec["hash"])
    if not ln.terminated:
        w.problems.append(
            Finding(n, seq, "truncated", "the last record has no line end: the file was cut")
        )
    if canonical(rec) != ln.raw:
        w.problems.append(
            Finding(n, seq, "noncanonical", "the line is not byte-for-byte as written (edited)")
        )
    computed = record_hash(rec)
    edited = computed != rec["hash"]
    if edited:
        w.problems.append(
            Finding(
                n,
                seq,
                "edited",
                "the record's content does not match its hash: a field was edited",
            )
        )
    if key is not None:
        if rec["sig"] is None:
            w.problems.append(Finding(n, seq, "unsigned", "the record is not signed"))
        elif not _verify_sig(key, rec["sig"], _record_signed_bytes(rec)):
            w.problems.append(
                Finding(
                    n,
                    seq,
                    "signature",
                    "the signature does not verify under the site key: the record was forged, "
                    "re-hashed after an edit, or written with another key",
                )
            )
    if w.site is None:
        w.site = rec["site_id"]
    elif rec["site_id"] != w.site:
        w.problems.append(
            Finding(n, seq, "site", f"the record is from site {rec['site_id']!r}, not {w.site!r}")
        )
    if seq != w.expected_seq:
        if seq > w.expected_seq:
            gone = seq - w.expected_seq
            msg = (
                f"expected seq {w.expected_seq}, found seq {seq}: {gone} record(s) before this "
                "line were deleted, or records were reordered"
            )
        else:
            msg = (
                f"expected seq {w.expected_seq}, found seq {seq}: records were reordered or "
                "a record was inserted or duplicated"
            )
        w.problems.append(Finding(n, seq, "out_of_order", msg))
    elif rec["prev"] != w.prev:
        w.problems.append(
            Finding(
                n,
                seq,
                "chain",
                "the record does not chain to the one before it: a record before it was "
                "replaced, or lines were moved",
            )
        )
    if rec["kind"] == "log_reanchored" and not edited:
        d = rec["details"]
        w.warnings.append(
            Finding(
                n,
                seq,
                "reanchored",
                f"the officer re-anchored the log: the head was {_point(d.get('head_before'))}, "
                f"the log ended at {_point(d.get('log_end'))}; records between them may be "
                f"lost. Note: {d.get('note')!r}",
            )
        )
    # resynchronise on this record, so one damaged line is reported once
    w.expected_seq = seq + 1
    w.prev = rec["hash"]
    w.last = rec
    w.last_line = n


def _point(anchor: Any) -> str:
    if not isinstance(anchor, dict):
        return "missing"
    return f"seq {anchor.get('seq')} ({str(anchor.get('hash'))[:12]}…)"


def _check_head(
    w: _Walk,
    p: Path,
    head: Head | None,
    lines: Sequence[Line],
    key: Ed25519PublicKey | None,
) -> None:
    after = w.last_line + 1
    last = w.last
    if head is None:
        if last is not None:
            w.problems.append(
                Finding(
                    after,
                    None,
                    "head",
                    f"the signed head anchor {head_path(p).name} is missing: records removed "
                    "from the end could not be detected",
                )
            )
        return
    if key is not None and (
        head.sig is None or not _verify_sig(key, head.sig, head.signing_bytes())
    ):
        w.problems.append(
            Finding(
                after,
                None,
                "head",
                "the head anchor's signature does not verify under the site key (edited or "
                "written with another key)",
            )
        )
        return
    if w.site is not None and head.site_id != w.site:
        w.problems.append(
            Finding(after, None, "head", f"the head anchor is of site {head.site_id!r}")
        )
    if last is None:
        w.problems.append(
            Finding(
                1,
                None,
                "truncated",
                f"the log holds no record but its signed head anchors seq {head.seq}: the log "
                "was emptied or deleted",
            )
        )
        return
    seq = last["seq"]
    if head.seq > seq:
        w.problems.append(
            Finding(
                after,
                head.seq,
                "truncated",
                f"the log ends at line {w.last_line} (seq {seq}) but the signed head anchors "
                f"seq {head.seq}: {head.seq - seq} record(s) were removed from the end",
            )
        )
    elif head.seq == seq and head.hash != last["hash"]:
        w.problems.append(
            Finding(
                w.last_line,
                seq,
                "head",
                "the last record's hash differs from the one the signed head anchors: it was "
                "replaced",
            )
        )
    elif head.seq < seq:
        anchored = w.hashes.get(head.seq)
        if anchored is not None and anchored != head.hash:
            w.problems.append(
                Finding(
                    _line_of(lines, head.seq),
                    head.seq,
                    "head",
                    "the record at the head's seq has another hash than the head anchors",
                )
            )
        else:
            w.warnings.append(
                Finding(
                    w.last_line,
                    seq,
                    "unanchored",
                    f"{seq - head.seq} signed record(s) after the head anchor (seq "
                    f"{head.seq}): the agent stopped between writing and anchoring; the next "
                    "write re-anchors",
                )
            )


# ---------------------------------------------------------------- show and export


@dataclass(frozen=True)
class Row:
    """One record as the officer reads it (``show`` and CSV export)."""

    line: int
    seq: int | None
    time: str
    kind: str
    session_id: str
    query_id: str
    study_hash: str
    analyses: str
    steps: str
    size: int | None
    sha256: str
    checks: str
    suppressed: int
    dp_epsilon: float | None
    participants: str
    summary: str
    hash: str


def _row(ln: Line) -> Row:
    rec = ln.record
    if rec is None or _shape_problem(rec) is not None:
        return Row(
            line=ln.number,
            seq=None,
            time="",
            kind="?",
            session_id="",
            query_id="",
            study_hash="",
            analyses="",
            steps="",
            size=None,
            sha256="",
            checks="",
            suppressed=0,
            dp_epsilon=None,
            participants="",
            summary="unreadable line: run `her2fed site audit verify`",
            hash="",
        )
    d = rec["details"]
    checks = d.get("checks") if isinstance(d.get("checks"), list) else []
    sup = d.get("suppressions") if isinstance(d.get("suppressions"), list) else []
    dp = d.get("dp") if isinstance(d.get("dp"), dict) else None
    parts = d.get("participants") if isinstance(d.get("participants"), list) else []
    return Row(
        line=ln.number,
        seq=rec["seq"],
        time=str(rec["time"]),
        kind=rec["kind"],
        session_id=rec["session_id"] or "",
        query_id=rec["query_id"] or "",
        study_hash=rec["study_hash"] or "",
        analyses=",".join(map(str, rec["analyses"] or [])),
        steps=",".join(map(str, rec["steps"] or [])),
        size=rec["size"],
        sha256=rec["sha256"] or "",
        checks=";".join(
            f"{c.get('name')}:{'pass' if c.get('passed') else 'FAIL'}"
            for c in checks
            if isinstance(c, dict)
        ),
        suppressed=sum(int(s.get("cells", 0)) for s in sup if isinstance(s, dict)),
        dp_epsilon=None if dp is None else dp.get("epsilon"),
        participants=",".join(map(str, parts)),
        summary=rec["summary"],
        hash=rec["hash"],
    )


def parse_since(text: str) -> datetime:
    """``2026-01-31`` or a full ISO time; naive times are UTC."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AuditError(
            f"--since {text!r} is not a date. Fix: e.g. --since 2026-01-31 or 2026-01-31T12:00:00Z"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def show(
    path: str | Path,
    *,
    kind: str | Sequence[str] | None = None,
    session: str | None = None,
    analysis: str | None = None,
    since: datetime | str | None = None,
) -> list[Row]:
    """Rows of the log, filtered (kind(s); session id or its prefix; analysis id; from a time).

    Reading does not verify: an unreadable line appears as a row saying so,
    and the officer runs ``verify`` for integrity.
    """
    kinds = {kind} if isinstance(kind, str) else set(kind or ())
    start = parse_since(since) if isinstance(since, str) else since
    rows = []
    for ln in read_lines(path):
        row = _row(ln)
        if row.seq is None:
            rows.append(row)
            continue
        if kinds and row.kind not in kinds:
            continue
        if session and not row.session_id.startswith(session):
            continue
        if analysis and analysis not in row.analyses.split(","):
            continue
        if start is not None and parse_since(row.time) < start:
            continue
        rows.append(row)
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """A fixed-width table for a terminal; the summary (the readable part) comes last."""
    head = ("seq", "time (UTC)", "kind", "session", "analyses", "bytes", "summary")
    body = [
        (
            "?" if r.seq is None else str(r.seq),
            r.time[:19].replace("T", " "),
            r.kind,
            r.session_id[:8],
            _clip(r.analyses, 28),
            "" if r.size is None else f"{r.size:,}",
            r.summary if r.seq is not None else f"line {r.line}: {r.summary}",
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head) - 1)]
    out = []
    for cells in [head, *body]:
        padded = [
            c.rjust(wd) if i in (0, 5) else c.ljust(wd)
            for i, (c, wd) in enumerate(zip(cells[:-1], widths, strict=True))
        ]
        out.append("  ".join([*padded, cells[-1]]))
    return "\n".join(out)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


CSV_COLUMNS: tuple[str, ...] = (
    "line",
    "seq",
    "time",
    "kind",
    "session_id",
    "query_id",
    "study_hash",
    "analyses",
    "steps",
    "size",
    "sha256",
    "checks",
    "suppressed",
    "dp_epsilon",
    "participants",
    "summary",
    "hash",
)


def export(
    path: str | Path,
    fmt: Literal["csv", "json"] = "csv",
    *,
    report: VerifyReport | None = None,
    kind: str | Sequence[str] | None = None,
    session: str | None = None,
    analysis: str | None = None,
    since: datetime | str | None = None,
    now: datetime | None = None,
) -> str:
    """The log (filtered like ``show``) for the officer's report.

    CSV: one row per record, the columns of ``CSV_COLUMNS``. JSON: the full
    records plus, when given, the verification result and the head anchor
    (quote it in the report: a later ``verify --expect SEQ:HASH`` proves the
    log was not rolled back past it).
    """
    rows = show(path, kind=kind, session=session, analysis=analysis, since=since)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow(["" if (v := getattr(r, c)) is None else v for c in CSV_COLUMNS])
        return buf.getvalue()
    if fmt != "json":
        raise AuditError(f"unknown export format {fmt!r}. Fix: use csv or json")
    wanted = {r.line for r in rows}
    records = [
        ln.record if ln.record is not None else {"line": ln.number, "unreadable": True}
        for ln in read_lines(path)
        if ln.number in wanted
    ]
    doc = {
        "format": "her2fed-audit-export/1",
        "log": str(path),
        "exported_at": iso_time(now or utc_now()),
        "verification": None if report is None else report.as_json(),
        "records": records,
    }
    return json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n"


def parse_expect(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` (as printed by verify) -> (seq, hash)."""
    seq, _, digest = text.partition(":")
    digest = digest.strip().lower()
    if not seq.strip().isdigit() or _HEX64.fullmatch(digest) is None:
        raise AuditError(
            f"--expect {text!r} is not SEQ:HASH. Fix: copy the 'head anchor: seq N hash H' "
            "line of an earlier verify as N:H"
        )
    return int(seq), digest
