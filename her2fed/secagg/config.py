"""The public parameters of one session and the rules every party applies to them.

Threshold. Shamir shares are issued with threshold ``t`` and every step needs
at least ``t`` sites, with ``t >= max(3, floor(n/2) + 1)`` for a roster of
``n``. Three because a sum over two sites tells each of them the other's
input; a majority because the coordinator must collect ``t`` signatures over
one survivor set before any share is revealed, and two disjoint groups of
honest sites cannot both reach a majority - so a coordinator that shows
different survivor sets to different sites cannot obtain both secrets of a
site (see docs/secagg.md for the exact bound when sites collude). A session
may ask for a higher threshold (more robust privacy, fewer tolerated
dropouts); sites refuse a lower one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from her2fed.secagg import wire
from her2fed.secagg.encoding import FRAC_BITS, Encoding, default_format
from her2fed.secagg.errors import ConfigError, TooFewSitesError
from her2fed.secagg.messages import SESSION_ID_BYTES, SessionOpen, ids
from her2fed.secagg.randomness import RandomSource
from her2fed.secagg.registry import Registry

MIN_SITES = 3
MAX_ROUNDS = 4096
MAX_RING_LENGTH = 1 << 28  # 2 GiB of ring elements per site and round


def default_threshold(n_sites: int) -> int:
    """The smallest threshold this library accepts for a roster of ``n_sites``."""
    return max(MIN_SITES, n_sites // 2 + 1)


@dataclass(frozen=True)
class SessionConfig:
    """Everything public about a session; both sides derive their checks from it.

    ``limbs = limb_bits = 0`` (the default) picks ``default_format`` for the
    roster size, as ``threshold = 0`` picks the default threshold; the values
    chosen are what ``open_message`` states on the wire, explicitly.
    """

    session_id: bytes
    roster: tuple[str, ...]
    n_rounds: int
    n_ints: int
    n_floats: int
    limbs: int = 0
    frac_bits: int = FRAC_BITS
    threshold: int = 0
    limb_bits: int = 0

    def __post_init__(self) -> None:
        if len(self.session_id) != SESSION_ID_BYTES:
            raise ConfigError(f"session ids are {SESSION_ID_BYTES} bytes")
        roster = ids(self.roster)
        if len(roster) != len(self.roster):
            raise ConfigError(f"roster lists a site twice: {list(self.roster)}")
        bad = [s for s in roster if not wire.is_site_id(s)]
        if bad:
            raise ConfigError(f"roster holds invalid site ids {bad}")
        object.__setattr__(self, "roster", roster)
        n = len(roster)
        if n < MIN_SITES:
            raise TooFewSitesError(
                f"a roster of {n} site(s) {list(roster)} is refused: secure aggregation needs at "
                f"least {MIN_SITES} sites, since with two each would learn the other's input"
            )
        if self.threshold == 0:
            object.__setattr__(self, "threshold", default_threshold(n))
        if self.limbs == 0 and self.limb_bits == 0:
            limbs, limb_bits = default_format(n)
            object.__setattr__(self, "limbs", limbs)
            object.__setattr__(self, "limb_bits", limb_bits)
        if not default_threshold(n) <= self.threshold <= n:
            raise ConfigError(
                f"threshold {self.threshold} refused for {n} sites: it must be in "
                f"{default_threshold(n)}..{n} (at least 3 and a majority)"
            )
        if not 1 <= self.n_rounds <= MAX_ROUNDS:
            raise ConfigError(f"n_rounds must be in 1..{MAX_ROUNDS}, got {self.n_rounds}")
        if self.encoding.ring_length > MAX_RING_LENGTH:
            raise ConfigError(
                f"ring vectors of {self.encoding.ring_length} elements exceed {MAX_RING_LENGTH}"
            )

    def fits(self, rounds_used: int, n_ints: int, n_floats: int) -> bool:
        """Whether a round of this length can reuse the session's key set-up.

        A session's vector lengths are public and fixed when it opens; a
        shorter round is zero-padded, a longer one (or one past the rounds the
        keys were made for) needs a new session.
        """
        return rounds_used < self.n_rounds and n_ints <= self.n_ints and n_floats <= self.n_floats

    @classmethod
    def create(
        cls,
        roster: Iterable[str],
        *,
        n_rounds: int,
        n_ints: int,
        n_floats: int,
        rng: RandomSource,
        limbs: int = 0,
        limb_bits: int = 0,
        frac_bits: int = FRAC_BITS,
        threshold: int = 0,
    ) -> SessionConfig:
        """A new session with a fresh random id (float format: ``default_format`` unless given)."""
        return cls(
            session_id=rng(SESSION_ID_BYTES),
            roster=tuple(roster),
            n_rounds=n_rounds,
            n_ints=n_ints,
            n_floats=n_floats,
            limbs=limbs,
            limb_bits=limb_bits,
            frac_bits=frac_bits,
            threshold=threshold,
        )

    @classmethod
    def from_open(cls, msg: SessionOpen) -> SessionConfig:
        """The session a coordinator proposes; refused (``ConfigError``) unless every check holds.

        The message states the float format explicitly (it refuses zeros), and
        ``Encoding`` refuses one that is invalid for the roster size, such as
        48-bit limbs for more than 2^14 sites.
        """
        return cls(
            session_id=msg.session_id,
            roster=msg.roster,
            n_rounds=msg.n_rounds,
            n_ints=msg.n_ints,
            n_floats=msg.n_floats,
            limbs=msg.limbs,
            limb_bits=msg.limb_bits,
            frac_bits=msg.frac_bits,
            threshold=msg.threshold,
        )

    @property
    def encoding(self) -> Encoding:
        return Encoding(
            self.n_ints,
            self.n_floats,
            len(self.roster),
            limbs=self.limbs,
            limb_bits=self.limb_bits,
            frac_bits=self.frac_bits,
        )

    def check_registered(self, registry: Registry) -> None:
        for site in self.roster:
            registry.site_key(site)

    def share_point(self, site: str) -> int:
        """The Shamir x-coordinate of ``site``: its 1-based position in the sorted roster."""
        return self.roster.index(site) + 1

    def open_message(self) -> SessionOpen:
        return SessionOpen(
            session_id=self.session_id,
            round=0,
            sender=wire.COORDINATOR,
            recipient=wire.EVERYONE,
            roster=self.roster,
            n_rounds=self.n_rounds,
            n_ints=self.n_ints,
            n_floats=self.n_floats,
            limbs=self.limbs,
            limb_bits=self.limb_bits,
            frac_bits=self.frac_bits,
            threshold=self.threshold,
        )


def require_enough(what: str, present: Iterable[str], threshold: int) -> None:
    """Abort a step that has fewer than ``threshold`` sites: nothing is released then."""
    got = ids(present)
    if len(got) < threshold:
        raise TooFewSitesError(
            f"{what}: only {len(got)} site(s) {list(got)} remain, fewer than the threshold "
            f"{threshold}; the session is aborted and nothing is released"
        )
