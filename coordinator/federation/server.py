"""The coordinator's aggregation service: one gRPC/TLS stream per site, a synchronous API on top.

Sites dial in (outbound from the hospital) and open
``/her2fed.v1.Aggregation/Session``. The first message must be a ``Hello``
signed with the Ed25519 key the consortium's registry pins for that site;
anything else, an unknown site, a bad signature, another protocol or her2fed
version, another study or a session the site is not part of is refused with a
typed ``Status`` that says why.

The orchestrator never sees streams. It calls, from its own thread::

    with AggregationServer(keys, pki, coordinator_key) as server:
        session = server.open_session(study_hash, ["athens", "oslo", "munich"])
        # ... Flower tells each site to dial in ...
        session.wait_for_sites(timeout=60)
        replies = session.broadcast(1, "table", {"athens": b"...", ...}, timeout=30)
        session.close()

``broadcast`` sends one signed request envelope per site and returns each
site's verified reply. A site that refuses, fails, sends something invalid,
disconnects or does not answer in time is reported **by name** in a
``SitesFailed`` exception, which also carries the replies of the sites that
did answer (secure aggregation needs them to recover from dropouts). A site
that timed out or sent an invalid message is dropped from the session, so a
late answer can never be mistaken for one of a later round.

The gRPC server runs on its own asyncio loop in a background thread; every
piece of session state is touched only on that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.federation.pki import RunPki
from coordinator.federation.sites import SiteKeys
from her2fed import __version__
from her2fed.errors import Her2fedError
from site_agent.federation.keys import verify
from site_agent.federation.wire import (
    COORDINATOR,
    METHOD,
    PROTOCOL_VERSION,
    SERVICE,
    SESSION_ID,
    STEP,
    STUDY_HASH,
    Code,
    CoordinatorMessage,
    Envelope,
    Hello,
    Malformed,
    SiteMessage,
    Status,
    WireError,
    decode_site_message_safe,
    encode_coordinator_message,
    envelope_signing_bytes,
    hello_signing_bytes,
    validate_envelope,
    validate_hello,
)

log = logging.getLogger("her2fed.federation.server")

T = TypeVar("T")

MAX_MESSAGE_BYTES = 300 * 1024 * 1024
_GRPC_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


class SessionError(Her2fedError):
    """The orchestrator used a session wrongly (closed session, unknown site names)."""


class SitesFailed(Her2fedError):
    """Sites that did not deliver a valid reply, by name, with a reason each.

    ``replies`` holds what the other sites answered in the same call.
    """

    def __init__(
        self,
        round_: int,
        step: str,
        failures: Mapping[str, str],
        replies: Mapping[str, bytes] | None = None,
    ) -> None:
        self.round = round_
        self.step = step
        self.failures = dict(sorted(failures.items()))
        self.replies = dict(replies or {})
        listed = "; ".join(f"{site}: {reason}" for site, reason in self.failures.items())
        super().__init__(
            f"round {round_}, step {step!r}: {len(self.failures)} site(s) failed — {listed}"
        )

    @property
    def sites(self) -> list[str]:
        return list(self.failures)


def clean_reason(text: str, limit: int = 300) -> str:
    """A reason from a peer, made safe for logs and exception text."""
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text[:limit] + ("…" if len(text) > limit else "")


class _SiteGone(Exception):
    """Set on a pending reply when the site's stream ended or the site was dropped."""


@dataclass
class _Stream:
    site: str
    outbox: asyncio.Queue[CoordinatorMessage | None]
    pending: dict[int, tuple[int, str, asyncio.Future[bytes]]] = field(default_factory=dict)
    alive: bool = True


@dataclass
class _Session:
    session_id: str
    study_hash: str
    expected: frozenset[str]
    streams: dict[str, _Stream] = field(default_factory=dict)
    gone: dict[str, str] = field(default_factory=dict)
    seq: int = 0
    closed: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def connected(self) -> list[str]:
        return sorted(s for s, st in self.streams.items() if st.alive)


def _outcome(task: asyncio.Future[str], failed: str) -> str:
    """A finished reader task's reason, or ``failed`` if it raised or was cancelled."""
    if task.cancelled() or task.exception() is not None:
        return failed
    return task.result()


class AggregationServer:
    """The gRPC/TLS aggregation service of one coordinator; sessions are opened on it."""

    def __init__(
        self,
        keys: SiteKeys,
        pki: RunPki,
        coordinator_key: Ed25519PrivateKey,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        her2fed_version: str = __version__,
        accept_version: Callable[[str], bool] | None = None,
        hello_timeout: float = 10.0,
    ) -> None:
        """``accept_version`` decides which her2fed versions may join (default: this one only)."""
        self._keys = keys
        self._pki = pki
        self._key = coordinator_key
        self._host = host
        self._port = port
        self._version = her2fed_version
        self._accept_version = accept_version or (lambda v: v == her2fed_version)
        self._hello_timeout = hello_timeout
        self._sessions: dict[str, _Session] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._bound_port = 0

    # ------------------------------------------------------------------ lifecycle (any thread)

    @property
    def address(self) -> str:
        if not self._bound_port:
            raise SessionError("the aggregation server is not started")
        return f"{self._host}:{self._bound_port}"

    @property
    def port(self) -> int:
        return self._bound_port

    def start(self, timeout: float = 15.0) -> AggregationServer:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="her2fed-aggregation", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._bound_port = self._call(self._start(), timeout)
        except BaseException:
            self.stop()
            raise
        log.info("aggregation service listening on %s (TLS)", self.address)
        return self

    def stop(self, grace: float = 2.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._server is not None and loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._stop(grace), loop).result(grace + 5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=grace + 5)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None
        self._server = None

    def __enter__(self) -> AggregationServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def open_session(
        self, study_hash: str, sites: Collection[str], session_id: str | None = None
    ) -> AggregationSession:
        """Accept streams for ``study_hash`` from exactly these registered ``sites``."""
        if STUDY_HASH.fullmatch(study_hash) is None:
            raise SessionError(f"study hash {study_hash!r} is not 'sha256:' + 64 hex characters")
        unknown = sorted(set(sites) - set(self._keys))
        if unknown:
            raise SessionError(f"sites {unknown} are not in the consortium's key registry")
        if not sites:
            raise SessionError("a session needs at least one site")
        sid = session_id or secrets.token_hex(16)
        if SESSION_ID.fullmatch(sid) is None:
            raise SessionError("session ids are 32 lowercase hex characters")

        async def create() -> None:
            if sid in self._sessions:
                raise SessionError(f"session {sid} exists already")
            self._sessions[sid] = _Session(sid, study_hash, frozenset(sites))

        self._call(create(), 5.0)
        return AggregationSession(self, sid, study_hash, sorted(sites))

    # ------------------------------------------------------------------ helpers

    def _call(self, coro: Any, timeout: float) -> Any:
        if self._loop is None:
            coro.close()
            raise SessionError("the aggregation server is not started")
        future: ThreadFuture[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    async def _start(self) -> int:
        server = grpc.aio.server(options=_GRPC_OPTIONS)
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                METHOD: grpc.stream_stream_rpc_method_handler(
                    self._rpc,
                    request_deserializer=decode_site_message_safe,
                    response_serializer=encode_coordinator_message,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        key, chain = self._pki.server_pair()
        credentials = grpc.ssl_server_credentials([(key, chain)])
        port = server.add_secure_port(f"{self._host}:{self._port}", credentials)
        if not port:
            raise SessionError(f"cannot listen on {self._host}:{self._port}")
        await server.start()
        self._server = server
        return port

    async def _stop(self, grace: float) -> None:
        for session in self._sessions.values():
            self._close_session(session, "the coordinator stopped")
        if self._server is not None:
            await self._server.stop(grace)

    # ------------------------------------------------------------------ the RPC (loop thread)

    def _refusal(self, code: Code, reason: str, session_id: str = "") -> Status:
        return Status(code, reason, session_id, 0, PROTOCOL_VERSION)

    def _admit(self, first: SiteMessage | Malformed) -> tuple[_Session, Hello] | Status:
        if isinstance(first, Malformed):
            return self._refusal(Code.MALFORMED, f"undecodable message: {first.reason}")
        if not isinstance(first, Hello):
            return self._refusal(Code.MALFORMED, "the first message of a session must be a hello")
        if first.protocol_version != PROTOCOL_VERSION:
            return self._refusal(
                Code.PROTOCOL_VERSION_MISMATCH,
                f"this coordinator speaks her2fed.v1 aggregation protocol {PROTOCOL_VERSION}; "
                f"the site sent protocol {first.protocol_version}. Install the her2fed version "
                "the consortium uses",
            )
        try:
            validate_hello(first)
        except WireError as err:
            return self._refusal(Code.MALFORMED, str(err))
        key = self._keys.get(first.site_id)
        if key is None:
            return self._refusal(
                Code.UNKNOWN_SITE,
                f"site {first.site_id!r} is not in the consortium's key registry; ask the "
                "consortium lead to register the site's public key",
            )
        if not verify(key, first.signature, hello_signing_bytes(first)):
            return self._refusal(
                Code.BAD_SIGNATURE,
                f"the hello is not signed by the key registered for site {first.site_id!r}",
            )
        session = self._sessions.get(first.session_id)
        if session is None or session.closed:
            return self._refusal(Code.UNKNOWN_SESSION, "no open session with this id")
        sid = session.session_id
        if not self._accept_version(first.her2fed_version):
            return self._refusal(
                Code.VERSION_MISMATCH,
                f"the site runs her2fed {first.her2fed_version!r}; this coordinator accepts "
                f"{self._version!r}",
                sid,
            )
        if first.study_hash != session.study_hash:
            return self._refusal(
                Code.STUDY_MISMATCH,
                f"the site approved study {first.study_hash}, this session runs "
                f"{session.study_hash}",
                sid,
            )
        if first.site_id not in session.expected:
            return self._refusal(Code.NOT_EXPECTED, "the site is not part of this session", sid)
        if first.site_id in session.gone:
            return self._refusal(
                Code.NOT_EXPECTED,
                f"the site left this session earlier ({session.gone[first.site_id]}); a site "
                "cannot rejoin a running session",
                sid,
            )
        current = session.streams.get(first.site_id)
        if current is not None and current.alive:
            return self._refusal(
                Code.DUPLICATE_SITE, "the site already has a live stream in this session", sid
            )
        return session, first

    async def _rpc(
        self,
        request_iterator: Any,
        context: grpc.aio.ServicerContext[SiteMessage | Malformed, CoordinatorMessage],
    ) -> None:
        del request_iterator  # messages are read with context.read()
        try:
            first = await asyncio.wait_for(context.read(), self._hello_timeout)
        except TimeoutError:
            context.set_code(grpc.StatusCode.DEADLINE_EXCEEDED)
            context.set_details("no hello within the time limit")
            return
        if not isinstance(first, Hello | Envelope | Status | Malformed):
            return  # grpc.aio.EOF: the site hung up before saying hello
        verdict = self._admit(first)
        if isinstance(verdict, Status):
            who = first.site_id if isinstance(first, Hello) else "?"
            log.warning("refused a stream from %s: %s", who, verdict.reason)
            await context.write(verdict)
            context.set_code(grpc.StatusCode.PERMISSION_DENIED)
            context.set_details(verdict.reason)
            return
        session, hello = verdict
        stream = _Stream(hello.site_id, asyncio.Queue())
        session.streams[hello.site_id] = stream
        session.changed.set()
        log.info("site %s joined session %s", hello.site_id, session.session_id)
        reason = "the site's stream ended"
        try:
            await context.write(Status(Code.OK, "welcome", session.session_id, 0, PROTOCOL_VERSION))
            reader = asyncio.ensure_future(self._read_loop(session, stream, context))
            writer = asyncio.ensure_future(self._write_loop(stream, context))
            try:
                done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    reason = _outcome(reader, "the site's stream failed")
                elif writer.exception() is not None:
                    reason = "the stream to the site failed"
                else:
                    # We closed or dropped the site: give it a moment to hang up cleanly.
                    await asyncio.wait({reader}, timeout=2.0)
                    if reader.done():
                        reason = _outcome(reader, reason)
            finally:
                reader.cancel()
                writer.cancel()
        except asyncio.CancelledError:
            reason = "the site disconnected"
            raise
        finally:
            self._stream_ended(session, stream, reason)

    async def _write_loop(
        self,
        stream: _Stream,
        context: grpc.aio.ServicerContext[SiteMessage | Malformed, CoordinatorMessage],
    ) -> None:
        while True:
            msg = await stream.outbox.get()
            if msg is None:
                return
            await context.write(msg)

    async def _read_loop(
        self,
        session: _Session,
        stream: _Stream,
        context: grpc.aio.ServicerContext[SiteMessage | Malformed, CoordinatorMessage],
    ) -> str:
        """Returns why the stream ended."""
        while True:
            msg = await context.read()
            if not isinstance(msg, Hello | Envelope | Status | Malformed):  # grpc.aio.EOF
                return "the site closed its stream" if stream.alive else "closed"
            problem = self._on_message(session, stream, msg)
            if problem is not None:
                code, why = problem
                self._drop(session, stream, code, why)
                return why

    def _on_message(
        self, session: _Session, stream: _Stream, msg: SiteMessage | Malformed
    ) -> tuple[Code, str] | None:
        """Match a site's message to a pending request; a problem drops the site."""
        if isinstance(msg, Malformed):
            return Code.MALFORMED, f"sent an undecodable message ({msg.reason})"
        if isinstance(msg, Hello):
            return Code.MALFORMED, "sent a second hello"
        if isinstance(msg, Status):
            entry = stream.pending.pop(msg.seq, None)
            if entry is None:
                if msg.seq == 0:  # the site gives up on the session
                    return msg.code, f"left the session: {clean_reason(msg.reason)}"
                return Code.MALFORMED, f"sent a status for unknown request {msg.seq}"
            _, _, future = entry
            label = "refused" if msg.code == Code.REFUSED else "could not answer"
            if not future.done():
                future.set_exception(_SiteGone(f"{label}: {clean_reason(msg.reason)}"))
            return None
        try:
            validate_envelope(msg)
        except WireError as err:
            return Code.MALFORMED, f"sent an invalid reply ({err})"
        entry = stream.pending.get(msg.seq)
        if (
            entry is None
            or msg.session_id != session.session_id
            or msg.sender != stream.site
            or msg.recipient != COORDINATOR
            or (msg.round, msg.step) != entry[:2]
        ):
            return Code.MALFORMED, f"sent a reply that matches no open request (seq {msg.seq})"
        if not verify(self._keys[stream.site], msg.signature, envelope_signing_bytes(msg)):
            return Code.BAD_SIGNATURE, "sent a reply not signed by its registered key"
        del stream.pending[msg.seq]
        if not entry[2].done():
            entry[2].set_result(msg.payload)
        return None

    def _drop(self, session: _Session, stream: _Stream, code: Code, reason: str) -> None:
        if stream.alive:
            stream.outbox.put_nowait(Status(code, reason, session.session_id))
            stream.outbox.put_nowait(None)
        self._stream_ended(session, stream, reason)

    def _stream_ended(self, session: _Session, stream: _Stream, reason: str) -> None:
        if stream.alive:
            stream.alive = False
            if not session.closed:
                session.gone.setdefault(stream.site, reason)
                log.warning("site %s left session %s: %s", stream.site, session.session_id, reason)
            session.changed.set()
        for _, _, future in stream.pending.values():
            if not future.done():
                future.set_exception(_SiteGone(session.gone.get(stream.site, reason)))
        stream.pending.clear()

    def _close_session(self, session: _Session, reason: str) -> None:
        if session.closed:
            return
        session.closed = True
        for stream in session.streams.values():
            if stream.alive:
                stream.outbox.put_nowait(Status(Code.SESSION_CLOSED, reason, session.session_id))
                stream.outbox.put_nowait(None)
            self._stream_ended(session, stream, reason)
        session.changed.set()

    # ------------------------------------------------------------------ session operations (loop)

    def _session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionError(f"no session {session_id}")
        return session

    async def _wait_for_sites(
        self, session_id: str, sites: frozenset[str], timeout: float
    ) -> dict[str, str]:
        session = self._session(session_id)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            missing = sites - set(session.connected())
            failed = {s: session.gone[s] for s in missing if s in session.gone}
            if not missing or failed or session.closed:
                break
            session.changed.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.changed.wait(), remaining)
        missing = sites - set(session.connected())
        return {
            s: session.gone.get(s, f"did not connect within {timeout:g} s") for s in sorted(missing)
        }

    async def _broadcast(
        self,
        session_id: str,
        round_: int,
        step: str,
        payloads: dict[str, bytes],
        timeout: float,
    ) -> tuple[dict[str, bytes], dict[str, str]]:
        session = self._session(session_id)
        if session.closed:
            raise SessionError(f"session {session_id} is closed")
        failures: dict[str, str] = {}
        waiting: dict[str, asyncio.Future[bytes]] = {}
        loop = asyncio.get_running_loop()
        for site, payload in payloads.items():
            stream = session.streams.get(site)
            if stream is None or not stream.alive:
                failures[site] = session.gone.get(site, "not connected")
                continue
            session.seq += 1
            unsigned = Envelope(session_id, round_, step, COORDINATOR, site, session.seq, payload)
            signature = self._key.sign(envelope_signing_bytes(unsigned))
            envelope = Envelope(
                session_id, round_, step, COORDINATOR, site, session.seq, payload, signature
            )
            future: asyncio.Future[bytes] = loop.create_future()
            stream.pending[session.seq] = (round_, step, future)
            stream.outbox.put_nowait(envelope)
            waiting[site] = future
        if waiting:
            await asyncio.wait(waiting.values(), timeout=timeout)
        replies: dict[str, bytes] = {}
        for site, future in waiting.items():
            if not future.done():
                why = f"no reply within {timeout:g} s"
                failures[site] = why
                stream = session.streams[site]
                self._drop(session, stream, Code.TIMEOUT, why)
            elif future.exception() is not None:
                failures[site] = str(future.exception())
            else:
                replies[site] = future.result()
        return replies, failures

    async def _close(self, session_id: str, reason: str) -> None:
        self._close_session(self._session(session_id), reason)

    async def _state(self, session_id: str) -> tuple[list[str], dict[str, str], bool]:
        session = self._session(session_id)
        return session.connected(), dict(session.gone), session.closed


class AggregationSession:
    """The orchestrator's handle on one study session (synchronous; call from any one thread)."""

    def __init__(
        self, server: AggregationServer, session_id: str, study_hash: str, sites: list[str]
    ) -> None:
        self._server = server
        self.session_id = session_id
        self.study_hash = study_hash
        self.sites = sites

    def wait_for_sites(self, timeout: float, sites: Collection[str] | None = None) -> list[str]:
        """Block until these sites (default: all of the session's) have joined.

        Raises ``SitesFailed`` (round 0, step "connect") naming every site that
        did not join in time or was refused/left before all had joined.
        """
        wanted = frozenset(self.sites if sites is None else sites)
        missing = self._server._call(
            self._server._wait_for_sites(self.session_id, wanted, timeout), timeout + 10
        )
        if missing:
            raise SitesFailed(0, "connect", missing)
        return sorted(wanted)

    def broadcast(
        self,
        round_: int,
        step: str,
        payload_per_site: Mapping[str, bytes],
        timeout: float = 60.0,
    ) -> dict[str, bytes]:
        """Send each site its payload; return each site's reply, or raise ``SitesFailed``.

        ``round_`` and ``step`` label the request (the site's handler sees
        ``step``); both are signed with the payload and echoed in the reply.
        """
        if STEP.fullmatch(step) is None:
            raise SessionError(f"step {step!r} is not a plain name")
        if not 0 <= round_ < 1 << 32:
            raise SessionError("round must fit in 32 bits")
        unknown = sorted(set(payload_per_site) - set(self.sites))
        if unknown:
            raise SessionError(f"sites {unknown} are not part of session {self.session_id}")
        replies, failures = self._server._call(
            self._server._broadcast(self.session_id, round_, step, dict(payload_per_site), timeout),
            timeout + 10,
        )
        if failures:
            raise SitesFailed(round_, step, failures, replies)
        return dict(replies)

    def connected(self) -> list[str]:
        connected, _, _ = self._server._call(self._server._state(self.session_id), 10)
        return list(connected)

    def dropped(self) -> dict[str, str]:
        """Sites that left the session, with the reason each left."""
        _, gone, _ = self._server._call(self._server._state(self.session_id), 10)
        return dict(gone)

    def close(self, reason: str = "the study is finished") -> None:
        """End the session: every site gets SESSION_CLOSED and its client returns."""
        self._server._call(self._server._close(self.session_id, reason), 10)
