"""The site's end of the aggregation channel: dial out, say a signed hello, answer requests.

The site opens the connection (outbound TLS to the coordinator, verified with
the CA the site pinned), so a hospital never opens an inbound port. After
the coordinator's welcome the client loops: receive a signed request
envelope, check it (session, recipient, strictly increasing sequence number,
the coordinator's pinned key), call the handler, sign and send the reply.

Whatever the handler raises stays at the site: the coordinator receives a
fixed reason ("could not compute a reply"), never exception text, which may
quote data. Only ``SiteRefusal`` (and any exception classes the caller lists
in ``safe_errors``) travel with their message, because those messages are
written by her2fed for the coordinator to read (e.g. which policy rule
refused a query).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from her2fed import __version__
from her2fed.errors import Her2fedError
from site_agent.federation.keys import verify
from site_agent.federation.wire import (
    COORDINATOR,
    METHOD_PATH,
    PROTOCOL_VERSION,
    Code,
    CoordinatorMessage,
    Envelope,
    Hello,
    Malformed,
    SiteMessage,
    Status,
    WireError,
    decode_coordinator_message_safe,
    encode_site_message,
    envelope_signing_bytes,
    hello_signing_bytes,
    validate_envelope,
)

log = logging.getLogger("her2fed.federation.site")

Handler = Callable[[str, bytes], bytes]
"""``handle(step, payload) -> reply``: the site's answer to one request."""

HANDLER_FAILED_REASON = "the site could not compute a reply; the details are in the site's log"
MAX_MESSAGE_BYTES = 300 * 1024 * 1024
_GRPC_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.enable_retries", 0),
]


class SiteRefusal(Her2fedError):
    """Raise in a handler to refuse a request; the message is sent to the coordinator as is.

    Write only fixed text and public facts (rule names, thresholds from the
    site's policy, analysis ids) — never anything computed from patient rows.
    """


class SessionRefused(Her2fedError):
    """The coordinator refused this site's hello (or the site refused the coordinator)."""

    def __init__(self, code: Code, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"aggregation session refused ({code.name}): {reason}")


class SessionLost(Her2fedError):
    """The session ended without the coordinator closing it (network, coordinator, bad message)."""


@dataclass(frozen=True)
class SessionOutcome:
    session_id: str
    requests_answered: int
    reason: str


def _clean(text: str, limit: int = 300) -> str:
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text[:limit]


def _drain(outbox: queue.Queue[SiteMessage | None]) -> Iterator[SiteMessage]:
    while True:
        msg = outbox.get()
        if msg is None:
            return
        yield msg


class SiteClient:
    """One site's stream in one session. ``run()`` blocks until the session ends."""

    def __init__(
        self,
        *,
        address: str,
        site_id: str,
        site_key: Ed25519PrivateKey,
        coordinator_key: Ed25519PublicKey,
        ca_cert: bytes,
        session_id: str,
        study_hash: str,
        handler: Handler,
        her2fed_version: str = __version__,
        connect_timeout: float = 15.0,
        safe_errors: tuple[type[BaseException], ...] = (),
        tls_server_name: str | None = None,
    ) -> None:
        self.address = address
        self.site_id = site_id
        self.session_id = session_id
        self.study_hash = study_hash
        self._key = site_key
        self._coordinator = coordinator_key
        self._ca = ca_cert
        self._handler = handler
        self._version = her2fed_version
        self._connect_timeout = connect_timeout
        self._safe: tuple[type[BaseException], ...] = (SiteRefusal, *safe_errors)
        self._server_name = tls_server_name
        self._call: Any = None
        self._stopping = threading.Event()
        self.welcomed = threading.Event()
        """Set once the coordinator accepted the hello."""
        self.finished = threading.Event()
        """Set when ``run`` returns or raises."""
        self.error: Her2fedError | None = None
        self.answered = 0
        """Requests answered so far (replies and refusals)."""

    # ------------------------------------------------------------------ public

    def run(self) -> SessionOutcome:
        try:
            return self._run()
        except Her2fedError as err:
            self.error = err
            raise
        finally:
            self.finished.set()

    def start_thread(self) -> threading.Thread:
        """Run the session in a daemon thread (errors are kept in ``self.error``)."""

        def target() -> None:
            try:
                outcome = self.run()
                log.info(
                    "session %s closed after %d request(s): %s",
                    outcome.session_id,
                    outcome.requests_answered,
                    outcome.reason,
                )
            except Her2fedError as err:
                log.warning("session %s ended: %s", self.session_id, err)

        thread = threading.Thread(target=target, name=f"her2fed-session-{self.session_id[:8]}")
        thread.daemon = True
        thread.start()
        return thread

    def stop(self) -> None:
        """Leave the session (from any thread); ``run`` raises ``SessionLost``."""
        self._stopping.set()
        call = self._call
        if call is not None:
            call.cancel()

    # ------------------------------------------------------------------ internals

    def _hello(self) -> Hello:
        unsigned = Hello(
            PROTOCOL_VERSION, self.site_id, self._version, self.study_hash, self.session_id
        )
        signature = self._key.sign(hello_signing_bytes(unsigned))
        return Hello(
            PROTOCOL_VERSION,
            self.site_id,
            self._version,
            self.study_hash,
            self.session_id,
            signature,
        )

    def _run(self) -> SessionOutcome:
        options = list(_GRPC_OPTIONS)
        if self._server_name:
            options.append(("grpc.ssl_target_name_override", self._server_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=self._ca)
        outbox: queue.Queue[SiteMessage | None] = queue.Queue()
        with grpc.secure_channel(self.address, credentials, options=options) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=self._connect_timeout)
            except grpc.FutureTimeoutError:
                raise SessionLost(
                    f"could not open a TLS connection to the aggregation service at "
                    f"{self.address} within {self._connect_timeout:g} s: check the address, "
                    "the outbound firewall rule and that its certificate is issued by the "
                    "consortium CA this site pinned"
                ) from None
            outbox.put(self._hello())
            stub = channel.stream_stream(
                METHOD_PATH,
                request_serializer=encode_site_message,
                response_deserializer=decode_coordinator_message_safe,
            )
            self._call = stub(_drain(outbox))
            try:
                return self._serve(iter(self._call), outbox)
            except grpc.RpcError as err:
                if self._stopping.is_set():
                    raise SessionLost("the site left the session") from None
                code = err.code() if hasattr(err, "code") else None
                name = code.name if code is not None else "UNKNOWN"
                raise SessionLost(f"the aggregation stream failed ({name})") from None
            finally:
                outbox.put(None)
                self._call = None

    def _leave(self, outbox: queue.Queue[SiteMessage | None], code: Code, reason: str) -> None:
        outbox.put(Status(code, reason, self.session_id, 0))
        outbox.put(None)

    def _serve(
        self,
        responses: Iterator[CoordinatorMessage | Malformed],
        outbox: queue.Queue[SiteMessage | None],
    ) -> SessionOutcome:
        first = next(responses, None)
        if not isinstance(first, Status):
            raise SessionLost("the coordinator did not answer the hello with a status")
        if first.code != Code.OK:
            raise SessionRefused(first.code, _clean(first.reason))
        if first.protocol_version != PROTOCOL_VERSION:
            reason = (
                f"this site speaks aggregation protocol {PROTOCOL_VERSION}, the coordinator "
                f"{first.protocol_version}"
            )
            self._leave(outbox, Code.PROTOCOL_VERSION_MISMATCH, reason)
            raise SessionRefused(Code.PROTOCOL_VERSION_MISMATCH, reason)
        self.welcomed.set()
        log.info("joined session %s at %s as %s", self.session_id, self.address, self.site_id)
        last_seq = 0
        for msg in responses:
            if isinstance(msg, Malformed):
                self._leave(outbox, Code.MALFORMED, "undecodable message from the coordinator")
                raise SessionLost(f"the coordinator sent an undecodable message ({msg.reason})")
            if isinstance(msg, Status):
                if msg.code == Code.SESSION_CLOSED:
                    outbox.put(None)
                    return SessionOutcome(self.session_id, self.answered, _clean(msg.reason))
                raise SessionLost(
                    f"the coordinator ended this site's session ({msg.code.name}): "
                    f"{_clean(msg.reason)}"
                )
            problem = self._check_request(msg, last_seq)
            if problem is not None:
                code, reason = problem
                self._leave(outbox, code, reason)
                raise SessionLost(f"refused a request from the coordinator: {reason}")
            last_seq = msg.seq
            outbox.put(self._answer(msg))
            self.answered += 1
        raise SessionLost("the coordinator's stream ended without closing the session")

    def _check_request(self, env: Envelope, last_seq: int) -> tuple[Code, str] | None:
        try:
            validate_envelope(env)
        except WireError as err:
            return Code.MALFORMED, str(err)
        if env.session_id != self.session_id:
            return Code.MALFORMED, "request for another session"
        if env.sender != COORDINATOR or env.recipient != self.site_id:
            return Code.MALFORMED, "request not addressed from the coordinator to this site"
        if env.seq <= last_seq:
            return Code.MALFORMED, f"request sequence number {env.seq} was not increasing"
        if not verify(self._coordinator, env.signature, envelope_signing_bytes(env)):
            return Code.BAD_SIGNATURE, "request not signed by the pinned coordinator key"
        return None

    def _answer(self, env: Envelope) -> SiteMessage:
        try:
            payload = self._handler(env.step, env.payload)
            if not isinstance(payload, bytes):
                raise TypeError(f"handler returned {type(payload).__name__}, not bytes")
        except self._safe as err:
            log.info("refused request %d (step %s): %s", env.seq, env.step, err)
            return Status(Code.REFUSED, _clean(str(err)), self.session_id, env.seq)
        except Exception:
            log.exception("handler failed on request %d (step %s)", env.seq, env.step)
            return Status(Code.HANDLER_FAILED, HANDLER_FAILED_REASON, self.session_id, env.seq)
        unsigned = Envelope(
            self.session_id, env.round, env.step, self.site_id, COORDINATOR, env.seq, payload
        )
        signature = self._key.sign(envelope_signing_bytes(unsigned))
        return Envelope(
            self.session_id,
            env.round,
            env.step,
            self.site_id,
            COORDINATOR,
            env.seq,
            payload,
            signature,
        )
