"""The consortium's side of a deployed federation: ``consortium serve`` and ``study run``.

``ConsortiumServer`` (``her2fed consortium serve FEDERATION.toml``) is the
long-running part: the Flower SuperLink bound to 127.0.0.1 (TLS with the
consortium's server certificate, SuperNode authentication on, runtime
dependency installation, telemetry and update checks off, a private
``FLWR_HOME``, node registrations kept in a database), every pinned site's
node key registered through the Control API, and the fleet gateway on the
public address, which forwards ``/v1/fleet/*`` and nothing else. It reports
sites coming online and going offline until Ctrl-C or SIGTERM.

``StudyFederation`` (used by ``her2fed study run``) is the per-study part:
it connects to that SuperLink's Control API on this host, makes sure the
study's sites are registered and online, starts the aggregation service on
its bind address, and opens the study session through one Flower run whose
aggregation address is the public one. Leaving it stops the aggregation
service and any Flower run still going; the SuperLink, the gateway and the
sites keep running for the next study.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.federation.consortium import (
    FederationConfig,
    load_registry,
    site_keys,
)
from coordinator.federation.control import (
    FederationError,
    FlowerControl,
    RunOutcome,
    open_study_session,
)
from coordinator.federation.gateway import FleetGateway
from coordinator.federation.server import AggregationServer, AggregationSession
from her2fed.secagg.registry import Registry
from site_agent.federation.card import SiteCard
from site_agent.federation.processes import (
    ProcessSet,
    flower_env,
    signal_guard,
    signals_ignored,
    tool,
)

Say = Callable[[str], None]


def _control(config: FederationConfig, log_hint: str) -> FlowerControl:
    return FlowerControl(config.superlink, config.ca_cert.read_bytes(), log_hint=log_hint)


def require_free(host: str, port: int, what: str, fix: str) -> None:
    """Fail before anything starts if ``host:port`` cannot be bound (another service holds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise FederationError(
                f"{what} cannot listen on {host}:{port} ({err.strerror}). Fix: {fix}"
            ) from None


def register_sites(control: FlowerControl, cards: dict[str, SiteCard]) -> dict[str, int]:
    """Register every card's node key (a key registered before keeps its node id)."""
    return {sid: control.register(sid, card.node_public_key) for sid, card in sorted(cards.items())}


class ConsortiumServer:
    """SuperLink (loopback) + fleet gateway (public), supervised until stopped."""

    def __init__(self, config: FederationConfig, *, say: Say, startup_timeout: float = 60.0):
        config.require_files()
        self.config = config
        self.say = say
        self.startup_timeout = startup_timeout
        self.processes = ProcessSet(config.directory / "logs")
        self.gateway: FleetGateway | None = None
        self.control: FlowerControl | None = None
        self.node_ids: dict[str, int] = {}
        self._stopped = False

    @property
    def log(self) -> Path:
        return self.processes.log_dir / "superlink.log"

    def start(self) -> ConsortiumServer:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        cfg = self.config
        cards = cfg.cards()
        load_registry(cfg.registry)  # a broken registry fails here, before anything starts
        host, port = cfg.superlink.rsplit(":", 1)
        where = f"change it in {cfg.path} or stop what uses the port"
        require_free(host.strip("[]"), int(port), "the SuperLink", f"[superlink] address: {where}")
        require_free(*cfg.fleet_bind, "the fleet gateway", f"[fleet] bind: {where}")
        argv = [
            tool("flower-superlink"),
            "--ssl-ca-certfile", str(cfg.ca_cert),
            "--ssl-certfile", str(cfg.server_cert),
            "--ssl-keyfile", str(cfg.server_key),
            "--host", host.strip("[]"),
            "--port", port,
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--isolation", "subprocess",
        ]  # fmt: skip
        if cfg.database is not None:
            cfg.database.parent.mkdir(parents=True, exist_ok=True)
            argv += ["--database", str(cfg.database)]
        state = cfg.directory / "state"
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        proc = self.processes.spawn("superlink", argv, flower_env(state / "flwr-superlink"))
        self.say(f"started flower-superlink (pid {proc.pid}) on {cfg.superlink}; log {self.log}")
        self.control = control = _control(cfg, str(self.log))
        deadline = time.monotonic() + self.startup_timeout
        while not control.reachable():
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"it exited ({proc.returncode})" if proc.poll() is not None else "timeout"
                raise FederationError(
                    f"the SuperLink did not come up on {cfg.superlink} ({why}). Fix: read "
                    f"{self.log} (is the port in use? is the certificate valid?)"
                )
            time.sleep(0.2)
        self.node_ids = register_sites(control, cards)
        for sid, node in self.node_ids.items():
            self.say(f"site {sid}: node key {cards[sid].node_fingerprint} registered (node {node})")
        for node_id, name in self.prune(set(self.node_ids.values())):
            self.say(f"unregistered node {node_id} ({name}): its key is no longer pinned")
        bind_host, bind_port = cfg.fleet_bind
        self.gateway = FleetGateway(
            host=bind_host,
            port=bind_port,
            upstream=f"https://{cfg.superlink}",
            ca_cert=cfg.ca_cert,
            server_cert=cfg.server_cert,
            server_key=cfg.server_key,
        )
        try:
            self.gateway.start()
        except RuntimeError:
            self.gateway = None
            raise FederationError(
                f"the fleet gateway could not listen on {bind_host}:{bind_port}. Fix: free the "
                f"port or change [fleet] bind in {cfg.path}"
            ) from None
        self.say(
            f"fleet gateway on {bind_host}:{bind_port} (TLS; forwards /v1/fleet/* only); sites "
            f"connect with: her2fed site start SITE.toml --superlink {cfg.fleet_public}"
        )
        self.say(
            f"the Control API stays on {cfg.superlink} (this host only); run studies here with: "
            f"her2fed study run STUDY.toml --federation {cfg.path} --out DIR"
        )

    def prune(self, keep: set[int]) -> list[tuple[int, str]]:
        """Unregister nodes whose key no site card pins any more (e.g. replaced keys).

        The pinned cards are the truth: a key the lead replaced with
        ``add-site --replace`` must not stay able to connect.
        """
        assert self.control is not None
        gone = [
            (int(n.node_id), n.name)
            for n in self.control.nodes()
            if n.status != "unregistered" and int(n.node_id) not in keep
        ]
        for node_id, _ in gone:
            self.control.unregister(node_id)
        return gone

    def refresh_registrations(self) -> list[str]:
        """Register cards added since the start (``consortium add-site`` also does it)."""
        if self.control is None:
            return []
        cards = self.config.cards()
        new = {sid: c for sid, c in cards.items() if sid not in self.node_ids}
        added = register_sites(self.control, new)
        self.node_ids.update(added)
        return sorted(added)

    def run(self) -> None:
        """Start, serve until Ctrl-C/SIGTERM, stop; SIGTERM/SIGHUP unwind like Ctrl-C meanwhile."""
        guard = signal_guard().__enter__()
        try:
            self.start()
            self.serve()
        finally:
            self.stop()
            guard.__exit__()

    def serve(self, poll: float = 2.0) -> None:
        """Report sites coming and going until Ctrl-C/SIGTERM or the SuperLink dies."""
        online: set[str] = set()
        try:
            while True:
                link = self.processes.get("superlink")
                if link.poll() is not None:
                    raise FederationError(
                        f"the SuperLink exited (status {link.returncode}). Fix: read {self.log}"
                    )
                assert self.control is not None
                with contextlib.suppress(Exception):
                    for sid in self.refresh_registrations():
                        self.say(f"site {sid}: node key registered (node {self.node_ids[sid]})")
                    now = set(self.control.online(self.node_ids))
                    for sid in sorted(now - online):
                        self.say(f"site {sid}: online")
                    for sid in sorted(online - now):
                        self.say(f"site {sid}: offline")
                    online = now
                time.sleep(poll)
        except KeyboardInterrupt:
            self.say("interrupted (Ctrl-C)")
        except SystemExit as exc:
            self.say(f"signal received (exit {exc.code})")

    def stop(self) -> list[int]:
        """Stop the gateway and the SuperLink with its helpers (once; signals ignored meanwhile)."""
        if self._stopped:
            return []
        self._stopped = True
        started = bool(self.processes.names())
        with signals_ignored():
            if started:
                self.say("stopping the fleet gateway and the SuperLink")
            if self.control is not None:
                self.control.close()
                self.control = None
            if self.gateway is not None:
                self.gateway.stop()
                self.gateway = None
            survivors = self.processes.stop()
        if started:
            self.say("stopped" if not survivors else f"warning: {survivors} did not stop")
        return survivors


class StudyFederation:
    """What one ``study run`` needs of the deployed federation; stops what it started."""

    def __init__(self, config: FederationConfig, *, say: Say) -> None:
        config.require_files()
        self.config = config
        self.say = say
        self.cards = config.cards()
        self.sites = config.expected_sites(self.cards)
        self.registry: Registry = load_registry(config.registry)
        unpinned = [s for s in self.sites if s not in self.registry.sites]
        if unpinned:
            raise FederationError(
                f"{config.registry} does not list {unpinned}. Fix: add their cards with "
                f"`her2fed consortium add-site {config.path} CARD.toml`"
            )
        self.coordinator_key: Ed25519PrivateKey = config.load_coordinator_key()
        if self.coordinator_key.public_key().public_bytes_raw() != self.registry.coordinator:
            raise FederationError(
                f"{config.coordinator_key} is not the coordinator key pinned in "
                f"{config.registry}. Fix: use the files `her2fed consortium init` wrote together"
            )
        self.control: FlowerControl | None = None
        self.aggregation: AggregationServer | None = None
        self.node_ids: dict[str, int] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="her2fed-study-"))
        self._guard = signal_guard()

    def __enter__(self) -> StudyFederation:
        self._guard.__enter__()
        try:
            self._connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connect(self) -> None:
        cfg = self.config
        hint = str(cfg.directory / "logs" / "superlink.log")
        self.control = control = _control(cfg, hint)
        if not control.reachable():
            raise FederationError(
                f"no SuperLink answers on {cfg.superlink}. Fix: start it on this host with "
                f"`her2fed consortium serve {cfg.path}`"
            )
        self.node_ids = register_sites(control, {s: self.cards[s] for s in self.sites})

    def wait_online(self, timeout: float) -> None:
        """Until every study site's SuperNode is online; names the missing ones on timeout."""
        assert self.control is not None
        deadline = time.monotonic() + timeout
        shown: tuple[str, ...] = ()
        while True:
            missing = tuple(sorted(set(self.sites) - set(self.control.online(self.node_ids))))
            if not missing:
                return
            if missing != shown:
                self.say(f"waiting for site(s) to come online: {', '.join(missing)}")
                shown = missing
            if time.monotonic() > deadline:
                raise FederationError(
                    f"site(s) {', '.join(missing)} not online after {timeout:g} s. Fix: ask them "
                    "to run `her2fed site start` (its output says why a site cannot connect), or "
                    f"leave them out of [federation] sites in {self.config.path}"
                )
            time.sleep(0.5)

    def open_session(
        self, study_hash: str, timeout: float
    ) -> tuple[AggregationSession, RunOutcome]:
        cfg = self.config
        assert self.control is not None
        host, port = cfg.aggregation_bind
        require_free(
            host,
            port,
            "the aggregation service",
            f"[aggregation] bind in {cfg.path}: is another study running?",
        )
        self.aggregation = AggregationServer(
            site_keys(self.registry), cfg.pki, self.coordinator_key, host=host, port=port
        )
        try:
            self.aggregation.start()
        except Exception as err:
            self.aggregation = None
            raise FederationError(
                f"the aggregation service could not listen on {host}:{port} ({err}). Fix: free "
                f"the port or change [aggregation] bind in {cfg.path}"
            ) from None
        self.say(f"aggregation service on {host}:{port} (TLS); sites dial {cfg.aggregation_public}")
        return open_study_session(
            self.control,
            self.aggregation,
            node_ids=self.node_ids,
            study_hash=study_hash,
            report_dir=self._tmp,
            aggregation_address=cfg.aggregation_public,
            timeout=timeout,
        )

    def close(self) -> None:
        if self.aggregation is not None:
            self.aggregation.stop()
            self.aggregation = None
        if self.control is not None:
            self.control.close()
            self.control = None
        with contextlib.suppress(OSError):
            for file in self._tmp.iterdir():
                file.unlink()
            self._tmp.rmdir()
        self._guard.__exit__()
