"""A real federation on loopback: SuperLink, 3 SuperNodes, 3 site agents, TLS everywhere.

One federation is started for the module (Flower processes take seconds to
start) and the tests run against it in file order; the last one stops it and
proves no process is left. What each test proves is in its docstring. Every
wait is bounded, and a module watchdog (SIGALRM) fails the run rather than
letting CI hang; the federation's processes are stopped in any case.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from coordinator.federation.local import FederationError, LocalFederation, SiteSpec, free_port, tool
from coordinator.federation.processes import MARK
from coordinator.federation.server import SitesFailed
from site_agent.federation.fab import FAB_NAME, FAB_PUBLISHER, SERVERAPP, build_fab, pyproject
from site_agent.federation.keys import write_supernode_key
from site_agent.federation.selftest import decode_int, encode_int
from tests.watchdog import module_watchdog

SITES = ["athens", "oslo", "munich"]
STUDY = "sha256:" + "c0" * 32
WATCHDOG_SECONDS = 150
T = 45.0


watchdog = module_watchdog(WATCHDOG_SECONDS, "federation tests")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    work = tmp_path_factory.mktemp("federation")
    specs = []
    for site in SITES:
        config = work / "sites" / site / "site.toml"
        config.parent.mkdir(parents=True)
        config.write_text(f'[site]\nid = "{site}"\ncountry = "XX"\n', encoding="utf-8")
        specs.append(SiteSpec(site, site_config=str(config)))
    federation = LocalFederation(specs, work / "run", startup_timeout=40.0)
    try:
        federation.start()
        yield federation
    finally:
        federation.stop()


def _marked(mark: str) -> list[psutil.Process]:
    """Independent of our /proc scanner: psutil's view of processes carrying the marker."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_session_opens_through_flower_and_runs_rounds_over_grpc(fed: LocalFederation) -> None:
    """One Flower run opens the session at all 3 sites (each site's status comes back through
    Flower); then 3 rounds of sum and echo go over the aggregation streams, the node config's
    site-config path reaches the site's handler, and the session closes cleanly."""
    session, run = fed.open_session(STUDY, timeout=T, flower_ping_rounds=1)
    assert run.sub_status == "completed", run.details
    statuses = run.report["statuses"]
    assert sorted(s["site-id"] for s in statuses.values()) == sorted(SITES)
    assert all(s["ok"] and s["code"] == "OK" for s in statuses.values())
    for r in range(1, 4):
        sums = session.broadcast(r, "sum", {s: encode_int(1000 * r) for s in SITES}, T)
        assert {s: decode_int(v) for s, v in sums.items()} == {s: 1000 * r + len(s) for s in SITES}
        echo = session.broadcast(r, "echo", {s: f"{s}:{r}".encode() for s in SITES}, T)
        assert echo == {s: f"{s}:{r}".encode() for s in SITES}
    paths = session.broadcast(4, "site-config", {s: b"" for s in SITES}, T)
    assert {s: Path(v.decode()).parent.name for s, v in paths.items()} == {s: s for s in SITES}
    session.close()
    time.sleep(0.3)
    assert session.dropped() == {}
    alive = {n: fed.processes.get(n).poll() is None for n in fed.processes.names()}
    assert all(alive.values()), alive  # the agents wait for the next study


def test_control_api_is_not_reachable_through_the_public_fleet_port(fed: LocalFederation) -> None:
    """Flower 1.41 serves Control, Runtime and Fleet APIs on one port; sites reach only the
    gateway, which forwards /v1/fleet/* and nothing else. The SuperLink itself listens on
    127.0.0.1."""
    assert fed.gateway is not None and fed.pki is not None
    ca = str(fed.pki.ca_cert)
    for path in ["/v1/control/list-runs", "/v1/control/start-run", "/v1/runtime/acquire-task"]:
        answer = httpx.post(f"https://{fed.gateway.address}{path}", content=b"", verify=ca)
        assert answer.status_code == 404, path
    direct = httpx.post(
        f"https://{fed.superlink_address}/v1/control/list-runs",
        content=b"",
        headers={"content-type": "application/protobuf"},
        verify=ca,
    )
    assert direct.status_code != 404  # the route exists, on loopback only
    assert fed.superlink_address.startswith("127.0.0.1:")


def _evil_files(marker: Path) -> dict[str, bytes]:
    """Same app id and version as her2fed's, plus code that would leave a marker if run."""
    toml = pyproject(clientapp="evil_clientapp:app")
    code = f"""
from pathlib import Path
Path({str(marker)!r}).write_text("the coordinator's code ran at a site")
from flwr.clientapp import ClientApp
app = ClientApp()
"""
    return {"pyproject.toml": toml.encode(), "evil_clientapp.py": code.encode()}


def test_flower_would_run_the_modified_bundle_if_the_node_executed_bundles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control for the next test: with Flower's default executor (flwr-clientapp installs the
    FAB and loads its ClientApp), the modified bundle's code does run."""
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn

    marker = tmp_path / "ran"
    bundle = build_fab(_evil_files(marker))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    install_from_fab(bundle.content, skip_prompt=True)
    get_load_client_app_fn("", None, True)(bundle.fab_id, bundle.version, bundle.sha256)
    assert marker.exists()


def test_modified_app_bundle_is_not_executed_at_any_site(fed: LocalFederation) -> None:
    """A coordinator submits a bundle with the installed app's id and version but other bytes
    (its ClientApp writes a marker file). Every site agent refuses it: the replies are Flower
    errors naming the allowlist, the run fails, no session is opened, and the code never ran."""
    marker = fed.workdir / "evil-ran"
    files = _evil_files(marker)
    bundle = build_fab(files)
    assert (bundle.fab_id, bundle.version) == (f"{FAB_PUBLISHER}/{FAB_NAME}", "0.1.0")
    assert SERVERAPP in files["pyproject.toml"].decode()
    report = fed.workdir / "evil-run.json"
    assert fed.aggregation is not None
    run_id = fed.submit(
        bundle,
        {
            "session-id": "ee" * 16,
            "study-hash": STUDY,
            "aggregation-address": fed.aggregation.address,
            "expected-sites": len(SITES),
            "open-timeout": 20.0,
            "nodes-timeout": 20.0,
            "status-path": str(report),
        },
    )
    run = fed.wait_run(run_id, T, report)
    assert run.sub_status == "failed"
    statuses = run.report["statuses"]
    assert len(statuses) == len(SITES)
    for status in statuses.values():
        assert not status["ok"]
        assert status["code"] == "FLOWER_ERROR_7"  # Flower's INVALID_FAB
        assert "not on this site's allowlist" in status["reason"]
    assert not marker.exists()


def test_unregistered_supernode_is_not_admitted(fed: LocalFederation) -> None:
    """A SuperNode whose key the consortium did not register cannot join the fleet
    (SuperLink node authentication), even through the public gateway."""
    assert fed.gateway is not None and fed.pki is not None
    key = fed.workdir / "keys" / "intruder.node"
    write_supernode_key(key)
    fed.processes.spawn(
        "supernode-intruder",
        [
            tool("flower-supernode"),
            "--root-certificates", str(fed.pki.ca_cert),
            "--superlink", fed.gateway.address,
            "--auth-supernode-private-key", str(key),
            "--isolation", "process",
            "--port", str(free_port()),
            "--max-retries", "1",
        ],
        fed.flower_env("node-intruder"),
    )  # fmt: skip
    proc = fed.processes.get("supernode-intruder")
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    log = (fed.processes.log_dir / "supernode-intruder.log").read_text(errors="replace")
    assert proc.poll() is not None and proc.returncode != 0, log[-2000:]
    assert "Failed to activate SuperNode" in log, log[-2000:]
    link_log = (fed.processes.log_dir / "superlink.log").read_text(errors="replace")
    assert "No SuperNode found with the given public key" in link_log
    assert fed.online_sites() == sorted(SITES)


def test_site_killed_mid_session_is_named_and_the_others_continue(fed: LocalFederation) -> None:
    """A site agent dies (SIGKILL) after round 1: round 2 raises SitesFailed naming only that
    site and carrying the other sites' replies; round 3 runs with the others."""
    session, run = fed.open_session(STUDY, timeout=T)
    assert run.sub_status == "completed", run.details
    payloads = {s: encode_int(7) for s in SITES}
    assert len(session.broadcast(1, "sum", payloads, T)) == 3
    fed.kill_site("oslo")
    with pytest.raises(SitesFailed) as info:
        session.broadcast(2, "sum", payloads, 10.0)
    assert info.value.sites == ["oslo"]
    assert "oslo" in str(info.value)
    assert set(info.value.replies) == {"athens", "munich"}
    rest = {s: p for s, p in payloads.items() if s != "oslo"}
    assert {s: decode_int(v) for s, v in session.broadcast(3, "sum", rest, T).items()} == {
        "athens": 13,
        "munich": 13,
    }
    assert list(session.dropped()) == ["oslo"]
    session.close()


def test_stop_leaves_no_process_behind(fed: LocalFederation) -> None:
    """Stopping ends the SuperLink, its SuperExec and ServerApp processes, every SuperNode and
    agent (checked by our /proc scan and independently with psutil)."""
    mark = fed.processes.mark
    assert _marked(mark), "the federation should be running before the stop"
    survivors = fed.stop()
    assert survivors == []
    assert _marked(mark) == []
    with pytest.raises(FederationError):
        fed.online_sites()


def _mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            mentions = any(text in part for part in proc.cmdline()) or any(
                text in value for value in proc.environ().values()
            )
            if mentions and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_sigterm_to_the_coordinator_stops_the_whole_federation(tmp_path: Path) -> None:
    """The self-test command is killed with SIGTERM while its federation starts up: it exits,
    and no process that belongs to that federation (SuperLink, SuperExec, SuperNodes, agents,
    all found by their work directory in arguments or environment) survives."""
    work = tmp_path / "fed"
    command = [sys.executable, "-m", "coordinator.federation.local", "--sites", "2"]
    proc = subprocess.Popen(
        [*command, "--rounds", "1", "--keep", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        agent_log = work / "logs" / "agent-site2.log"
        while not agent_log.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert agent_log.exists(), "the federation did not get to starting its site agents"
        assert _mentioning(str(work))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) != 0
        time.sleep(0.3)
        assert _mentioning(str(work)) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for leftover in _mentioning(str(work)):
            leftover.kill()
