"""Study signing and approval: only the exact study the lead signed and the officer approved.

Every refusal test plays an attacker (a coordinator sending a modified or
re-signed study, someone editing the approval store, a swapped lead key) and
checks the refusal names its rule, and, where the site logs it, that the
reason is in the audit log.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.cli import main
from her2fed.study import KINDS
from site_agent.approval import (
    SIGN_DOMAIN,
    ApprovalStore,
    StudySignature,
    check_approved,
    describe_study,
    load_lead_key,
    make_signature,
    parse_study_bytes,
    read_signature,
    require_approved,
    sign_study,
    signature_path,
    study_hash,
    verify_signature,
)
from site_agent.audit import AuditLog, verify
from site_agent.federation.keys import generate_key, write_private_key, write_public_key
from site_agent.policy import PolicyRefusal

ROOT = Path(__file__).resolve().parents[1]
HER2 = ROOT / "examples" / "her2" / "study.toml"
GENERIC = ROOT / "examples" / "generic" / "study.toml"
LEAD = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(200, 232)))
SITE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
WHEN = datetime(2026, 1, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def study(tmp_path: Path) -> Path:
    path = tmp_path / "study.toml"
    path.write_bytes(GENERIC.read_bytes())
    return path


def approved(tmp_path: Path, study: Path) -> tuple[ApprovalStore, StudySignature]:
    """The honest path: the lead signs, the officer approves."""
    sig = read_signature(sign_study(study, LEAD, "Dr Lead", now=WHEN))
    verify_signature(study.read_bytes(), sig, LEAD.public_key())
    store = ApprovalStore(tmp_path / "approvals.toml")
    name = parse_study_bytes(study.read_bytes(), str(study)).name
    store.approve(
        sig.study_hash,
        sig.signer,
        "ethics 2026/17",
        WHEN,
        signature=sig,
        officer="PO",
        study_name=name,
    )
    return store, sig


def refused(rule: str, call: object) -> str:
    assert callable(call)
    with pytest.raises(PolicyRefusal) as info:
        call()
    assert info.value.rule == rule, str(info.value)
    message = str(info.value)
    assert message.startswith(f"refused by site policy {rule} = ") and "Fix:" in message
    return message


# ---------------------------------------------------------------- signing


def test_sign_writes_a_signature_over_the_exact_bytes(study: Path) -> None:
    out = sign_study(study, LEAD, "Dr Lead", now=WHEN)
    assert out == signature_path(study) == study.with_name("study.toml.sig")
    sig = read_signature(out)
    assert sig.study_hash == study_hash(study.read_bytes()) and sig.signer == "Dr Lead"
    assert sig.public_key == LEAD.public_key().public_bytes_raw().hex()
    assert sig.signed_at == "2026-01-02T09:00:00.000000Z"
    # domain-separated: the lead key's study signatures are not valid for anything else
    assert sig.signing_bytes().startswith(SIGN_DOMAIN) and sig.study_hash.encode() in (
        sig.signing_bytes()
    )
    LEAD.public_key().verify(bytes.fromhex(sig.signature), sig.signing_bytes())
    verify_signature(study.read_bytes(), sig, LEAD.public_key())


def test_signing_refuses_an_invalid_study(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[study]\nname = "x"\n')
    with pytest.raises(Exception, match=r"grid_days|analysis"):
        sign_study(bad, LEAD)
    assert not signature_path(bad).exists()


def test_load_lead_key_from_file_hex_or_raw(tmp_path: Path) -> None:
    raw = LEAD.public_key().public_bytes_raw()
    write_public_key(LEAD, tmp_path / "lead.pub")
    for pinned in (tmp_path / "lead.pub", str(tmp_path / "lead.pub"), raw, raw.hex().encode()):
        assert load_lead_key(pinned).public_bytes_raw() == raw


# ---------------------------------------------------------------- approval and refusals


def test_an_approved_signed_study_is_accepted(tmp_path: Path, study: Path) -> None:
    store, sig = approved(tmp_path, study)
    data = study.read_bytes()
    assert store.is_approved(study_hash(data))
    for sent in (sig, None):  # with the coordinator's copy of the signature, or the stored one
        a = check_approved(store, data, sent, LEAD.public_key())
        assert a.officer == "PO" and a.note == "ethics 2026/17" and a.study_name.startswith("her2")


def test_an_unapproved_study_is_refused(tmp_path: Path, study: Path) -> None:
    sig = read_signature(sign_study(study, LEAD))  # signed by the lead, but nobody approved it
    store = ApprovalStore(tmp_path / "approvals.toml")
    msg = refused(
        "study_approval", lambda: check_approved(store, study.read_bytes(), sig, LEAD.public_key())
    )
    assert study_hash(study.read_bytes()) in msg and "her2fed site approve" in msg


def test_a_missing_signature_is_refused(study: Path) -> None:
    msg = refused("study_signature", lambda: read_signature(signature_path(study)))
    assert "no signature" in msg


def test_a_study_resigned_by_another_key_is_refused(tmp_path: Path, study: Path) -> None:
    store, _ = approved(tmp_path, study)
    data = study.read_bytes()
    forged = make_signature(data, OTHER, "Dr Lead")  # same bytes, same signer name, other key
    msg = refused("study_signature", lambda: verify_signature(data, forged, LEAD.public_key()))
    assert "re-signed by someone else" in msg
    # even though these bytes are approved, a session presenting that signature is refused
    refused("study_signature", lambda: check_approved(store, data, forged, LEAD.public_key()))


def test_a_forged_signature_claiming_the_lead_key_is_refused(study: Path) -> None:
    data = study.read_bytes()
    mine = make_signature(data, OTHER, "Dr Lead")
    claimed = StudySignature(
        mine.study_hash,
        mine.signer,
        LEAD.public_key().public_bytes_raw().hex(),
        mine.signed_at,
        mine.signature,
    )
    msg = refused("study_signature", lambda: verify_signature(data, claimed, LEAD.public_key()))
    assert "does not verify" in msg


def test_editing_the_signer_voids_the_signature(study: Path) -> None:
    data = study.read_bytes()
    sig = make_signature(data, LEAD, "Dr Lead")
    edited = StudySignature(
        sig.study_hash, "Prof Other", sig.public_key, sig.signed_at, sig.signature
    )
    refused("study_signature", lambda: verify_signature(data, edited, LEAD.public_key()))


def test_a_study_modified_after_approval_is_refused(tmp_path: Path, study: Path) -> None:
    store, sig = approved(tmp_path, study)
    with study.open("ab") as fh:
        fh.write(b"\n")  # one byte: a different study
    data = study.read_bytes()
    msg = refused("study_signature", lambda: check_approved(store, data, sig, LEAD.public_key()))
    assert "changed after it was signed" in msg
    refused("study_approval", lambda: check_approved(store, data, None, LEAD.public_key()))


def test_a_revoked_approval_is_refused(tmp_path: Path, study: Path) -> None:
    store, sig = approved(tmp_path, study)
    store.revoke(sig.study_hash, "consent withdrawn", officer="PO")
    assert not store.is_approved(sig.study_hash)
    msg = refused(
        "study_approval", lambda: check_approved(store, study.read_bytes(), sig, LEAD.public_key())
    )
    assert "revoked" in msg
    text = store.path.read_text()
    assert "revoked_at" in text and "consent withdrawn" in text  # the history stays


def test_a_changed_pinned_lead_key_voids_earlier_approvals(tmp_path: Path, study: Path) -> None:
    store, _ = approved(tmp_path, study)
    data = study.read_bytes()
    resigned = make_signature(data, OTHER, "new lead")  # valid under the *new* pinned key
    msg = refused(
        "study_signature", lambda: check_approved(store, data, resigned, OTHER.public_key())
    )
    assert "approved as signed by key" in msg


def test_an_approval_added_by_editing_the_store_is_refused(tmp_path: Path, study: Path) -> None:
    data = study.read_bytes()
    store = ApprovalStore(tmp_path / "approvals.toml")
    fake = StudySignature(
        study_hash(data), "Dr Lead", LEAD.public_key().public_bytes_raw().hex(), "now", "00" * 64
    )
    store.approve(fake.study_hash, fake.signer, signature=fake, officer="intruder")
    assert store.is_approved(study_hash(data))  # the file says so ...
    msg = refused("study_signature", lambda: check_approved(store, data, None, LEAD.public_key()))
    assert "approval store was edited" in msg  # ... but without the lead's key it is worthless


def test_refusals_are_written_to_the_audit_log(tmp_path: Path, study: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", SITE_KEY, "athens")
    store = ApprovalStore(tmp_path / "approvals.toml")
    data = study.read_bytes()
    with pytest.raises(PolicyRefusal):
        require_approved(store, data, None, LEAD.public_key(), audit=log, session_id="ab" * 16)
    rec = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert rec["kind"] == "refusal" and rec["details"]["rule"] == "study_approval"
    assert rec["study_hash"] == study_hash(data) and rec["session_id"] == "ab" * 16
    assert "has not been approved" in rec["details"]["reason"]
    assert verify(tmp_path / "audit.jsonl", SITE_KEY.public_key()).ok


# ---------------------------------------------------------------- plain words


def test_describe_study_covers_every_analysis_and_kind() -> None:
    seen: set[str] = set()
    for path in (HER2, GENERIC):
        study = parse_study_bytes(path.read_bytes(), str(path))
        lines = describe_study(study)
        assert len(lines) == len(study.analyses)
        for a, line in zip(study.analyses, lines, strict=True):
            seen.add(a.kind)
            assert "\n" not in line and ": releases, pooled over sites, " in line
            assert "the summary of step" not in line, f"{a.id}: a step has no description"
    assert seen == set(KINDS)  # the two example studies use every kind


def words(path: Path) -> dict[str, str]:
    study = parse_study_bytes(path.read_bytes(), str(path))
    return {a.id: line for a, line in zip(study.analyses, describe_study(study), strict=True)}


def test_describe_her2_study_in_plain_words() -> None:
    w = words(HER2)
    assert w["os_km_hr"].startswith(
        "Kaplan-Meier of overall survival from metastatic diagnosis, by HR status "
        "(POS, NEG, UNKNOWN): releases, pooled over sites, per 30-day interval up to day 3650 "
        "the numbers of deaths and censorings in each group"
    )
    assert "from the start of line k, for line 2" in w["os_from_2l"]
    assert "progressions or deaths and censorings" in w["pfs_by_line"]
    assert "next-line starts vs deaths without a next line" in w["next_line_vs_death"]
    assert "between levels of country (GR, NO, DE)" in w["os_logrank_country"]
    cox = w["os_cox"]
    for text in (
        "Efron ties",
        "HR status (NEG, UNKNOWN vs POS)",
        "brain metastases (true vs false)",
        "age at metastatic diagnosis (numeric)",
        "stratified by site",
        "information matrix",
    ):
        assert text in cox, text
    assert "by country (GR, NO, DE)" in w["attrition"] and "183 days" in w["attrition"]
    assert "merged into OTHER" in w["pathways"] and "fewer than 5" in w["pathways"]


def test_describe_generic_study_in_plain_words() -> None:
    w = words(GENERIC)
    assert w["rfs_na"].startswith("Nelson-Aalen cumulative hazard")
    assert "stratified by site" in w["rfs_logrank_hormon_by_site"]
    assert "computed within the site" in w["rfs_logrank_hormon_by_site"]
    assert "per 30-day interval" not in w["rfs_logrank_hormon_by_site"].split("releases")[1]
    cox = w["rfs_cox"]
    assert "stratified by column menostat (Pre, Post)" in cox and "x·exp(xb)" in cox
    assert "column tgrade (II, III vs I)" in cox and "7 model columns" in cox
    assert "events of cause 1, events of cause 2 and censorings" in w["progression_vs_death"]


# ---------------------------------------------------------------- the commands


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def site(tmp_path: Path) -> Path:
    """A site directory laid out as `her2fed site keys` and the lead's files leave it."""
    root = tmp_path / "site"
    (root / "keys").mkdir(parents=True)
    (root / "consortium").mkdir()
    write_private_key(SITE_KEY, root / "keys" / "site.key")
    write_public_key(LEAD, root / "consortium" / "lead.pub")
    config = root / "site.toml"
    config.write_text('[site]\nid = "athens"\ncountry = "GR"\n\n[data.analysis]\npath = "a.csv"\n')
    return config


def test_cli_sign_approve_and_refuse(
    tmp_path: Path, study: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = site(tmp_path)
    lead_key = tmp_path / "lead.key"
    write_private_key(LEAD, lead_key)
    assert main(["study", "sign", str(study), "--key", str(lead_key), "--signer", "Dr Lead"]) == 0
    lead_pub = config.parent / "consortium" / "lead.pub"
    assert main(["study", "verify", str(study), "--lead-key", str(lead_pub)]) == 0
    capsys.readouterr()

    # a script without --yes is not an approval
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["site", "approve", str(config), str(study)]) == 2
    assert "--yes" in capsys.readouterr().err
    assert not (config.parent / "approvals.toml").exists()

    # on a terminal the officer reads every analysis, then types yes
    monkeypatch.setattr("sys.stdin", Terminal("yes\n"))
    assert main(["site", "approve", str(config), str(study), "--note", "ethics 17"]) == 0
    out = capsys.readouterr().out
    assert study_hash(study.read_bytes()) in out and "'Dr Lead'" in out
    assert "[rfs_cox] Cox proportional-hazards model" in out and "6. [progression_vs_death]" in out
    store = ApprovalStore(config.parent / "approvals.toml")
    assert store.is_approved(study_hash(study.read_bytes()))

    # re-signed by another key, and modified after signing: refused, reason in the audit log
    evil_key = tmp_path / "evil.key"
    write_private_key(OTHER, evil_key)
    evil = tmp_path / "evil.toml"
    evil.write_bytes(study.read_bytes() + b"\n# tweak\n")
    assert main(["study", "sign", str(evil), "--key", str(evil_key), "--signer", "Dr Lead"]) == 0
    assert main(["site", "approve", str(config), str(evil), "--yes"]) == 2
    assert "re-signed by someone else" in capsys.readouterr().err
    signature_path(evil).write_bytes(signature_path(study).read_bytes())
    assert main(["site", "approve", str(config), str(evil), "--yes"]) == 2
    assert "changed after it was signed" in capsys.readouterr().err
    assert not store.is_approved(study_hash(evil.read_bytes()))

    log = config.parent / "audit.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["study_approved", "refusal", "refusal"]
    assert records[0]["details"]["note"] == "ethics 17"
    assert "re-signed" in records[1]["details"]["reason"]
    assert "changed after it was signed" in records[2]["details"]["reason"]
    assert verify(log, SITE_KEY.public_key()).ok

    assert main(["site", "revoke", str(config), str(study), "--yes", "--note", "ended"]) == 0
    assert not store.is_approved(study_hash(study.read_bytes()))
    assert main(["site", "approvals", str(config)]) == 0
    assert "REVOKED" in capsys.readouterr().out


def test_cli_keygen_does_not_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "lead.key"
    assert main(["study", "keygen", "--out", str(key)]) == 0
    printed = capsys.readouterr().out.strip()
    assert (tmp_path / "lead.pub").read_text().strip() == printed and len(printed) == 64
    assert key.stat().st_mode & 0o077 == 0  # owner-only
    assert main(["study", "keygen", "--out", str(key)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_approve_needs_the_pinned_lead_key(
    tmp_path: Path, study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = site(tmp_path)
    (config.parent / "consortium" / "lead.pub").unlink()
    sign_study(study, LEAD)
    assert main(["site", "approve", str(config), str(study), "--yes"]) == 2
    err = capsys.readouterr().err
    assert "lead.pub does not exist" in err and "pinned" in err


def test_approve_pins_a_lead_key_given_once_and_refuses_another(
    tmp_path: Path, study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--lead-key` on a site with no pinned key pins it (the live path checks only the pinned
    key); a different key later is refused, naming the pinned one, and nothing is approved."""
    config = site(tmp_path)
    pinned = config.parent / "consortium" / "lead.pub"
    pinned.unlink()
    lead_key, lead_pub = tmp_path / "lead.key", tmp_path / "lead.pub"
    write_private_key(LEAD, lead_key)
    write_public_key(LEAD, lead_pub)
    assert main(["study", "sign", str(study), "--key", str(lead_key)]) == 0
    args = ["site", "approve", str(config), str(study), "--yes"]
    assert main([*args, "--lead-key", str(lead_pub)]) == 0
    assert "pinned the consortium lead key" in capsys.readouterr().out
    assert pinned.read_bytes() == lead_pub.read_bytes()
    other = generate_key()
    other_pub = tmp_path / "other.pub"
    write_public_key(other, other_pub)
    assert main([*args, "--lead-key", str(other_pub)]) == 2
    err = capsys.readouterr().err
    assert "is not the lead key pinned at this site" in err and "Fix:" in err
    assert pinned.read_bytes() == lead_pub.read_bytes()
