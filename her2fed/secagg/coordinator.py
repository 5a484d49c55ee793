"""The coordinator's side of the protocol: collects, relays, and unmasks only the sum.

The coordinator is the party the protocol defends against, so this state
machine holds no secrets of any site: it learns a site's self-mask seed only
for sites whose input is in the sum, and a mask key only for sites declared
dropped, and it checks every reconstructed secret against what the owner
committed to at set-up before using it. A bad incoming message (forged,
replayed, from a dropped site, malformed) is rejected with an exception and
leaves the state unchanged, so a network attacker cannot derail a session by
injecting garbage; a step that ends with fewer than ``threshold`` sites
aborts the session and nothing more is released.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, MutableSet
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import NDArray

from her2fed.secagg import prg, shamir, wire
from her2fed.secagg.config import SessionConfig, require_enough
from her2fed.secagg.errors import (
    DroppedSiteError,
    InconsistentSurvivorsError,
    MalformedMessageError,
    OutOfOrderError,
    ReplayError,
    SecAggError,
    SessionAbortedError,
    TamperedShareError,
    UnknownSiteError,
    WrongSessionError,
)
from her2fed.secagg.messages import (
    Advertise,
    AdvertiseBundle,
    ConsistencyAck,
    ConsistencyRequest,
    MaskedInput,
    Message,
    RoundBegin,
    SealedShares,
    SessionOpen,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    ids,
)
from her2fed.secagg.randomness import SYSTEM_RANDOM, RandomSource
from her2fed.secagg.registry import Registry
from her2fed.secagg.share_box import agree

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, eq=False)
class SecureSum:
    """What the coordinator learns in one round: the sum, who is in it, who was dropped.

    ``float_error_bound`` is the fixed-point part of the float error
    (``len(contributors) * 2^-(F+1)``); float64's own final rounding comes on
    top (see ``Encoding.float_error_bound``).
    """

    round: int
    ints: NDArray[np.int64]
    floats: NDArray[np.float64]
    contributors: tuple[str, ...]
    dropped: tuple[str, ...]
    float_error_bound: float


class _Phase(enum.Enum):
    NEW = "not opened"
    ADVERTS = "collecting adverts"
    SHARES = "collecting encrypted shares"
    IDLE = "between rounds"
    INPUTS = "collecting masked inputs"
    ACKS = "collecting consistency signatures"
    UNMASK = "collecting unmask shares"
    DONE = "finished"
    ABORTED = "aborted"


class CoordinatorSession:
    """The coordinator's state for one session.

    ``used_sessions`` is the coordinator's persistent set of session ids ever
    run; a config whose id is in it is refused.
    """

    def __init__(
        self,
        config: SessionConfig,
        signing_key: Ed25519PrivateKey,
        registry: Registry,
        *,
        used_sessions: MutableSet[bytes],
        rng: RandomSource = SYSTEM_RANDOM,
    ) -> None:
        registry.require_key(wire.COORDINATOR, signing_key)
        config.check_registered(registry)
        if config.session_id in used_sessions:
            raise ReplayError(
                f"coordinator: session id {config.session_id.hex()[:16]}... was used before; "
                "a session id is never accepted twice"
            )
        used_sessions.add(config.session_id)
        self.config = config
        self._key = signing_key
        self._registry = registry
        self._rng = rng
        self._phase = _Phase.NEW
        self._error: SecAggError | None = None
        self._adverts: dict[str, Advertise] = {}
        self._share_keys: dict[str, ShareKeys] = {}
        self._round = -1
        self._eligible: tuple[str, ...] = ()
        self._ceiling: tuple[str, ...] = ()
        self._participants: tuple[str, ...] = ()
        self._inputs: dict[str, bytes] = {}
        self._survivors: tuple[str, ...] = ()
        self._acks: dict[str, ConsistencyAck] = {}
        self._signers: tuple[str, ...] = ()
        self._unmask: dict[str, UnmaskResponse] = {}
        self._dropped: set[str] = set()

    # ------------------------------------------------------------ state

    @property
    def error(self) -> SecAggError | None:
        return self._error

    @property
    def round(self) -> int:
        """The current (or last) round, -1 before the first."""
        return self._round

    @property
    def dropped(self) -> frozenset[str]:
        return frozenset(self._dropped)

    @property
    def finished(self) -> bool:
        return self._phase is _Phase.DONE

    @property
    def eligible(self) -> tuple[str, ...]:
        """The sites ``begin_round`` uses by default: those that completed everything so far."""
        return self._eligible

    def _require(self, phase: _Phase, action: str) -> None:
        if self._error is not None:
            raise SessionAbortedError(
                f"coordinator: the session was aborted earlier ({self._error})", cause=self._error
            )
        if self._phase is not phase:
            raise OutOfOrderError(f"coordinator cannot {action} while {self._phase.value}")

    def _close(self, what: str, present: Iterable[str]) -> None:
        """Abort the session if a step ends below the threshold."""
        try:
            require_enough(f"coordinator: {what}", present, self.config.threshold)
        except SecAggError as e:
            self._abort(e)
            raise

    def abort(self, reason: SecAggError) -> None:
        """End the session now (e.g. the transport's own policy); nothing more is released."""
        if self._error is None:
            self._abort(reason)

    def _abort(self, error: SecAggError) -> None:
        self._error = error
        self._phase = _Phase.ABORTED
        self._inputs.clear()

    def _accept(
        self, msg: object, cls: type[M], phase: _Phase, round_index: int, seen: Iterable[str]
    ) -> M:
        """Check a site message belongs to this step and is authentic; state is untouched."""
        self._require(phase, f"accept a {cls.__name__}")
        if not isinstance(msg, cls):
            raise OutOfOrderError(
                f"coordinator expected a {cls.__name__}, got {type(msg).__name__}"
            )
        if msg.session_id != self.config.session_id:
            raise WrongSessionError(
                f"coordinator: {cls.__name__} from {msg.sender!r} belongs to another session",
                site=msg.sender,
            )
        if msg.recipient != wire.COORDINATOR:
            raise OutOfOrderError(
                f"coordinator: {cls.__name__} from {msg.sender!r} is addressed to "
                f"{msg.recipient!r}",
                site=msg.sender,
            )
        key = self._registry.site_key(msg.sender)
        if msg.sender not in self.config.roster:
            raise UnknownSiteError(
                f"coordinator: {msg.sender!r} is registered but not in this session's roster",
                site=msg.sender,
            )
        msg.verify(key)
        if msg.round != round_index:
            raise (ReplayError if msg.round < round_index else OutOfOrderError)(
                f"coordinator: {cls.__name__} from {msg.sender!r} is for round {msg.round}; "
                f"round {round_index} is in progress",
                site=msg.sender,
            )
        if msg.sender in seen:
            raise ReplayError(
                f"coordinator: second {cls.__name__} from {msg.sender!r} in round "
                f"{round_index}; refused",
                site=msg.sender,
            )
        return msg

    def _send(self, cls: type[M], recipient: str = wire.EVERYONE, **payload: Any) -> M:
        """A signed coordinator message bound to this session and the current round."""
        msg = cls(
            session_id=self.config.session_id,
            round=max(self._round, 0),
            sender=wire.COORDINATOR,
            recipient=recipient,
            **payload,
        )
        return msg.signed(self._key)

    # ------------------------------------------------------------ set-up

    def open(self) -> SessionOpen:
        """The signed session parameters to send to every roster site."""
        self._require(_Phase.NEW, "open the session")
        self._phase = _Phase.ADVERTS
        return self.config.open_message().signed(self._key)

    def receive_advertise(self, msg: Advertise) -> None:
        msg = self._accept(msg, Advertise, _Phase.ADVERTS, 0, self._adverts)
        if len(msg.mask_keys) != self.config.n_rounds:
            raise MalformedMessageError(
                f"coordinator: advert from {msg.sender!r} has {len(msg.mask_keys)} mask keys for "
                f"{self.config.n_rounds} rounds",
                site=msg.sender,
            )
        self._adverts[msg.sender] = msg

    def advertise_bundle(self) -> AdvertiseBundle:
        """Close the advert step; every advertiser gets every advert."""
        self._require(_Phase.ADVERTS, "bundle adverts")
        self._close("adverts received", self._adverts)
        self._phase = _Phase.SHARES
        adverts = tuple(self._adverts[s] for s in ids(self._adverts))
        return self._send(AdvertiseBundle, adverts=adverts)

    def receive_share_keys(self, msg: ShareKeys) -> None:
        msg = self._accept(msg, ShareKeys, _Phase.SHARES, 0, self._share_keys)
        if msg.sender not in self._adverts:
            raise InconsistentSurvivorsError(
                f"coordinator: {msg.sender!r} sent shares without having advertised keys",
                site=msg.sender,
            )
        want = set(self._adverts) - {msg.sender}
        got = {s.peer for s in msg.sealed}
        if got != want:
            raise MalformedMessageError(
                f"coordinator: {msg.sender!r} sent shares for {sorted(got)}, expected "
                f"{sorted(want)}",
                site=msg.sender,
            )
        self._share_keys[msg.sender] = msg

    def share_bundles(self) -> dict[str, ShareBundle]:
        """Close the share step: for each site that sent shares, the shares addressed to it."""
        self._require(_Phase.SHARES, "relay shares")
        self._close("encrypted shares received", self._share_keys)
        holders = ids(self._share_keys)
        by_sender = {u: {s.peer: s for s in self._share_keys[u].sealed} for u in holders}
        out = {}
        for v in holders:
            sealed = tuple(
                SealedShares(u, by_sender[u][v].nonce, by_sender[u][v].ciphertext)
                for u in holders
                if u != v
            )
            out[v] = self._send(ShareBundle, v, holders=holders, sealed=sealed)
        self._eligible = holders
        self._ceiling = holders
        self._phase = _Phase.IDLE
        return out

    # ------------------------------------------------------------ rounds

    def begin_round(self, participants: Iterable[str] | None = None) -> RoundBegin:
        """Start the next round with ``participants`` (default: every site still eligible).

        A site left out of a round, or declared dropped, can never come back in
        this session: the participants must be survivors of the previous round.
        """
        self._require(_Phase.IDLE, "begin a round")
        r = self._round + 1
        if r >= self.config.n_rounds:
            raise OutOfOrderError(
                f"coordinator: the session was set up for {self.config.n_rounds} rounds"
            )
        part = self._eligible if participants is None else ids(participants)
        banned = set(part) - set(self._ceiling)
        if banned:
            raise DroppedSiteError(
                f"coordinator: {sorted(banned)} cannot take part in round {r}: declared dropped "
                "or left out earlier (or never shared keys); a dropped site stays dropped",
                site=sorted(banned)[0],
            )
        self._close(f"round {r} participants", part)
        self._round = r
        self._participants = part
        self._inputs = {}
        self._acks = {}
        self._unmask = {}
        self._phase = _Phase.INPUTS
        return self._send(RoundBegin, participants=part)

    def receive_masked_input(self, msg: MaskedInput) -> None:
        msg = self._accept(msg, MaskedInput, _Phase.INPUTS, self._round, self._inputs)
        if msg.sender not in self._participants:
            raise DroppedSiteError(
                f"coordinator: masked input from {msg.sender!r} refused: not a participant of "
                f"round {self._round} (declared dropped or left out earlier)",
                site=msg.sender,
            )
        want = 8 * self.config.encoding.ring_length
        if len(msg.vector) != want:
            raise MalformedMessageError(
                f"coordinator: masked input from {msg.sender!r} has {len(msg.vector)} bytes, "
                f"expected {want}",
                site=msg.sender,
            )
        self._inputs[msg.sender] = msg.vector

    def consistency_request(self) -> ConsistencyRequest:
        """Close input collection; the survivors are the sites whose masked input arrived."""
        self._require(_Phase.INPUTS, "ask for consistency signatures")
        self._close(f"round {self._round} masked inputs", self._inputs)
        self._survivors = ids(self._inputs)
        self._phase = _Phase.ACKS
        return self._send(
            ConsistencyRequest, participants=self._participants, survivors=self._survivors
        )

    def receive_consistency(self, msg: ConsistencyAck) -> None:
        msg = self._accept(msg, ConsistencyAck, _Phase.ACKS, self._round, self._acks)
        if msg.sender not in self._survivors:
            raise InconsistentSurvivorsError(
                f"coordinator: consistency signature from {msg.sender!r}, not a survivor of "
                f"round {self._round}",
                site=msg.sender,
            )
        if (msg.participants, msg.survivors) != (self._participants, self._survivors):
            raise InconsistentSurvivorsError(
                f"coordinator: {msg.sender!r} signed another survivor set for round {self._round}",
                site=msg.sender,
            )
        self._acks[msg.sender] = msg

    def unmask_request(self) -> UnmaskRequest:
        """Close the consistency step; the signed acks go to every signer as evidence."""
        self._require(_Phase.ACKS, "ask for shares")
        self._close(f"round {self._round} consistency signatures", self._acks)
        self._signers = ids(self._acks)
        self._phase = _Phase.UNMASK
        acks = tuple(self._acks[s] for s in self._signers)
        return self._send(UnmaskRequest, acks=acks)

    def receive_unmask(self, msg: UnmaskResponse) -> None:
        msg = self._accept(msg, UnmaskResponse, _Phase.UNMASK, self._round, self._unmask)
        if msg.sender not in self._signers:
            raise InconsistentSurvivorsError(
                f"coordinator: shares from {msg.sender!r}, who did not sign round "
                f"{self._round}'s survivor set",
                site=msg.sender,
            )
        dropped = tuple(p for p in self._participants if p not in self._survivors)
        seeds = tuple(s.owner for s in msg.seed_shares)
        keys = tuple(s.owner for s in msg.mask_key_shares)
        if seeds != self._survivors or keys != dropped:
            raise InconsistentSurvivorsError(
                f"coordinator: {msg.sender!r} revealed seed shares for {list(seeds)} and mask-key "
                f"shares for {list(keys)}; expected {list(self._survivors)} and {list(dropped)}",
                site=msg.sender,
            )
        for s in (*msg.seed_shares, *msg.mask_key_shares):
            if shamir.share_from_bytes(s.share) is None:
                raise MalformedMessageError(
                    f"coordinator: {msg.sender!r} revealed a share outside the field",
                    site=msg.sender,
                )
        self._unmask[msg.sender] = msg

    def finish_round(self) -> SecureSum:
        """Reconstruct the secrets the sum needs, remove every mask, decode the sum."""
        self._require(_Phase.UNMASK, "finish the round")
        self._close(f"round {self._round} unmask responses", self._unmask)
        try:
            total = self._unmasked_total()
            ints, floats = self.config.encoding.decode(total)
        except SecAggError as e:
            self._abort(e)
            raise
        r = self._round
        dropped = tuple(p for p in self._participants if p not in self._survivors)
        self._dropped.update(dropped)
        self._eligible = ids(self._unmask)
        self._ceiling = self._survivors
        self._inputs = {}
        self._phase = _Phase.DONE if r == self.config.n_rounds - 1 else _Phase.IDLE
        return SecureSum(
            round=r,
            ints=ints,
            floats=floats,
            contributors=self._survivors,
            dropped=dropped,
            float_error_bound=len(self._survivors) * 2.0 ** -(self.config.frac_bits + 1),
        )

    # ------------------------------------------------------------ unmasking

    def _shares(self, holder: str, kind: str) -> dict[str, int]:
        msg = self._unmask[holder]
        items = msg.seed_shares if kind == "seed" else msg.mask_key_shares
        out = {}
        for s in items:
            value = shamir.share_from_bytes(s.share)
            assert value is not None  # checked on receipt
            out[s.owner] = value
        return out

    def _recover(
        self,
        owner: str,
        kind: str,
        shares: dict[str, dict[str, int]],
        good: Callable[[bytes], bool],
        basis: dict[str, list[int]],
    ) -> bytes:
        """The owner's secret, checked against its commitment and against every revealed share.

        The first ``threshold`` holders' shares give the secret; it must be the
        one the owner committed to at set-up, and every other holder's share
        must lie on the same polynomial (``basis`` holds the Lagrange weights
        for that). A wrong share is attributed to its holder where possible.
        """
        t = self.config.threshold
        holders = ids(shares)

        def attempt(use: tuple[str, ...]) -> bytes | None:
            xs = [self.config.share_point(h) for h in use]
            secret = shamir.to_secret(
                shamir.combine(shamir.lagrange_at_zero(xs), [shares[h][owner] for h in use])
            )
            return secret if secret is not None and good(secret) else None

        first = holders[:t]
        secret = shamir.to_secret(shamir.combine(basis[""], [shares[h][owner] for h in first]))
        if secret is not None and good(secret):
            liars = [
                h
                for h in holders[t:]
                if shamir.combine(basis[h], [shares[x][owner] for x in first]) != shares[h][owner]
            ]
            if not liars:
                return secret
        else:
            liars = [
                h
                for h in holders
                if len(holders) > t and attempt(tuple(x for x in holders if x != h)[:t]) is not None
            ]
        who = (
            f"site {liars[0]!r} revealed a wrong share"
            if len(liars) == 1
            else f"one or more of sites {liars or list(holders)} revealed a wrong share"
        )
        raise TamperedShareError(
            f"coordinator: the revealed shares of site {owner!r}'s round-{self._round} {kind} are "
            f"not consistent with the value it committed to at set-up: {who}; the session is "
            "aborted",
            site=liars[0] if len(liars) == 1 else None,
        )

    def _unmasked_total(self) -> NDArray[np.uint64]:
        cfg = self.config
        r = self._round
        sid = cfg.session_id
        holders = ids(self._unmask)
        seed_shares = {h: self._shares(h, "seed") for h in holders}
        key_shares = {h: self._shares(h, "mask key") for h in holders}
        first = [cfg.share_point(h) for h in holders[: cfg.threshold]]
        basis = {"": shamir.lagrange_at(first, 0)}  # "" is never a site id
        for h in holders[cfg.threshold :]:
            basis[h] = shamir.lagrange_at(first, cfg.share_point(h))
        total = np.zeros(cfg.encoding.ring_length, np.uint64)
        for u in self._survivors:
            np.add(total, np.frombuffer(self._inputs[u], dtype="<u8"), out=total)
        for u in self._survivors:
            commitment = self._adverts[u].commitments[r]

            def seed_ok(secret: bytes, u: str = u, c: bytes = commitment) -> bool:
                return prg.seed_commitment(secret, sid, r, u) == c

            seed = self._recover(u, "self-mask seed", seed_shares, seed_ok, basis)
            prg.apply_mask(total, prg.self_mask_key(seed, sid, r, u), -1)
        for d in self._participants:
            if d in self._survivors:
                continue
            public = self._adverts[d].mask_keys[r]

            def key_ok(secret: bytes, public: bytes = public) -> bool:
                derived = X25519PrivateKey.from_private_bytes(secret).public_key()
                return derived.public_bytes_raw() == public

            private = X25519PrivateKey.from_private_bytes(
                self._recover(d, "mask key", key_shares, key_ok, basis)
            )
            for v in self._survivors:
                shared = agree(private, self._adverts[v].mask_keys[r], v)
                key = prg.pairwise_key(shared, sid, r, d, v)
                prg.apply_mask(total, key, -prg.pair_sign(v, d))
        return total
