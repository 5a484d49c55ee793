"""The hand-written codec speaks exactly proto/her2fed/v1/aggregation.proto.

The conformance tests compile the .proto with grpcio-tools (a dev dependency)
into a temporary directory and check, in both directions, that our bytes and
protoc's bytes are the same messages — so the .proto is a contract other
implementations can rely on, not a comment.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from site_agent.federation.wire import (
    METHOD_PATH,
    PROTOCOL_VERSION,
    Code,
    Envelope,
    Hello,
    Malformed,
    Status,
    WireError,
    decode_coordinator_message,
    decode_site_message,
    decode_site_message_safe,
    encode_coordinator_message,
    encode_site_message,
    envelope_signing_bytes,
    hello_signing_bytes,
)

PROTO = Path(__file__).resolve().parents[1] / "proto" / "her2fed" / "v1" / "aggregation.proto"
SID = "0123456789abcdef0123456789abcdef"
HASH = "sha256:" + "ab" * 32

SITE_MESSAGES = [
    Hello(PROTOCOL_VERSION, "athens-1", "0.1.0", HASH, SID, b"\x01" * 64),
    Hello(0, "", "", "", ""),  # all defaults: still a hello (oneof presence)
    Envelope(SID, 3, "cox_sums", "oslo", "@coordinator", 2**40, b"\x00\xff" * 1000, b"s" * 64),
    Envelope(SID, 0, "", "", "", 0, b""),
    Status(Code.HANDLER_FAILED, "could not — compute", SID, 7, 0),
    Status(Code.CODE_UNSPECIFIED),
]
COORDINATOR_MESSAGES = [
    Status(Code.OK, "welcome", SID, 0, PROTOCOL_VERSION),
    Status(Code.SESSION_CLOSED, "done", SID),
    Envelope(SID, 1, "table", "@coordinator", "munich", 1, b"query", b"x" * 64),
]


@pytest.mark.parametrize("msg", SITE_MESSAGES)
def test_site_messages_round_trip(msg: Hello | Envelope | Status) -> None:
    assert decode_site_message(encode_site_message(msg)) == msg


@pytest.mark.parametrize("msg", COORDINATOR_MESSAGES)
def test_coordinator_messages_round_trip(msg: Status | Envelope) -> None:
    assert decode_coordinator_message(encode_coordinator_message(msg)) == msg


@pytest.mark.parametrize(
    "data",
    [b"", b"\x0a", b"\x0a\x05abc", b"\x0b\x00", b"\x0a\x02\x10\xff", b"\xff" * 11, b"\x00\x00"],
)
def test_bad_bytes_are_refused_not_crashed(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_site_message(data)
    assert isinstance(decode_site_message_safe(data), Malformed)


def test_unknown_fields_are_skipped_and_unknown_codes_are_unspecified() -> None:
    status = encode_coordinator_message(Status(Code.OK, "x"))
    # field 99 (varint) and field 98 (bytes) appended inside the Status body
    body = status[2:] + b"\x98\x06\x05" + b"\x92\x06\x03abc"
    data = b"\x0a" + bytes([len(body)]) + body
    assert decode_coordinator_message(data) == Status(Code.OK, "x")
    assert decode_coordinator_message(b"\x0a\x02\x08\x63") == Status(Code.CODE_UNSPECIFIED)


def test_signing_bytes_bind_every_field() -> None:
    base = Envelope(SID, 1, "sum", "@coordinator", "oslo", 5, b"p")
    variants = [
        Envelope("f" * 32, 1, "sum", "@coordinator", "oslo", 5, b"p"),
        Envelope(SID, 2, "sum", "@coordinator", "oslo", 5, b"p"),
        Envelope(SID, 1, "echo", "@coordinator", "oslo", 5, b"p"),
        Envelope(SID, 1, "sum", "oslo", "@coordinator", 5, b"p"),
        Envelope(SID, 1, "sum", "@coordinator", "oslo", 6, b"p"),
        Envelope(SID, 1, "sum", "@coordinator", "oslo", 5, b"q"),
        Envelope(SID, 1, "su", "m@coordinator", "oslo", 5, b"p"),  # no ambiguity at borders
    ]
    signed = {envelope_signing_bytes(v) for v in [base, *variants]}
    assert len(signed) == len(variants) + 1
    hello = Hello(1, "oslo", "0.1.0", HASH, SID)
    assert hello_signing_bytes(hello) != hello_signing_bytes(Hello(1, "oslo", "0.1.1", HASH, SID))
    assert envelope_signing_bytes(base) == envelope_signing_bytes(
        Envelope(SID, 1, "sum", "@coordinator", "oslo", 5, b"p", b"sig is not signed")
    )


# --------------------------------------------------------------------------- conformance


@pytest.fixture(scope="module")
def pb2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    from grpc_tools import protoc  # a dev dependency: the conformance check must not skip
    out = tmp_path_factory.mktemp("pb2")
    # A file name of its own, so the generated module cannot collide with the her2fed package.
    (out / "h2f_aggregation_v1.proto").write_bytes(PROTO.read_bytes())
    rc = protoc.main(["protoc", f"-I{out}", f"--python_out={out}", "h2f_aggregation_v1.proto"])
    assert rc == 0, "protoc could not compile aggregation.proto"
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("h2f_aggregation_v1_pb2")
    finally:
        sys.path.remove(str(out))


def _generated(pb2: ModuleType, msg: Hello | Envelope | Status, outer: str) -> object:
    kind = type(msg).__name__
    fields = dict(vars(msg))
    if isinstance(msg, Status):
        fields["code"] = int(msg.code)
    wrapper = getattr(pb2, outer)()
    getattr(wrapper, kind.lower()).CopyFrom(getattr(pb2, kind)(**fields))
    return wrapper


@pytest.mark.parametrize("msg", SITE_MESSAGES)
def test_site_bytes_equal_protoc(pb2: ModuleType, msg: Hello | Envelope | Status) -> None:
    theirs = _generated(pb2, msg, "SiteMessage")
    assert encode_site_message(msg) == theirs.SerializeToString()  # type: ignore[attr-defined]
    parsed = pb2.SiteMessage.FromString(encode_site_message(msg))
    assert parsed == theirs


@pytest.mark.parametrize("msg", COORDINATOR_MESSAGES)
def test_coordinator_bytes_equal_protoc(pb2: ModuleType, msg: Status | Envelope) -> None:
    theirs = _generated(pb2, msg, "CoordinatorMessage")
    data = theirs.SerializeToString()  # type: ignore[attr-defined]
    assert decode_coordinator_message(data) == msg
    assert encode_coordinator_message(msg) == data


def test_proto_declares_the_service_and_codes_we_use(pb2: ModuleType) -> None:
    service = pb2.DESCRIPTOR.services_by_name["Aggregation"]
    method = service.methods_by_name["Session"]
    assert f"/{service.full_name}/{method.name}" == METHOD_PATH
    assert method.client_streaming and method.server_streaming
    codes = pb2.Status.Code.items()
    assert dict(codes) == {c.name: c.value for c in Code}
