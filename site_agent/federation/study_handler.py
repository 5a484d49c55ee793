"""The handler a site runs for a real study session on the aggregation stream.

Steps (``handle(step, payload)``):

- ``study``: the study file's bytes. Accepted only if its SHA-256 is the hash
  Flower's "open session" message named (the coordinator cannot swap the
  study afterwards), the site's privacy officer approved exactly these bytes
  as signed by the pinned lead key (``her2fed site approve``), and the
  site's policy allows every analysis.
- ``prepare``: one round's queries (JSON). The site computes its summaries,
  keeps them, and replies with their public layouts only (kind, field names,
  shapes, dtypes): the coordinator learns lengths, never values.
- ``secagg``: a secure-aggregation message. The site's summaries of the
  prepared round leave only as a masked vector.

Every request is written to the site's signed audit log before it is acted
on, and every reply before it is sent (its SHA-256 and size, the policy
rules it passed, the secure-aggregation participants): a reply that cannot
be recorded is not sent. Every refusal is a ``SiteRefusal`` carrying a
reason with no patient data (policy rule, file/column/row, protocol step),
also logged; anything unexpected becomes the client's fixed generic reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from her2fed.counts import EventTable
from her2fed.disclosure import ReleaseRule
from her2fed.dp import epsilon_delta
from her2fed.errors import Her2fedError, ProtocolError
from her2fed.protocol import Query
from her2fed.secagg import messages
from her2fed.secagg.randomness import SYSTEM_RANDOM
from her2fed.secagg.registry import public_key_bytes
from her2fed.secagg.site import SiteSession
from her2fed.study import parse_study
from her2fed.summary import Additive, flatten_all
from site_agent.approval import check_site_approval
from site_agent.audit import AuditError, AuditLog, Check, DPSpend
from site_agent.cohorts import CohortMemory, fingerprint_key
from site_agent.config import load_site
from site_agent.federation.client import Handler, SiteRefusal
from site_agent.federation.keys import KeyFileError, read_private_key
from site_agent.federation.session import SessionInfo
from site_agent.handlers import Failing, Released, SiteAgent
from site_agent.policy import check_participants, check_study
from site_agent.site_files import site_files

log = logging.getLogger("her2fed.federation.site")

# session ids this site process has taken part in (a session id is never accepted twice)
_USED_SESSIONS: set[bytes] = set()


def encode_queries(queries: Sequence[Query]) -> bytes:
    return json.dumps(
        [[q.analysis_id, q.step, list(q.beta), list(q.center), list(q.bins)] for q in queries]
    ).encode()


def decode_queries(payload: bytes) -> list[Query]:
    try:
        raw = json.loads(payload)
        return [
            Query(str(a), s, tuple(map(float, b)), tuple(map(float, c)), tuple(map(_int, m)))
            for a, s, b, c, m in raw
        ]
    except (ValueError, TypeError) as err:
        raise SiteRefusal(f"malformed query list ({type(err).__name__})") from None


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError("merged bins must be integers")
    return value


def encode_acceptance(rule: ReleaseRule) -> bytes:
    """The reply that accepts a study: the site's (public) thresholds for the pooled release."""
    return json.dumps({"min_cell": rule.min_cell, "min_at_risk": rule.min_at_risk}).encode()


def decode_acceptance(reply: bytes, site: str) -> ReleaseRule:
    try:
        raw = json.loads(reply)
        rule = ReleaseRule(int(raw["min_cell"]), int(raw["min_at_risk"]))
    except (ValueError, TypeError, KeyError):
        raise ProtocolError(
            f"site {site} accepted the study with a malformed reply; it runs another her2fed "
            "version than the coordinator (install the same release everywhere)"
        ) from None
    if rule.min_cell < 0 or rule.min_at_risk < 0:
        raise ProtocolError(f"site {site} sent negative release thresholds")
    return rule


def encode_release(releases: Mapping[str, Released]) -> bytes:
    """The coordinator's release for the sites' leave-one-out check (public once published)."""
    return json.dumps(
        {
            aid: {
                "events": table.events.tolist(),
                "censored": table.censored.tolist(),
                "top_slot": top,
            }
            for aid, (table, top) in releases.items()
        }
    ).encode()


def decode_release(payload: bytes) -> dict[str, Released]:
    try:
        raw = json.loads(payload)
        out: dict[str, Released] = {}
        for aid, item in raw.items():
            events = np.asarray(item["events"], dtype=np.int64)
            censored = np.asarray(item["censored"], dtype=np.int64)
            top = item["top_slot"]
            if events.ndim != 4 or censored.ndim != 3:
                raise ValueError("shape")
            if not (top is None or isinstance(top, int)):
                raise TypeError("top_slot")
            table = EventTable(events=events, censored=censored, dropped=np.zeros(1, np.int64))
            out[str(aid)] = (table, top)
        return out
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise SiteRefusal(f"malformed release ({type(err).__name__})") from None


def encode_failing(failing: Failing) -> bytes:
    return json.dumps(failing).encode()


def decode_failing(reply: bytes, site: str) -> Failing:
    try:
        raw = json.loads(reply)
        return {
            str(aid): {int(s): [int(e) for e in ends] for s, ends in series.items()}
            for aid, series in raw.items()
        }
    except (ValueError, TypeError, AttributeError):
        raise ProtocolError(
            f"site {site} answered the release check with a malformed reply"
        ) from None


def encode_layouts(answers: Sequence[Additive]) -> bytes:
    return json.dumps([[type(a).__name__, [list(f) for f in a.layout()]] for a in answers]).encode()


DP_DELTA = 1e-6
"""The delta at which the audit log states each round's DP cost as epsilon."""

class AuditUnavailable(SiteRefusal):
    """The audit log cannot be written: the site sends nothing (and cannot log this either)."""

    def __init__(self) -> None:
        super().__init__(
            "the site's audit log cannot be written, so the site sends nothing; its IT checks "
            "the log with `her2fed site audit verify SITE.toml`"
        )


def _require_own_key(path: Path, running: Ed25519PrivateKey) -> None:
    """The agent must run with the site's own key (``[keys] site_key``): it signs the audit log.

    A log signed by whatever key a process happened to get could not be
    verified by the officer; so a session under any other key is refused.
    """
    try:
        own = read_private_key(path)
    except KeyFileError:
        raise SiteRefusal(
            f"this site has no identity key at [keys] site_key ({path.name}), which signs its "
            "audit log; its IT runs `her2fed site keys SITE.toml`"
        ) from None
    if public_key_bytes(own.public_key()) != public_key_bytes(running.public_key()):
        raise SiteRefusal(
            "this site agent runs with another identity key than [keys] site_key of its config; "
            "its IT starts it with the site's own key"
        )


class StudySession:
    def __init__(self, info: SessionInfo) -> None:
        if info.identity is None or info.identity.consortium is None:
            raise SiteRefusal("this site agent was started without its consortium registry")
        if info.site_config is None:
            raise SiteRefusal("this SuperNode was started without a site-config")
        self.info = info
        self.identity = info.identity
        self.consortium = info.identity.consortium
        self.config = load_site(info.site_config)
        self.files = site_files(self.config)
        _require_own_key(self.files.site_key, self.identity.site_key)
        # one log, one signer: the identity key the site runs with signs its audit trail
        self.audit = AuditLog(self.files.audit_log, self.identity.site_key, self.config.site_id)
        self.agent: SiteAgent | None = None
        self.secure: SiteSession | None = None
        self.prepared: tuple[np.ndarray, np.ndarray] | None = None
        self.prepared_checks: tuple[Check, ...] = ()
        self.prepared_dp: DPSpend | None = None
        self._record(
            lambda: self.audit.record_session_opened(
                session_id=info.session_id,
                study_hash=info.study_hash,
                coordinator=info.address,
                extra={"site_agent": self.identity.site_id},
            )
        )

    def __call__(self, step: str, payload: bytes) -> bytes:
        try:
            if step == "study":
                self._received(step, payload)
                return self._send(
                    step, self.study(payload), what="study accepted, with the release thresholds"
                )
            if step == "prepare":
                queries = decode_queries(payload)
                self._received(step, payload, queries)
                layouts = self.prepare(queries)
                return self._send(
                    step,
                    layouts,
                    what="summary layouts (names and shapes, no values)",
                    analyses=[q.analysis_id for q in queries],
                    checks=self.prepared_checks,
                )
            if step == "secagg":
                return self.secagg(payload)
            if step == "release":
                self._received(step, payload)
                failing = self.release(decode_release(payload))
                return self._send(
                    step,
                    encode_failing(failing),
                    what="leave-one-out check of the release: "
                    + ("agreed" if not failing else "merged bins refused (positions only)"),
                    analyses=list(failing),
                )
            self._received(step, payload)
            raise SiteRefusal(f"unknown step {step!r}")
        except SiteRefusal as err:
            self._refused(step, err)
            raise
        except Her2fedError as err:  # our errors name rules, files and columns, never values
            self._refused(step, err)
            raise SiteRefusal(str(err)) from None

    # ---------------------------------------------------------------- the audit trail

    def _record(self, write: Callable[[], object]) -> None:
        """Write an audit record or refuse: nothing is sent that the log does not hold."""
        try:
            write()
        except (AuditError, OSError) as err:
            log.error("audit log %s: %s", self.files.audit_log, err)
            raise AuditUnavailable() from None

    def _received(
        self,
        step: str,
        payload: bytes,
        queries: Sequence[Query] = (),
        summary: str | None = None,
        **extra: Any,
    ) -> None:
        self._record(
            lambda: self.audit.record_query(
                session_id=self.info.session_id,
                study_hash=self.info.study_hash,
                step=step,
                queries=queries,
                received=payload,
                extra=extra,
                summary=summary and summary + f" in session {self.info.session_id[:8]}",
            )
        )

    def _send(
        self,
        step: str,
        reply: bytes,
        *,
        what: str,
        analyses: Sequence[str] = (),
        checks: Sequence[Check] = (),
        participants: Sequence[str] = (),
        dp: DPSpend | None = None,
    ) -> bytes:
        self._record(
            lambda: self.audit.record_payload(
                session_id=self.info.session_id,
                study_hash=self.info.study_hash,
                payload=reply,
                step=step,
                what=what,
                analyses=list(dict.fromkeys(analyses)),
                checks=checks,
                participants=participants,
                dp=dp,
            )
        )
        return reply

    def _refused(self, step: str, err: Exception) -> None:
        if isinstance(err, AuditUnavailable):
            return
        try:
            self.audit.record_refusal(
                session_id=self.info.session_id,
                study_hash=self.info.study_hash,
                reason=err,
                step=step,
            )
        except (AuditError, OSError) as problem:  # the refusal is sent anyway: it carries no data
            log.error("audit log %s: %s", self.files.audit_log, problem)

    # ---------------------------------------------------------------- the steps

    def study(self, payload: bytes) -> bytes:
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        if digest != self.info.study_hash:
            raise SiteRefusal("the study file does not match the hash this session was opened for")
        try:
            study = parse_study(tomllib.loads(payload.decode("utf-8")))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            raise SiteRefusal("the study file is not valid TOML") from None
        check_site_approval(self.files, payload)
        check_study(self.config.policy, study)
        # the cohorts this site answered before, keyed with its own key (differencing check)
        cohorts = CohortMemory(
            self.config.path.parent,
            self.info.study_hash,
            fingerprint_key(self.identity.site_key.private_bytes_raw()),
        )
        self.agent = SiteAgent(self.config, study, cohorts=cohorts)
        return encode_acceptance(self.agent.release_rule)

    def prepare(self, queries: Sequence[Query]) -> bytes:
        if self.agent is None:
            raise SiteRefusal("no study has been accepted in this session")
        answers = self.agent.answer(queries)
        self.prepared = flatten_all(answers)
        self.prepared_checks = tuple(
            Check(rule, True, threshold, analysis)
            for analysis, rule, threshold in dict.fromkeys(self.agent.last_checks)
        )
        spent = self.agent.last_dp
        self.prepared_dp = (
            None
            if spent is None
            else DPSpend(
                epsilon_delta(spent.asked, DP_DELTA),
                DP_DELTA,
                f"Skellam, noise variance {self.agent.study.dp_noise_variance:g}, rho "
                f"{spent.asked:.4g} this round, {spent.spent + spent.asked:.4g} of "
                f"{spent.limit:.4g} spent in the study",
            )
        )
        return encode_layouts(answers)

    def release(self, releases: Mapping[str, Released]) -> Failing:
        if self.agent is None:
            raise SiteRefusal("no study has been accepted in this session")
        return self.agent.check_release(releases)

    def secagg(self, payload: bytes) -> bytes:
        msg = messages.decode(payload)
        name = type(msg).__name__
        self._received("secagg", payload, message=name, summary=f"received {name} (secagg)")
        reply = self._secagg(msg)
        if not reply:
            return reply
        if isinstance(msg, messages.RoundBegin):
            return self._send(
                "secagg",
                reply,
                what="masked summaries of the prepared round",
                analyses=[c.analysis for c in self.prepared_checks if c.analysis],
                checks=self.prepared_checks,
                participants=msg.participants,
                dp=self.prepared_dp,
            )
        return self._send("secagg", reply, what=f"secure-aggregation reply to {name}")

    def _secagg(self, msg: messages.Message) -> bytes:
        # the site's own minimum of contributors: no masked vector into a smaller sum, and
        # no confirmation (hence no unmasking) of one
        if isinstance(msg, messages.RoundBegin):
            check_participants(self.config.policy, len(msg.participants), "this round's sum")
        if isinstance(msg, messages.ConsistencyRequest):
            check_participants(self.config.policy, len(msg.survivors), "the secure sum")
        if isinstance(msg, messages.SessionOpen):
            self.secure = SiteSession(
                self.identity.site_id,
                self.identity.site_key,
                self.consortium,
                used_sessions=_USED_SESSIONS,
                rng=SYSTEM_RANDOM,
            )
            return self.secure.open(msg).to_bytes()
        s = self.secure
        if s is None:
            raise SiteRefusal("secure-aggregation message before the session was opened")
        if isinstance(msg, messages.AdvertiseBundle):
            return s.share_keys(msg).to_bytes()
        if isinstance(msg, messages.ShareBundle):
            s.receive_shares(msg)
            return b""
        if isinstance(msg, messages.RoundBegin):
            if self.prepared is None:
                raise SiteRefusal("a round began before its queries were prepared")
            ints, floats = self.prepared
            self.prepared = None  # each prepared round is masked once
            pad_i, pad_f = s.config.n_ints - ints.size, s.config.n_floats - floats.size
            if pad_i < 0 or pad_f < 0:
                raise SiteRefusal("the session's vectors are shorter than this round's summaries")
            return s.masked_input(
                msg, np.pad(ints, (0, pad_i)), np.pad(floats, (0, pad_f))
            ).to_bytes()
        if isinstance(msg, messages.ConsistencyRequest):
            return s.consistency(msg).to_bytes()
        if isinstance(msg, messages.UnmaskRequest):
            return s.unmask(msg).to_bytes()
        raise SiteRefusal(f"unexpected secure-aggregation message {type(msg).__name__}")


def factory(info: SessionInfo) -> Handler:
    """The ``HandlerFactory`` of real studies (``study_handler:factory``)."""
    return StudySession(info)
