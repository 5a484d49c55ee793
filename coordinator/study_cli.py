"""``her2fed study keygen|sign|verify``: the consortium lead's signing commands.

Sites answer only studies their privacy officer approved, and an officer
approves only a study the lead signed with the key pinned at the site. The
lead creates that key once (``keygen``), hands the public half to every
site, and signs each study file (``sign``) before sending it out.

The ``study`` group is shared: other commands (e.g. ``her2fed study run``)
add themselves through ``study_commands(sub)``, which creates the group the
first time and returns the same sub-command table every time after, so the
order of registration does not matter.
"""

from __future__ import annotations

import argparse
import sys
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from her2fed.errors import SpecError
from site_agent.approval import (
    DEFAULT_SIGNER,
    load_lead_key,
    parse_study_bytes,
    read_signature,
    sign_study,
    signature_path,
    study_hash,
    verify_signature,
)
from site_agent.federation.keys import (
    generate_key,
    public_hex,
    read_private_key,
    write_private_key,
    write_public_key,
)
from site_agent.policy import PolicyRefusal
from site_agent.site_files import DEFAULT_LEAD_KEY, LEAD_KEY_FIELD

if TYPE_CHECKING:  # not subscriptable at run time on Python 3.11
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

_GROUPS: weakref.WeakKeyDictionary[argparse.ArgumentParser, Subparsers] = (
    weakref.WeakKeyDictionary()
)


def study_commands(sub: Subparsers) -> Subparsers:
    """The sub-commands of ``her2fed study`` (created on first use, shared afterwards)."""
    parser = sub.choices.get("study")
    if parser is None:
        parser = sub.add_parser(
            "study",
            help="consortium lead: study keys, signatures and runs",
            description="Commands on study files: sign them for the sites' approval and run "
            "them across the consortium.",
        )
        group = parser.add_subparsers(dest="study_command", required=True, metavar="COMMAND")
        _GROUPS[parser] = group
        return group
    known = _GROUPS.get(parser)
    if known is not None:
        return known
    for action in parser._actions:  # a `study` parser someone else created
        if isinstance(action, argparse._SubParsersAction):
            found: Subparsers = action
            _GROUPS[parser] = found
            return found
    group = parser.add_subparsers(dest="study_command", required=True, metavar="COMMAND")
    _GROUPS[parser] = group
    return group


def cmd_keygen(args: argparse.Namespace) -> int:
    key_path = Path(args.out)
    pub_path = key_path.with_suffix(".pub")
    for p in (key_path, pub_path):
        if p.exists() and not args.force:
            raise SpecError(
                str(p),
                "already exists; a lead key pinned at sites must not be overwritten by mistake",
                "choose another --out, or pass --force if you mean to replace the key (every "
                "site must then pin the new public key and re-approve)",
            )
    key = generate_key()
    write_private_key(key, key_path)
    write_public_key(key, pub_path)
    print(public_hex(key))
    print(
        f"wrote {key_path} (private: keep it safe, owner-only) and {pub_path} (public).\n"
        f"Every site pins it: saved as {DEFAULT_LEAD_KEY} next to site.toml (or where "
        f"[keys] {LEAD_KEY_FIELD} says).\nRead the hex key above to each privacy officer out of "
        "band to check it.",
        file=sys.stderr,
    )
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    key = read_private_key(args.key)
    out = sign_study(args.study, key, args.signer, out=args.out)
    digest = study_hash(Path(args.study).read_bytes())
    print(f"signed {args.study} ({digest}) as {args.signer!r}: wrote {out}")
    print("send both files to the sites; each privacy officer runs `her2fed site approve`")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    path = Path(args.study)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(str(path), "file not found", "check the path") from None
    parse_study_bytes(data, str(path))
    sig_path = Path(args.signature) if args.signature else signature_path(path)
    try:
        sig = read_signature(sig_path)
        verify_signature(data, sig, load_lead_key(Path(args.lead_key)))
    except PolicyRefusal as err:
        print(f"signature check FAILED: {err}")
        return 1
    print(f"signature OK: {study_hash(data)} signed by {sig.signer!r} at {sig.signed_at}")
    return 0


def add_study_commands(sub: Subparsers) -> None:
    """Register keygen, sign and verify under ``her2fed study``."""
    group = study_commands(sub)
    keygen = group.add_parser(
        "keygen",
        help="create the consortium lead's signing key",
        description="Write a new Ed25519 key: KEY (private, PEM, owner-only) and KEY with "
        f"suffix .pub (public, 64 hex), which every site pins ({DEFAULT_LEAD_KEY} by default).",
    )
    keygen.add_argument("--out", required=True, metavar="LEAD.key")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key")
    keygen.set_defaults(func=cmd_keygen)

    sign = group.add_parser(
        "sign",
        help="sign a study file for the sites' approval",
        description="Sign the exact bytes of STUDY.toml (Ed25519 over its SHA-256 and the "
        "signer id) and write STUDY.toml.sig. Any later change to the file voids the signature.",
    )
    sign.add_argument("study", metavar="STUDY.toml")
    sign.add_argument("--key", required=True, metavar="LEAD.key", help="the lead's private key")
    sign.add_argument(
        "--signer", default=DEFAULT_SIGNER, metavar="NAME", help="who signs (shown to officers)"
    )
    sign.add_argument("--out", metavar="SIG", help="default: STUDY.toml.sig")
    sign.set_defaults(func=cmd_sign)

    verify = group.add_parser(
        "verify",
        help="check a study's signature against a lead public key",
        description="Check STUDY.toml.sig as a site will: signed by LEAD.pub, over these exact "
        "bytes. Exit 1 if not.",
    )
    verify.add_argument("study", metavar="STUDY.toml")
    verify.add_argument("--lead-key", required=True, metavar="LEAD.pub")
    verify.add_argument("--signature", metavar="SIG", help="default: STUDY.toml.sig")
    verify.set_defaults(func=cmd_verify)
