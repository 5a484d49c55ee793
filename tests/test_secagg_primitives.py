"""The building blocks: Shamir sharing, key derivation and masks, wire format, registry."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from her2fed.secagg import messages, prg, shamir, wire
from her2fed.secagg.driver import Consortium, run_secure_sum, simulated_consortium
from her2fed.secagg.errors import (
    AuthenticationError,
    BadSignatureError,
    ConfigError,
    KeyMismatchError,
    MalformedMessageError,
    UnknownSiteError,
)
from her2fed.secagg.randomness import SeededRandom, random_below
from her2fed.secagg.registry import (
    Registry,
    parse_registry_toml,
    public_key_bytes,
    registry_to_toml,
)

# ---------------------------------------------------------------- Shamir


def _is_probable_prime(n: int, rounds: int = 64) -> bool:
    small = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]
    if any(n % p == 0 for p in small):
        return n in small
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rnd = random.Random(12345)
    for a in small + [rnd.randrange(2, n - 1) for _ in range(rounds)]:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_is_the_smallest_prime_above_2_256() -> None:
    assert _is_probable_prime(shamir.PRIME)
    assert not any(_is_probable_prime(2**256 + k) for k in range(1, 297, 2))
    assert shamir.PRIME < 2 ** (8 * shamir.SHARE_BYTES)


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 30), st.data())
def test_any_threshold_subset_reconstructs_and_fewer_do_not(n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    rng = SeededRandom(data.draw(st.integers(0, 2**32)))
    secret = rng(32)
    xs = list(range(1, n + 1))
    shares = shamir.split(secret, t, xs, rng)
    assert all(0 <= s < shamir.PRIME for s in shares)
    subset = sorted(data.draw(st.permutations(range(n)))[:t])
    assert shamir.reconstruct([(xs[i], shares[i]) for i in subset]) == secret
    if t > 1:
        assert shamir.reconstruct([(xs[i], shares[i]) for i in subset[:-1]]) != secret


def test_threshold_minus_one_shares_fit_every_secret() -> None:
    """Information-theoretic hiding: t-1 shares are equally consistent with any secret."""
    rng = SeededRandom(7)
    t, xs = 4, [1, 2, 3, 4, 5]
    shares = shamir.split(rng(32), t, xs, rng)
    seen = [(xs[i], shares[i]) for i in range(t - 1)]
    for candidate in (bytes(32), b"\xff" * 32, rng(32)):
        # the unique degree-(t-1) polynomial through (0, candidate) and the t-1 shares
        pts = [(0, int.from_bytes(candidate, "big")), *seen]
        weights_at = []
        for x_new in (1, 2, 3):
            num = []
            for i, (xi, _) in enumerate(pts):
                w = 1
                for j, (xj, _) in enumerate(pts):
                    if j != i:
                        w = w * (x_new - xj) * pow(xi - xj, -1, shamir.PRIME) % shamir.PRIME
                num.append(w)
            weights_at.append(sum(w * y for w, (_, y) in zip(num, pts, strict=True)) % shamir.PRIME)
        assert weights_at == [s for _, s in seen]


def test_random_below_is_in_range_and_uses_all_values() -> None:
    rng = SeededRandom(1)
    draws = [random_below(rng, 5) for _ in range(500)]
    assert set(draws) == {0, 1, 2, 3, 4}
    assert SeededRandom(9)(16) == SeededRandom(9)(16) != SeededRandom(10)(16)


# ---------------------------------------------------------------- keys and masks


def test_derived_keys_are_separated_by_every_context_field() -> None:
    base = prg.derive_key(b"k" * 32, b"s" * 32, prg.PAIRWISE_MASK, 0, "a", "b")
    variants = [
        prg.derive_key(b"K" * 32, b"s" * 32, prg.PAIRWISE_MASK, 0, "a", "b"),
        prg.derive_key(b"k" * 32, b"S" * 32, prg.PAIRWISE_MASK, 0, "a", "b"),
        prg.derive_key(b"k" * 32, b"s" * 32, prg.SELF_MASK, 0, "a", "b"),
        prg.derive_key(b"k" * 32, b"s" * 32, prg.PAIRWISE_MASK, 1, "a", "b"),
        prg.derive_key(b"k" * 32, b"s" * 32, prg.PAIRWISE_MASK, 0, "ab", ""),
    ]
    assert len({base, *variants}) == 6
    assert prg.pairwise_key(b"x" * 32, b"s" * 32, 3, "a", "b") == prg.pairwise_key(
        b"x" * 32, b"s" * 32, 3, "b", "a"
    )


def test_pairwise_masks_cancel_and_keystream_depends_on_key() -> None:
    keys = {(a, b): bytes([a, b]) * 16 for a in range(4) for b in range(a + 1, 4)}
    total = np.zeros(1000, np.uint64)
    for (a, b), key in keys.items():
        prg.apply_mask(total, key, prg.pair_sign(str(a), str(b)))
        prg.apply_mask(total, key, prg.pair_sign(str(b), str(a)))
    assert not total.any()
    one = prg.keystream(b"\x01" * 32, 300_000)  # more than one internal chunk
    assert one[:10].tolist() == prg.keystream(b"\x01" * 32, 10).tolist()
    assert (one[:1000] != prg.keystream(b"\x02" * 32, 1000)).all()


# ---------------------------------------------------------------- wire format


Transcript = tuple[tuple[object, bytes], ...]


@pytest.fixture(scope="module")
def recorded() -> tuple[Transcript, Consortium]:
    rng = SeededRandom("wire")
    names = ["a", "b", "c", "d"]
    cons = simulated_consortium(names, rng)
    data = {s: [(np.arange(3), np.linspace(0, 1, 2))] * 2 for s in names}
    run = run_secure_sum(
        data, consortium=cons, n_ints=3, n_floats=2, n_rounds=2, rng=rng, record=True
    )
    assert {hop.step for hop, _ in run.transcript} == set(messages.Step)
    return run.transcript, cons


@pytest.fixture(scope="module")
def transcript(recorded: tuple[Transcript, Consortium]) -> Transcript:
    return recorded[0]


def test_every_message_round_trips_byte_for_byte(transcript: Transcript) -> None:
    for _, data in transcript:
        msg = messages.decode(data)
        assert msg.to_bytes() == data
        assert type(msg).from_bytes(data) == msg


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_any_bit_flip_is_refused(
    recorded: tuple[Transcript, Consortium], data: st.DataObject
) -> None:
    """Every byte of every message is covered by the format checks or by the signature."""
    tx, cons = recorded
    _, raw = data.draw(st.sampled_from(tx))
    pos = data.draw(st.integers(0, len(raw) - 1))
    bad = bytearray(raw)
    bad[pos] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises((MalformedMessageError, AuthenticationError)):
        msg = messages.decode(bytes(bad))
        msg.verify(cons.registry.key_of(msg.sender))


def test_truncated_extended_and_non_canonical_bytes_are_refused(transcript: Transcript) -> None:
    _, raw = transcript[0]
    with pytest.raises(MalformedMessageError):
        messages.decode(raw[:-1])
    with pytest.raises(MalformedMessageError):
        messages.decode(raw[:40] + b"\x00" + raw[40:])
    with pytest.raises(MalformedMessageError):
        messages.decode(b"XXXXXX" + raw[6:])
    header: dict[str, Any] = {"session_id": bytes(32), "round": 0, "sender": wire.COORDINATOR}
    with pytest.raises(MalformedMessageError, match="sorted and unique"):
        messages.RoundBegin(**header, recipient=wire.EVERYONE, participants=("b", "a"))
    with pytest.raises(MalformedMessageError, match="sorted and unique"):
        messages.RoundBegin(**header, recipient=wire.EVERYONE, participants=("a", "a"))
    with pytest.raises(MalformedMessageError, match="valid site ids"):
        messages.RoundBegin(**header, recipient=wire.EVERYONE, participants=("@coordinator",))
    with pytest.raises(MalformedMessageError, match="valid party"):
        messages.RoundBegin(**header, recipient="not a site", participants=())
    with pytest.raises(MalformedMessageError, match="both kinds"):
        messages.UnmaskResponse(
            **header,
            recipient=wire.EVERYONE,
            seed_shares=(messages.RevealedShare("a", bytes(33)),),
            mask_key_shares=(messages.RevealedShare("a", bytes(33)),),
        )


def test_signature_binds_the_header() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    msg = messages.RoundBegin(
        session_id=bytes(32),
        round=1,
        sender=wire.COORDINATOR,
        recipient=wire.EVERYONE,
        participants=("a", "b", "c"),
    ).signed(key)
    msg.verify(key.public_key())
    changes: list[dict[str, Any]] = [{"round": 2}, {"session_id": b"\x01" * 32}, {"recipient": "a"}]
    for change in changes:
        moved = dataclasses.replace(msg, **change)
        with pytest.raises(BadSignatureError):
            moved.verify(key.public_key())


# ---------------------------------------------------------------- registry


def test_registry_toml_round_trip_and_refusals() -> None:
    rng = SeededRandom("reg")
    cons = simulated_consortium(["athens-1", "oslo", "munich.lmu"], rng)
    text = registry_to_toml(cons.registry)
    again = parse_registry_toml(text)
    assert dict(again.sites) == dict(cons.registry.sites)
    assert again.coordinator == cons.registry.coordinator
    with pytest.raises(ConfigError, match="not valid hex"):
        parse_registry_toml(text.replace(cons.registry.coordinator.hex(), "zz"))
    with pytest.raises(ConfigError, match="32"):
        parse_registry_toml(text.replace(cons.registry.coordinator.hex(), "00" * 31))
    with pytest.raises(ConfigError, match="unknown tables"):
        parse_registry_toml(text + "\n[extra]\nx = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_registry_toml("[sites")
    with pytest.raises(ConfigError, match="valid site id"):
        Registry(sites={"bad id": cons.registry.coordinator}, coordinator=cons.registry.coordinator)


def test_registry_pins_keys() -> None:
    rng = SeededRandom("pin")
    cons = simulated_consortium(["a", "b", "c"], rng)
    reg = cons.registry
    reg.require_key("a", cons.site_keys["a"])
    with pytest.raises(KeyMismatchError, match="site 'a'"):
        reg.require_key("a", cons.site_keys["b"])
    with pytest.raises(KeyMismatchError, match="coordinator"):
        reg.require_key(wire.COORDINATOR, cons.site_keys["b"])
    with pytest.raises(UnknownSiteError, match="'mallory'"):
        reg.site_key("mallory")
    with pytest.raises(UnknownSiteError):
        reg.site_key(wire.COORDINATOR)
    assert public_key_bytes(reg.site_key("b")) == reg.sites["b"]
