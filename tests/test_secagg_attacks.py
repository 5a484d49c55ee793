"""Each attack the issue lists, played against the real state machines.

The test plays the malicious party with the real keys it would hold (the
coordinator's signing key, or one site's key) and checks that honest sites
refuse, or that what the attacker can compute is still masked. Where an
attack is refused, the test also shows the attack would have worked without
the refusal, so that the assertions are not vacuous.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from her2fed.secagg import messages, prg, shamir, wire
from her2fed.secagg.config import SessionConfig
from her2fed.secagg.coordinator import CoordinatorSession
from her2fed.secagg.driver import (
    Dropout,
    Hop,
    run_secure_sum,
    simulated_consortium,
)
from her2fed.secagg.errors import (
    BadSignatureError,
    ConfigError,
    DoubleRevealError,
    DroppedSiteError,
    EncodingError,
    InconsistentSurvivorsError,
    KeyMismatchError,
    MalformedMessageError,
    OutOfOrderError,
    ReplayError,
    SecAggError,
    SessionAbortedError,
    TamperedCiphertextError,
    TamperedShareError,
    TooFewSitesError,
    UnknownSiteError,
    WrongSessionError,
)
from her2fed.secagg.messages import (
    ConsistencyRequest,
    MaskedInput,
    RoundBegin,
    UnmaskRequest,
    UnmaskResponse,
)
from her2fed.secagg.randomness import SeededRandom
from her2fed.secagg.share_box import agree
from her2fed.secagg.site import SiteSession

N_INTS, N_FLOATS = 3, 4


class Harness:
    """A session driven step by step, so the test can stand in for the coordinator."""

    def __init__(self, n: int = 5, n_rounds: int = 2, seed: object = 0) -> None:
        self.rng = SeededRandom(f"harness-{seed}")
        self.names = [f"s{i}" for i in range(n)]
        self.cons = simulated_consortium(self.names, self.rng)
        self.ck = self.cons.coordinator_key
        self.config = SessionConfig.create(
            self.names, n_rounds=n_rounds, n_ints=N_INTS, n_floats=N_FLOATS, rng=self.rng
        )
        self.coord = CoordinatorSession(
            self.config, self.ck, self.cons.registry, used_sessions=set(), rng=self.rng
        )
        self.sites = {
            s: SiteSession(
                s, self.cons.site_keys[s], self.cons.registry, used_sessions=set(), rng=self.rng
            )
            for s in self.names
        }
        data = np.random.default_rng(zlib.crc32(str(seed).encode()))
        self.data = {
            (s, r): (data.integers(-100, 100, N_INTS), data.standard_normal(N_FLOATS))
            for s in self.names
            for r in range(n_rounds)
        }
        self.masked: dict[str, MaskedInput] = {}

    @property
    def sid(self) -> bytes:
        return self.config.session_id

    def forge(self, cls: type[messages.Message], r: int = 0, **payload: Any) -> Any:
        """A message the malicious coordinator signs with its real key."""
        return cls(
            session_id=self.sid,
            round=r,
            sender=wire.COORDINATOR,
            recipient=str(payload.pop("recipient", wire.EVERYONE)),
            **payload,
        ).signed(self.ck)

    def setup(self) -> None:
        opened = self.coord.open()
        for s in self.names:
            self.coord.receive_advertise(self.sites[s].open(opened))
        bundle = self.coord.advertise_bundle()
        for s in self.names:
            self.coord.receive_share_keys(self.sites[s].share_keys(bundle))
        for s, b in self.coord.share_bundles().items():
            self.sites[s].receive_shares(b)

    def inputs(self, r: int, sites: Sequence[str] | None = None) -> RoundBegin:
        begin = self.coord.begin_round()
        for s in sites if sites is not None else begin.participants:
            m = self.sites[s].masked_input(begin, *self.data[(s, r)])
            self.coord.receive_masked_input(m)
            self.masked[s] = m
        return begin

    def finish(self, sites: Sequence[str] | None = None) -> object:
        req = self.coord.consistency_request()
        for s in sites if sites is not None else req.survivors:
            self.coord.receive_consistency(self.sites[s].consistency(req))
        ureq = self.coord.unmask_request()
        for a in ureq.acks:
            self.coord.receive_unmask(self.sites[a.sender].unmask(ureq))
        return self.coord.finish_round()

    def encoded(self, s: str, r: int) -> np.ndarray:
        return self.config.encoding.encode(*self.data[(s, r)])

    def pairwise_masks_removed(self, victim: str, mask_key: bytes, r: int) -> np.ndarray:
        """What the coordinator can make of the victim's masked input with its mask key."""
        y = self.masked[victim].ring()
        private = X25519PrivateKey.from_private_bytes(mask_key)
        adverts = {a: self.coord._adverts[a] for a in self.names}
        for peer in self.names:
            if peer != victim:
                shared = agree(private, adverts[peer].mask_keys[r], peer)
                key = prg.pairwise_key(shared, self.sid, r, victim, peer)
                prg.apply_mask(y, key, -prg.pair_sign(victim, peer))
        return y


def reconstruct(responses: Sequence[UnmaskResponse], owner: str, kind: str, h: Harness) -> bytes:
    points = []
    for resp in responses:
        items = resp.seed_shares if kind == "seed" else resp.mask_key_shares
        for item in items:
            if item.owner == owner:
                value = shamir.share_from_bytes(item.share)
                assert value is not None
                points.append((h.config.share_point(resp.sender), value))
    if len(points) < h.config.threshold:
        raise TooFewSitesError(f"{len(points)} shares of {owner}'s {kind}")
    secret = shamir.reconstruct(points[: h.config.threshold])
    assert secret is not None
    return secret


# ---------------------------------------------------------------- live site "dropped"


def test_coordinator_claiming_a_live_site_dropped_cannot_unmask_it() -> None:
    h = Harness(n=5)
    h.setup()
    h.inputs(0)  # every site, the victim included, sent its masked input
    victim, others = "s0", h.names[1:]
    lie = h.forge(ConsistencyRequest, participants=tuple(h.names), survivors=tuple(others))
    with pytest.raises(InconsistentSurvivorsError, match="declares this site dropped"):
        h.sites[victim].consistency(lie)
    acks = tuple(h.sites[s].consistency(lie) for s in others)
    request = h.forge(UnmaskRequest, acks=acks)
    responses = [h.sites[s].unmask(request) for s in others]

    # The honest sites reveal the victim's mask key (it "dropped") but never its seed.
    assert all(victim not in {x.owner for x in r.seed_shares} for r in responses)
    mask_key = reconstruct(responses, victim, "mask key", h)
    with pytest.raises(TooFewSitesError):
        reconstruct(responses, victim, "seed", h)
    residual = h.pairwise_masks_removed(victim, mask_key, 0)
    encoded = h.encoded(victim, 0)
    assert not (residual == encoded).any()  # still hidden behind the self mask
    with pytest.raises(EncodingError, match="not the sum"):
        h.config.encoding.decode(residual)

    # Control: the self-mask seed is the only thing missing - with it the input would leak.
    seed = h.sites[victim]._seeds[0]
    prg.apply_mask(residual, prg.self_mask_key(seed, h.sid, 0, victim), -1)
    np.testing.assert_array_equal(residual, encoded)

    # Asking again, now with the victim among the survivors, is refused as a replay.
    honest = h.forge(ConsistencyRequest, participants=tuple(h.names), survivors=tuple(h.names))
    for s in others:
        with pytest.raises(ReplayError):
            h.sites[s].consistency(honest)


def test_split_survivor_views_cannot_collect_both_secrets() -> None:
    """Sites {s0, s1, s2} are told s0 survived, {s3, s4} that it dropped (threshold 3)."""
    h = Harness(n=5)
    h.setup()
    h.inputs(0)
    group_a, group_b = ["s0", "s1", "s2"], ["s3", "s4"]
    says_alive = h.forge(ConsistencyRequest, participants=tuple(h.names), survivors=tuple(h.names))
    says_dropped = h.forge(
        ConsistencyRequest, participants=tuple(h.names), survivors=("s1", "s2", "s3", "s4")
    )
    acks_a = tuple(h.sites[s].consistency(says_alive) for s in group_a)
    acks_b = tuple(h.sites[s].consistency(says_dropped) for s in group_b)
    with pytest.raises(TooFewSitesError):
        h.sites["s3"].unmask(h.forge(UnmaskRequest, acks=acks_b))
    mixed = tuple(sorted(acks_a[1:] + acks_b[1:], key=lambda a: a.sender))
    with pytest.raises(InconsistentSurvivorsError, match="different survivor set"):
        h.sites["s4"].unmask(h.forge(UnmaskRequest, acks=mixed))
    responses = [h.sites[s].unmask(h.forge(UnmaskRequest, acks=acks_a)) for s in group_a]
    seed = reconstruct(responses, "s0", "seed", h)  # group A legitimately reveals s0's seed...
    with pytest.raises(TooFewSitesError):
        reconstruct(responses, "s0", "mask key", h)  # ...but nobody reveals its mask key
    y = h.masked["s0"].ring()
    prg.apply_mask(y, prg.self_mask_key(seed, h.sid, 0, "s0"), -1)
    assert not (y == h.encoded("s0", 0)).any()


def test_a_dropped_site_stays_dropped() -> None:
    h = Harness(n=5, n_rounds=3)
    h.setup()
    h.inputs(0, sites=["s1", "s2", "s3", "s4"])  # s0 silent: declared dropped in round 0
    total = h.finish()
    assert total.dropped == ("s0",)  # type: ignore[attr-defined]
    assert all("s0" in h.sites[s].dropped for s in h.names[1:])
    with pytest.raises(DroppedSiteError, match="s0"):
        h.coord.begin_round(h.names)
    comeback = h.forge(RoundBegin, r=1, participants=tuple(h.names))
    for s in h.names[1:]:
        with pytest.raises(DroppedSiteError, match="stays dropped"):
            h.sites[s].masked_input(comeback, *h.data[(s, 1)])
    # the coordinator itself refuses a round-1 input from s0, even if properly signed
    h2 = Harness(n=5, n_rounds=3, seed="again")
    h2.setup()
    h2.inputs(0, sites=["s1", "s2", "s3", "s4"])
    h2.finish()
    h2.coord.begin_round()
    late = MaskedInput(
        session_id=h2.sid,
        round=1,
        sender="s0",
        recipient=wire.COORDINATOR,
        vector=bytes(8 * h2.config.encoding.ring_length),
    ).signed(h2.cons.site_keys["s0"])
    with pytest.raises(DroppedSiteError, match="'s0'"):
        h2.coord.receive_masked_input(late)


def test_double_reveal_guard() -> None:
    """Defence in depth: a site that revealed one kind for (site, round) never reveals the other."""
    h = Harness(n=5)
    h.setup()
    h.inputs(0)
    req = h.coord.consistency_request()
    for s in h.names:
        h.coord.receive_consistency(h.sites[s].consistency(req))
    ureq = h.coord.unmask_request()
    h.sites["s1"]._revealed[("s0", 0)] = "mask key"  # as if it had revealed s0's mask key
    with pytest.raises(DoubleRevealError, match="'s0'"):
        h.sites["s1"].unmask(ureq)


# ---------------------------------------------------------------- keys and registry


def _bundle_relay(change: object) -> object:
    def relay(hop: Hop, data: bytes) -> bytes | None:
        if hop.step is messages.Step.ADVERTISE_BUNDLE:
            msg = messages.AdvertiseBundle.from_bytes(data)
            return change(msg).to_bytes()  # type: ignore[operator, no-any-return]
        return data

    return relay


def _run_attack(relay: object, n: int = 5, seed: str = "attack") -> SessionAbortedError:
    rng = SeededRandom(seed)
    names = [f"s{i}" for i in range(n)]
    cons = simulated_consortium(names, rng)
    data = {s: [(np.arange(N_INTS), np.ones(N_FLOATS))] for s in names}
    with pytest.raises(SessionAbortedError) as e:
        run_secure_sum(
            data,
            consortium=cons,
            n_ints=N_INTS,
            n_floats=N_FLOATS,
            rng=rng,
            relay=lambda hop, raw: relay(hop, raw, cons),  # type: ignore[operator]
        )
    assert e.value.sums == ()
    assert sorted(e.value.site_errors) == names  # every honest site aborted
    return e.value


def test_key_substitution_makes_every_honest_site_abort() -> None:
    """The coordinator swaps s2's share key for its own to read s2's shares."""
    mitm = X25519PrivateKey.from_private_bytes(b"\x07" * 32).public_key().public_bytes_raw()

    def relay(hop: Hop, data: bytes, cons: object) -> bytes:
        if hop.step is not messages.Step.ADVERTISE_BUNDLE:
            return data
        bundle = messages.AdvertiseBundle.from_bytes(data)
        adverts = tuple(
            dataclasses.replace(a, share_key=mitm).signed(cons.coordinator_key)  # type: ignore[attr-defined]
            if a.sender == "s2"
            else a
            for a in bundle.adverts
        )
        return dataclasses.replace(bundle, adverts=adverts).signed(cons.coordinator_key).to_bytes()  # type: ignore[attr-defined]

    err = _run_attack(relay)
    assert all(isinstance(x, BadSignatureError) for x in err.site_errors.values())
    assert all("'s2'" in str(x) for x in err.site_errors.values())


def test_another_registered_site_cannot_speak_for_s2() -> None:
    def relay(hop: Hop, data: bytes, cons: object) -> bytes:
        if hop.step is not messages.Step.ADVERTISE_BUNDLE:
            return data
        bundle = messages.AdvertiseBundle.from_bytes(data)
        s3_key = cons.site_keys["s3"]  # type: ignore[attr-defined]
        adverts = tuple(
            dataclasses.replace(a, commitments=a.commitments[::-1]).signed(s3_key)
            if a.sender == "s2"
            else a
            for a in bundle.adverts
        )
        return dataclasses.replace(bundle, adverts=adverts).signed(cons.coordinator_key).to_bytes()  # type: ignore[attr-defined]

    err = _run_attack(relay)
    assert all(isinstance(x, BadSignatureError) for x in err.site_errors.values())


def test_an_unregistered_site_makes_every_honest_site_abort() -> None:
    mallory = Ed25519PrivateKey.from_private_bytes(b"\x05" * 32)

    def relay(hop: Hop, data: bytes, cons: object) -> bytes:
        if hop.step is not messages.Step.ADVERTISE_BUNDLE:
            return data
        bundle = messages.AdvertiseBundle.from_bytes(data)
        fake = dataclasses.replace(bundle.adverts[0], sender="mallory").signed(mallory)
        adverts = tuple(sorted((*bundle.adverts, fake), key=lambda a: a.sender))
        return dataclasses.replace(bundle, adverts=adverts).signed(cons.coordinator_key).to_bytes()  # type: ignore[attr-defined]

    err = _run_attack(relay)
    assert all(isinstance(x, UnknownSiteError) for x in err.site_errors.values())
    assert all("'mallory'" in str(x) for x in err.site_errors.values())


def test_unregistered_roster_and_mismatched_keys_are_refused() -> None:
    h = Harness(n=3)
    roster = (*h.names, "mallory")
    with pytest.raises(UnknownSiteError, match="mallory"):
        CoordinatorSession(
            SessionConfig.create(roster, n_rounds=1, n_ints=1, n_floats=1, rng=h.rng),
            h.ck,
            h.cons.registry,
            used_sessions=set(),
        )
    forged = h.config.open_message()
    forged = dataclasses.replace(forged, roster=tuple(sorted(roster))).signed(h.ck)
    with pytest.raises(UnknownSiteError, match="mallory"):
        h.sites["s0"].open(forged)
    with pytest.raises(KeyMismatchError, match="'s1'"):
        SiteSession("s1", h.cons.site_keys["s0"], h.cons.registry, used_sessions=set())
    with pytest.raises(KeyMismatchError, match="coordinator"):
        CoordinatorSession(h.config, h.cons.site_keys["s0"], h.cons.registry, used_sessions=set())
    # A SessionOpen not signed by the registered coordinator key
    impostor = h.config.open_message().signed(h.cons.site_keys["s0"])
    with pytest.raises(BadSignatureError):
        h.sites["s1"].open(impostor)
    # The coordinator refuses adverts from unknown senders and under wrong keys.
    h.coord.open()
    advert = h.sites["s2"].open(h.config.open_message().signed(h.ck))
    with pytest.raises(UnknownSiteError, match="mallory"):
        h.coord.receive_advertise(
            dataclasses.replace(advert, sender="mallory").signed(mallory_key())
        )
    with pytest.raises(BadSignatureError):
        h.coord.receive_advertise(advert.signed(h.cons.site_keys["s1"]))
    h.coord.receive_advertise(advert)  # the genuine one is still accepted


def mallory_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(b"\x05" * 32)


# ---------------------------------------------------------------- rosters of two


def test_roster_of_two_is_refused_everywhere() -> None:
    h = Harness(n=3)
    with pytest.raises(TooFewSitesError, match="roster of 2"):
        SessionConfig.create(["s0", "s1"], n_rounds=1, n_ints=1, n_floats=1, rng=h.rng)
    forged = dataclasses.replace(h.config.open_message(), roster=("s0", "s1")).signed(h.ck)
    with pytest.raises(TooFewSitesError, match="roster of 2"):
        h.sites["s0"].open(forged)
    weak = dataclasses.replace(h.config.open_message(), threshold=2).signed(h.ck)
    with pytest.raises(SecAggError, match="threshold 2 refused"):
        h.sites["s1"].open(weak)


def test_three_sites_with_two_left_release_nothing() -> None:
    h = Harness(n=3)
    h.setup()
    h.inputs(0, sites=["s0", "s1"])
    with pytest.raises(TooFewSitesError, match="fewer than the threshold 3"):
        h.coord.consistency_request()
    with pytest.raises(SessionAbortedError):
        h.coord.finish_round()
    # and a coordinator that pretends otherwise is refused by the sites
    lie = h.forge(ConsistencyRequest, participants=tuple(h.names), survivors=("s0", "s1"))
    with pytest.raises(TooFewSitesError):
        h.sites["s0"].consistency(lie)


# ---------------------------------------------------------------- the float format


def test_session_open_states_the_float_format_and_it_is_signed() -> None:
    h = Harness(n=5)
    assert (h.config.limbs, h.config.limb_bits, h.config.frac_bits) == (2, 48, 48)
    signed = h.config.open_message().signed(h.ck)
    raw = signed.to_bytes()
    back = messages.SessionOpen.from_bytes(raw)
    assert back == signed and (back.limbs, back.limb_bits, back.frac_bits) == (2, 48, 48)
    assert SessionConfig.from_open(back) == h.config
    wide = SessionConfig.create(
        h.names, n_rounds=1, n_ints=1, n_floats=1, rng=h.rng, limbs=3, limb_bits=32
    )
    again = messages.SessionOpen.from_bytes(wide.open_message().signed(h.ck).to_bytes())
    assert (again.limbs, again.limb_bits) == (3, 32)
    assert SessionConfig.from_open(again) == wide
    assert wide.encoding.ring_length == 1 + 3 and h.config.encoding.ring_length == N_INTS + 8
    # the payload ends limbs, limb_bits, frac_bits, threshold (u32 each)
    at = len(raw) - messages.SIGNATURE_BYTES - 12
    assert raw[at - 4 : at + 8] == b"".join(x.to_bytes(4, "big") for x in (2, 48, 48))
    with pytest.raises(MalformedMessageError, match="float format must be stated"):
        messages.decode(raw[:at] + bytes(4) + raw[at + 4 :])
    with pytest.raises(MalformedMessageError, match="float format must be stated"):
        dataclasses.replace(signed, limbs=0, limb_bits=0)
    # a well-formed message with another limb width is not what the coordinator signed
    tampered = messages.SessionOpen.from_bytes(raw[:at] + (32).to_bytes(4, "big") + raw[at + 4 :])
    assert tampered.limb_bits == 32
    with pytest.raises(BadSignatureError):
        h.sites["s0"].open(tampered)
    h.sites["s1"].open(back)  # the genuine message is accepted


def test_sites_refuse_a_float_format_invalid_for_the_roster() -> None:
    """The coordinator signs the format, but a site checks it against the roster itself."""
    h = Harness(n=3)
    opened = h.config.open_message()
    too_wide = dataclasses.replace(opened, limbs=3, limb_bits=48).signed(h.ck)
    with pytest.raises(ConfigError, match="span 144 bits"):
        h.sites["s0"].open(too_wide)
    # 48-bit limbs over 2^14 + 1 sites: a limb-wise sum could come within a bit of wrapping
    roster = tuple(sorted({*h.names, *(f"x{i:05d}" for i in range(2**14 - 2))}))
    assert len(roster) == 2**14 + 1
    crowded = dataclasses.replace(opened, roster=roster, threshold=2**13 + 1)
    with pytest.raises(ConfigError, match="48-bit limbs allow at most 16384 sites"):
        h.sites["s1"].open(crowded.signed(h.ck))
    # not vacuous: the same roster in 3 x 32-bit limbs is a valid session (the default for it)
    fine = dataclasses.replace(crowded, limbs=3, limb_bits=32)
    assert SessionConfig.from_open(fine).encoding.limb_bits == 32
    made = SessionConfig.create(roster, n_rounds=1, n_ints=1, n_floats=1, rng=h.rng)
    assert (made.limbs, made.limb_bits) == (3, 32)
    with pytest.raises(ConfigError, match="at most 16384 sites"):
        SessionConfig.create(
            roster, n_rounds=1, n_ints=1, n_floats=1, rng=h.rng, limbs=2, limb_bits=48
        )
    with pytest.raises(ConfigError, match="both limbs and limb_bits"):
        SessionConfig.create(h.names, n_rounds=1, n_ints=1, n_floats=1, rng=h.rng, limbs=2)


# ---------------------------------------------------------------- replay, other sessions


def test_session_ids_are_never_accepted_twice() -> None:
    rng = SeededRandom("reuse")
    names = ["a", "b", "c"]
    cons = simulated_consortium(names, rng)
    ledgers: dict[str, set[bytes]] = {p: set() for p in [*names, wire.COORDINATOR]}
    data = {s: [(np.arange(1), np.ones(1))] for s in names}
    kw = {"consortium": cons, "n_ints": 1, "n_floats": 1, "rng": rng, "used_sessions": ledgers}
    first = run_secure_sum(data, **kw)  # type: ignore[arg-type]
    with pytest.raises(ReplayError, match="never accepted twice"):
        run_secure_sum(data, session_id=first.session_id, **kw)  # type: ignore[arg-type]
    site = SiteSession("a", cons.site_keys["a"], cons.registry, used_sessions=ledgers["a"])
    config = SessionConfig(first.session_id, tuple(names), 1, 1, 1)
    with pytest.raises(ReplayError, match="never accepted twice"):
        site.open(config.open_message().signed(cons.coordinator_key))


def test_messages_from_another_session_are_rejected() -> None:
    a = Harness(n=4, seed="A")
    b = Harness(n=4, seed="B")
    # the same consortium runs both sessions
    b.cons, b.ck = a.cons, a.ck
    b.coord = CoordinatorSession(b.config, a.ck, a.cons.registry, used_sessions=set())
    b.sites = {
        s: SiteSession(s, a.cons.site_keys[s], a.cons.registry, used_sessions=set())
        for s in b.names
    }
    a.setup()
    b.setup()
    begin_a = a.inputs(0)
    with pytest.raises(WrongSessionError):
        b.sites["s0"].masked_input(begin_a, *b.data[("s0", 0)])
    begin_b = b.inputs(0, sites=["s1", "s2", "s3"])  # s0 refused and is out
    with pytest.raises(WrongSessionError):
        b.coord.receive_masked_input(a.masked["s0"])  # rejected; B's state is unchanged
    total = b.finish()
    assert total.contributors == ("s1", "s2", "s3")  # type: ignore[attr-defined]
    want = np.sum([b.data[(s, 0)][0] for s in ["s1", "s2", "s3"]], axis=0)
    assert total.ints.tolist() == want.tolist()  # type: ignore[attr-defined]
    assert begin_b.session_id != begin_a.session_id


def test_replayed_and_redirected_messages_are_rejected() -> None:
    h = Harness(n=4, n_rounds=3)
    h.setup()
    begin0 = h.inputs(0)
    with pytest.raises(ReplayError):
        h.coord.receive_masked_input(h.masked["s1"])  # the same input twice
    old_input = h.masked["s1"]
    req0 = h.coord.consistency_request()
    acks0 = []
    for s in h.names:
        ack = h.sites[s].consistency(req0)
        acks0.append(ack)
        h.coord.receive_consistency(ack)
    ureq0 = h.coord.unmask_request()
    for s in h.names:
        h.coord.receive_unmask(h.sites[s].unmask(ureq0))
    h.coord.finish_round()

    begin1 = h.coord.begin_round()
    with pytest.raises(ReplayError):
        h.sites["s0"].masked_input(begin0, *h.data[("s0", 1)])  # round 0's start, replayed
    for s in ["s1", "s2", "s3"]:
        h.coord.receive_masked_input(h.sites[s].masked_input(begin1, *h.data[(s, 1)]))
    with pytest.raises(ReplayError, match="round 0"):
        h.coord.receive_masked_input(old_input)  # round 0's input replayed into round 1
    req1 = h.coord.consistency_request()
    acks1 = tuple(h.sites[s].consistency(req1) for s in ["s1", "s2", "s3"])
    stale = h.forge(UnmaskRequest, r=1, acks=(acks0[0], *acks1))
    with pytest.raises(OutOfOrderError, match="round 0"):
        h.sites["s1"].unmask(stale)

    # a share bundle addressed to another site is refused (the header is signed)
    g = Harness(n=4, seed="redirect")
    opened = g.coord.open()
    for s in g.names:
        g.coord.receive_advertise(g.sites[s].open(opened))
    bundle = g.coord.advertise_bundle()
    for s in g.names:
        g.coord.receive_share_keys(g.sites[s].share_keys(bundle))
    bundles = g.coord.share_bundles()
    with pytest.raises(OutOfOrderError, match="addressed to 's1'"):
        g.sites["s0"].receive_shares(bundles["s1"])
    with pytest.raises(SessionAbortedError):
        g.sites["s0"].receive_shares(bundles["s0"])  # a site that refused once stays out


# ---------------------------------------------------------------- tampering


def test_tampered_encrypted_share_is_detected_by_the_recipient() -> None:
    h = Harness(n=4)
    opened = h.coord.open()
    for s in h.names:
        h.coord.receive_advertise(h.sites[s].open(opened))
    bundle = h.coord.advertise_bundle()
    for s in h.names:
        h.coord.receive_share_keys(h.sites[s].share_keys(bundle))
    bundles = h.coord.share_bundles()
    good = bundles["s0"]
    sealed = list(good.sealed)
    ct = bytearray(sealed[1].ciphertext)
    ct[5] ^= 0x40
    sealed[1] = dataclasses.replace(sealed[1], ciphertext=bytes(ct))
    with pytest.raises(TamperedCiphertextError, match=f"from site '{sealed[1].peer}'"):
        h.sites["s0"].receive_shares(dataclasses.replace(good, sealed=tuple(sealed)).signed(h.ck))
    # a ciphertext moved to another recipient fails too (AES-GCM binds both parties)
    moved = bundles["s1"]
    from_s2 = next(x for x in bundles["s3"].sealed if x.peer == "s2")
    swapped = tuple(
        dataclasses.replace(x, nonce=from_s2.nonce, ciphertext=from_s2.ciphertext)
        if x.peer == "s2"
        else x
        for x in moved.sealed
    )
    with pytest.raises(TamperedCiphertextError, match="from site 's2'"):
        h.sites["s1"].receive_shares(dataclasses.replace(moved, sealed=swapped).signed(h.ck))
    h.sites["s2"].receive_shares(bundles["s2"])  # untouched bundles still work


def test_tampered_masked_vector_is_rejected_and_the_sum_stays_exact() -> None:
    rng = SeededRandom("tamper-vector")
    names = [f"s{i}" for i in range(5)]
    cons = simulated_consortium(names, rng)
    data = {
        s: [(np.arange(N_INTS) * (i + 1), np.full(N_FLOATS, 0.5 * i))] for i, s in enumerate(names)
    }

    def relay(hop: Hop, raw: bytes) -> bytes:
        if hop.step is messages.Step.MASKED_INPUT and hop.sender == "s3":
            bad = bytearray(raw)
            bad[-100] ^= 0x01  # inside the vector
            return bytes(bad)
        return raw

    run = run_secure_sum(
        data, consortium=cons, n_ints=N_INTS, n_floats=N_FLOATS, rng=rng, relay=relay
    )
    [(hop, err)] = run.rejected
    assert hop.sender == "s3" and isinstance(err, BadSignatureError)
    total = run.sums[0]
    assert total.dropped == ("s3",)
    assert (
        total.ints.tolist() == np.sum([data[s][0][0] for s in names if s != "s3"], axis=0).tolist()
    )
    assert (
        total.floats.tolist()
        == np.sum([data[s][0][1] for s in names if s != "s3"], axis=0).tolist()
    )


@pytest.mark.parametrize("liar", ["s0", "s4"])  # among the shares used, or an extra one
def test_a_site_revealing_a_wrong_share_is_named(liar: str) -> None:
    h = Harness(n=5)
    h.setup()
    h.inputs(0)
    req = h.coord.consistency_request()
    for s in h.names:
        h.coord.receive_consistency(h.sites[s].consistency(req))
    ureq = h.coord.unmask_request()
    for s in h.names:
        resp = h.sites[s].unmask(ureq)
        if s == liar:  # lies about its share of s1's seed, and signs the lie
            seeds = tuple(
                dataclasses.replace(x, share=shamir.share_to_bytes(7)) if x.owner == "s1" else x
                for x in resp.seed_shares
            )
            resp = dataclasses.replace(resp, seed_shares=seeds).signed(h.cons.site_keys[s])
        h.coord.receive_unmask(resp)
    with pytest.raises(TamperedShareError, match=f"site '{liar}' revealed a wrong share") as e:
        h.coord.finish_round()
    assert e.value.site == liar
    assert "site 's1'" in str(e.value)
    with pytest.raises(SessionAbortedError):
        h.coord.begin_round()


def test_a_forged_unmask_response_is_rejected() -> None:
    h = Harness(n=4)
    h.setup()
    h.inputs(0)
    req = h.coord.consistency_request()
    for s in h.names:
        h.coord.receive_consistency(h.sites[s].consistency(req))
    ureq = h.coord.unmask_request()
    resp = h.sites["s0"].unmask(ureq)
    flipped = bytearray(resp.seed_shares[0].share)
    flipped[-1] ^= 1
    seeds = (dataclasses.replace(resp.seed_shares[0], share=bytes(flipped)), *resp.seed_shares[1:])
    with pytest.raises(BadSignatureError, match="'s0'"):
        h.coord.receive_unmask(dataclasses.replace(resp, seed_shares=seeds))
    h.coord.receive_unmask(resp)


# ---------------------------------------------------------------- overflow


def test_overflow_is_refused_before_any_masking(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(n=3)
    h.setup()
    begin = h.coord.begin_round()
    calls: list[int] = []
    real = prg.apply_mask

    def counting(*args: Any) -> None:
        calls.append(1)
        real(*args)

    monkeypatch.setattr(prg, "apply_mask", counting)
    too_big = np.array([h.config.encoding.int_max + 1, 0, 0])
    with pytest.raises(EncodingError, match="1 of 3 integer values"):
        h.sites["s0"].masked_input(begin, too_big, np.zeros(N_FLOATS))
    with pytest.raises(EncodingError, match=r"2 of 4 float values.*1 not finite"):
        h.sites["s1"].masked_input(
            begin, np.zeros(N_INTS, np.int64), np.array([1.0, np.nan, 2.0**47, 0])
        )
    assert calls == []  # nothing was masked, so nothing could be sent
    h.sites["s2"].masked_input(begin, np.zeros(N_INTS, np.int64), np.zeros(N_FLOATS))
    assert calls  # the honest path does mask


def test_driver_raises_the_encoding_error() -> None:
    rng = SeededRandom("overflow")
    names = ["a", "b", "c"]
    cons = simulated_consortium(names, rng)
    data = {s: [(np.zeros(1, np.int64), np.array([1e15 if s == "b" else 1.0]))] for s in names}
    with pytest.raises(EncodingError, match="largest magnitude 1e\\+15"):
        run_secure_sum(data, consortium=cons, n_ints=1, n_floats=1, rng=rng)


def test_sites_cap_the_number_of_rounds_and_coordinator_can_abort() -> None:
    h = Harness(n=3)
    greedy = dataclasses.replace(h.config.open_message(), n_rounds=65).signed(h.ck)
    with pytest.raises(ConfigError, match="at most 64"):
        h.sites["s0"].open(greedy)
    h.coord.abort(ConfigError("operator stopped the session"))
    with pytest.raises(SessionAbortedError, match="operator stopped"):
        h.coord.open()


def test_dropout_plan_validation() -> None:
    with pytest.raises(ValueError, match="round 0"):
        Dropout("a", "advertise", 1)
    with pytest.raises(ValueError, match="unknown step"):
        Dropout("a", "lunch")  # type: ignore[arg-type]
