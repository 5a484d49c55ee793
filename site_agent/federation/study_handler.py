"""The handler a site runs for a real study session on the aggregation stream.

Steps (``handle(step, payload)``):

- ``study``: the study file's bytes. Accepted only if its SHA-256 is the hash
  Flower's "open session" message named (the coordinator cannot swap the
  study afterwards); the site's policy is checked against it.
- ``prepare``: one round's queries (JSON). The site computes its summaries,
  keeps them, and replies with their public layouts only (kind, field names,
  shapes, dtypes): the coordinator learns lengths, never values.
- ``secagg``: a secure-aggregation message. The site's summaries of the
  prepared round leave only as a masked vector.

Every refusal is a ``SiteRefusal`` carrying a reason with no patient data
(policy rule, file/column/row, protocol step); anything unexpected becomes
the client's fixed generic reason.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Sequence

import numpy as np

from her2fed.errors import Her2fedError
from her2fed.protocol import Query
from her2fed.secagg import messages
from her2fed.secagg.randomness import SYSTEM_RANDOM
from her2fed.secagg.site import SiteSession
from her2fed.study import parse_study
from her2fed.summary import Additive, flatten_all
from site_agent.config import load_site
from site_agent.federation.client import Handler, SiteRefusal
from site_agent.federation.session import SessionInfo
from site_agent.handlers import SiteAgent
from site_agent.policy import check_study

# session ids this site process has taken part in (a session id is never accepted twice)
_USED_SESSIONS: set[bytes] = set()


def encode_queries(queries: Sequence[Query]) -> bytes:
    return json.dumps(
        [[q.analysis_id, q.step, list(q.beta), list(q.center)] for q in queries]
    ).encode()


def decode_queries(payload: bytes) -> list[Query]:
    try:
        raw = json.loads(payload)
        return [Query(str(a), s, tuple(map(float, b)), tuple(map(float, c))) for a, s, b, c in raw]
    except (ValueError, TypeError) as err:
        raise SiteRefusal(f"malformed query list ({type(err).__name__})") from None


def encode_layouts(answers: Sequence[Additive]) -> bytes:
    return json.dumps([[type(a).__name__, [list(f) for f in a.layout()]] for a in answers]).encode()


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
        self.agent: SiteAgent | None = None
        self.secure: SiteSession | None = None
        self.prepared: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, step: str, payload: bytes) -> bytes:
        try:
            if step == "study":
                return self.study(payload)
            if step == "prepare":
                return self.prepare(payload)
            if step == "secagg":
                return self.secagg(payload)
        except SiteRefusal:
            raise
        except Her2fedError as err:  # our errors name rules, files and columns, never values
            raise SiteRefusal(str(err)) from None
        raise SiteRefusal(f"unknown step {step!r}")

    def study(self, payload: bytes) -> bytes:
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        if digest != self.info.study_hash:
            raise SiteRefusal("the study file does not match the hash this session was opened for")
        try:
            study = parse_study(tomllib.loads(payload.decode("utf-8")))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            raise SiteRefusal("the study file is not valid TOML") from None
        check_study(self.config.policy, study)
        self.agent = SiteAgent(self.config, study)
        return b"ok"

    def prepare(self, payload: bytes) -> bytes:
        if self.agent is None:
            raise SiteRefusal("no study has been accepted in this session")
        answers = self.agent.answer(decode_queries(payload))
        self.prepared = flatten_all(answers)
        return encode_layouts(answers)

    def secagg(self, payload: bytes) -> bytes:
        msg = messages.decode(payload)
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
