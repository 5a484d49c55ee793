"""The transport over a real federation: queries and secure aggregation on the gRPC stream.

One ``aggregate`` call is one study round: the queries go to every site
(``prepare``), the sites answer with the public layouts of their summaries,
and the summaries themselves travel only inside the secure-aggregation
protocol (``secagg`` steps), whose key set-up is reused across rounds while
the vectors fit the session. A site that fails or disappears is reported by
name (``SitesDropped``); the orchestrator then restarts the study on the
remaining sites, so no estimate mixes rounds computed on different sites.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.federation.server import AggregationSession, SitesFailed
from coordinator.transport import (
    MIN_SECURE_SITES,
    ROUNDS_PER_SESSION,
    AggregationError,
    SecureStats,
    SitesDropped,
    merge_failing,
    reuse_session,
)
from her2fed.disclosure import ReleaseRule
from her2fed.protocol import Query
from her2fed.secagg import messages
from her2fed.secagg.config import SessionConfig
from her2fed.secagg.coordinator import CoordinatorSession, SecureSum
from her2fed.secagg.errors import SecAggError
from her2fed.secagg.randomness import SYSTEM_RANDOM, RandomSource
from her2fed.secagg.registry import Registry
from her2fed.summary import Additive, flatten_all, split_flat, zeros_like_layout
from site_agent.federation.study_handler import (
    decode_acceptance,
    decode_failing,
    encode_queries,
    encode_release,
)
from site_agent.handlers import Failing, Released


class GrpcTransport:
    def __init__(
        self,
        session: AggregationSession,
        study_bytes: bytes,
        *,
        coordinator_key: Ed25519PrivateKey,
        consortium: Registry,
        rng: RandomSource = SYSTEM_RANDOM,
        rounds_per_session: int = ROUNDS_PER_SESSION,
        timeout: float = 120.0,
    ) -> None:
        self._session = session
        self._key = coordinator_key
        self._consortium = consortium
        self._rng = rng
        self._rounds_per_session = rounds_per_session
        self._timeout = timeout
        self._sites = sorted(session.sites)
        self._round = 0
        self._secure: CoordinatorSession | None = None
        self._rounds_in_session = 0
        self._used: set[bytes] = set()
        self.dropouts: dict[str, str] = {}
        self.stats = SecureStats()
        accepted = self._broadcast("study", {s: study_bytes for s in self._sites})
        self._rules = {s: decode_acceptance(r, s) for s, r in accepted.items()}

    def sites(self) -> list[str]:
        return list(self._sites)

    def release_rule(self) -> ReleaseRule:
        return ReleaseRule.strictest([self._rules[s] for s in self._sites])

    def confirm_release(self, releases: Mapping[str, Released]) -> Failing:
        payload = encode_release(releases)
        replies = self._broadcast("release", {s: payload for s in self._sites})
        return merge_failing(decode_failing(r, s) for s, r in replies.items())

    def describe(self) -> dict[str, object]:
        return {
            "method": "pairwise-masked secure aggregation (Bonawitz et al. 2017, double "
            "masking) over the gRPC aggregation channel (TLS), sessions opened through Flower",
            "sessions": self.stats.sessions,
            "rounds": self.stats.rounds,
            "float_encoding": self.stats.float_encoding(len(self._sites)),
            "max_float_error_bound": self.stats.max_float_error,
            "dropouts": dict(self.dropouts),
        }

    def exclude(self, sites: Sequence[str]) -> None:
        """Carry on without these sites (after a dropout): a fresh key set-up follows."""
        self._sites = [s for s in self._sites if s not in sites]
        self._secure = None
        if len(self._sites) < MIN_SECURE_SITES:
            raise AggregationError(
                f"only {len(self._sites)} site(s) remain after dropouts "
                f"({', '.join(sorted(self.dropouts))}); at least {MIN_SECURE_SITES} are needed, "
                "so nothing is released"
            )

    def _broadcast(self, step: str, payloads: Mapping[str, bytes]) -> dict[str, bytes]:
        self._round += 1
        try:
            return self._session.broadcast(self._round, step, payloads, timeout=self._timeout)
        except SitesFailed as err:
            self.dropouts.update(err.failures)
            raise SitesDropped(err.failures) from None

    def aggregate(self, queries: Sequence[Query]) -> list[Additive]:
        payload = encode_queries(queries)
        replies = self._broadcast("prepare", {s: payload for s in self._sites})
        layouts = {s: r for s, r in replies.items()}
        if len(set(layouts.values())) != 1:
            raise AggregationError("sites answered with different summary layouts; refused")
        templates = [
            zeros_like_layout(kind, tuple((n, tuple(sh), d) for n, sh, d in fields))
            for kind, fields in json.loads(next(iter(layouts.values())))
        ]
        n_ints, n_floats = (v.size for v in flatten_all(templates))
        c = self._secure
        if c is None or not reuse_session(c.config, self._rounds_in_session, n_ints, n_floats):
            c = self._open(n_ints, n_floats)
        try:
            total = self._secure_round(c)
        except SecAggError as err:
            self._secure = None
            raise AggregationError(f"secure aggregation aborted, nothing released: {err}") from None
        self.stats.record(total)
        missing = sorted(set(self._sites) - set(total.contributors))
        if missing:
            raise SitesDropped({s: "left the secure sum" for s in missing})
        return split_flat(templates, total.ints[:n_ints], total.floats[:n_floats])

    def _open(self, n_ints: int, n_floats: int) -> CoordinatorSession:
        config = SessionConfig.create(
            tuple(self._sites),
            n_rounds=self._rounds_per_session,
            n_ints=n_ints,
            n_floats=n_floats,
            rng=self._rng,
        )
        c = CoordinatorSession(
            config, self._key, self._consortium, used_sessions=self._used, rng=self._rng
        )
        opened = c.open().to_bytes()
        for reply in self._secagg({s: opened for s in self._sites}).values():
            c.receive_advertise(messages.Advertise.from_bytes(reply))
        bundle = c.advertise_bundle()
        raw = bundle.to_bytes()
        for reply in self._secagg({a.sender: raw for a in bundle.adverts}).values():
            c.receive_share_keys(messages.ShareKeys.from_bytes(reply))
        self._secagg({s: b.to_bytes() for s, b in c.share_bundles().items()})
        self._secure = c
        self._rounds_in_session = 0
        self.stats.opened(config)
        return c

    def _secagg(self, payloads: Mapping[str, bytes]) -> dict[str, bytes]:
        return self._broadcast("secagg", payloads)

    def _secure_round(self, c: CoordinatorSession) -> SecureSum:
        begin = c.begin_round()
        raw = begin.to_bytes()
        for reply in self._secagg({s: raw for s in begin.participants}).values():
            c.receive_masked_input(messages.MaskedInput.from_bytes(reply))
        request = c.consistency_request()
        raw = request.to_bytes()
        for reply in self._secagg({s: raw for s in request.survivors}).values():
            c.receive_consistency(messages.ConsistencyAck.from_bytes(reply))
        unmask = c.unmask_request()
        raw = unmask.to_bytes()
        for reply in self._secagg({a.sender: raw for a in unmask.acks}).values():
            c.receive_unmask(messages.UnmaskResponse.from_bytes(reply))
        self._rounds_in_session += 1
        return c.finish_round()
