"""The protocol's messages: frozen, canonically encoded, signed.

Every message carries the session id, round, step, sender and recipient in
the bytes that are signed, so a signature vouches for *where* a message
belongs as well as what it says: a message replayed into another session,
round or step, or redirected to another party, fails the receiver's checks
even though its signature is valid. Sets of sites are encoded sorted and
without duplicates (construction refuses anything else), so equal sets have
equal bytes and a signature over a survivor set is unambiguous.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from numpy.typing import NDArray

from her2fed.secagg import wire
from her2fed.secagg.errors import BadSignatureError, MalformedMessageError
from her2fed.secagg.shamir import SHARE_BYTES
from her2fed.secagg.share_box import NONCE_BYTES

MAGIC = b"H2FSA\x01"
SIGN_DOMAIN = b"her2fed-secagg-v1 signed message\x00"
SESSION_ID_BYTES = 32
KEY_BYTES = 32
COMMITMENT_BYTES = 32
SIGNATURE_BYTES = 64


class Step(enum.IntEnum):
    SESSION_OPEN = 1
    ADVERTISE = 2
    ADVERTISE_BUNDLE = 3
    SHARE_KEYS = 4
    SHARE_BUNDLE = 5
    ROUND_BEGIN = 6
    MASKED_INPUT = 7
    CONSISTENCY_REQUEST = 8
    CONSISTENCY_ACK = 9
    UNMASK_REQUEST = 10
    UNMASK_RESPONSE = 11


def _bad(what: str) -> MalformedMessageError:
    return MalformedMessageError(what)


def _check_ids(name: str, ids: tuple[str, ...]) -> None:
    if not all(isinstance(i, str) and wire.is_site_id(i) for i in ids):
        raise _bad(f"{name}: not all entries are valid site ids: {list(ids)!r}")
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise _bad(f"{name}: site ids must be sorted and unique: {list(ids)!r}")


def _check_bytes(name: str, value: object, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise _bad(f"{name}: expected {size} bytes")


def _check_party(name: str, value: str, *extra: str) -> None:
    if not isinstance(value, str) or not (wire.is_site_id(value) or value in extra):
        raise _bad(f"{name}: {value!r} is not a valid party")


def ids(values: Iterable[str]) -> tuple[str, ...]:
    """A canonical (sorted, de-duplicated) id tuple from any iterable of ids."""
    return tuple(sorted(set(values)))


@dataclass(frozen=True, kw_only=True)
class Message:
    """Header shared by all messages; subclasses add a payload."""

    STEP: ClassVar[Step]

    session_id: bytes
    round: int
    sender: str
    recipient: str
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_bytes("session id", self.session_id, SESSION_ID_BYTES)
        if not isinstance(self.round, int) or not 0 <= self.round < 2**32:
            raise _bad(f"round {self.round!r} out of range")
        _check_party("sender", self.sender, wire.COORDINATOR)
        _check_party("recipient", self.recipient, wire.COORDINATOR, wire.EVERYONE)
        if self.signature:
            _check_bytes("signature", self.signature, SIGNATURE_BYTES)
        self._validate()

    def _validate(self) -> None:
        """Payload checks; subclasses refuse non-canonical payloads here."""

    def _write(self, w: wire.Writer) -> None:
        # every concrete message writes its own payload; the base has none
        raise TypeError(f"{type(self).__name__} defines no payload encoding")

    @classmethod
    def _read(cls, r: wire.Reader) -> dict[str, Any]:
        raise TypeError(f"{cls.__name__} defines no payload decoding")

    def body(self) -> bytes:
        """The signed bytes: everything except the signature (computed once per message)."""
        cached = self.__dict__.get("_body")
        if cached is None:
            w = wire.Writer().fixed(MAGIC, len(MAGIC)).u8(self.STEP)
            w.fixed(self.session_id, SESSION_ID_BYTES).u32(self.round)
            w.text(self.sender).text(self.recipient)
            self._write(w)
            cached = w.to_bytes()
            object.__setattr__(self, "_body", cached)  # frozen: fields never change
        assert isinstance(cached, bytes)
        return cached

    def to_bytes(self) -> bytes:
        if not self.signature:
            raise ValueError(f"{type(self).__name__} is not signed")
        return self.body() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        msg = decode(data)
        if not isinstance(msg, cls):
            raise MalformedMessageError(
                f"expected a {cls.__name__} message, got {type(msg).__name__}"
            )
        return msg

    def signed_digest(self) -> bytes:
        """What Ed25519 signs: a domain label and SHA-256 of the canonical bytes.

        Hashing first (once, with SHA-256) instead of handing Ed25519 the whole
        body (which it hashes twice to sign and once to verify) matters for
        masked vectors of tens of megabytes; it binds exactly the same bytes.
        """
        return SIGN_DOMAIN + hashlib.sha256(self.body()).digest()

    def signed(self, key: Ed25519PrivateKey) -> Self:
        body = self.body()
        out = dataclasses.replace(self, signature=key.sign(self.signed_digest()))
        object.__setattr__(out, "_body", body)  # same fields apart from the signature
        return out

    def verify(self, key: Ed25519PublicKey) -> None:
        """Refuse unless signed by the holder of ``key`` (the sender's registered key)."""
        try:
            key.verify(self.signature, self.signed_digest())
        except InvalidSignature:
            raise BadSignatureError(
                f"{type(self).__name__} from {self.sender!r} (round {self.round}) has a "
                "signature that does not verify under the sender's registered key: forged, "
                "tampered with, or signed with a substituted key",
                site=None if self.sender == wire.COORDINATOR else self.sender,
            ) from None


def _read_header(data: bytes) -> tuple[Step, dict[str, Any], wire.Reader]:
    if len(data) < SIGNATURE_BYTES + len(MAGIC) + 1:
        raise MalformedMessageError("message too short")
    r = wire.Reader(memoryview(data)[:-SIGNATURE_BYTES], "message")
    if r.fixed(len(MAGIC)) != MAGIC:
        raise MalformedMessageError("not a her2fed secure-aggregation v1 message")
    tag = r.u8()
    try:
        step = Step(tag)
    except ValueError:
        raise MalformedMessageError(f"unknown message step {tag}") from None
    header = {
        "session_id": r.fixed(SESSION_ID_BYTES),
        "round": r.u32(),
        "sender": r.text(),
        "recipient": r.text(),
        "signature": bytes(data[-SIGNATURE_BYTES:]),
    }
    return step, header, r


def decode(data: bytes) -> Message:
    """Any message from its canonical bytes (the signature is checked by the receiver)."""
    data = bytes(data)
    step, header, r = _read_header(data)
    cls = _BY_STEP[step]
    payload = cls._read(r)
    r.end()
    try:
        msg = cls(**header, **payload)
    except MalformedMessageError:
        raise
    except (TypeError, ValueError) as e:
        raise MalformedMessageError(f"{cls.__name__}: {e}") from None
    # The encoding is canonical (strict parse of a deterministic format), so the
    # received bytes are exactly what body() would rebuild.
    object.__setattr__(msg, "_body", data[:-SIGNATURE_BYTES])
    return msg


# ---------------------------------------------------------------- set-up


@dataclass(frozen=True, kw_only=True)
class SessionOpen(Message):
    """Coordinator -> all: the public parameters of a new session.

    The float format (``limbs`` of ``limb_bits`` bits, ``frac_bits``
    fractional bits) is stated explicitly, never left to a default: every
    party must encode and decode the same way, and a site checks the format
    against the roster size before it accepts (``SessionConfig.from_open``).
    """

    STEP: ClassVar[Step] = Step.SESSION_OPEN
    roster: tuple[str, ...]
    n_rounds: int
    n_ints: int
    n_floats: int
    limbs: int
    limb_bits: int
    frac_bits: int
    threshold: int

    _FIELDS: ClassVar[tuple[str, ...]] = (
        "n_rounds",
        "n_ints",
        "n_floats",
        "limbs",
        "limb_bits",
        "frac_bits",
        "threshold",
    )

    def _validate(self) -> None:
        _check_ids("roster", self.roster)
        for name in self._FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < 2**32:
                raise _bad(f"{name} {value!r} out of range")
        if self.limbs == 0 or self.limb_bits == 0:
            raise _bad("the float format must be stated: limbs and limb_bits must be >= 1")

    def _write(self, w: wire.Writer) -> None:
        w.texts(self.roster)
        for name in self._FIELDS:
            w.u32(getattr(self, name))

    @classmethod
    def _read(cls, r: wire.Reader) -> dict[str, Any]:
        roster = r.texts()
        return {"roster": roster, **{n: r.u32() for n in cls._FIELDS}}


@dataclass(frozen=True, kw_only=True)
class Advertise(Message):
    """Site -> coordinator: this session's public keys and seed commitments.

    One X25519 key for share encryption, one X25519 mask key per round and one
    SHA-256 commitment per round's self-mask seed. Signed with the site's
    registered Ed25519 key, so nobody can substitute keys on its behalf.
    """

    STEP: ClassVar[Step] = Step.ADVERTISE
    share_key: bytes
    mask_keys: tuple[bytes, ...]
    commitments: tuple[bytes, ...]

    def _validate(self) -> None:
        _check_bytes("share key", self.share_key, KEY_BYTES)
        for k in self.mask_keys:
            _check_bytes("mask key", k, KEY_BYTES)
        for c in self.commitments:
            _check_bytes("commitment", c, COMMITMENT_BYTES)
        if len(self.mask_keys) != len(self.commitments):
            raise _bad("one mask key and one seed commitment per round are required")

    def _write(self, w: wire.Writer) -> None:
        w.fixed(self.share_key, KEY_BYTES).u32(len(self.mask_keys))
        for k in (*self.mask_keys, *self.commitments):
            w.fixed(k, KEY_BYTES)

    @classmethod
    def _read(cls, r: wire.Reader) -> dict[str, Any]:
        share_key = r.fixed(KEY_BYTES)
        n = r.count()
        mask_keys = tuple(r.fixed(KEY_BYTES) for _ in range(n))
        commitments = tuple(r.fixed(COMMITMENT_BYTES) for _ in range(n))
        return {"share_key": share_key, "mask_keys": mask_keys, "commitments": commitments}


@dataclass(frozen=True, kw_only=True)
class AdvertiseBundle(Message):
    """Coordinator -> all: every advertisement received (each still signed by its site)."""

    STEP: ClassVar[Step] = Step.ADVERTISE_BUNDLE
    adverts: tuple[Advertise, ...]

    def _validate(self) -> None:
        if not all(isinstance(a, Advertise) and a.signature for a in self.adverts):
            raise _bad("advert bundle holds something other than signed adverts")
        _check_ids("advert senders", tuple(a.sender for a in self.adverts))

    def _write(self, w: wire.Writer) -> None:
        w.blobs(a.to_bytes() for a in self.adverts)

    @classmethod
    def _read(cls, r: wire.Reader) -> dict[str, Any]:
        return {"adverts": tuple(Advertise.from_bytes(b) for b in r.blobs())}


@dataclass(frozen=True)
class SealedShares:
    """AES-GCM ciphertext of one site's shares for another; ``peer`` is the other end."""

    peer: str
    nonce: bytes
    ciphertext: bytes


def _check_sealed(name: str, items: tuple[SealedShares, ...]) -> None:
    if not all(isinstance(s, SealedShares) for s in items):
        raise _bad(f"{name}: expected sealed shares")
    _check_ids(f"{name} peers", tuple(s.peer for s in items))
    for s in items:
        _check_bytes(f"{name} nonce", s.nonce, NONCE_BYTES)
        if not isinstance(s.ciphertext, bytes):
            raise _bad(f"{name}: ciphertext must be bytes")


def _write_sealed(w: wire.Writer, items: tuple[SealedShares, ...]) -> None:
    w.u32(len(items))
    for s in items:
        w.text(s.peer).fixed(s.nonce, NONCE_BYTES).blob(s.ciphertext)


def _read_sealed(r: wire.Reader) -> tuple[SealedShares, ...]:
    return tuple(SealedShares(r.text(), r.fixed(NONCE_BYTES), r.blob()) for _ in range(r.count()))


@dataclass(frozen=True, kw_only=True)
class ShareKeys(Message):
    """Site -> coordinator: encrypted shares for every other advertised site (peer = recipient)."""

    STEP: ClassVar[Step] = Step.SHARE_KEYS
    sealed: tuple[SealedShares, ...]

    def _validate(self) -> None:
        _check_sealed("sealed shares", self.sealed)

    def _write(self, w: wire.Writer) -> None:
        _write_sealed(w, self.sealed)

    @classmethod
    def _read(cls, r: wire.Reader) -> dict[str, Any]:
        return {"sealed": _read_sealed(r)}


@dataclass(frozen=True, kw_only=True)
class ShareBundle(Message):
    """Coordinator -> one site: the shares addressed to it (peer = sender) and who sent shares."""

    STEP: ClassVar[Step] = Step.SHARE_BUNDLE
    holders: tuple[str, ...]
    sealed: tuple[SealedShares, ...]

    def _validate(self) -> None:
        _check_ids("share holders", self.holders)
        _check_sealed("sealed shares", self.sealed)

    def _write(self, w: wire.Writer) -> None:
        w.texts(self.holders)
        _write_sealed(w, self.sealed)

    @classmethod
    def _read(cls, r: wire.Reader) -> dict[str, Any]:
        return {"holders": r.texts(), "sealed": _read_sealed(r)}


# ---------------------------------------------------------------- rounds


@dataclass(frozen=True, kw_only=True)
class RoundBegin(Message):
    """Coordinator -> participants: round ``round`` starts with exactly these sites."""

    STEP: ClassVar[Step] = Step.ROUND_BEGIN
    participants: tuple[str, ...]

    def _validate(self) -> None:
        _check_ids("participants", self.participants)

    def _write(self, w: wire.Writer) -> None:
        w.texts(self.participants)

    @classmethod
    def _read(cls, r: wire.Reader) -> dict[str, Any]:
        return {"participants": r.texts()}


@dataclass(frozen=True, kw_only=True)
class MaskedInput(Message):
    """Site -> coordinator: the encoded summary plus all masks (little-endian uint64)."""

    STEP: ClassVar[Step] = Step.MASKED_INPUT
    vector: bytes

    def _validate(self) -> None:
        if not isinstance(self.vector, bytes) or len(self.vector) % 8:
            raise _bad("masked vector must be whole 64-bit words")

    def _write(self, w: wire.Writer) -> None:
        w.blob(self.vector)

    @classmethod
    def _read(cls, r: wire.Reader) -> dict[str, Any]:
        return {"vector": r.blob()}

    def ring(self) -> NDArray[np.uint64]:
        return np.frombuffer(self.vector, dtype="<u8").astype(np.uint64)

    @staticmethod
    def pack(ring: NDArray[np.uint64]) -> bytes:
        return np.ascontiguousarray(ring, dtype="<u8").tobytes()


@dataclass(frozen=True, kw_only=True)
class _SurvivorClaim(Message):
    participants: tuple[str, ...]
    survivors: tuple[str, ...]

    def _validate(self) -> None:
        _check_ids("participants", self.participants)
        _check_ids("survivors", self.survivors)

    def _write(self, w: wire.Writer) -> None:
        w.texts(self.participants).texts(self.survivors)

    @classmethod
    def _read(cls, r: wire.Reader) -> dict[str, Any]:
        return {"participants": r.texts(), "survivors": r.texts()}


@dataclass(frozen=True, kw_only=True)
class ConsistencyRequest(_SurvivorClaim):
    """Coordinator -> survivors: the round's participants and whose masked inputs arrived."""

    STEP: ClassVar[Step] = Step.CONSISTENCY_REQUEST


@dataclass(frozen=True, kw_only=True)
class ConsistencyAck(_SurvivorClaim):
    """Site -> coordinator: its signature over (session, round, participants, survivors).

    These signed acks are the evidence that makes every honest site reveal
    shares for the same survivor set.
    """

    STEP: ClassVar[Step] = Step.CONSISTENCY_ACK


@dataclass(frozen=True, kw_only=True)
class UnmaskRequest(Message):
    """Coordinator -> signers: at least ``threshold`` acks over one survivor set."""

    STEP: ClassVar[Step] = Step.UNMASK_REQUEST
    acks: tuple[ConsistencyAck, ...]

    def _validate(self) -> None:
        if not all(isinstance(a, ConsistencyAck) and a.signature for a in self.acks):
            raise _bad("unmask request holds something other than signed acks")
        _check_ids("ack senders", tuple(a.sender for a in self.acks))

    def _write(self, w: wire.Writer) -> None:
        w.blobs(a.to_bytes() for a in self.acks)

    @classmethod
    def _read(cls, r: wire.Reader) -> dict[str, Any]:
        return {"acks": tuple(ConsistencyAck.from_bytes(b) for b in r.blobs())}


@dataclass(frozen=True)
class RevealedShare:
    """One share of ``owner``'s secret for this message's round."""

    owner: str
    share: bytes


def _check_revealed(name: str, items: tuple[RevealedShare, ...]) -> None:
    if not all(isinstance(s, RevealedShare) for s in items):
        raise _bad(f"{name}: expected revealed shares")
    _check_ids(f"{name} owners", tuple(s.owner for s in items))
    for s in items:
        _check_bytes(f"{name} share", s.share, SHARE_BYTES)


@dataclass(frozen=True, kw_only=True)
class UnmaskResponse(Message):
    """Site -> coordinator: self-mask seed shares of survivors, mask-key shares of the dropped."""

    STEP: ClassVar[Step] = Step.UNMASK_RESPONSE
    seed_shares: tuple[RevealedShare, ...]
    mask_key_shares: tuple[RevealedShare, ...]

    def _validate(self) -> None:
        _check_revealed("seed shares", self.seed_shares)
        _check_revealed("mask-key shares", self.mask_key_shares)
        both = {s.owner for s in self.seed_shares} & {s.owner for s in self.mask_key_shares}
        if both:
            raise _bad(f"both kinds of share revealed for {sorted(both)}")

    def _write(self, w: wire.Writer) -> None:
        for items in (self.seed_shares, self.mask_key_shares):
            w.u32(len(items))
            for s in items:
                w.text(s.owner).fixed(s.share, SHARE_BYTES)

    @classmethod
    def _read(cls, r: wire.Reader) -> dict[str, Any]:
        def many() -> tuple[RevealedShare, ...]:
            return tuple(RevealedShare(r.text(), r.fixed(SHARE_BYTES)) for _ in range(r.count()))

        seeds = many()
        return {"seed_shares": seeds, "mask_key_shares": many()}


_BY_STEP: dict[Step, type[Message]] = {
    cls.STEP: cls
    for cls in (
        SessionOpen,
        Advertise,
        AdvertiseBundle,
        ShareKeys,
        ShareBundle,
        RoundBegin,
        MaskedInput,
        ConsistencyRequest,
        ConsistencyAck,
        UnmaskRequest,
        UnmaskResponse,
    )
}
