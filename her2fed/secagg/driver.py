"""A whole session in one process: the reference wiring of the two state machines.

Messages go through their canonical bytes on every hop (so the driver also
exercises the wire format), through an optional ``relay`` that can drop,
record or alter them (tests use it to play a malicious network or
coordinator), and dropouts follow an explicit plan: a site named in a
``Dropout`` falls silent just before it would send that step's message and
never speaks again. The transport for real deployments does the same calls in
the same order with gRPC in between.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableSet, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import ArrayLike

from her2fed.secagg import messages, wire
from her2fed.secagg.config import SessionConfig
from her2fed.secagg.coordinator import CoordinatorSession, SecureSum
from her2fed.secagg.encoding import FRAC_BITS
from her2fed.secagg.errors import EncodingError, SecAggError, SessionAbortedError
from her2fed.secagg.messages import Message, Step
from her2fed.secagg.randomness import SYSTEM_RANDOM, RandomSource
from her2fed.secagg.registry import Registry, public_key_bytes
from her2fed.secagg.site import SiteSession

SiteStep = Literal["advertise", "share_keys", "masked_input", "consistency", "unmask"]
SITE_STEPS: tuple[SiteStep, ...] = (
    "advertise",
    "share_keys",
    "masked_input",
    "consistency",
    "unmask",
)
SETUP_STEPS: tuple[SiteStep, ...] = ("advertise", "share_keys")

InputFn = Callable[[str, int, Sequence[SecureSum]], tuple[ArrayLike, ArrayLike]]
"""``inputs(site, round, sums_so_far) -> (ints, floats)``: a Cox loop can use earlier sums."""
Inputs = InputFn | Mapping[str, Sequence[tuple[ArrayLike, ArrayLike]]]

M = TypeVar("M", bound=Message)
T = TypeVar("T")


@dataclass(frozen=True)
class Dropout:
    """``site`` falls silent just before sending its ``step`` message of ``round``, for good.

    For the set-up steps (``advertise``, ``share_keys``) the round is 0.
    """

    site: str
    step: SiteStep
    round: int = 0

    def __post_init__(self) -> None:
        if self.step not in SITE_STEPS:
            raise ValueError(f"unknown step {self.step!r}; one of {SITE_STEPS}")
        if self.step in SETUP_STEPS and self.round != 0:
            raise ValueError(f"set-up step {self.step!r} happens once, in round 0")


@dataclass(frozen=True)
class Hop:
    """One message on the (simulated) network."""

    step: Step
    round: int
    sender: str
    recipient: str


Relay = Callable[[Hop, bytes], "bytes | None"]
"""Sees every message's bytes; returns them (possibly altered) or ``None`` to lose them."""


@dataclass(frozen=True, eq=False)
class SecureSumRun:
    """Everything a run produced: the released sums and every refusal along the way."""

    session_id: bytes
    sums: tuple[SecureSum, ...]
    site_errors: Mapping[str, SecAggError]
    rejected: tuple[tuple[Hop, SecAggError], ...]
    transcript: tuple[tuple[Hop, bytes], ...] = field(default=())


@dataclass(frozen=True)
class Consortium:
    """Keys and registry for a simulated consortium (tests, benchmarks, rehearsals)."""

    registry: Registry
    site_keys: Mapping[str, Ed25519PrivateKey]
    coordinator_key: Ed25519PrivateKey


def simulated_consortium(site_ids: Iterable[str], rng: RandomSource) -> Consortium:
    """Fresh Ed25519 keys for every site and the coordinator, and the registry pinning them."""
    keys = {s: Ed25519PrivateKey.from_private_bytes(rng(32)) for s in sorted(site_ids)}
    coordinator = Ed25519PrivateKey.from_private_bytes(rng(32))
    registry = Registry(
        sites={s: public_key_bytes(k) for s, k in keys.items()},
        coordinator=public_key_bytes(coordinator),
    )
    return Consortium(registry, keys, coordinator)


class _Network:
    """In-memory delivery through canonical bytes and the optional relay."""

    def __init__(self, relay: Relay | None, record: bool) -> None:
        self.relay = relay
        self.record = record
        self.transcript: list[tuple[Hop, bytes]] = []

    def carry(self, msg: Message, recipient: str, cls: type[M]) -> M | None:
        hop = Hop(msg.STEP, msg.round, msg.sender, recipient)
        data = msg.to_bytes()
        if self.relay is not None:
            relayed = self.relay(hop, data)
            if relayed is None:
                return None
            data = relayed
        if self.record:
            self.transcript.append((hop, data))
        return cls.from_bytes(data)


def run_secure_sum(
    inputs: Inputs,
    *,
    consortium: Consortium,
    n_ints: int,
    n_floats: int,
    n_rounds: int = 1,
    roster: Iterable[str] | None = None,
    dropouts: Iterable[Dropout] = (),
    rng: RandomSource = SYSTEM_RANDOM,
    session_id: bytes | None = None,
    limbs: int = 0,
    limb_bits: int = 0,
    frac_bits: int = FRAC_BITS,
    threshold: int = 0,
    stop: Callable[[Sequence[SecureSum]], bool] | None = None,
    relay: Relay | None = None,
    record: bool = False,
    used_sessions: Mapping[str, MutableSet[bytes]] | None = None,
) -> SecureSumRun:
    """Run one secure-aggregation session of up to ``n_rounds`` rounds in memory.

    ``inputs`` gives each site's ``(ints, floats)`` per round, as a mapping
    ``site -> [per round]`` or a callable ``(site, round, sums_so_far)``; ``stop``
    ends the session early (e.g. when Newton converged). ``used_sessions``
    maps a party (site id, or ``wire.COORDINATOR``) to its persistent set of
    used session ids; by default every party starts with an empty one. The
    float format (``limbs`` of ``limb_bits`` bits) is ``default_format`` for
    the roster unless both are given.

    Sites that abort are recorded in ``site_errors`` and treated as dropped;
    messages the coordinator refuses are recorded in ``rejected``. If the
    coordinator must abort (fewer than ``threshold`` sites at some step), a
    ``SessionAbortedError`` is raised carrying the cause, the site errors and
    the sums of rounds completed before. An ``EncodingError`` (a site's input
    does not fit) is raised as is: it is the caller's data, not the protocol,
    that must change.
    """
    names = tuple(sorted(roster if roster is not None else consortium.site_keys))
    config = SessionConfig(
        session_id=session_id if session_id is not None else rng(messages.SESSION_ID_BYTES),
        roster=names,
        n_rounds=n_rounds,
        n_ints=n_ints,
        n_floats=n_floats,
        limbs=limbs,
        limb_bits=limb_bits,
        frac_bits=frac_bits,
        threshold=threshold,
    )
    used = dict(used_sessions or {})
    coordinator = CoordinatorSession(
        config,
        consortium.coordinator_key,
        consortium.registry,
        used_sessions=used.get(wire.COORDINATOR, set()),
        rng=rng,
    )
    sites = {
        s: SiteSession(
            s,
            consortium.site_keys[s],
            consortium.registry,
            used_sessions=used.get(s, set()),
            rng=rng,
        )
        for s in names
    }
    get_input: InputFn
    if callable(inputs):
        get_input = inputs
    else:
        table = inputs

        def get_input(site: str, r: int, _: Sequence[SecureSum]) -> tuple[ArrayLike, ArrayLike]:
            return table[site][r]

    return _Run(config, coordinator, sites, get_input, dropouts, stop, relay, record).run()


class _Run:
    def __init__(
        self,
        config: SessionConfig,
        coordinator: CoordinatorSession,
        sites: dict[str, SiteSession],
        inputs: InputFn,
        dropouts: Iterable[Dropout],
        stop: Callable[[Sequence[SecureSum]], bool] | None,
        relay: Relay | None,
        record: bool,
    ) -> None:
        self.config = config
        self.coordinator = coordinator
        self.sites = sites
        self.inputs = inputs
        self.plan = {(d.site, d.step, d.round) for d in dropouts}
        self.stop = stop
        self.net = _Network(relay, record)
        self.alive = set(sites)
        self.site_errors: dict[str, SecAggError] = {}
        self.rejected: list[tuple[Hop, SecAggError]] = []
        self.sums: list[SecureSum] = []

    def drops(self, site: str, step: SiteStep, r: int) -> bool:
        if (site, step, r) in self.plan:
            self.alive.discard(site)
        return site not in self.alive

    def to_site(
        self, msg: Message, site: str, cls: type[M], act: Callable[[M], Message | None]
    ) -> Message | None:
        """Deliver to a live site and return its reply; a refusal takes the site out."""
        if site not in self.alive:
            return None
        try:
            received = self.net.carry(msg, site, cls)
            return None if received is None else act(received)
        except EncodingError:
            raise
        except SecAggError as e:
            self.site_errors[site] = e
            self.alive.discard(site)
            return None

    def to_coordinator(
        self, msg: Message | None, cls: type[M], accept: Callable[[M], None]
    ) -> None:
        if msg is None:
            return
        hop = Hop(msg.STEP, msg.round, msg.sender, wire.COORDINATOR)
        try:
            received = self.net.carry(msg, wire.COORDINATOR, cls)
            if received is not None:
                accept(received)
        except SecAggError as e:
            self.rejected.append((hop, e))

    def close(self, step: Callable[[], T]) -> T:
        try:
            return step()
        except SecAggError as e:
            err = SessionAbortedError(f"session aborted: {e}", cause=e)
            err.site_errors = dict(self.site_errors)
            err.sums = tuple(self.sums)
            raise err from e

    def run(self) -> SecureSumRun:
        self.setup()
        for r in range(self.config.n_rounds):
            self.round(r)
            if self.stop is not None and self.stop(self.sums):
                break
        return SecureSumRun(
            session_id=self.config.session_id,
            sums=tuple(self.sums),
            site_errors=dict(self.site_errors),
            rejected=tuple(self.rejected),
            transcript=tuple(self.net.transcript),
        )

    def setup(self) -> None:
        """Key set-up once per session: advertise, bundle, encrypted shares."""
        c = self.coordinator
        opened = c.open()
        for s in sorted(self.sites):
            if not self.drops(s, "advertise", 0):
                reply = self.to_site(opened, s, messages.SessionOpen, self.sites[s].open)
                self.to_coordinator(reply, messages.Advertise, c.receive_advertise)
        bundle = self.close(c.advertise_bundle)
        for advert in bundle.adverts:
            s = advert.sender
            if not self.drops(s, "share_keys", 0):
                reply = self.to_site(bundle, s, messages.AdvertiseBundle, self.sites[s].share_keys)
                self.to_coordinator(reply, messages.ShareKeys, c.receive_share_keys)
        for s, share_bundle in self.close(c.share_bundles).items():
            self.to_site(share_bundle, s, messages.ShareBundle, self.sites[s].receive_shares)

    def round(self, r: int) -> None:
        c = self.coordinator
        begin = self.close(c.begin_round)
        for s in begin.participants:
            if self.drops(s, "masked_input", r):
                continue
            site = self.sites[s]

            def masked(m: messages.RoundBegin, s: str = s, site: SiteSession = site) -> Message:
                ints, floats = self.inputs(s, r, tuple(self.sums))
                return site.masked_input(m, ints, floats)

            reply = self.to_site(begin, s, messages.RoundBegin, masked)
            self.to_coordinator(reply, messages.MaskedInput, c.receive_masked_input)
        request = self.close(c.consistency_request)
        for s in request.survivors:
            if not self.drops(s, "consistency", r):
                site = self.sites[s]
                reply = self.to_site(request, s, messages.ConsistencyRequest, site.consistency)
                self.to_coordinator(reply, messages.ConsistencyAck, c.receive_consistency)
        unmask = self.close(c.unmask_request)
        for ack in unmask.acks:
            s = ack.sender
            if not self.drops(s, "unmask", r):
                reply = self.to_site(unmask, s, messages.UnmaskRequest, self.sites[s].unmask)
                self.to_coordinator(reply, messages.UnmaskResponse, c.receive_unmask)
        self.sums.append(self.close(c.finish_round))


class SteppedSession:
    """One in-memory session driven a round at a time by a caller that decides each round.

    The orchestrator does not know in advance how many rounds a study needs
    (Newton stops when it converges), so instead of handing the driver all
    inputs up front it calls ``sum`` once per round. Key set-up happens once,
    in the constructor; every message still travels as canonical signed bytes.
    """

    def __init__(
        self,
        consortium: Consortium,
        *,
        n_ints: int,
        n_floats: int,
        n_rounds: int,
        rng: RandomSource = SYSTEM_RANDOM,
        limbs: int = 0,
        limb_bits: int = 0,
        frac_bits: int = FRAC_BITS,
    ) -> None:
        names = tuple(sorted(consortium.site_keys))
        self.config = SessionConfig(
            session_id=rng(messages.SESSION_ID_BYTES),
            roster=names,
            n_rounds=n_rounds,
            n_ints=n_ints,
            n_floats=n_floats,
            limbs=limbs,
            limb_bits=limb_bits,
            frac_bits=frac_bits,
            threshold=0,
        )
        coordinator = CoordinatorSession(
            self.config,
            consortium.coordinator_key,
            consortium.registry,
            used_sessions=set(),
            rng=rng,
        )
        sites = {
            s: SiteSession(
                s, consortium.site_keys[s], consortium.registry, used_sessions=set(), rng=rng
            )
            for s in names
        }
        self._current: Mapping[str, tuple[ArrayLike, ArrayLike]] = {}
        self._run = _Run(self.config, coordinator, sites, self._input, (), None, None, False)
        self._run.setup()
        self.rounds_used = 0

    def _input(self, site: str, r: int, _: Sequence[SecureSum]) -> tuple[ArrayLike, ArrayLike]:
        return self._current[site]

    def sum(self, inputs: Mapping[str, tuple[ArrayLike, ArrayLike]]) -> SecureSum:
        """The secure sum of one round's ``(ints, floats)`` per site."""
        if not self.config.fits(self.rounds_used, 0, 0):
            raise SecAggError("the session has no rounds left; open a new session")
        self._current = inputs
        self._run.round(self.rounds_used)
        self.rounds_used += 1
        return self._run.sums[-1]
