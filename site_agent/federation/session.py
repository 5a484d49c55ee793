"""What a site does when the coordinator asks it (through Flower) to open a session.

``SiteRuntime.open_session`` is called by the site's installed ClientApp with
the three facts of the "open session" message: the session id, the study
hash and the address of the aggregation service. It checks the address
against the hosts this site agreed to dial, asks the handler factory (the
lead's code: study approval, policy, data) for a handler, starts the
aggregation client in a thread and reports whether the coordinator welcomed
the site. The session then runs on its own stream; Flower is not involved
again until the next study.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from her2fed import __version__
from her2fed.errors import Her2fedError
from her2fed.secagg.registry import Registry
from site_agent.federation.client import (
    Handler,
    SessionRefused,
    SiteClient,
    SiteRefusal,
)
from site_agent.federation.wire import SESSION_ID, STUDY_HASH

log = logging.getLogger("her2fed.federation.site")

ConfigValue = str | int | float | bool | bytes | list[str] | list[int] | list[float] | list[bool]


@dataclass(frozen=True)
class OpenSession:
    """The content of Flower's "open session" message."""

    session_id: str
    study_hash: str
    address: str

    def problems(self) -> list[str]:
        out = []
        if SESSION_ID.fullmatch(self.session_id) is None:
            out.append("session id is not 32 hex characters")
        if STUDY_HASH.fullmatch(self.study_hash) is None:
            out.append("study hash is not 'sha256:' + 64 hex characters")
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            out.append("aggregation address is not host:port")
        return out

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")


@dataclass(frozen=True)
class SessionInfo:
    """What a handler factory learns about the session it serves."""

    site_id: str
    session_id: str
    study_hash: str
    address: str
    node_config: Mapping[str, ConfigValue] = field(default_factory=dict)
    identity: SiteIdentity | None = None  # the site's own keys, for secure aggregation

    @property
    def site_config(self) -> str | None:
        """The site config path the SuperNode was started with (node config ``site-config``)."""
        value = self.node_config.get("site-config")
        return value if isinstance(value, str) else None


HandlerFactory = Callable[[SessionInfo], Handler]
"""Builds the handler of one session; raise ``SiteRefusal`` to decline the session."""


@dataclass(frozen=True)
class SiteIdentity:
    """The site's fixed trust settings, set by hospital IT when the agent starts."""

    site_id: str
    site_key: Ed25519PrivateKey
    coordinator_key: Ed25519PublicKey
    ca_cert: bytes
    allowed_hosts: frozenset[str]
    her2fed_version: str = __version__
    consortium: Registry | None = None  # pinned keys of every site and the coordinator


@dataclass(frozen=True)
class OpenResult:
    ok: bool
    code: str
    reason: str


class SiteRuntime:
    """Opens and tracks this site's aggregation sessions."""

    def __init__(
        self,
        identity: SiteIdentity,
        handler_factory: HandlerFactory,
        *,
        connect_timeout: float = 15.0,
        safe_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.identity = identity
        self._factory = handler_factory
        self._connect_timeout = connect_timeout
        self._safe = safe_errors
        self._clients: dict[str, SiteClient] = {}
        self._lock = threading.Lock()

    def open_session(
        self, request: OpenSession, node_config: Mapping[str, ConfigValue]
    ) -> OpenResult:
        problems = request.problems()
        if problems:
            return OpenResult(False, "MALFORMED", "; ".join(problems))
        if request.host not in self.identity.allowed_hosts:
            return OpenResult(
                False,
                "REFUSED",
                f"this site dials only {sorted(self.identity.allowed_hosts)}, not {request.host!r}",
            )
        info = SessionInfo(
            self.identity.site_id,
            request.session_id,
            request.study_hash,
            request.address,
            dict(node_config),
            self.identity,
        )
        with self._lock:
            running = self._clients.get(request.session_id)
            if running is not None and not running.finished.is_set():
                return OpenResult(True, "OK", "the session is already open at this site")
        try:
            handler = self._factory(info)
        except SiteRefusal as err:
            return OpenResult(False, "REFUSED", str(err))
        except Her2fedError as err:
            log.error("cannot serve session %s: %s", request.session_id, err)
            return OpenResult(False, "HANDLER_FAILED", "the site cannot serve this study")
        except Exception:
            log.exception("handler factory failed for session %s", request.session_id)
            return OpenResult(False, "HANDLER_FAILED", "the site cannot serve this study")
        client = SiteClient(
            address=request.address,
            site_id=self.identity.site_id,
            site_key=self.identity.site_key,
            coordinator_key=self.identity.coordinator_key,
            ca_cert=self.identity.ca_cert,
            session_id=request.session_id,
            study_hash=request.study_hash,
            handler=handler,
            her2fed_version=self.identity.her2fed_version,
            connect_timeout=self._connect_timeout,
            safe_errors=self._safe,
        )
        with self._lock:
            self._clients[request.session_id] = client
        client.start_thread()
        deadline = time.monotonic() + self._connect_timeout + 5.0
        while time.monotonic() < deadline:
            if client.welcomed.is_set():
                return OpenResult(True, "OK", "joined the session")
            if client.finished.wait(0.02):
                break
        if client.welcomed.is_set():
            return OpenResult(True, "OK", "joined the session")
        error = client.error
        if isinstance(error, SessionRefused):
            return OpenResult(False, error.code.name, error.reason)
        if error is not None:
            return OpenResult(False, "UNAVAILABLE", str(error))
        client.stop()
        return OpenResult(False, "TIMEOUT", "the coordinator did not welcome the site in time")

    def sessions(self) -> dict[str, bool]:
        """Session id -> still running."""
        with self._lock:
            return {sid: not c.finished.is_set() for sid, c in self._clients.items()}

    def stop_all(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            client.stop()
