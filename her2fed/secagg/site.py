"""The site's side of the protocol: a pure state machine, one method per step.

A site trusts nothing it is told: every coordinator message must verify under
the coordinator's registered key and belong to this session, round and step;
every relayed site message must verify under that site's registered key. Any
violation aborts the site's session for good (``SessionAbortedError`` on every
later call), because a coordinator caught lying once cannot be trusted with
the next step. The rules that keep a site's input private hold here, locally,
whatever the coordinator does:

* it reveals shares only after seeing at least ``threshold`` signatures over
  the very survivor set it signed itself;
* in each round it reveals, for each site, either the self-mask seed share
  (the site's masked input was counted) or the mask-key share (it was
  declared dropped), never both;
* a site declared dropped, or left out of a round, is never accepted back.

Round ``r`` uses its own mask key pair and self-mask seed (all shared at
set-up), so revealing one round's secrets says nothing about another round's
masks (docs/secagg.md explains why this is needed for dropouts after round 0).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator, MutableSet
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import ArrayLike

from her2fed.secagg import prg, shamir, wire
from her2fed.secagg.config import SessionConfig, require_enough
from her2fed.secagg.errors import (
    ConfigError,
    DoubleRevealError,
    DroppedSiteError,
    InconsistentSurvivorsError,
    KeyMismatchError,
    MalformedMessageError,
    OutOfOrderError,
    ReplayError,
    SecAggError,
    SessionAbortedError,
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
    RevealedShare,
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
from her2fed.secagg.share_box import HeldShares, agree, open_sealed, seal

M = TypeVar("M", bound=Message)


class _Phase(enum.Enum):
    NEW = "waiting for the session to open"
    ADVERTISED = "waiting for the advert bundle"
    SHARED = "waiting for the share bundle"
    READY = "waiting for a round to begin"
    MASKED = "waiting for the consistency request"
    ACKED = "waiting for the unmask request"
    DONE = "finished"
    ABORTED = "aborted"


def _x25519_public(raw: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()


class SiteSession:
    """One site's state in one session.

    ``used_sessions`` is the site's persistent set of session ids it has ever
    accepted (the caller stores it); a session id is never accepted twice.
    ``rng`` is the only source of randomness (``os.urandom`` in production).
    ``max_rounds`` is the site's own cap (e.g. its Cox iteration limit): every
    round costs key pairs and Shamir shares at set-up, so a session asking
    for more is refused rather than computed.
    """

    def __init__(
        self,
        site_id: str,
        signing_key: Ed25519PrivateKey,
        registry: Registry,
        *,
        used_sessions: MutableSet[bytes],
        rng: RandomSource = SYSTEM_RANDOM,
        max_rounds: int = 64,
    ) -> None:
        registry.require_key(site_id, signing_key)
        self.site_id = site_id
        self.max_rounds = max_rounds
        self._key = signing_key
        self._registry = registry
        self._used = used_sessions
        self._rng = rng
        self._phase = _Phase.NEW
        self._error: SecAggError | None = None
        self._seen: set[tuple[int, int]] = set()
        self._config: SessionConfig | None = None
        self._share_raw = b""
        self._mask_raw: list[bytes] = []
        self._seeds: list[bytes] = []
        self._advert: Advertise | None = None
        self._adverts: dict[str, Advertise] = {}
        self._held: dict[str, HeldShares] = {}
        self._holders: tuple[str, ...] = ()
        self._round = -1
        self._participants: tuple[str, ...] = ()
        self._survivors: tuple[str, ...] = ()
        self._eligible: tuple[str, ...] = ()
        self._dropped: set[str] = set()
        self._revealed: dict[tuple[str, int], str] = {}

    # ------------------------------------------------------------ state

    @property
    def error(self) -> SecAggError | None:
        """Why this site aborted, or ``None``."""
        return self._error

    @property
    def config(self) -> SessionConfig:
        if self._config is None:
            raise OutOfOrderError(f"site {self.site_id!r}: no session is open yet")
        return self._config

    @property
    def dropped(self) -> frozenset[str]:
        """Sites declared dropped so far in this session (as this site saw it)."""
        return frozenset(self._dropped)

    @property
    def finished(self) -> bool:
        return self._phase is _Phase.DONE

    @contextlib.contextmanager
    def _step(self) -> Iterator[None]:
        if self._error is not None:
            raise SessionAbortedError(
                f"site {self.site_id!r}: the session was aborted earlier ({self._error})",
                cause=self._error,
                site=self.site_id,
            )
        try:
            yield
        except SecAggError as e:
            self._error = e
            self._phase = _Phase.ABORTED
            raise

    def _accept(self, msg: object, cls: type[M], phase: _Phase, round_index: int) -> M:
        """Check a coordinator message belongs here and now, and is authentic."""
        if not isinstance(msg, cls):
            raise OutOfOrderError(
                f"site {self.site_id!r} expected a {cls.__name__}, got {type(msg).__name__}"
            )
        if self._config is not None and msg.session_id != self._config.session_id:
            raise WrongSessionError(
                f"site {self.site_id!r} received a {cls.__name__} for session "
                f"{msg.session_id.hex()[:16]}..., not for its session "
                f"{self._config.session_id.hex()[:16]}..."
            )
        if msg.sender != wire.COORDINATOR:
            raise MalformedMessageError(
                f"site {self.site_id!r}: a {cls.__name__} must come from the coordinator, "
                f"not {msg.sender!r}"
            )
        if msg.recipient not in (self.site_id, wire.EVERYONE):
            raise OutOfOrderError(
                f"site {self.site_id!r} received a {cls.__name__} addressed to {msg.recipient!r}"
            )
        msg.verify(self._registry.coordinator_key())
        if (msg.STEP, msg.round) in self._seen:
            raise ReplayError(
                f"site {self.site_id!r} already processed a {cls.__name__} for round "
                f"{msg.round}; replayed message refused"
            )
        if self._phase is not phase or msg.round != round_index:
            raise OutOfOrderError(
                f"site {self.site_id!r} received a {cls.__name__} for round {msg.round} while "
                f"{self._phase.value} (round {max(self._round, 0)})"
            )
        self._seen.add((msg.STEP, msg.round))
        return msg

    def _from_site(self, msg: Message, sender_role: str) -> None:
        """Check a site message relayed by the coordinator (advert or consistency ack)."""
        config = self.config
        if msg.session_id != config.session_id:
            raise WrongSessionError(
                f"site {self.site_id!r}: {sender_role} from {msg.sender!r} belongs to another "
                "session",
                site=msg.sender,
            )
        if msg.recipient != wire.COORDINATOR:
            raise MalformedMessageError(
                f"site {self.site_id!r}: {sender_role} from {msg.sender!r} was not addressed "
                "to the coordinator",
                site=msg.sender,
            )
        key = self._registry.site_key(msg.sender)
        if msg.sender not in config.roster:
            raise UnknownSiteError(
                f"site {self.site_id!r}: {sender_role} from {msg.sender!r}, who is registered "
                "but not in this session's roster",
                site=msg.sender,
            )
        msg.verify(key)

    # ------------------------------------------------------------ set-up

    def open(self, msg: SessionOpen) -> Advertise:
        """Accept a new session and advertise this session's public keys."""
        with self._step():
            msg = self._accept(msg, SessionOpen, _Phase.NEW, 0)
            if msg.session_id in self._used:
                raise ReplayError(
                    f"site {self.site_id!r}: session id {msg.session_id.hex()[:16]}... was "
                    "used before; a session id is never accepted twice"
                )
            self._used.add(msg.session_id)
            config = SessionConfig.from_open(msg)
            config.check_registered(self._registry)
            if self.site_id not in config.roster:
                raise ConfigError(f"site {self.site_id!r} is not in the session's roster")
            if config.n_rounds > self.max_rounds:
                raise ConfigError(
                    f"site {self.site_id!r}: the session asks for {config.n_rounds} rounds; this "
                    f"site allows at most {self.max_rounds}"
                )
            self._config = config
            rng = self._rng
            self._share_raw = rng(32)
            self._mask_raw = [rng(32) for _ in range(config.n_rounds)]
            self._seeds = [rng(32) for _ in range(config.n_rounds)]
            self._advert = Advertise(
                session_id=config.session_id,
                round=0,
                sender=self.site_id,
                recipient=wire.COORDINATOR,
                share_key=_x25519_public(self._share_raw),
                mask_keys=tuple(_x25519_public(k) for k in self._mask_raw),
                commitments=tuple(
                    prg.seed_commitment(s, config.session_id, r, self.site_id)
                    for r, s in enumerate(self._seeds)
                ),
            ).signed(self._key)
            self._phase = _Phase.ADVERTISED
            return self._advert

    def share_keys(self, msg: AdvertiseBundle) -> ShareKeys:
        """Check every advert against the registry, then send each peer its encrypted shares."""
        with self._step():
            msg = self._accept(msg, AdvertiseBundle, _Phase.ADVERTISED, 0)
            config = self.config
            adverts: dict[str, Advertise] = {}
            for advert in msg.adverts:
                self._from_site(advert, "advert")
                if advert.round != 0 or len(advert.mask_keys) != config.n_rounds:
                    raise MalformedMessageError(
                        f"site {self.site_id!r}: advert from {advert.sender!r} carries "
                        f"{len(advert.mask_keys)} mask keys; the session has {config.n_rounds} "
                        "rounds",
                        site=advert.sender,
                    )
                adverts[advert.sender] = advert
            if adverts.get(self.site_id) != self._advert:
                raise KeyMismatchError(
                    f"site {self.site_id!r}: the advert bundle does not carry this site's own "
                    "advert unchanged",
                    site=self.site_id,
                )
            require_enough(f"site {self.site_id!r}: advertised keys", adverts, config.threshold)
            self._adverts = adverts
            peers = ids(adverts)
            xs = [config.share_point(p) for p in peers]
            t = config.threshold
            mask_sh = [shamir.split(k, t, xs, self._rng) for k in self._mask_raw]
            seed_sh = [shamir.split(s, t, xs, self._rng) for s in self._seeds]
            share_priv = X25519PrivateKey.from_private_bytes(self._share_raw)
            sealed = []
            for i, peer in enumerate(peers):
                held = HeldShares(tuple(m[i] for m in mask_sh), tuple(s[i] for s in seed_sh))
                if peer == self.site_id:
                    self._held[peer] = held
                    continue
                nonce, ct = seal(
                    share_priv,
                    adverts[peer].share_key,
                    config.session_id,
                    self.site_id,
                    peer,
                    held,
                    self._rng,
                )
                sealed.append(SealedShares(peer, nonce, ct))
            self._phase = _Phase.SHARED
            return ShareKeys(
                session_id=config.session_id,
                round=0,
                sender=self.site_id,
                recipient=wire.COORDINATOR,
                sealed=tuple(sealed),
            ).signed(self._key)

    def receive_shares(self, msg: ShareBundle) -> None:
        """Decrypt and keep the shares other sites sent this site."""
        with self._step():
            msg = self._accept(msg, ShareBundle, _Phase.SHARED, 0)
            config = self.config
            holders = msg.holders
            if self.site_id not in holders:
                raise InconsistentSurvivorsError(
                    f"site {self.site_id!r}: the share bundle does not list this site as a holder"
                )
            strangers = set(holders) - set(self._adverts)
            if strangers:
                raise InconsistentSurvivorsError(
                    f"site {self.site_id!r}: share holders {sorted(strangers)} never advertised "
                    "keys"
                )
            require_enough(f"site {self.site_id!r}: shared keys", holders, config.threshold)
            got = {s.peer for s in msg.sealed}
            want = set(holders) - {self.site_id}
            if got != want:
                raise InconsistentSurvivorsError(
                    f"site {self.site_id!r}: share bundle lists holders {list(holders)} but "
                    f"carries shares from {sorted(got)} (missing {sorted(want - got)}, "
                    f"unexpected {sorted(got - want)})"
                )
            share_priv = X25519PrivateKey.from_private_bytes(self._share_raw)
            for s in msg.sealed:
                self._held[s.peer] = open_sealed(
                    share_priv,
                    self._adverts[s.peer].share_key,
                    config.session_id,
                    s.peer,
                    self.site_id,
                    s.nonce,
                    s.ciphertext,
                    config.n_rounds,
                )
            self._holders = holders
            self._eligible = holders
            self._phase = _Phase.READY

    # ------------------------------------------------------------ rounds

    def masked_input(self, msg: RoundBegin, ints: ArrayLike, floats: ArrayLike) -> MaskedInput:
        """Encode (or refuse) this round's summary and mask it twice.

        Encoding happens before any mask is computed, so a value that does not
        fit is refused with an ``EncodingError`` and nothing leaves the site.
        """
        with self._step():
            msg = self._accept(msg, RoundBegin, _Phase.READY, self._round + 1)
            config = self.config
            r = msg.round
            if r >= config.n_rounds:
                raise OutOfOrderError(
                    f"site {self.site_id!r}: round {r} requested; the session has "
                    f"{config.n_rounds} rounds"
                )
            part = msg.participants
            if self.site_id not in part:
                raise OutOfOrderError(
                    f"site {self.site_id!r} received round {r}'s start but is not a participant"
                )
            returning = set(part) - set(self._eligible)
            if returning:
                raise DroppedSiteError(
                    f"site {self.site_id!r}: round {r} lists {sorted(returning)}, which "
                    + (
                        "did not share keys"
                        if r == 0
                        else "were declared dropped or left out of an earlier round; a dropped "
                        "site stays dropped for the whole session"
                    ),
                    site=sorted(returning)[0],
                )
            require_enough(f"site {self.site_id!r}: round {r} participants", part, config.threshold)
            ring = config.encoding.encode(ints, floats)
            sid = config.session_id
            prg.apply_mask(ring, prg.self_mask_key(self._seeds[r], sid, r, self.site_id), +1)
            mask_priv = X25519PrivateKey.from_private_bytes(self._mask_raw[r])
            for peer in part:
                if peer == self.site_id:
                    continue
                shared = agree(mask_priv, self._adverts[peer].mask_keys[r], peer)
                key = prg.pairwise_key(shared, sid, r, self.site_id, peer)
                prg.apply_mask(ring, key, prg.pair_sign(self.site_id, peer))
            self._round = r
            self._participants = part
            self._phase = _Phase.MASKED
            return MaskedInput(
                session_id=sid,
                round=r,
                sender=self.site_id,
                recipient=wire.COORDINATOR,
                vector=MaskedInput.pack(ring),
            ).signed(self._key)

    def consistency(self, msg: ConsistencyRequest) -> ConsistencyAck:
        """Sign the survivor set, after checking it is possible from this site's view."""
        with self._step():
            msg = self._accept(msg, ConsistencyRequest, _Phase.MASKED, self._round)
            config = self.config
            r = self._round
            if msg.participants != self._participants:
                raise InconsistentSurvivorsError(
                    f"site {self.site_id!r}: round {r} consistency request lists participants "
                    f"{list(msg.participants)}, but the round began with "
                    f"{list(self._participants)}"
                )
            outsiders = set(msg.survivors) - set(self._participants)
            if outsiders:
                raise InconsistentSurvivorsError(
                    f"site {self.site_id!r}: round {r} survivors {sorted(outsiders)} are not "
                    "participants"
                )
            if self.site_id not in msg.survivors:
                raise InconsistentSurvivorsError(
                    f"site {self.site_id!r}: the coordinator declares this site dropped in round "
                    f"{r} although it sent its masked input; refusing to go on",
                    site=self.site_id,
                )
            require_enough(
                f"site {self.site_id!r}: round {r} survivors", msg.survivors, config.threshold
            )
            self._survivors = msg.survivors
            self._phase = _Phase.ACKED
            return ConsistencyAck(
                session_id=config.session_id,
                round=r,
                sender=self.site_id,
                recipient=wire.COORDINATOR,
                participants=self._participants,
                survivors=self._survivors,
            ).signed(self._key)

    def unmask(self, msg: UnmaskRequest) -> UnmaskResponse:
        """Reveal this round's shares, once ``threshold`` sites signed the same survivor set."""
        with self._step():
            msg = self._accept(msg, UnmaskRequest, _Phase.ACKED, self._round)
            config = self.config
            r = self._round
            survivors = set(self._survivors)
            for ack in msg.acks:
                self._from_site(ack, "consistency signature")
                if ack.round != r:
                    raise OutOfOrderError(
                        f"site {self.site_id!r}: consistency signature from {ack.sender!r} is "
                        f"for round {ack.round}, not {r}",
                        site=ack.sender,
                    )
                if ack.sender not in survivors:
                    raise InconsistentSurvivorsError(
                        f"site {self.site_id!r}: consistency signature from {ack.sender!r}, who "
                        f"is not a survivor of round {r}",
                        site=ack.sender,
                    )
                if (ack.participants, ack.survivors) != (self._participants, self._survivors):
                    raise InconsistentSurvivorsError(
                        f"site {self.site_id!r}: site {ack.sender!r} signed a different "
                        f"survivor set for round {r} ({list(ack.survivors)}) than this site "
                        f"({list(self._survivors)})",
                        site=ack.sender,
                    )
            require_enough(
                f"site {self.site_id!r}: round {r} consistency signatures",
                [a.sender for a in msg.acks],
                config.threshold,
            )
            dropped_now = tuple(p for p in self._participants if p not in survivors)
            for owner, kind in [(u, "seed") for u in self._survivors] + [
                (d, "mask key") for d in dropped_now
            ]:
                before = self._revealed.get((owner, r))
                if before is not None and before != kind:
                    raise DoubleRevealError(
                        f"site {self.site_id!r}: asked for the {kind} share of site {owner!r} in "
                        f"round {r} after revealing its {before} share; refused",
                        site=owner,
                    )
            for u in self._survivors:
                self._revealed[(u, r)] = "seed"
            for d in dropped_now:
                self._revealed[(d, r)] = "mask key"
            self._dropped.update(dropped_now)
            self._eligible = self._survivors
            self._phase = _Phase.DONE if r == config.n_rounds - 1 else _Phase.READY
            return UnmaskResponse(
                session_id=config.session_id,
                round=r,
                sender=self.site_id,
                recipient=wire.COORDINATOR,
                seed_shares=tuple(
                    RevealedShare(u, shamir.share_to_bytes(self._held[u].self_seed[r]))
                    for u in self._survivors
                ),
                mask_key_shares=tuple(
                    RevealedShare(d, shamir.share_to_bytes(self._held[d].mask_key[r]))
                    for d in dropped_now
                ),
            ).signed(self._key)
