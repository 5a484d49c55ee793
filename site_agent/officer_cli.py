"""``her2fed site approve|revoke|approvals|audit ...``: the privacy officer's commands.

The officer decides what the site answers (approval of a study by its hash,
after reading in plain words what each analysis releases) and checks what
left the site (the signed audit log), without trusting the coordinator.
Every decision and every refusal here is also written to the audit log.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import textwrap
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from her2fed.errors import Her2fedError, SpecError
from site_agent import audit
from site_agent.approval import (
    ApprovalStore,
    describe_header,
    describe_study,
    key_hex,
    load_lead_key,
    parse_study_bytes,
    read_signature,
    signature_path,
    study_hash,
    verify_signature,
)
from site_agent.config import load_site
from site_agent.federation.keys import read_private_key, read_public_key
from site_agent.policy import PolicyRefusal, check_study
from site_agent.site_files import (
    DEFAULT_LEAD_KEY,
    LEAD_KEY_FIELD,
    SITE_KEY_FIELD,
    SiteFiles,
    site_files,
)

WIDTH = 100


def _site_key(args: argparse.Namespace, files: SiteFiles) -> Ed25519PrivateKey:
    path = Path(args.site_key or files.site_key)
    if not path.is_file():
        raise SpecError(
            f"{files.config}: keys.{SITE_KEY_FIELD}",
            f"{path} does not exist, and the audit log must be signed with the site's key",
            f"run `her2fed site keys {files.config}`, point [keys] {SITE_KEY_FIELD} at the key "
            "the agent runs with, or pass --site-key",
        )
    return read_private_key(path)


def _lead_key(args: argparse.Namespace, files: SiteFiles) -> Ed25519PublicKey:
    """The lead key studies are checked against; ``--lead-key`` pins it if none is pinned yet.

    The site agent checks approvals against the pinned key only, so an
    approval made with another key than the pinned one would be refused at
    query time: that mismatch is an error here, not a surprise later.
    """
    if args.lead_key is not None and files.lead_key.is_file():
        given, pinned = load_lead_key(Path(args.lead_key)), load_lead_key(files.lead_key)
        if key_hex(given) != key_hex(pinned):
            raise SpecError(
                str(args.lead_key),
                f"is not the lead key pinned at this site ({files.lead_key}, "
                f"{key_hex(pinned)[:16]}…)",
                "check the key with the consortium lead; if the lead changed keys, replace "
                f"{files.lead_key} with the new public key first",
            )
        return pinned
    if args.lead_key is not None:
        given = load_lead_key(Path(args.lead_key))
        files.lead_key.parent.mkdir(parents=True, exist_ok=True)
        files.lead_key.write_bytes(Path(args.lead_key).read_bytes())
        print(f"pinned the consortium lead key {key_hex(given)} at {files.lead_key}")
        return given
    path = files.lead_key
    if not path.is_file():
        raise SpecError(
            f"{files.config}: keys.{LEAD_KEY_FIELD}",
            f"{path} does not exist: the consortium lead's public key must be pinned to check "
            "study signatures",
            f"save the lead's public key (64 hex, from `her2fed study keygen`; check it with the "
            f"lead by phone) as {path}, or pass --lead-key",
        )
    return load_lead_key(path)


def _audit_log(args: argparse.Namespace, files: SiteFiles, site_id: str) -> audit.AuditLog:
    return audit.AuditLog(args.log or files.audit_log, _site_key(args, files), site_id)


def _officer(args: argparse.Namespace) -> str:
    if args.officer:
        return str(args.officer)
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _confirm(args: argparse.Namespace, question: str) -> bool:
    """Ask on a terminal; scripts must say ``--yes`` (no silent approval from a pipe)."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise SpecError(
            "confirmation",
            "is needed and stdin is not a terminal",
            "run the command on a terminal, or pass --yes in scripts",
        )
    try:
        answer = input(f"{question} Type yes to confirm: ")
    except EOFError:
        return False
    return answer.strip().lower() in ("yes", "y")


def _wrap(prefix: str, text: str) -> str:
    return textwrap.fill(text, WIDTH, initial_indent=prefix, subsequent_indent=" " * len(prefix))


# ---------------------------------------------------------------- approve / revoke / list


def cmd_approve(args: argparse.Namespace) -> int:
    cfg = load_site(args.config)
    files = site_files(cfg)
    log = _audit_log(args, files, cfg.site_id)
    study_path = Path(args.study)
    try:
        data = study_path.read_bytes()
    except FileNotFoundError:
        raise SpecError(str(study_path), "file not found", "check the path") from None
    digest = study_hash(data)
    try:
        study = parse_study_bytes(data, str(study_path))
        lead = _lead_key(args, files)
        signature = read_signature(args.signature or signature_path(study_path))
        verify_signature(data, signature, lead)
    except Her2fedError as err:
        log.record_refusal(
            session_id=None,
            study_hash=digest,
            reason=err,
            step="approve",
            extra={"study_file": study_path.name, "officer": _officer(args)},
        )
        raise
    store = ApprovalStore(args.approvals or files.approvals)
    print(f"site {cfg.site_id}: approving study file {study_path}")
    print(f"  hash    {digest}")
    print(f"  signed  by {signature.signer!r} at {signature.signed_at}")
    print(f"          lead key {signature.public_key} (matches the key pinned at this site)")
    for line in describe_header(study):
        print(_wrap("  ", line))
    try:
        check_study(cfg.policy, study)
        print("  policy  the study passes this site's policy")
    except PolicyRefusal as err:
        print(_wrap("  ", f"WARNING: {err} - the site will refuse this even if approved"))
    print("\nWhat this site releases if you approve:")
    for i, (a, text) in enumerate(zip(study.analyses, describe_study(study), strict=True), 1):
        print(_wrap(f"  {i}. ", f"[{a.id}] {text}"))
    current = store.get(digest)
    if current is not None and not current.revoked:
        print(
            f"\nalready approved on {current.approved_at} by {current.officer or 'the officer'}; "
            "nothing changed"
        )
        return 0
    print()
    if not _confirm(args, f"Approve study {digest[:19]}… for site {cfg.site_id}?"):
        print("not approved; nothing recorded")
        return 1
    officer = _officer(args)
    note = " ".join((args.note or "").split())
    # the audit record first: if the log cannot be written, nothing is approved
    record = log.append(
        {
            "kind": "study_approved",
            "study_hash": digest,
            "analyses": [a.id for a in study.analyses],
            "details": {
                "study_name": study.name,
                "study_file": study_path.name,
                "signer": signature.signer,
                "lead_key": signature.public_key,
                "signed_at": signature.signed_at,
                "officer": officer,
                "note": note,
                "kinds": sorted({a.kind for a in study.analyses}),
            },
            "summary": f"study {study.name!r} ({digest[7:15]}) approved by {officer}: "
            f"{len(study.analyses)} analyses, signed by {signature.signer}",
        }
    )
    store.approve(
        digest, signature.signer, note, signature=signature, officer=officer, study_name=study.name
    )
    print(
        f"approved {digest}: recorded in {store.path} and in the audit log {log.path} "
        f"(seq {record['seq']})"
    )
    return 0


def _hash_arg(text: str) -> tuple[str, str]:
    """A study file or its ``sha256:`` hash -> (hash, label)."""
    if text.startswith("sha256:"):
        return text, text
    p = Path(text)
    try:
        return study_hash(p.read_bytes()), p.name
    except FileNotFoundError:
        raise SpecError(text, "is neither a study file nor a sha256: hash", "check it") from None


def cmd_revoke(args: argparse.Namespace) -> int:
    cfg = load_site(args.config)
    files = site_files(cfg)
    log = _audit_log(args, files, cfg.site_id)
    digest, label = _hash_arg(args.study)
    store = ApprovalStore(args.approvals or files.approvals)
    if not _confirm(args, f"Revoke the approval of {label} ({digest[:19]}…) at {cfg.site_id}?"):
        print("not revoked")
        return 1
    officer = _officer(args)
    current = store.get(digest)
    if current is None or current.revoked:
        raise SpecError(
            digest,
            "has no current approval at this site",
            "list them with `her2fed site approvals`",
        )
    record = log.append(
        {
            "kind": "study_revoked",
            "study_hash": digest,
            "details": {"officer": officer, "note": " ".join((args.note or "").split())},
            "summary": f"approval of study {current.study_name!r} ({digest[7:15]}) revoked by "
            f"{officer}",
        }
    )
    store.revoke(digest, args.note or "", officer=officer)
    print(f"revoked {digest}; the site no longer answers it (audit seq {record['seq']})")
    return 0


def cmd_approvals(args: argparse.Namespace) -> int:
    files = site_files(load_site(args.config))
    store = ApprovalStore(args.approvals or files.approvals)
    items = store.approvals()
    if not items:
        print(f"no approvals in {store.path}")
        return 0
    for a in items:
        state = f"REVOKED {a.revoked_at} by {a.revoked_by}" if a.revoked else "approved"
        print(f"{a.study_hash}  {state}")
        print(f"    {a.study_name!r}, signed by {a.signer} ({a.lead_key[:16]}…) at {a.signed_at}")
        print(
            f"    approved {a.approved_at} by {a.officer or '-'}"
            + (f": {a.note}" if a.note else "")
        )
    return 0


# ---------------------------------------------------------------- audit


def _verify_key(args: argparse.Namespace, files: SiteFiles) -> Ed25519PublicKey | None:
    """The public key to verify with: --public-key, else the site key's public half."""
    if args.public_key:
        return read_public_key(args.public_key)
    path = Path(args.site_key or files.site_key)
    if not path.is_file():
        return None  # verify then checks the chain only, and says so
    return read_private_key(path).public_key()


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "kind": args.kind or None,
        "session": args.session,
        "analysis": args.analysis,
        "since": audit.parse_since(args.since) if args.since else None,
    }


def cmd_audit_show(args: argparse.Namespace) -> int:
    files = site_files(load_site(args.config))
    path = Path(args.log or files.audit_log)
    rows = audit.show(path, **_filters(args))
    if args.limit:
        rows = rows[-args.limit :]
    if not rows:
        print(f"no matching records in {path}")
        return 0
    print(audit.format_table(rows))
    print(f"{len(rows)} record(s) from {path}; `her2fed site audit verify` checks integrity")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    files = site_files(load_site(args.config))
    path = Path(args.log or files.audit_log)
    expect = [audit.parse_expect(e) for e in args.expect or ()]
    report = audit.verify(path, _verify_key(args, files), expect=expect)
    print(report.text())
    return 0 if report.ok else 1


def cmd_audit_export(args: argparse.Namespace) -> int:
    files = site_files(load_site(args.config))
    path = Path(args.log or files.audit_log)
    key = _verify_key(args, files)
    report = audit.verify(path, key) if args.format == "json" else None
    text = audit.export(path, args.format, report=report, **_filters(args))
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_audit_reanchor(args: argparse.Namespace) -> int:
    cfg = load_site(args.config)
    files = site_files(cfg)
    log = _audit_log(args, files, cfg.site_id)
    print(audit.verify(log.path, log.public_key).text())
    if not _confirm(
        args,
        "Re-anchor the log at its current end? The loss stays visible in every later verify.",
    ):
        print("not re-anchored")
        return 1
    record = log.reanchor(args.note, _officer(args))
    print(f"re-anchored: {record['summary']} (seq {record['seq']})")
    return 0


# ---------------------------------------------------------------- parsers


def _common(p: argparse.ArgumentParser, *, site_key: bool = True) -> None:
    p.add_argument("config", metavar="SITE.toml")
    p.add_argument(
        "--log",
        metavar="AUDIT.jsonl",
        help="the audit log (default: audit.jsonl next to SITE.toml)",
    )
    if site_key:
        p.add_argument(
            "--site-key",
            metavar="SITE.key",
            type=Path,
            help=f"the site's Ed25519 private key (default: [keys] {SITE_KEY_FIELD} of SITE.toml)",
        )


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kind",
        action="append",
        metavar="KIND",
        help=f"only records of this kind (repeatable): {', '.join(audit.KINDS)}",
    )
    p.add_argument("--session", metavar="ID", help="only this session (an id prefix is enough)")
    p.add_argument("--analysis", metavar="ID", help="only records about this analysis")
    p.add_argument("--since", metavar="DATE", help="only records from this UTC date/time on")


def add_officer_commands(site_sub: Any) -> None:
    """Add approve, revoke, approvals and audit to ``her2fed site``."""
    approve = site_sub.add_parser(
        "approve",
        help="approve a signed study for this site (privacy officer)",
        description="Show in plain words every analysis of STUDY.toml and what it releases, "
        "with its SHA-256 and the lead's signature (STUDY.toml.sig, checked against the lead "
        f"key pinned at the site, default {DEFAULT_LEAD_KEY}); on confirmation record the hash in "
        "approvals.toml and the audit log. The site answers only approved studies.",
    )
    _common(approve)
    approve.add_argument("study", metavar="STUDY.toml")
    approve.add_argument(
        "--signature", metavar="SIG", help="the lead's signature (default: STUDY.toml.sig)"
    )
    approve.add_argument(
        "--lead-key",
        metavar="LEAD.pub",
        help="the consortium lead's public key file (default: [keys] "
        f"{LEAD_KEY_FIELD}, else {DEFAULT_LEAD_KEY} next to SITE.toml); pinned there if "
        "no key is pinned yet, refused if another key is",
    )
    approve.add_argument("--approvals", metavar="FILE", help="default: approvals.toml")
    approve.add_argument("--officer", metavar="NAME", help="who approves (default: login name)")
    approve.add_argument("--note", metavar="TEXT", help="e.g. the ethics approval reference")
    approve.add_argument("--yes", action="store_true", help="do not ask (scripts)")
    approve.set_defaults(func=cmd_approve)

    revoke = site_sub.add_parser(
        "revoke",
        help="withdraw the approval of a study",
        description="Mark the approval of STUDY.toml (or a sha256: hash) revoked; the site "
        "stops answering it. Recorded in approvals.toml and the audit log.",
    )
    _common(revoke)
    revoke.add_argument("study", metavar="STUDY.toml|sha256:HASH")
    revoke.add_argument("--approvals", metavar="FILE", help="default: approvals.toml")
    revoke.add_argument("--officer", metavar="NAME")
    revoke.add_argument("--note", metavar="TEXT", help="why")
    revoke.add_argument("--yes", action="store_true", help="do not ask (scripts)")
    revoke.set_defaults(func=cmd_revoke)

    listing = site_sub.add_parser(
        "approvals", help="list the studies approved at this site", description="List approvals."
    )
    listing.add_argument("config", metavar="SITE.toml")
    listing.add_argument("--approvals", metavar="FILE", help="default: approvals.toml")
    listing.set_defaults(func=cmd_approvals)

    aud = site_sub.add_parser(
        "audit",
        help="read, verify and export the site's audit log",
        description="The audit log records every query received and every payload sent, "
        "hash-chained and signed with the site key.",
    )
    aud_sub = aud.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    show = aud_sub.add_parser(
        "show",
        help="print the log as a readable table",
        description="Print the audit log as a table (one row per record, newest last), "
        "filtered. Reading does not verify: use `her2fed site audit verify`.",
    )
    _common(show, site_key=False)
    _filter_args(show)
    show.add_argument("--limit", type=int, metavar="N", help="only the last N matching records")
    show.set_defaults(func=cmd_audit_show)

    ver = aud_sub.add_parser(
        "verify",
        help="check the log for any edit, deletion, reordering or truncation",
        description="Check every record's hash, signature, sequence and chain, and the signed "
        "head anchor; print each problem with its line number. Exit 1 on any problem.",
    )
    _common(ver)
    ver.add_argument(
        "--public-key",
        metavar="SITE.pub",
        help="verify with this public key (64 hex, e.g. from the consortium registry) "
        "instead of the site key's",
    )
    ver.add_argument(
        "--expect",
        action="append",
        metavar="SEQ:HASH",
        help="a head anchor from an earlier verify or export that must still hold (detects a "
        "log rolled back with its head); repeatable",
    )
    ver.set_defaults(func=cmd_audit_verify)

    exp = aud_sub.add_parser(
        "export",
        help="export the log for the officer's report",
        description="Write the log (filtered) as CSV (one row per record) or JSON (full "
        "records with the verification result and head anchor).",
    )
    _common(exp)
    _filter_args(exp)
    exp.add_argument("--format", choices=["csv", "json"], default="csv")
    exp.add_argument("--public-key", metavar="SITE.pub", help="verify with this public key")
    exp.add_argument("--out", metavar="FILE", help="default: standard output")
    exp.set_defaults(func=cmd_audit_export)

    re_ = aud_sub.add_parser(
        "reanchor",
        help="acknowledge a damaged log end so the site can record again",
        description="When the log's end and its signed head disagree (head lost, log restored "
        "from a backup) the site refuses to record or send anything. After investigating, the "
        "officer re-anchors: a signed record states what was lost; verify shows it for ever.",
    )
    _common(re_)
    re_.add_argument("--note", required=True, metavar="TEXT", help="what happened")
    re_.add_argument("--officer", metavar="NAME")
    re_.add_argument("--yes", action="store_true", help="do not ask (scripts)")
    re_.set_defaults(func=cmd_audit_reanchor)
