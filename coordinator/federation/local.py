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
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.federation.control import (
    FederationError,
    FlowerControl,
    RunOutcome,
    open_study_session,
)
from coordinator.federation.gateway import FleetGateway
from coordinator.federation.pki import RunPki, make_run_pki
from coordinator.federation.server import AggregationServer, AggregationSession
from coordinator.federation.sites import SiteKeys
from her2fed.errors import Her2fedError
from her2fed.secagg.registry import Registry, public_key_bytes, registry_to_toml
from site_agent.federation.agent import DEFAULT_HANDLER
from site_agent.federation.fab import FabBundle
from site_agent.federation.keys import (
    generate_key,
    read_private_key,
    write_private_key,
    write_public_key,
    write_supernode_key,
)
from site_agent.federation.processes import (
    FLOWER_ENV,
    ProcessSet,
    flower_env,
    free_port,
    signal_guard,
    tool,
)

__all__ = [
    "FLOWER_ENV",
    "FederationError",
    "LocalFederation",
    "RunOutcome",
    "SiteSpec",
    "free_port",
    "tool",
]

log = logging.getLogger("her2fed.federation.local")


@dataclass(frozen=True)
class SiteSpec:
    site_id: str
    site_config: str | None = None
    """Passed to the site's SuperNode as node config ``site-config`` (the handler reads it)."""
    handler: str = DEFAULT_HANDLER
    """``module:factory`` the site agent imports (installed code)."""
    allowlist: str | None = None
    """Path of the site's allowlist.toml (default: the installed app only)."""
    identity_key: str | None = None
    """The site's own Ed25519 key (``[keys] site_key``); default: a key made for this run.

    A site that keeps an audit log needs its own key here: the log is signed
    with the key the agent runs with, and one log has one signer.
    """


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
        self._control: FlowerControl | None = None
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
        if self._own_dir and not survivors:
            # the run's private keys and CA live here: never leave them in /tmp
            shutil.rmtree(self.workdir, ignore_errors=True)
        return survivors

    def flower_env(self, home: str) -> dict[str, str]:
        return flower_env(self.workdir / "flwr" / home)

    def _start(self) -> None:
        keys_dir = self.workdir / "keys"
        keys_dir.mkdir(parents=True, exist_ok=True)
        self.pki = pki = make_run_pki(self.workdir / "pki", (self.host, "localhost"))
        coordinator_key = generate_key()
        write_public_key(coordinator_key, keys_dir / "coordinator.pub")
        site_keys = {}
        node_public = {}
        for site in self.sites:
            if site.identity_key is not None:
                key = read_private_key(site.identity_key)
            else:
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
        self._control = control = FlowerControl(
            self.superlink_address,
            pki.ca_pem(),
            log_hint=f"{self.processes.log_dir}/superlink.log",
        )
        self._wait(control.reachable, "the SuperLink did not come up", "superlink")
        for site in self.sites:
            self.node_ids[site.site_id] = control.register(site.site_id, node_public[site.site_id])

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
    def control(self) -> FlowerControl:
        if self._control is None:
            raise FederationError("the federation is not running")
        return self._control

    def online_sites(self) -> list[str]:
        return self.control.online(self.node_ids)

    def submit(self, fab: FabBundle, run_config: Mapping[str, str | int | float | bool]) -> int:
        """Start a Flower run of ``fab`` (the coordinator's side of ``flwr run``)."""
        return self.control.submit(fab, run_config)

    def wait_run(self, run_id: int, timeout: float, report_path: Path | None = None) -> RunOutcome:
        return self.control.wait_run(run_id, timeout, report_path)

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
        return open_study_session(
            self.control,
            self.aggregation,
            node_ids=self.node_ids,
            study_hash=study_hash,
            report_dir=self.workdir / "runs",
            timeout=timeout,
            flower_ping_rounds=flower_ping_rounds,
            fab=fab,
        )

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
