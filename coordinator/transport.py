"""The one seam between orchestration and the sites.

``aggregate`` takes the queries of one round and returns, per query, the sum
of the sites' summaries. Nothing above this seam ever sees a single site's
summary. The in-process transport runs the same secure-aggregation state
machines the network uses: each site's summaries are flattened into one
vector of public length, masked, and only the sum is unmasked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from her2fed.disclosure import ReleaseRule
from her2fed.errors import Her2fedError
from her2fed.protocol import Query
from her2fed.secagg.config import SessionConfig
from her2fed.secagg.coordinator import SecureSum
from her2fed.secagg.driver import Consortium, SteppedSession, simulated_consortium
from her2fed.secagg.encoding import FRAC_BITS, default_format, describe_format
from her2fed.secagg.errors import SessionAbortedError
from her2fed.secagg.randomness import SYSTEM_RANDOM, RandomSource
from her2fed.summary import Additive, flatten_all, merge, split_flat
from site_agent.handlers import Failing, Released, SiteAgent
from site_agent.policy import check_participants

MIN_SECURE_SITES = 3
# Keys are made for this many rounds per session. A Cox fit needs its first round plus
# a handful of Newton steps (4-7 in the benchmarks); a study that needs more pays one
# more key set-up, while every session pays for every round it pre-generates (X25519
# keys, and Shamir shares of them for every peer: quadratic in the number of sites).
ROUNDS_PER_SESSION = 8
# Zero padding a round may carry rather than re-key (ring elements, 2 MiB per site and
# round). A key set-up costs a few milliseconds per site at 5 sites (more with more
# sites: it is quadratic), padding tens of nanoseconds per element per site (encode,
# n masks, hash, unmask); padding below this is the cheaper of the two.
PAD_ALLOWANCE = 1 << 18


def reuse_session(config: SessionConfig, rounds_used: int, n_ints: int, n_floats: int) -> bool:
    """Whether a round should reuse the open session's keys rather than set up new ones.

    A round that fits is zero-padded to the session's length, and every party
    then encodes, masks, signs, hashes and unmasks the padding too. Profiling
    a Cox fit on a 1-day grid showed that this, not the key set-up, was what
    secure aggregation spent most on: round 2 (two Newton points) opened the
    session, and every later round (one point) masked a vector twice its size
    (1.4 million zeros per site and round). So a round whose padding would
    exceed both ``PAD_ALLOWANCE`` and a quarter of its own length gets a fresh
    session sized to it. Short vectors keep sharing a session: there the
    set-up costs more than the padding, and on a network re-keying for them
    would cost round trips to save a few kilobytes.
    """
    if not config.fits(rounds_used, n_ints, n_floats):
        return False
    enc = config.encoding
    needed = n_ints + enc.limbs * n_floats
    return enc.ring_length - needed <= max(PAD_ALLOWANCE, needed // 4)


class SiteFailure(Her2fedError):
    """A site could not answer; names the site and its (sanitised) reason."""

    def __init__(self, site: str, reason: str) -> None:
        self.site = site
        self.reason = reason
        super().__init__(f"site {site!r}: {reason}")


class SitesDropped(Her2fedError):
    """Sites failed mid-study; names them and their (sanitised) reasons."""

    def __init__(self, failures: Mapping[str, str]) -> None:
        self.failures = dict(failures)
        listed = "; ".join(f"{s}: {r}" for s, r in sorted(self.failures.items()))
        super().__init__(f"site(s) dropped out: {listed}")


class AggregationError(Her2fedError):
    """Secure aggregation refused to release a sum (too few sites, a broken session)."""


def merge_failing(replies: Iterable[Failing]) -> Failing:
    """The union of the sites' leave-one-out refusals."""
    out: dict[str, dict[int, set[int]]] = {}
    for reply in replies:
        for aid, series in reply.items():
            for s, ends in series.items():
                out.setdefault(aid, {}).setdefault(int(s), set()).update(int(e) for e in ends)
    return {aid: {s: sorted(e) for s, e in series.items()} for aid, series in out.items()}


class Transport(Protocol):
    def sites(self) -> list[str]: ...

    def aggregate(self, queries: Sequence[Query]) -> list[Additive]: ...

    def describe(self) -> dict[str, object]: ...

    def exclude(self, sites: Sequence[str]) -> None:
        """Carry on without these sites, or raise if too few would remain."""
        ...

    def release_rule(self) -> ReleaseRule:
        """The strictest disclosure thresholds of the sites (they apply to the pooled release)."""
        ...

    def confirm_release(self, releases: Mapping[str, Released]) -> Failing:
        """Every site's leave-one-out check of the release: per analysis and series, the
        merged bins some site refused (empty: every site agrees)."""
        ...


@dataclass
class SecureStats:
    """What results.json reports about secure aggregation (both transports)."""

    sessions: int = 0
    rounds: int = 0
    max_float_error: float = 0.0
    float_formats: list[str] = field(default_factory=list)

    def opened(self, config: SessionConfig) -> None:
        """Count a session and note its float format (it depends on the roster size)."""
        self.sessions += 1
        described = config.encoding.description
        if described not in self.float_formats:
            self.float_formats.append(described)

    def float_encoding(self, n_sites: int) -> str:
        """The float format(s) the sessions used; before any, the one a session would use."""
        if not self.float_formats:
            return describe_format(*default_format(n_sites), FRAC_BITS)
        return "; ".join(self.float_formats)

    def record(self, total: SecureSum) -> None:
        self.rounds += 1
        self.max_float_error = max(self.max_float_error, total.float_error_bound)


class InProcessTransport:
    """All site agents in this process, summed under secure aggregation.

    ``secure=False`` adds the summaries in the clear: for statistical tests on
    fewer than three sites, never for a release (``results.json`` says which).
    A session's vector length is fixed when it opens (the length of the round
    that opens it); later rounds are zero-padded to it, and a round that is
    longer, much shorter (``reuse_session``), or one past
    ``rounds_per_session`` opens a new session.

    Sites compute their summaries in turn; ``workers=N`` runs them on up to N
    threads, as they would run in parallel in a federation. That helps on a
    machine with idle cores (round 1 of the Cox benchmark: 1.2 s -> 0.8 s on
    2 cores) but not on a loaded one, where it measured slower (the site code
    holds the GIL in ``bincount``), so it is opt-in. The secure sum runs party
    by party either way, and no pooled result depends on ``workers``.
    """

    def __init__(
        self,
        agents: Sequence[SiteAgent],
        *,
        secure: bool = True,
        rng: RandomSource = SYSTEM_RANDOM,
        rounds_per_session: int = ROUNDS_PER_SESSION,
        workers: int = 1,
    ) -> None:
        names = [a.site_id for a in agents]
        if len(set(names)) != len(names):
            raise Her2fedError(f"site ids must be unique, got {names}")
        if secure and len(agents) < MIN_SECURE_SITES:
            raise AggregationError(
                f"secure aggregation needs at least {MIN_SECURE_SITES} sites, got {len(agents)}: "
                "with fewer, a pooled sum would reveal a site's data, so nothing is released. "
                "Fix: add sites"
            )
        self._agents = list(agents)
        self.secure = secure
        self._rng = rng
        self._rounds_per_session = rounds_per_session
        self._workers = max(1, min(len(agents), workers))
        self._consortium: Consortium | None = simulated_consortium(names, rng) if secure else None
        self._session: SteppedSession | None = None
        self.stats = SecureStats()

    def sites(self) -> list[str]:
        return [a.site_id for a in self._agents]

    def release_rule(self) -> ReleaseRule:
        return ReleaseRule.strictest([a.release_rule for a in self._agents])

    def confirm_release(self, releases: Mapping[str, Released]) -> Failing:
        replies = []
        for agent in self._agents:
            try:
                replies.append(agent.check_release(releases))
            except Her2fedError as err:
                raise SiteFailure(agent.site_id, str(err)) from None
        return merge_failing(replies)

    def exclude(self, sites: Sequence[str]) -> None:
        raise AggregationError(f"in-process sites do not drop out; cannot exclude {list(sites)}")

    def describe(self) -> dict[str, object]:
        if not self.secure:
            return {"method": "plain sum (not secure; tests only)"}
        return {
            "method": "pairwise-masked secure aggregation (Bonawitz et al. 2017, double "
            "masking), in-process message passing",
            "sessions": self.stats.sessions,
            "rounds": self.stats.rounds,
            "float_encoding": self.stats.float_encoding(len(self._agents)),
            "max_float_error_bound": self.stats.max_float_error,
        }

    def aggregate(self, queries: Sequence[Query]) -> list[Additive]:
        def answer(agent: SiteAgent) -> list[Additive]:
            try:
                if self.secure:  # each site's own minimum of contributors to a secure sum
                    check_participants(agent.config.policy, len(self._agents), "the secure sum")
                # every agent here is summed, so each adds 1/k of the DP noise
                return agent.answer(queries, n_sites=len(self._agents))
            except Her2fedError as err:
                raise SiteFailure(agent.site_id, str(err)) from None

        if self._workers == 1:
            answers = [answer(a) for a in self._agents]
        else:  # map re-raises the first failure in site order, as the sequential loop would
            with ThreadPoolExecutor(self._workers, thread_name_prefix="site") as pool:
                answers = list(pool.map(answer, self._agents))
        layouts = {tuple(a.layout() for a in site) for site in answers}
        if len(layouts) != 1:
            raise AggregationError("sites answered with different summary layouts; refused")
        if not self.secure:
            return [merge(site[i] for site in answers) for i in range(len(queries))]
        return self._secure_sum(answers)

    def _secure_sum(self, answers: list[list[Additive]]) -> list[Additive]:
        assert self._consortium is not None
        flat = {a.site_id: flatten_all(ans) for a, ans in zip(self._agents, answers, strict=True)}
        n_ints, n_floats = (len(v) for v in next(iter(flat.values())))
        s = self._session
        if s is None or not reuse_session(s.config, s.rounds_used, n_ints, n_floats):
            s = SteppedSession(
                self._consortium,
                n_ints=n_ints,
                n_floats=n_floats,
                n_rounds=self._rounds_per_session,
                rng=self._rng,
            )
            self._session = s
            self.stats.opened(s.config)
        pad_i, pad_f = s.config.n_ints - n_ints, s.config.n_floats - n_floats
        inputs = {
            site: (np.pad(i, (0, pad_i)), np.pad(f, (0, pad_f))) for site, (i, f) in flat.items()
        }
        try:
            total = s.sum(inputs)
        except SessionAbortedError as err:
            self._session = None
            raise AggregationError(f"secure aggregation aborted, nothing released: {err}") from None
        self.stats.record(total)
        dropped = sorted(set(flat) - set(total.contributors))
        if dropped:
            raise AggregationError(f"site(s) {dropped} dropped out of the secure sum")
        return split_flat(answers[0], total.ints[:n_ints], total.floats[:n_floats])
