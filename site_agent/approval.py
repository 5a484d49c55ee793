"""Study approval: the lead signs a study file, the site's privacy officer approves its hash.

A site answers only studies its privacy officer approved (DESIGN.md,
"Privacy and security"). Three facts must hold for a study to be answered:

1. the study file's exact bytes hash to an approval in the site's store;
2. the consortium lead signed those bytes: an Ed25519 signature by the
   lead key pinned in ``site.toml`` (``[keys] lead_key``) over the file's
   SHA-256 and the signer's id — so a study changed by a byte, or re-signed
   by anyone else, is not the study that was approved;
3. the approval was recorded under that same pinned key and not revoked.

Signature file ``STUDY.toml.sig`` (TOML, written by ``her2fed study sign``)::

    format = "her2fed-study-signature/1"
    study_hash = "sha256:<64 hex>"      # of the study file's exact bytes
    signer = "consortium-lead"          # who signed (shown to the officer)
    public_key = "<64 hex>"             # the key that signed (checked against the pinned one)
    signed_at = "2026-01-31T12:00:00.000000Z"
    signature = "<128 hex>"             # Ed25519 over SIGN_DOMAIN + canonical JSON of
                                        # {format, signed_at, signer, study_hash}

The store (``approvals.toml`` next to ``site.toml``) keeps, per approval,
the lead's signature itself, so an approval added by editing the file is
worthless without the lead's key, and a site can re-check it on every
session even when the coordinator does not send the signature.

Refusals are ``PolicyRefusal`` with rule ``study_signature`` or
``study_approval``; their texts hold hashes, key fingerprints and file
names only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from her2fed.catalog import ENDPOINTS
from her2fed.errors import SpecError
from her2fed.levels import Covariate, Levels
from her2fed.protocol import allowed_steps
from her2fed.study import Analysis, Study, parse_study
from site_agent.atomic import write_atomic
from site_agent.federation.keys import parse_public_hex, read_public_key
from site_agent.policy import PolicyRefusal
from site_agent.site_files import SiteFiles

if TYPE_CHECKING:
    from site_agent.audit import AuditLog

SIGNATURE_FORMAT = "her2fed-study-signature/1"
SIGN_DOMAIN = b"her2fed-study-signature-v1\x00"
SIG_SUFFIX = ".sig"
RULE_SIGNATURE = "study_signature"
RULE_APPROVAL = "study_approval"
DEFAULT_SIGNER = "consortium-lead"


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def study_hash(data: bytes) -> str:
    """``sha256:<hex>`` of a study file's exact bytes: the id an officer approves."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes_raw().hex()


def signature_path(study_path: str | Path) -> Path:
    """Where ``sign_study`` writes the signature of a study file: ``STUDY.toml.sig``."""
    p = Path(study_path)
    return p.with_name(p.name + SIG_SUFFIX)


# ---------------------------------------------------------------- signatures


@dataclass(frozen=True)
class StudySignature:
    """The lead's signature of one study file (the content of ``STUDY.toml.sig``)."""

    study_hash: str
    signer: str
    public_key: str
    signed_at: str
    signature: str

    def signing_bytes(self) -> bytes:
        return signing_bytes(self.study_hash, self.signer, self.signed_at)

    def to_toml(self, study_name: str = "") -> str:
        head = "# her2fed study signature: Ed25519 by the consortium lead over the SHA-256 of "
        head += "the study file's exact bytes\n"
        if study_name:
            head += f"# study: {study_name}\n"
        fields = {
            "format": SIGNATURE_FORMAT,
            "study_hash": self.study_hash,
            "signer": self.signer,
            "public_key": self.public_key,
            "signed_at": self.signed_at,
            "signature": self.signature,
        }
        return head + "".join(f"{k} = {_toml_str(v)}\n" for k, v in fields.items())


def signing_bytes(study_hash: str, signer: str, signed_at: str) -> bytes:
    """What the lead signs: a domain, then the canonical JSON of hash, signer and time."""
    return SIGN_DOMAIN + _canonical(
        {
            "format": SIGNATURE_FORMAT,
            "signed_at": signed_at,
            "signer": signer,
            "study_hash": study_hash,
        }
    )


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def make_signature(
    data: bytes,
    lead_key: Ed25519PrivateKey,
    signer: str = DEFAULT_SIGNER,
    *,
    now: datetime | None = None,
) -> StudySignature:
    """Sign a study file's exact bytes (pure: nothing is read or written)."""
    if not signer.strip() or "\n" in signer:
        raise SpecError("--signer", "must be one line naming the signer", "e.g. --signer 'J. Lead'")
    digest = study_hash(data)
    signed_at = _iso(now or datetime.now(UTC))
    sig = lead_key.sign(signing_bytes(digest, signer, signed_at)).hex()
    return StudySignature(digest, signer, key_hex(lead_key), signed_at, sig)


def sign_study(
    study_path: str | Path,
    lead_key: Ed25519PrivateKey,
    signer: str = DEFAULT_SIGNER,
    *,
    out: str | Path | None = None,
    now: datetime | None = None,
) -> Path:
    """Sign a study file and write ``STUDY.toml.sig`` (or ``out``); returns its path.

    The study is parsed first: signing a file no site could run helps nobody.
    """
    path = Path(study_path)
    data = _read_study_bytes(path)
    study = parse_study_bytes(data, str(path))
    sig = make_signature(data, lead_key, signer, now=now)
    target = Path(out) if out is not None else signature_path(path)
    write_atomic(target, sig.to_toml(study.name).encode("utf-8"), mode=0o644)
    return target


def parse_signature(text: str, where: str) -> StudySignature:
    """A signature file's content; a broken one is refused (the study then is not answered)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise _sig_refusal(
            f"{where} is not a study signature (invalid TOML)",
            "ask the consortium lead for the .sig file written by `her2fed study sign`",
        ) from None
    want = {"format", "study_hash", "signer", "public_key", "signed_at", "signature"}
    if set(doc) != want or not all(isinstance(doc[k], str) for k in want):
        raise _sig_refusal(
            f"{where} is not a study signature (fields {sorted(doc)})",
            "ask the consortium lead for the .sig file written by `her2fed study sign`",
        )
    if doc["format"] != SIGNATURE_FORMAT:
        raise _sig_refusal(
            f"{where} has format {doc['format']!r}, not {SIGNATURE_FORMAT!r}",
            "sign the study with this version of her2fed",
        )
    return StudySignature(
        doc["study_hash"], doc["signer"], doc["public_key"], doc["signed_at"], doc["signature"]
    )


def read_signature(path: str | Path) -> StudySignature:
    """Read ``STUDY.toml.sig``; a missing or broken file is a refusal."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _sig_refusal(
            f"the study has no signature ({p.name} not found)",
            "ask the consortium lead to sign it with `her2fed study sign` and send the .sig file",
        ) from None
    except UnicodeDecodeError:
        raise _sig_refusal(f"{p} is not a study signature", "ask for the .sig file") from None
    return parse_signature(text, str(p))


def _threshold(lead_public_key: Ed25519PublicKey) -> str:
    return f"lead key {key_hex(lead_public_key)[:16]}"


def _sig_refusal(reason: str, fix: str, lead: Ed25519PublicKey | None = None) -> PolicyRefusal:
    return PolicyRefusal(
        RULE_SIGNATURE, _threshold(lead) if lead else "signed by the lead", reason, fix
    )


def verify_signature(
    data: bytes, signature: StudySignature, lead_public_key: Ed25519PublicKey
) -> None:
    """Refuse unless ``signature`` is the pinned lead key's signature of exactly ``data``."""
    pinned = key_hex(lead_public_key)
    digest = study_hash(data)
    if signature.public_key.lower() != pinned:
        raise _sig_refusal(
            f"the study was signed by key {signature.public_key[:16]}… "
            f"({signature.signer!r}), not by the consortium lead key pinned at this site "
            f"({pinned[:16]}…): it was re-signed by someone else",
            "use the study as signed by the consortium lead; if the lead's key changed, the "
            "privacy officer pins the new public key after checking it with the lead by phone",
            lead_public_key,
        )
    if signature.study_hash != digest:
        raise _sig_refusal(
            f"the signature is for study {signature.study_hash[:19]}…, but this file hashes "
            f"to {digest[:19]}…: the file was changed after it was signed",
            "use the exact file the lead signed, or have the lead sign this version",
            lead_public_key,
        )
    try:
        lead_public_key.verify(bytes.fromhex(signature.signature), signature.signing_bytes())
    except Exception:  # InvalidSignature, or a signature that is not hex / 64 bytes
        raise _sig_refusal(
            "the signature does not verify under the pinned consortium lead key: it was forged "
            "or its fields (signer, time, hash) were edited",
            "ask the consortium lead to sign the study again",
            lead_public_key,
        ) from None


def load_lead_key(pinned: str | Path | bytes) -> Ed25519PublicKey:
    """The consortium lead's public key as pinned at the site.

    ``pinned`` is the path of a hex key file (what ``[keys] lead_key``
    names), the file's bytes (64 hex characters), or the raw 32 key bytes.
    """
    if isinstance(pinned, bytes):
        if len(pinned) == 32:
            return Ed25519PublicKey.from_public_bytes(pinned)
        try:
            return parse_public_hex(pinned.decode("ascii"), "pinned lead key")
        except UnicodeDecodeError:
            raise SpecError(
                "pinned lead key", "is not 64 hex characters", "paste the key the lead printed"
            ) from None
    return read_public_key(pinned)


# ---------------------------------------------------------------- reading studies


def _read_study_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SpecError(str(path), "file not found", "check the path to the study file") from None


def parse_study_bytes(data: bytes, where: str) -> Study:
    """The study in a file's bytes (the bytes, not a re-read file, are what gets approved)."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise SpecError(
            where, f"is not valid TOML ({err})", "fix the TOML syntax at that line"
        ) from None
    try:
        return parse_study(doc)
    except SpecError as err:
        raise err.located(where) from None


# ---------------------------------------------------------------- plain words


_COLUMN_WORDS: dict[str, str] = {
    "line": "line of therapy",
    "hr_status": "HR status",
    "de_novo": "de novo vs recurrent metastatic disease",
    "brain_mets": "brain metastases",
    "age_at_met_dx": "age at metastatic diagnosis",
    "age_group": "age group",
    "ecog": "ECOG performance status",
    "regimen": "regimen",
    "anti_her2": "anti-HER2 therapy",
    "country": "country",
    "met_dx_year": "year of metastatic diagnosis",
}

# (what counts as an event, words per competing cause) per registry endpoint
_ENDPOINT_EVENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "os_from_met_dx": ("deaths", ()),
    "os_from_line_start": ("deaths", ()),
    "pfs_line": ("progressions or deaths", ()),
    "ttnt_line": ("next-line starts or deaths", ()),
    "tot_line": ("treatment ends", ()),
    "next_line_vs_death": ("", ("next-line starts", "deaths without a next line")),
}

_KIND_TITLES: dict[str, str] = {
    "km": "Kaplan-Meier",
    "nelson_aalen": "Nelson-Aalen cumulative hazard",
    "logrank": "Log-rank test",
    "cif": "Cumulative incidence (Aalen-Johansen, competing risks)",
    "cox": "Cox proportional-hazards model",
    "attrition": "Attrition between lines of therapy",
    "pathways": "Treatment pathways (regimen sequences across lines)",
}


def _column(name: str) -> str:
    return _COLUMN_WORDS.get(name, f"column {name}")


def _levels_text(lv: Levels) -> str:
    return f"{_column(lv.column)} ({', '.join(lv.levels)})"


def _covariate_text(c: Covariate) -> str:
    if not c.categorical:
        return f"{_column(c.column)} (numeric)"
    others = [lv for lv in c.levels if lv != c.reference]
    return f"{_column(c.column)} ({', '.join(others)} vs {c.reference})"


def _outcome(a: Analysis) -> str:
    if a.endpoint is not None:
        info = ENDPOINTS[a.endpoint]
        text = "from the end of line k" if info.competing else info.meaning
        if info.per_line:
            if a.lines:
                plural = "s" if len(a.lines) > 1 else ""
                text += f", for line{plural} {', '.join(map(str, a.lines))}"
            else:
                text += ", for every line"
        return text
    return (
        f"the time to event in table {a.dataset!r} "
        f"(time column {a.time!r}, event column {a.event!r})"
    )


def _events(a: Analysis) -> str:
    if a.endpoint is not None:
        return _ENDPOINT_EVENTS.get(a.endpoint, ("events", ()))[0] or "events"
    return "events"


def _causes(a: Analysis) -> list[str]:
    if a.endpoint is not None:
        words = _ENDPOINT_EVENTS.get(a.endpoint, ("", ()))[1]
        if len(words) >= len(a.causes):
            return list(words[: len(a.causes)])
    return [f"events of cause {c}" for c in a.causes]


def _numbers(items: Sequence[str]) -> str:
    """'the numbers of A, B and C' (the officer reads a list of counts)."""
    if len(items) == 1:
        return f"the numbers of {items[0]}"
    return f"the numbers of {', '.join(items[:-1])} and {items[-1]}"


def _grid(study: Study) -> str:
    g, h = study.grid.grid_days, study.grid.horizon_days
    return f"per day up to day {h}" if g == 1 else f"per {g}-day interval up to day {h}"


def _cells(a: Analysis) -> str:
    if a.by and a.strata:
        return " in each group and stratum"
    if a.by:
        return " in each group"
    if a.strata:
        return " in each stratum"
    return ""


def _step_text(study: Study, a: Analysis, step: str) -> str:
    """What one step releases, in words (every step a site answers has an entry)."""
    grid, cells, ev = _grid(study), _cells(a), _events(a)
    k = a.max_line
    if step == "table":
        if a.kind == "cif":
            return f"{grid} {_numbers([*_causes(a), 'censorings'])}{cells}"
        return f"{grid} {_numbers([ev, 'censorings'])}{cells}"
    if step == "logrank_parts":
        return (
            f"per group the observed and expected numbers of {ev} and their covariance, "
            "each computed within the site (a test stratified by site; no per-interval counts "
            "leave the site)"
        )
    if step == "cox_moments":
        return (
            f"the number of complete cases and of {ev}, and the sum of each of the "
            f"{len(a.coef_names)} model columns"
        )
    if step == "cox_local_fit":
        return (
            "the site's own fit of the model as its information matrix and "
            "information-weighted coefficients (a starting point for the pooled fit)"
        )
    if step == "cox_sums":
        strata = " in each stratum" if a.strata else ""
        return (
            f"for each Newton step, {grid}{strata} the number of {ev} and, over those "
            "leaving and over those with the event, the sums of exp(xb), x·exp(xb) and "
            "x·xᵀ·exp(xb), plus the sums of the model columns of those with the event"
        )
    if step == "cox_derivs":
        return (
            "for each Newton step, the log partial likelihood, score vector and information "
            "matrix of the site's own rows (a model stratified by site)"
        )
    per_group = "per group and " if a.by else "per "
    if step == "attrition_counts":
        return (
            f"{per_group}line (1 to {k}, line {k} counting every later line too) the "
            "numbers of patients, of patients reaching the line, of lines started (and with "
            "anti-HER2 therapy), finished, without a next line (all, finished, and followed by "
            "death within 183 days), and of lines by end state"
        )
    if step == "attrition_cif":
        return (
            f"{grid} after the end of each line the numbers of next-line starts, of deaths "
            f"without a next line and of censorings{cells} (for definition A3)"
        )
    if step == "pathways":
        return (
            f"{'per group ' if a.by else ''}the numbers of first-line regimens and of each "
            "transition from the "
            f"regimen of line k to that of line k+1 or to the end state after line k (k < {k}); "
            f"regimens with fewer than {a.min_count} lines in the pooled counts are merged "
            "into OTHER after pooling"
        )
    return f"the summary of step {step!r}"


def _title(a: Analysis) -> str:
    title = _KIND_TITLES.get(a.kind, a.kind)
    if a.kind in ("attrition", "pathways"):
        text = f"{title}, lines 1 to {a.max_line}+"
        return text + (f", by {_levels_text(a.by)}" if a.by else "")
    if a.kind == "logrank":
        rho = f" (Fleming-Harrington rho = {a.rho:g})" if a.rho else ""
        text = f"{title}{rho} comparing {_outcome(a)}"
        text += f" between levels of {_levels_text(a.by)}" if a.by else ""
    elif a.kind == "cif":
        text = f"{title} of {' vs '.join(_causes(a))}, {_outcome(a)}"
        text += f", by {_levels_text(a.by)}" if a.by else ""
    elif a.kind == "cox":
        covs = "; ".join(_covariate_text(c) for c in a.covariates)
        ties = "Efron" if a.ties == "efron" else "Breslow"
        text = f"{title} ({ties} ties) of {_outcome(a)} on {covs}"
    else:
        text = f"{title} of {_outcome(a)}"
        text += f", by {_levels_text(a.by)}" if a.by else ""
    if a.strata_by_site:
        text += ", stratified by site"
    elif a.strata:
        text += ", stratified by " + " and ".join(_levels_text(s) for s in a.strata)
    return text


def describe_analysis(study: Study, a: Analysis) -> str:
    """One analysis in plain words: what is computed and exactly what leaves the site."""
    steps = [_step_text(study, a, s) for s in allowed_steps(a)]
    release = "; then ".join(steps)
    dropped = (
        ""
        if a.kind in ("attrition", "pathways")
        else ", and the number of rows dropped for missing values"
    )
    if a.kind in ("attrition", "pathways"):
        dropped = ", and the number of rows without a declared group level"
    return f"{_title(a)}: releases, pooled over sites, {release}{dropped}"


def describe_study(study: Study) -> list[str]:
    """Every analysis of the study in plain words, in the study's order (one line each)."""
    return [describe_analysis(study, a) for a in study.analyses]


def describe_header(study: Study) -> list[str]:
    """The study-wide facts an officer should see before the analyses."""
    g = study.grid
    lines = [
        f"study {study.name!r}: {len(study.analyses)} analyses",
        f"time grid: every time is rounded up to {g.grid_days}-day intervals, up to day "
        f"{g.horizon_days}; nothing finer than an interval is released",
        "every number leaves only as part of a masked vector under secure aggregation: the "
        "coordinator sees the sum over sites, never this site's own numbers",
    ]
    if study.dp_noise_variance > 0:
        v = study.dp_noise_variance
        lines.append(
            f"differential privacy: this site adds its share of noise so that every pooled "
            f"count carries noise of variance {v:g} (sd {v**0.5:.3g}); each new answer is "
            "charged to this study's budget (docs/privacy.md); Cox models are refused"
        )
    if study.uses_registry:
        r = study.rules
        lines.append(
            f"lines of therapy derived with rule set {r.version} (window {r.window_days} days, "
            f"gap {r.gap_days} days)"
        )
    return lines


# ---------------------------------------------------------------- the approval store


@dataclass(frozen=True)
class Approval:
    """One approval decision, with the lead's signature it was based on."""

    study_hash: str
    study_name: str
    signer: str
    lead_key: str
    signed_at: str
    signature: str
    approved_at: str
    officer: str
    note: str
    revoked_at: str | None = None
    revoked_by: str | None = None
    revoke_note: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def study_signature(self) -> StudySignature:
        return StudySignature(
            self.study_hash, self.signer, self.lead_key, self.signed_at, self.signature
        )

    def to_toml(self) -> str:
        out = ["[[approval]]"]
        for name in Approval.__dataclass_fields__:
            value = getattr(self, name)
            if value is not None:
                out.append(f"{name} = {_toml_str(str(value))}")
        return "\n".join(out) + "\n"


_STORE_HEADER = (
    "# her2fed study approvals of this site, written by `her2fed site approve` / `revoke`.\n"
    "# An approval counts only while its lead signature verifies under the pinned lead key,\n"
    "# so adding one by hand achieves nothing; every change is also in the signed audit log.\n"
)


class ApprovalStore:
    """The site's approvals (``approvals.toml``): append-only decisions, latest per hash wins.

    Revoking keeps the approval and marks it revoked, so the file shows the
    history. Writes are atomic (temp file + rename) under an exclusive lock,
    so the agent reading and the officer writing never see half a file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def approvals(self) -> list[Approval]:
        """Every decision in the file, oldest first (an absent file has none)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SpecError(
                str(self.path), f"is not valid TOML ({err})", "restore it from a backup"
            ) from None
        raw = doc.get("approval", [])
        if set(doc) - {"approval"} or not isinstance(raw, list):
            raise SpecError(str(self.path), "is not an approval store", "restore it from a backup")
        fields = set(Approval.__dataclass_fields__)
        required = {n for n in fields if n not in ("revoked_at", "revoked_by", "revoke_note")}
        out = []
        for i, entry in enumerate(raw):
            if (
                not isinstance(entry, dict)
                or not required <= set(entry) <= fields
                or not all(isinstance(v, str) for v in entry.values())
            ):
                raise SpecError(
                    f"{self.path}: approval[{i}]",
                    "is not a complete approval",
                    "restore the file from a backup",
                )
            out.append(Approval(**entry))
        return out

    def get(self, study_hash: str) -> Approval | None:
        """The latest decision about a study hash."""
        found = None
        for a in self.approvals():
            if a.study_hash == study_hash:
                found = a
        return found

    def is_approved(self, study_hash: str) -> bool:
        a = self.get(study_hash)
        return a is not None and not a.revoked

    def approve(
        self,
        study_hash: str,
        signer: str,
        note: str = "",
        time: datetime | None = None,
        *,
        signature: StudySignature,
        officer: str = "",
        study_name: str = "",
    ) -> Approval:
        """Record the officer's approval of a study hash, with the lead's signature of it.

        The caller has shown the officer ``describe_study`` and checked the
        signature (``verify_signature``); the store keeps that signature so
        ``check_approved`` can re-check it on every session.
        """
        if signature.study_hash != study_hash or signature.signer != signer:
            raise SpecError(
                "approval",
                "the signature is for another study hash or signer",
                "approve the hash the signature names",
            )
        approval = Approval(
            study_hash=study_hash,
            study_name=study_name,
            signer=signer,
            lead_key=signature.public_key,
            signed_at=signature.signed_at,
            signature=signature.signature,
            approved_at=_iso(time or datetime.now(UTC)),
            officer=officer,
            note=" ".join(note.split()),
        )
        with self._locked():
            self._write([*self.approvals(), approval])
        return approval

    def revoke(
        self, study_hash: str, note: str = "", *, officer: str = "", time: datetime | None = None
    ) -> Approval:
        """Mark the current approval of a hash revoked; the site stops answering that study."""
        with self._locked():
            items = self.approvals()
            for i in range(len(items) - 1, -1, -1):
                if items[i].study_hash == study_hash:
                    if items[i].revoked:
                        raise SpecError(
                            study_hash, "is already revoked", "nothing to do; approve it again"
                        )
                    items[i] = replace(
                        items[i],
                        revoked_at=_iso(time or datetime.now(UTC)),
                        revoked_by=officer,
                        revoke_note=" ".join(note.split()),
                    )
                    self._write(items)
                    return items[i]
        raise SpecError(
            study_hash,
            "has no approval at this site",
            "check the hash with `her2fed site approvals`",
        )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _write(self, items: Sequence[Approval]) -> None:
        text = _STORE_HEADER + "".join("\n" + a.to_toml() for a in items)
        write_atomic(self.path, text.encode("utf-8"), mode=0o644)


# ---------------------------------------------------------------- the check a session makes


def check_approved(
    store: ApprovalStore,
    study_bytes: bytes,
    signature: StudySignature | None,
    lead_public_key: Ed25519PublicKey,
) -> Approval:
    """Refuse (``PolicyRefusal``) unless this exact study is approved and signed by the lead.

    ``signature`` is the one the coordinator sent with the study, if the
    protocol carries one; with ``None`` the signature kept at approval time
    is re-checked. Either way the signature must be the pinned lead key's
    over these bytes, and the approval must have been made under that key.
    """
    digest = study_hash(study_bytes)
    if signature is not None:
        verify_signature(study_bytes, signature, lead_public_key)
    approval = store.get(digest)
    if approval is None:
        raise PolicyRefusal(
            RULE_APPROVAL,
            "approved by the privacy officer",
            f"study {digest} has not been approved at this site (a study changed by even one "
            "byte is a different study)",
            "the privacy officer reviews it and runs `her2fed site approve SITE.toml STUDY.toml`",
        )
    if approval.revoked:
        raise PolicyRefusal(
            RULE_APPROVAL,
            "approved by the privacy officer",
            f"the approval of study {digest} was revoked on {approval.revoked_at}",
            "the privacy officer approves it again if the revocation was a mistake",
        )
    pinned = key_hex(lead_public_key)
    if approval.lead_key != pinned:
        raise PolicyRefusal(
            RULE_SIGNATURE,
            _threshold(lead_public_key),
            f"study {digest} was approved as signed by key {approval.lead_key[:16]}…, but the "
            f"lead key pinned now is {pinned[:16]}…",
            "the privacy officer checks the new lead key and approves the study again",
        )
    if signature is None:
        stored = approval.study_signature()
        if stored.public_key != pinned or stored.study_hash != digest:
            raise _sig_refusal(
                "the approval record does not carry the lead's signature of this study",
                "approve the study again with `her2fed site approve`",
                lead_public_key,
            )
        try:
            verify_signature(study_bytes, stored, lead_public_key)
        except PolicyRefusal:
            raise _sig_refusal(
                "the approval record's lead signature does not verify (the approval store "
                "was edited)",
                "the privacy officer checks approvals.toml and approves the study again",
                lead_public_key,
            ) from None
    return approval


def require_approved(
    store: ApprovalStore,
    study_bytes: bytes,
    signature: StudySignature | None,
    lead_public_key: Ed25519PublicKey,
    *,
    audit: AuditLog | None = None,
    session_id: str | None = None,
    step: str = "study",
) -> Approval:
    """``check_approved`` that also writes each refusal, with its reason, to the audit log."""
    try:
        return check_approved(store, study_bytes, signature, lead_public_key)
    except PolicyRefusal as err:
        if audit is not None:
            audit.record_refusal(
                session_id=session_id,
                study_hash=study_hash(study_bytes),
                reason=err,
                step=step,
            )
        raise


def check_site_approval(files: SiteFiles, study_bytes: bytes) -> Approval:
    """The check a site makes before it answers a study: its pinned lead key and approvals.

    One function for the live query path and for ``her2fed local``'s check
    before it starts anything, so both refuse for the same reason.
    """
    if not files.lead_key.is_file():
        raise PolicyRefusal(
            RULE_APPROVAL,
            "approved by the privacy officer",
            f"no consortium lead key is pinned at {files.lead_key}, so no study can be "
            "checked as approved",
            "the privacy officer saves the lead's public key there (or where [keys] lead_key "
            "says) and approves the study with `her2fed site approve SITE.toml STUDY.toml`",
        )
    return check_approved(
        ApprovalStore(files.approvals), study_bytes, None, load_lead_key(files.lead_key)
    )
