"""A whole federation on this machine, with real processes over loopback TLS.

``LocalFederation`` starts, in this order:

1. a run PKI (CA + server certificate for 127.0.0.1/localhost), the
   coordinator's Ed25519 key, and per site an Ed25519 identity key and a
   Flower SuperNode key, plus the consortium key registry;
2. the aggregation service (in this process, gRPC/TLS on ``host``);
3. the SuperLink (TLS with the run CA, SuperNode authentication on, runtime
   dependency installation, telemetry and update checks off), bound to
   127.0.0.1 only, and each site's SuperNode key registered through its
   Control API;
4. the fleet gateway on ``host`` (the only Flower port sites reach; it
   forwards ``/v1/fleet/*`` and nothing else);
5. per site a SuperNode (``--isolation process``, TLS verified with the run
   CA, node key, node config ``site-config=...``) and a
   ``her2fed-site-agent`` process that executes its tasks with installed code.

``open_session`` then submits her2fed's app bundle as a Flower run; the
ServerApp sends each site one "open session" message, the sites dial the
aggregation service, and the returned ``AggregationSession`` runs the rounds.
``stop()`` (also from ``__exit__``, atexit, SIGTERM/SIGHUP) ends every
process this federation started, including those Flower started itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.common.serde import fab_to_proto, run_from_proto, user_config_to_proto
from flwr.proto.control_pb2 import (
    ListNodesRequest,
    ListRunsRequest,
    RegisterNodeRequest,
    StartRunRequest,
    StopRunRequest,
)
from flwr.supercore.control.control_http_client import ControlHttpClient
from flwr.supercore.fab import Fab
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

from coordinator.federation.gateway import FleetGateway
from coordinator.federation.pki import RunPki, make_run_pki
from coordinator.federation.processes import ProcessSet, signal_guard
from coordinator.federation.server import AggregationServer, AggregationSession
from coordinator.federation.sites import SiteKeys
from her2fed.errors import Her2fedError
from her2fed.secagg.registry import Registry, public_key_bytes, registry_to_toml
from site_agent.federation.agent import DEFAULT_HANDLER
from site_agent.federation.fab import FabBundle, her2fed_fab
from site_agent.federation.keys import (
    generate_key,
    write_private_key,
    write_public_key,
    write_supernode_key,
)

log = logging.getLogger("her2fed.federation.local")

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
    "PYTHONUNBUFFERED": "1",
}


class FederationError(Her2fedError):
    """The local federation could not start or a run did not finish (names the log to read)."""


@dataclass(frozen=True)
class SiteSpec:
    site_id: str
    site_config: str | None = None
    """Passed to the site's SuperNode as node config ``site-config`` (the handler reads it)."""
    handler: str = DEFAULT_HANDLER
    """``module:factory`` the site agent imports (installed code)."""
    allowlist: str | None = None
    """Path of the site's allowlist.toml (default: the installed app only)."""


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    status: str
    sub_status: str
    details: str
    report: dict[str, Any] = field(default_factory=dict)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tool(name: str) -> str:
    """A console script of this environment (the one running Python), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FederationError(f"{name} is not installed; install flwr==1.41.0")
    return found


class LocalFederation:
    def __init__(
        self,
        sites: Sequence[SiteSpec],
        workdir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 60.0,
    ) -> None:
        ids = [s.site_id for s in sites]
        if not ids or len(set(ids)) != len(ids):
            raise FederationError(f"site ids must be unique and not empty, got {ids}")
        self.sites = list(sites)
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="her2fed-fed-"))
        self.host = host
        self.startup_timeout = startup_timeout
        self.processes = ProcessSet(self.workdir / "logs")
        self.pki: RunPki | None = None
        self.aggregation: AggregationServer | None = None
        self.gateway: FleetGateway | None = None
        self.node_ids: dict[str, int] = {}
        self.superlink_address = ""
        self.coordinator_key: Ed25519PrivateKey | None = None
        self.consortium: Registry | None = None
        self._control: ControlHttpClient | None = None
        self._guard = signal_guard()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> LocalFederation:
        self._guard.__enter__()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> list[int]:
        """Stop everything; returns pids that survived (should be empty)."""
        # Our own keep-alive connections first: uvicorn waits for open ones before exiting.
        if self._control is not None:
            with contextlib.suppress(Exception):
                self._control.close()
            self._control = None
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        survivors = self.processes.stop()
        if self.aggregation is not None:
            self.aggregation.stop()
            self.aggregation = None
        self._guard.__exit__()
        return survivors

    def flower_env(self, home: str) -> dict[str, str]:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**FLOWER_ENV, "FLWR_HOME": str(self.workdir / "flwr" / home), "PATH": path}

    def _start(self) -> None:
        keys_dir = self.workdir / "keys"
        keys_dir.mkdir(parents=True, exist_ok=True)
        self.pki = pki = make_run_pki(self.workdir / "pki", (self.host, "localhost"))
        coordinator_key = generate_key()
        write_public_key(coordinator_key, keys_dir / "coordinator.pub")
        site_keys = {}
        node_public = {}
        for site in self.sites:
            key = generate_key()
            write_private_key(key, keys_dir / f"{site.site_id}.key")
            site_keys[site.site_id] = key.public_key()
            node_public[site.site_id] = write_supernode_key(keys_dir / f"{site.site_id}.node")
            (keys_dir / f"{site.site_id}.superexec").write_bytes(os.urandom(32))
        registry = SiteKeys(site_keys)
        registry.dump(keys_dir / "registry.toml")
        self.coordinator_key = coordinator_key
        self.consortium = Registry(
            sites={sid: public_key_bytes(k) for sid, k in site_keys.items()},
            coordinator=public_key_bytes(coordinator_key),
        )
        (keys_dir / "consortium.toml").write_text(registry_to_toml(self.consortium))

        self.aggregation = AggregationServer(registry, pki, coordinator_key, host=self.host)
        self.aggregation.start()

        link_port = free_port()
        self.superlink_address = f"127.0.0.1:{link_port}"
        self.processes.spawn(
            "superlink",
            [
                tool("flower-superlink"),
                "--ssl-ca-certfile", str(pki.ca_cert),
                "--ssl-certfile", str(pki.server_cert),
                "--ssl-keyfile", str(pki.server_key),
                "--host", "127.0.0.1",
                "--port", str(link_port),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--isolation", "subprocess",
            ],
            self.flower_env("superlink"),
        )  # fmt: skip
        self._control = ControlHttpClient.from_server_address(
            server_address=self.superlink_address,
            insecure=False,
            root_certificates=pki.ca_pem(),
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")],
        )
        self._wait(lambda: self._control_ok(), "the SuperLink did not come up", "superlink")
        for site in self.sites:
            res = self._control.RegisterNode(
                RegisterNodeRequest(public_key=node_public[site.site_id], name=site.site_id)
            )
            self.node_ids[site.site_id] = res.node_id

        self.gateway = FleetGateway(
            host=self.host,
            port=free_port(self.host),
            upstream=f"https://{self.superlink_address}",
            ca_cert=pki.ca_cert,
            server_cert=pki.server_cert,
            server_key=pki.server_key,
        ).start()

        for site in self.sites:
            sid = site.site_id
            runtime_port = free_port()
            supernode = [
                tool("flower-supernode"),
                "--root-certificates", str(pki.ca_cert),
                "--superlink", self.gateway.address,
                "--auth-supernode-private-key", str(keys_dir / f"{sid}.node"),
                "--isolation", "process",
                "--host", "127.0.0.1",
                "--port", str(runtime_port),
                "--superexec-auth-secret-file", str(keys_dir / f"{sid}.superexec"),
                "--max-retries", "20",
            ]  # fmt: skip
            if site.site_config:
                supernode += ["--node-config", f'site-config="{site.site_config}"']
            self.processes.spawn(f"supernode-{sid}", supernode, self.flower_env(f"node-{sid}"))
            agent = [
                sys.executable, "-m", "site_agent.federation.agent",
                "--runtime-api", f"127.0.0.1:{runtime_port}",
                "--site-id", sid,
                "--site-key", str(keys_dir / f"{sid}.key"),
                "--coordinator-key", str(keys_dir / "coordinator.pub"),
                "--ca-cert", str(pki.ca_cert),
                "--coordinator-host", self.host,
                "--handler", site.handler,
                "--consortium-registry", str(keys_dir / "consortium.toml"),
                "--superexec-auth-secret-file", str(keys_dir / f"{sid}.superexec"),
                "--parent-pid", str(os.getpid()),
            ]  # fmt: skip
            if site.allowlist:
                agent += ["--allowlist", site.allowlist]
            self.processes.spawn(f"agent-{sid}", agent, self.flower_env(f"agent-{sid}"))
        self._wait(
            lambda: set(self.online_sites()) == set(self.node_ids),
            "not every SuperNode came online",
            "supernode-*",
        )
        log.info("local federation up: %s", ", ".join(self.node_ids))

    def _control_ok(self) -> bool:
        assert self._control is not None
        try:
            self._control.ListNodes(ListNodesRequest())
        except Exception:
            return False
        return True

    def _wait(self, ok: Any, problem: str, logs: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while not ok():
            dead = [n for n in self.processes.names() if self.processes.get(n).poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"processes exited: {dead}" if dead else f"{self.startup_timeout:g} s"
                raise FederationError(f"{problem} ({why}); see {self.processes.log_dir}/{logs}.log")
            time.sleep(0.2)

    # ------------------------------------------------------------------ control plane

    @property
    def control(self) -> ControlHttpClient:
        if self._control is None:
            raise FederationError("the federation is not running")
        return self._control

    def online_sites(self) -> list[str]:
        by_id = {v: k for k, v in self.node_ids.items()}
        nodes = self.control.ListNodes(ListNodesRequest()).nodes_info
        return sorted(
            by_id[n.node_id] for n in nodes if n.status == "online" and n.node_id in by_id
        )

    def submit(self, fab: FabBundle, run_config: Mapping[str, str | int | float | bool]) -> int:
        """Start a Flower run of ``fab`` (the coordinator's side of ``flwr run``)."""
        request = StartRunRequest(
            fab=fab_to_proto(Fab(fab.sha256, fab.content, {})),
            override_config=user_config_to_proto(dict(run_config)),
            federation="",
        )
        res = self.control.StartRun(request)
        if not res.HasField("run_id"):
            raise FederationError("the SuperLink did not start the run")
        return int(res.run_id)

    def wait_run(self, run_id: int, timeout: float, report_path: Path | None = None) -> RunOutcome:
        deadline = time.monotonic() + timeout
        while True:
            runs = self.control.ListRuns(ListRunsRequest(run_id=run_id)).run_dict
            if run_id in runs:
                run = run_from_proto(runs[run_id])
                if run.status.status == "finished":
                    report: dict[str, Any] = {}
                    if report_path is not None and report_path.exists():
                        report = json.loads(report_path.read_text(encoding="utf-8"))
                    return RunOutcome(
                        run_id,
                        run.status.status,
                        run.status.sub_status,
                        run.status.details,
                        report,
                    )
            if time.monotonic() > deadline:
                with contextlib.suppress(Exception):
                    self.control.StopRun(StopRunRequest(run_id=run_id))
                raise FederationError(
                    f"run {run_id} did not finish within {timeout:g} s; see "
                    f"{self.processes.log_dir}/superlink.log"
                )
            time.sleep(0.2)

    def open_session(
        self,
        study_hash: str,
        *,
        timeout: float = 60.0,
        flower_ping_rounds: int = 0,
        fab: FabBundle | None = None,
    ) -> tuple[AggregationSession, RunOutcome]:
        """Open an aggregation session at every site through one Flower run.

        Returns once every site joined and the run finished; raises
        ``SitesFailed`` naming the sites that did not join.
        """
        if self.aggregation is None:
            raise FederationError("the federation is not running")
        session = self.aggregation.open_session(study_hash, list(self.node_ids))
        report = self.workdir / "runs" / f"{session.session_id}.json"
        report.parent.mkdir(exist_ok=True)
        run_id = self.submit(
            fab or her2fed_fab(),
            {
                "session-id": session.session_id,
                "study-hash": study_hash,
                "aggregation-address": self.aggregation.address,
                "expected-sites": len(self.node_ids),
                "open-timeout": timeout,
                "nodes-timeout": timeout,
                "status-path": str(report),
                "flower-ping-rounds": flower_ping_rounds,
            },
        )
        try:
            session.wait_for_sites(timeout)
        except BaseException:
            session.close("the session could not be opened at every site")
            with contextlib.suppress(Exception):
                self.wait_run(run_id, 15.0, report)
            raise
        return session, self.wait_run(run_id, timeout, report)

    def kill_site(self, site_id: str) -> None:
        """SIGKILL a site's agent (its session stream drops; its SuperNode stays up)."""
        self.processes.kill(f"agent-{site_id}")

    def leftovers(self) -> list[int]:
        return self.processes.leftovers()


# ---------------------------------------------------------------------- self-test command


def main(argv: Sequence[str] | None = None) -> int:
    """``her2fed-federation-selftest``: a loopback federation, a few rounds, latencies as JSON."""
    from site_agent.federation.selftest import decode_int, encode_int

    p = argparse.ArgumentParser(prog="her2fed-federation-selftest", description=main.__doc__)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--flower-ping-rounds", type=int, default=3)
    p.add_argument(
        "--payload-bytes", type=int, default=0, help="also time echo rounds of this size"
    )
    p.add_argument("--keep", type=Path, help="work in this directory and keep it (logs, keys)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    specs = [SiteSpec(f"site{i + 1}") for i in range(args.sites)]
    study_hash = "sha256:" + "0" * 64
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="her2fed-selftest-"))
    try:
        t0 = time.perf_counter()
        with LocalFederation(specs, workdir) as fed:
            started = time.perf_counter() - t0
            t1 = time.perf_counter()
            session, outcome = fed.open_session(
                study_hash, flower_ping_rounds=args.flower_ping_rounds
            )
            opened = time.perf_counter() - t1
            rounds = []
            for r in range(1, args.rounds + 1):
                t = time.perf_counter()
                replies = session.broadcast(r, "sum", {s.site_id: encode_int(r) for s in specs})
                rounds.append(time.perf_counter() - t)
                total = sum(decode_int(v) for v in replies.values())
                expected = r * len(specs) + sum(len(s.site_id) for s in specs)
                if total != expected:
                    raise FederationError(f"round {r}: sum {total} != {expected}")
            echo_ms = []
            if args.payload_bytes:
                blob = os.urandom(args.payload_bytes)
                for r in range(args.rounds):
                    t = time.perf_counter()
                    session.broadcast(1000 + r, "echo", {s.site_id: blob for s in specs})
                    echo_ms.append((time.perf_counter() - t) * 1000)
                echo_ms.sort()
            session.close()
            rounds.sort()
            result = {
                "sites": args.sites,
                "startup_seconds": round(started, 2),
                "open_session_seconds": round(opened, 2),
                "flower_run": {"status": outcome.sub_status, **outcome.report},
                "grpc_round_ms": {
                    "min": round(rounds[0] * 1000, 2),
                    "median": round(rounds[len(rounds) // 2] * 1000, 2),
                    "max": round(rounds[-1] * 1000, 2),
                },
            }
            if echo_ms:
                result[f"grpc_echo_{args.payload_bytes}_bytes_ms"] = {
                    "min": round(echo_ms[0], 2),
                    "median": round(echo_ms[len(echo_ms) // 2], 2),
                    "max": round(echo_ms[-1], 2),
                }
        result["leftover_processes"] = fed.leftovers()
        print(json.dumps(result, indent=2))
        return 0 if not result["leftover_processes"] else 1
    except Her2fedError as err:
        print(f"her2fed-federation-selftest: error: {err}", file=sys.stderr)
        return 2
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
