"""The site audit log: real files, every tampering detected and located by line.

Each attack test edits the file the way an attacker with write access (but
without the site key) would, then checks that ``verify`` fails and names
the line where the damage is.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.cli import main
from her2fed.protocol import Query
from site_agent.audit import (
    RECORD_DOMAIN,
    AuditError,
    AuditLog,
    Check,
    DPSpend,
    Suppression,
    canonical,
    export,
    format_table,
    head_path,
    read_head,
    record_hash,
    show,
    verify,
)
from site_agent.federation.keys import write_private_key, write_public_key
from site_agent.policy import PolicyRefusal

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
PUB = KEY.public_key()
SITE = "athens"
SESSION = "0123456789abcdef0123456789abcdef"
STUDY = "sha256:" + "ab" * 32
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def ticking() -> Callable[[], datetime]:
    """A clock that advances one minute per record (times are then predictable)."""
    counter = itertools.count()
    return lambda: T0 + timedelta(minutes=next(counter))


def new_log(path: Path, key: Ed25519PrivateKey | None = KEY) -> AuditLog:
    return AuditLog(path, key, SITE, clock=ticking())


def fill(path: Path, n_rounds: int = 2) -> AuditLog:
    """A realistic log: a session, then per round a query and the payload answering it."""
    log = new_log(path)
    log.record_session_opened(session_id=SESSION, study_hash=STUDY, coordinator="coord.example")
    for r in range(n_rounds):
        q = log.record_query(
            session_id=SESSION,
            study_hash=STUDY,
            step="prepare",
            queries=[Query("os_km", "table"), Query("os_cox", "cox_sums", (0.1,), (60.0,))],
            received=f"round {r}".encode(),
        )
        log.record_payload(
            session_id=SESSION,
            study_hash=STUDY,
            payload=bytes([r]) * (100 + r),
            step="secagg",
            analyses=["os_km", "os_cox"],
            checks=[Check("min_cell", True, 5, "os_km"), Check("min_cohort", True, 10)],
            suppressions=[Suppression("os_km", "min_cell", 2, "risk table cells")],
            dp=DPSpend(0.5, 1e-6, "gaussian"),
            participants=["athens", "oslo", "munich"],
            query_id=q["query_id"],
            what="masked vector",
        )
    return log


def raw_lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def first(path: Path, key: Ed25519PrivateKey | None = KEY) -> tuple[int, str]:
    """(line, code) of the first problem verify reports; the log must fail."""
    report = verify(path, None if key is None else key.public_key())
    assert not report.ok, report.text()
    p = report.first_problem
    assert p is not None
    return p.line, p.code


def resign(record: dict[str, object], key: Ed25519PrivateKey) -> bytes:
    """What an attacker can do without the site key: re-hash and sign with his own."""
    rec = dict(record)
    rec["hash"] = record_hash(rec)
    rec["sig"] = key.sign(RECORD_DOMAIN + bytes.fromhex(str(rec["hash"]))).hex()
    return canonical(rec)


# ---------------------------------------------------------------- the honest path


def test_round_trip_every_field_chained_and_signed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    lines = raw_lines(path)
    assert path.read_bytes().endswith(b"\n") and len(lines) == 5
    records = [json.loads(line) for line in lines]
    prev = "0" * 64
    for i, (line, rec) in enumerate(zip(lines, records, strict=True)):
        assert line == canonical(rec)  # canonical JSON: sorted keys, no spaces
        assert rec["seq"] == i and rec["prev"] == prev and rec["site_id"] == SITE
        assert (
            rec["hash"]
            == hashlib.sha256(
                canonical({k: v for k, v in rec.items() if k not in ("hash", "sig")})
            ).hexdigest()
        )
        PUB.verify(bytes.fromhex(rec["sig"]), RECORD_DOMAIN + bytes.fromhex(rec["hash"]))
        assert rec["time"].endswith("Z") and "\n" not in rec["summary"]
        prev = rec["hash"]
    assert [r["kind"] for r in records] == [
        "session_opened",
        "query_received",
        "payload_sent",
        "query_received",
        "payload_sent",
    ]
    query, payload = records[1], records[2]
    assert query["details"]["queries"][1] == {
        "analysis": "os_cox",
        "step": "cox_sums",
        "beta": [0.1],
        "center": [60.0],
    }
    assert query["query_id"] == hashlib.sha256(b"round 0").hexdigest()[:16]
    assert payload["query_id"] == query["query_id"]  # the payload names the query it answers
    # digest and size of the exact bytes sent, and every disclosure fact the brief lists
    assert payload["sha256"] == hashlib.sha256(bytes([0]) * 100).hexdigest()
    assert payload["size"] == 100
    d = payload["details"]
    assert d["checks"][0] == {
        "name": "min_cell",
        "passed": True,
        "threshold": 5,
        "analysis": "os_km",
    }
    assert d["suppressions"][0]["cells"] == 2 and d["dp"]["epsilon"] == 0.5
    assert d["participants"] == ["athens", "oslo", "munich"]
    assert "100 bytes" in payload["summary"] and "2/2 checks passed" in payload["summary"]
    head = read_head(path)
    assert head is not None and (head.seq, head.hash) == (4, records[-1]["hash"])
    report = verify(path, PUB)
    assert report.ok and not report.warnings and report.records == 5, report.text()
    assert "verify passed" in report.text()


def test_appending_never_rewrites_earlier_bytes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = fill(path, n_rounds=1)
    before = path.read_bytes()
    log.record_refusal(session_id=SESSION, study_hash=STUDY, reason="no")
    assert path.read_bytes().startswith(before)
    assert verify(path, PUB).ok


def test_only_digest_of_the_payload_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = new_log(path)
    secret = b"patient-row-0042;1961-04-02;deceased"
    log.record_payload(session_id=SESSION, study_hash=STUDY, payload=secret, step="secagg")
    assert secret not in path.read_bytes() and b"patient" not in path.read_bytes()
    assert json.loads(raw_lines(path)[0])["sha256"] == hashlib.sha256(secret).hexdigest()


def test_refusal_records_rule_threshold_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    err = PolicyRefusal("min_cohort", 10, "analysis 'km' has too few rows", "widen the cohort")
    rec = new_log(path).record_refusal(
        session_id=SESSION, study_hash=STUDY, reason=err, analyses=["km"], step="prepare"
    )
    assert rec["details"]["rule"] == "min_cohort" and rec["details"]["threshold"] == 10
    assert rec["details"]["reason"] == str(err)
    assert rec["summary"].startswith("refused (min_cohort) in session 01234567: analysis 'km'")


def test_events_are_validated(tmp_path: Path) -> None:
    log = new_log(tmp_path / "audit.jsonl")
    with pytest.raises(AuditError, match="unknown field"):
        log.append({"kind": "x", "summary": "s", "patient": 1})
    with pytest.raises(AuditError, match="plain JSON"):
        log.append({"kind": "x", "summary": "s", "details": {"v": object()}})
    with pytest.raises(AuditError, match="plain JSON"):
        log.append({"kind": "x", "summary": "s", "details": {"v": float("nan")}})
    with pytest.raises(AuditError, match="needs the payload"):
        log.append({"kind": "payload_sent", "summary": "s"})
    with pytest.raises(AuditError, match="summary"):
        log.append({"kind": "x", "summary": " "})
    rec = log.append({"kind": "note", "summary": "two\nlines"})
    assert rec["summary"] == "two lines"


def test_show_filters_and_table(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = fill(path)
    log.record_refusal(session_id="ff" * 16, study_hash=STUDY, reason="x", analyses=["other"])
    assert [r.kind for r in show(path, kind="payload_sent")] == ["payload_sent"] * 2
    assert len(show(path, session="0123")) == 5 and len(show(path, session="ff")) == 1
    assert len(show(path, analysis="os_cox")) == 4 and len(show(path, analysis="other")) == 1
    assert [r.seq for r in show(path, since="2026-01-01T12:03:00Z")] == [3, 4, 5]
    assert [r.seq for r in show(path, since=T0 + timedelta(minutes=5))] == [5]
    rows = show(path, kind="payload_sent")
    assert rows[0].checks == "min_cell:pass;min_cohort:pass" and rows[0].suppressed == 2
    table = format_table(show(path))
    assert table.splitlines()[0].split() == [
        "seq", "time", "(UTC)", "kind", "session", "analyses", "bytes", "summary"
    ]  # fmt: skip
    assert "2026-01-01 12:02:00" in table and "masked vector" in table


def test_export_csv_and_json(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    text = export(path, "csv")
    header, *rows = text.splitlines()
    assert header.startswith("line,seq,time,kind") and len(rows) == 5
    doc = json.loads(export(path, "json", report=verify(path, PUB), kind="payload_sent"))
    assert [r["seq"] for r in doc["records"]] == [2, 4]
    assert doc["verification"]["ok"] is True and doc["verification"]["head"]["seq"] == 4


def test_concurrent_writers_keep_one_chain(tmp_path: Path) -> None:
    """Two writers (separate objects, so separate file locks) never fork the chain."""
    path = tmp_path / "audit.jsonl"
    logs = [AuditLog(path, KEY, SITE), AuditLog(path, KEY, SITE)]

    def work(log: AuditLog, who: int) -> None:
        for i in range(40):
            log.append({"kind": "note", "summary": f"writer {who} event {i}"})

    threads = [threading.Thread(target=work, args=(log, i)) for i, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = verify(path, PUB)
    assert report.ok and report.records == 80, report.text()


# ---------------------------------------------------------------- tampering, each located


def test_editing_a_field_is_detected_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    lines = raw_lines(path)
    lines[2] = lines[2].replace(b'"size":100', b'"size":10')
    write_lines(path, lines)
    report = verify(path, PUB)
    assert [(p.line, p.code) for p in report.problems] == [(3, "edited")]
    assert "line 3 (seq 2)" in report.text() and "first is at line 3" in report.text()


def test_editing_and_rehashing_without_the_key_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    lines = raw_lines(path)
    rec = json.loads(lines[2])
    rec["summary"] = "nothing was sent"
    rec["hash"] = record_hash(rec)  # consistent hash, but the signature is the site's
    lines[2] = canonical(rec)
    write_lines(path, lines)
    assert first(path) == (3, "signature")
    assert first(path, key=None) == (4, "chain")  # even without a key: line 4 no longer chains


def test_reformatting_a_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    lines = raw_lines(path)
    lines[1] = json.dumps(json.loads(lines[1]), sort_keys=True).encode()  # same content, spaces
    write_lines(path, lines)
    assert first(path) == (2, "noncanonical")


def test_deleting_a_line_is_detected_where_the_gap_is(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    lines = raw_lines(path)
    del lines[2]
    write_lines(path, lines)
    report = verify(path, PUB)
    assert report.first_problem is not None
    assert (report.first_problem.line, report.first_problem.code) == (3, "out_of_order")
    assert "1 record(s) before this line were deleted" in report.first_problem.message


def test_deleting_the_first_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    write_lines(path, raw_lines(path)[1:])
    assert first(path) == (1, "out_of_order")


def test_swapping_two_lines_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    lines = raw_lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    write_lines(path, lines)
    assert first(path) == (2, "out_of_order")


def test_replaying_a_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    lines = raw_lines(path)
    lines.insert(3, lines[2])
    write_lines(path, lines)
    assert first(path) == (4, "out_of_order")


def test_truncating_the_last_record_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    write_lines(path, raw_lines(path)[:-1])  # a clean cut at a line end: the chain is intact
    report = verify(path, PUB)
    assert [(p.line, p.code) for p in report.problems] == [(5, "truncated")]
    assert "signed head anchors seq 4: 1 record(s) were removed from the end" in report.text()


def test_truncating_several_records_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    write_lines(path, raw_lines(path)[:2])
    report = verify(path, PUB)
    assert report.first_problem is not None and report.first_problem.line == 3
    assert "3 record(s) were removed" in report.first_problem.message


def test_emptying_the_log_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    path.write_bytes(b"")
    assert first(path) == (1, "truncated")


def test_truncating_mid_line_is_detected_at_that_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    report = verify(path, PUB)
    assert report.first_problem is not None
    assert (report.first_problem.line, report.first_problem.code) == (5, "truncated")
    assert "incomplete" in report.first_problem.message


def test_a_record_forged_with_another_key_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    lines = raw_lines(path)
    rec = json.loads(lines[2])
    rec["summary"] = "sent nothing"
    lines[2] = resign(rec, OTHER)
    write_lines(path, lines)
    assert first(path) == (3, "signature")


def test_a_log_rewritten_entirely_with_another_key_is_detected(tmp_path: Path) -> None:
    """The attacker rebuilds the whole log and head with his key: nothing verifies."""
    path = tmp_path / "audit.jsonl"
    fill(path)
    forged = tmp_path / "forged.jsonl"
    log = new_log(forged, OTHER)
    for _ in range(3):
        log.append({"kind": "note", "summary": "all quiet"})
    path.write_bytes(forged.read_bytes())
    head_path(path).write_bytes(head_path(forged).read_bytes())
    report = verify(path, PUB)
    assert report.first_problem is not None and report.first_problem.line == 1
    assert {p.code for p in report.problems} == {"signature", "head"}


def test_appending_a_forged_record_and_head_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    lines = raw_lines(path)
    last = json.loads(lines[-1])
    forged = dict(last, seq=5, prev=last["hash"], summary="study approved")
    lines.append(resign(forged, OTHER))
    write_lines(path, lines)
    assert first(path) == (6, "signature")


def test_a_missing_or_edited_head_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path)
    head = head_path(path)
    saved = head.read_bytes()
    head.write_bytes(saved.replace(b'"seq":4', b'"seq":3'))
    assert first(path) == (6, "head")
    head.write_bytes(b"not json")
    assert first(path) == (6, "head")
    head.unlink()
    report = verify(path, PUB)
    assert report.first_problem is not None and report.first_problem.code == "head"
    assert "missing" in report.first_problem.message


def test_rollback_of_log_and_head_is_caught_by_an_earlier_anchor(tmp_path: Path) -> None:
    """Restoring an older log *with* its older signed head needs an anchor kept elsewhere."""
    path = tmp_path / "audit.jsonl"
    log = fill(path, n_rounds=1)
    old_log, old_head = path.read_bytes(), head_path(path).read_bytes()
    log.append({"kind": "note", "summary": "later event"})
    anchor = verify(path, PUB)
    assert anchor.head is not None
    path.write_bytes(old_log)
    head_path(path).write_bytes(old_head)
    assert verify(path, PUB).ok  # locally consistent: the documented limit
    rolled = verify(path, PUB, expect=[(anchor.head.seq, anchor.head.hash)])
    assert not rolled.ok and rolled.problems[0].code == "anchor"
    assert "rolled back" in rolled.problems[0].message


# ---------------------------------------------------------------- crashes and fail-closed writes


def test_crash_mid_write_is_reported_then_recovered_by_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = fill(path, n_rounds=1)
    with path.open("ab") as fh:
        fh.write(b'{"analyses":["os_km"],"details":{"ste')  # the agent died mid-line
    assert first(path) == (4, "truncated")
    log.record_refusal(session_id=SESSION, study_hash=STUDY, reason="after restart")
    report = verify(path, PUB)
    assert report.ok, report.text()
    assert [(w.line, w.code) for w in report.warnings] == [(4, "recovered")]
    recovered = json.loads(raw_lines(path)[4])
    assert recovered["kind"] == "log_recovered" and recovered["details"]["line"] == 4
    # the remnant is pinned by its digest: changing it afterwards is an edit
    lines = raw_lines(path)
    lines[3] = lines[3] + b"x"
    write_lines(path, lines)
    assert first(path) == (4, "unreadable")


def test_crash_between_line_and_head_is_a_warning_and_heals(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = fill(path, n_rounds=1)
    old_head = head_path(path).read_bytes()
    log.append({"kind": "note", "summary": "written, head not yet moved"})
    head_path(path).write_bytes(old_head)
    report = verify(path, PUB)
    assert report.ok and [w.code for w in report.warnings] == ["unanchored"]
    log.append({"kind": "note", "summary": "next write"})
    report = verify(path, PUB)
    assert report.ok and not report.warnings


def test_writing_refuses_after_truncation_so_it_cannot_be_hidden(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = fill(path)
    write_lines(path, raw_lines(path)[:-2])
    cut = path.read_bytes()
    with pytest.raises(AuditError, match="nothing is written or sent"):
        log.append({"kind": "note", "summary": "x"})
    assert path.read_bytes() == cut  # nothing written, the head still tells on the cut
    assert first(path) == (4, "truncated")


def test_writing_refuses_on_an_edited_last_record_or_missing_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = fill(path, n_rounds=1)
    lines = raw_lines(path)
    good = list(lines)
    lines[-1] = lines[-1].replace(b"masked vector", b"nothing")
    write_lines(path, lines)
    with pytest.raises(AuditError, match="does not verify"):
        log.append({"kind": "note", "summary": "x"})
    write_lines(path, good)
    head_path(path).unlink()
    with pytest.raises(AuditError, match="head anchor is missing"):
        log.append({"kind": "note", "summary": "x"})
    with pytest.raises(AuditError):  # another key cannot continue the site's log
        new_log(path, OTHER).append({"kind": "note", "summary": "x"})


def test_reanchor_lets_the_site_write_again_and_stays_visible(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = fill(path)
    write_lines(path, raw_lines(path)[:-1])
    rec = log.reanchor("restored from the 2026-01-01 backup", "P. Officer")
    assert rec["details"]["head_before"]["seq"] == 4 and rec["details"]["log_end"]["seq"] == 3
    log.append({"kind": "note", "summary": "back in service"})
    report = verify(path, PUB)
    assert report.ok, report.text()
    assert [(w.line, w.code) for w in report.warnings] == [(5, "reanchored")]
    assert "seq 4" in report.warnings[0].message and "backup" in report.warnings[0].message


def test_unsigned_records_fail_a_keyed_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    new_log(path, key=None).append({"kind": "note", "summary": "x"})
    assert verify(path, None).ok  # the chain alone holds
    assert first(path) == (1, "unsigned")


# ---------------------------------------------------------------- the officer's commands


def site_dir(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    write_private_key(KEY, tmp_path / "keys" / "site.key")
    config = tmp_path / "site.toml"
    config.write_text(
        f'[site]\nid = "{SITE}"\ncountry = "GR"\n\n[data.analysis]\npath = "analysis.csv"\n'
    )
    return config


def test_cli_show_verify_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = site_dir(tmp_path)
    fill(tmp_path / "audit.jsonl")
    assert main(["site", "audit", "show", str(config), "--kind", "payload_sent"]) == 0
    out = capsys.readouterr().out
    assert "payload_sent" in out and "query_received" not in out and "2 record(s)" in out
    assert main(["site", "audit", "verify", str(config)]) == 0
    assert "verify passed" in capsys.readouterr().out
    out_file = tmp_path / "report.json"
    assert (
        main(["site", "audit", "export", str(config), "--format", "json", "--out", str(out_file)])
        == 0
    )
    assert json.loads(out_file.read_text())["verification"]["ok"] is True
    write_public_key(OTHER, tmp_path / "other.pub")
    args = ["site", "audit", "verify", str(config), "--public-key", str(tmp_path / "other.pub")]
    assert main(args) == 1  # the wrong pinned key: nothing verifies


def test_cli_verify_fails_and_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = site_dir(tmp_path)
    log = tmp_path / "audit.jsonl"
    fill(log)
    lines = raw_lines(log)
    del lines[1]
    write_lines(log, lines)
    assert main(["site", "audit", "verify", str(config)]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] line 2 (seq 2)" in out and "the first is at line 2" in out


def test_records_larger_than_a_read_block(tmp_path: Path) -> None:
    """The writer finds the log's end by reading backwards in blocks; big records span several."""
    path = tmp_path / "audit.jsonl"
    log = new_log(path)
    for i in range(3):
        log.append({"kind": "note", "summary": f"big {i}", "details": {"pad": "x" * 150_000}})
        log.append({"kind": "note", "summary": f"small {i}"})
    report = verify(path, PUB)
    assert report.ok and report.records == 6, report.text()


def test_crash_during_the_very_first_write(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"analyses":[],"det')  # no complete record, no head yet
    assert first(path) == (1, "truncated")
    new_log(path).append({"kind": "note", "summary": "first real record"})
    report = verify(path, PUB)
    assert report.ok and [w.code for w in report.warnings] == ["recovered"], report.text()
    assert json.loads(raw_lines(path)[1])["seq"] == 0
