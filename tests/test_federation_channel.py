"""The aggregation channel in one process: real gRPC over loopback TLS, sites as threads.

What these prove: sites are authenticated by their pinned Ed25519 key (unknown
or wrongly signed sites, other protocol/her2fed versions, other studies are
refused with a typed reason); requests and replies are signed and checked
both ways; a handler's exception text never leaves the site; a site that
fails, disconnects or is too slow is reported by name while the others go
on; the TLS connection verifies the pinned CA.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.federation.pki import RunPki, make_run_pki
from coordinator.federation.server import (
    AggregationServer,
    AggregationSession,
    SessionError,
    SitesFailed,
)
from coordinator.federation.sites import SiteKeys
from site_agent.federation.allowlist import Allowlist
from site_agent.federation.client import (
    HANDLER_FAILED_REASON,
    Handler,
    SessionLost,
    SessionRefused,
    SiteClient,
    SiteRefusal,
)
from site_agent.federation.fab import her2fed_fab, pyproject
from site_agent.federation.keys import generate_key
from site_agent.federation.selftest import decode_int, encode_int, handler_for
from site_agent.federation.session import OpenSession, SiteIdentity, SiteRuntime
from site_agent.federation.wire import (
    METHOD_PATH,
    Code,
    Hello,
    Status,
    decode_coordinator_message,
    encode_site_message,
    hello_signing_bytes,
)

SITES = ["athens", "oslo", "munich"]
STUDY = "sha256:" + "5a" * 32
T = 10.0  # seconds: every wait in this file is bounded


@dataclass
class Consortium:
    pki: RunPki
    coordinator: Ed25519PrivateKey
    keys: dict[str, Ed25519PrivateKey]
    server: AggregationServer


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    pki = make_run_pki(tmp_path_factory.mktemp("pki"))
    coordinator = generate_key()
    keys = {s: generate_key() for s in [*SITES, "slow", "faulty"]}
    registry = SiteKeys({s: k.public_key() for s, k in keys.items()})
    server = AggregationServer(registry, pki, coordinator, hello_timeout=5.0).start()
    try:
        yield Consortium(pki, coordinator, keys, server)
    finally:
        server.stop()


def client(
    c: Consortium,
    session: AggregationSession,
    site: str,
    handler: Handler | None = None,
    *,
    key: Ed25519PrivateKey | None = None,
    study: str = STUDY,
    version: str | None = None,
    ca: bytes | None = None,
    connect_timeout: float = 3.0,
) -> SiteClient:
    extra = {} if version is None else {"her2fed_version": version}
    return SiteClient(
        address=c.server.address,
        site_id=site,
        site_key=key or c.keys.get(site) or generate_key(),
        coordinator_key=c.coordinator.public_key(),
        ca_cert=ca or c.pki.ca_pem(),
        session_id=session.session_id,
        study_hash=study,
        handler=handler or handler_for(site),
        connect_timeout=connect_timeout,
        **extra,  # type: ignore[arg-type]
    )


def refused(cl: SiteClient) -> SessionRefused:
    with pytest.raises(SessionRefused) as info:
        cl.run()
    return info.value


def test_three_sites_run_rounds_and_close_cleanly(consortium: Consortium) -> None:
    session = consortium.server.open_session(STUDY, SITES)
    clients = [client(consortium, session, s) for s in SITES]
    threads = [c.start_thread() for c in clients]
    assert session.wait_for_sites(T) == sorted(SITES)
    for r in range(1, 4):
        replies = session.broadcast(r, "sum", {s: encode_int(100 * r) for s in SITES}, T)
        assert sum(decode_int(v) for v in replies.values()) == 300 * r + sum(map(len, SITES))
    assert session.broadcast(4, "echo", {"oslo": b"only oslo"}, T) == {"oslo": b"only oslo"}
    session.close()
    for t in threads:
        t.join(T)
        assert not t.is_alive()
    assert all(c.error is None for c in clients)
    with pytest.raises(SessionError):
        session.broadcast(5, "echo", {"oslo": b""}, T)


def test_unknown_site_is_refused(consortium: Consortium) -> None:
    session = consortium.server.open_session(STUDY, SITES)
    err = refused(client(consortium, session, "eve", key=generate_key()))
    assert err.code == Code.UNKNOWN_SITE and "eve" in err.reason


def test_site_signing_with_another_key_is_refused(consortium: Consortium) -> None:
    session = consortium.server.open_session(STUDY, SITES)
    err = refused(client(consortium, session, "oslo", key=consortium.keys["athens"]))
    assert err.code == Code.BAD_SIGNATURE
    assert session.connected() == []


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"study": "sha256:" + "00" * 32}, Code.STUDY_MISMATCH),
        ({"version": "9.9.9"}, Code.VERSION_MISMATCH),
    ],
)
def test_other_study_or_version_is_refused(
    consortium: Consortium, kwargs: dict[str, str], code: Code
) -> None:
    session = consortium.server.open_session(STUDY, SITES)
    assert refused(client(consortium, session, "athens", **kwargs)).code == code  # type: ignore[arg-type]


def test_registered_site_outside_the_session_and_duplicates_are_refused(
    consortium: Consortium,
) -> None:
    session = consortium.server.open_session(STUDY, ["athens"])
    assert refused(client(consortium, session, "oslo")).code == Code.NOT_EXPECTED
    first = client(consortium, session, "athens")
    first.start_thread()
    session.wait_for_sites(T)
    assert refused(client(consortium, session, "athens")).code == Code.DUPLICATE_SITE
    session.close()
    assert first.finished.wait(T) and first.error is None


def _raw_hello(consortium: Consortium, hello: Hello) -> Status:
    """Speak to the service without SiteClient (what another implementation might send)."""
    credentials = grpc.ssl_channel_credentials(consortium.pki.ca_pem())
    with grpc.secure_channel(consortium.server.address, credentials) as channel:
        call = channel.stream_stream(
            METHOD_PATH,
            request_serializer=encode_site_message,
            response_deserializer=decode_coordinator_message,
        )
        first = next(iter(call(iter([hello]), timeout=T)))
    assert isinstance(first, Status)
    return first


def test_protocol_version_mismatch_is_refused_with_reason(consortium: Consortium) -> None:
    session = consortium.server.open_session(STUDY, SITES)
    unsigned = Hello(2, "athens", "0.1.0", STUDY, session.session_id)
    signature = consortium.keys["athens"].sign(hello_signing_bytes(unsigned))
    status = _raw_hello(
        consortium, Hello(2, "athens", "0.1.0", STUDY, session.session_id, signature)
    )
    assert status.code == Code.PROTOCOL_VERSION_MISMATCH
    assert "protocol 1" in status.reason and "protocol 2" in status.reason


def test_wrong_ca_cannot_connect(consortium: Consortium, tmp_path: Path) -> None:
    other = make_run_pki(tmp_path)
    session = consortium.server.open_session(STUDY, SITES)
    with pytest.raises(SessionLost, match="TLS"):
        client(consortium, session, "athens", ca=other.ca_pem(), connect_timeout=1.0).run()


def test_handler_errors_stay_at_the_site(consortium: Consortium) -> None:
    def leaky(step: str, payload: bytes) -> bytes:
        if step == "refuse":
            raise SiteRefusal("policy min_cell = 5 refuses this query")
        raise ValueError("patient 4711 born 1961-02-03 has a negative follow-up")

    session = consortium.server.open_session(STUDY, ["faulty", "athens"])
    clients = [client(consortium, session, "faulty", leaky), client(consortium, session, "athens")]
    for c in clients:
        c.start_thread()
    session.wait_for_sites(T)
    with pytest.raises(SitesFailed) as info:
        session.broadcast(1, "echo", {"faulty": b"q", "athens": b"q"}, T)
    assert info.value.sites == ["faulty"]
    assert info.value.replies == {"athens": b"q"}
    reason = info.value.failures["faulty"]
    assert HANDLER_FAILED_REASON in reason and "4711" not in str(info.value)
    with pytest.raises(SitesFailed) as info2:
        session.broadcast(2, "refuse", {"faulty": b"q"}, T)
    assert "min_cell = 5" in info2.value.failures["faulty"]
    # a refusal is an answer: the site stays in the session
    assert session.connected() == ["athens", "faulty"]
    session.close()


def test_slow_and_vanished_sites_are_named_and_the_others_continue(
    consortium: Consortium,
) -> None:
    release = threading.Event()

    def slow(step: str, payload: bytes) -> bytes:
        release.wait(T)
        return payload

    session = consortium.server.open_session(STUDY, ["athens", "oslo", "slow"])
    clients = {s: client(consortium, session, s) for s in ["athens", "oslo"]}
    clients["slow"] = client(consortium, session, "slow", slow)
    for c in clients.values():
        c.start_thread()
    session.wait_for_sites(T)
    payloads = {s: b"ping" for s in clients}
    started = time.monotonic()
    with pytest.raises(SitesFailed) as info:
        session.broadcast(1, "echo", payloads, timeout=0.5)
    assert time.monotonic() - started < 5
    assert info.value.failures == {"slow": "no reply within 0.5 s"}
    assert set(info.value.replies) == {"athens", "oslo"}
    release.set()
    assert clients["slow"].finished.wait(T)  # the coordinator dropped it
    clients["oslo"].stop()  # the site goes away without closing the session
    assert clients["oslo"].finished.wait(T)
    time.sleep(0.2)
    with pytest.raises(SitesFailed) as info:
        session.broadcast(2, "echo", payloads, T)
    assert sorted(info.value.sites) == ["oslo", "slow"]
    assert info.value.replies == {"athens": b"ping"}
    assert session.broadcast(3, "echo", {"athens": b"x"}, T) == {"athens": b"x"}
    assert set(session.dropped()) == {"oslo", "slow"}
    # a dropped site cannot come back into the running session
    assert refused(client(consortium, session, "oslo")).code == Code.NOT_EXPECTED
    session.close()


def test_requests_not_signed_by_the_pinned_coordinator_are_refused(
    consortium: Consortium,
) -> None:
    session = consortium.server.open_session(STUDY, ["athens"])
    calls: list[bytes] = []

    def record(step: str, payload: bytes) -> bytes:
        calls.append(payload)
        return payload

    impostor_pinned = SiteClient(
        address=consortium.server.address,
        site_id="athens",
        site_key=consortium.keys["athens"],
        coordinator_key=generate_key().public_key(),  # the site pinned another coordinator
        ca_cert=consortium.pki.ca_pem(),
        session_id=session.session_id,
        study_hash=STUDY,
        handler=record,
        connect_timeout=3.0,
    )
    impostor_pinned.start_thread()
    session.wait_for_sites(T)
    with pytest.raises(SitesFailed):
        session.broadcast(1, "echo", {"athens": b"secret query"}, T)
    assert impostor_pinned.finished.wait(T)
    assert isinstance(impostor_pinned.error, SessionLost)
    assert calls == []  # the handler never saw the unauthenticated request
    session.close()


def test_site_runtime_checks_the_address_and_reports_refusals(consortium: Consortium) -> None:
    session = consortium.server.open_session(STUDY, ["athens"])

    def make_runtime(factory: Callable[..., Handler], hosts: frozenset[str]) -> SiteRuntime:
        identity = SiteIdentity(
            "athens",
            consortium.keys["athens"],
            consortium.coordinator.public_key(),
            consortium.pki.ca_pem(),
            hosts,
        )
        return SiteRuntime(identity, factory, connect_timeout=3.0)

    request = OpenSession(session.session_id, STUDY, consortium.server.address)
    far = make_runtime(lambda info: handler_for(info.site_id), frozenset({"10.9.8.7"}))
    result = far.open_session(request, {})
    assert not result.ok and result.code == "REFUSED" and "127.0.0.1" in result.reason

    def unapproved(info: object) -> Handler:
        raise SiteRefusal("the privacy officer has not approved this study")

    assert make_runtime(unapproved, frozenset({"127.0.0.1"})).open_session(request, {}) == (
        type(result)(False, "REFUSED", "the privacy officer has not approved this study")
    )
    good = make_runtime(lambda info: handler_for(info.site_id), frozenset({"127.0.0.1"}))
    assert good.open_session(request, {"site-config": "/x/site.toml"}).ok
    assert session.broadcast(1, "echo", {"athens": b"hi"}, T) == {"athens": b"hi"}
    session.close()
    good.stop_all()


def test_allowlist_accepts_only_the_installed_bundle() -> None:
    allow = Allowlist.installed()
    fab = her2fed_fab()
    assert fab == her2fed_fab()  # reproducible bytes, so sites can pin the hash
    assert allow.check(fab.fab_id, fab.version, fab.sha256, fab.sha256, fab.content) is None
    other_version = her2fed_fab("0.1.1")
    assert allow.check(
        other_version.fab_id, "0.1.1", other_version.sha256, other_version.sha256,
        other_version.content,
    ) is not None  # fmt: skip
    tampered = fab.content[:-1] + bytes([fab.content[-1] ^ 1])
    reason = allow.check(fab.fab_id, fab.version, fab.sha256, fab.sha256, tampered)
    assert reason is not None and "hash" in reason
    assert "evil" not in pyproject()
