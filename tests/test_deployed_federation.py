"""The deployed mode, as the consortium lead and hospital IT run it: real processes on loopback.

Everything goes through the installed ``her2fed`` console script, each
command its own process, as on separate machines:

- the lead: ``consortium init`` (CA, server certificate, coordinator key,
  empty registry), ``consortium add-site`` per site card, ``consortium
  serve`` (SuperLink on 127.0.0.1 + fleet gateway), ``study run``;
- each of three hospitals: ``site keys`` then ``site start`` (SuperNode +
  site agent, supervised); one site (munich) names every key file in an
  explicit ``[keys]`` table, the others use the default layout;
- an impostor: athens' site config and identity key with a node key the
  consortium never registered.

One federation is started for the module (Flower takes seconds to start)
and the tests use it in file order; the last one stops it. Every process
carries a marker in its environment, so the last test can prove none is left.
Every wait is bounded and a module watchdog (SIGALRM) fails a hung run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from site_agent.federation.processes import free_port
from tests.rehearsal import approve
from tests.watchdog import module_watchdog

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).parent / "her2fed")
STUDY = ROOT / "examples" / "generic" / "study.toml"
SITES = ("athens", "oslo", "munich")
MARK = "HER2FED_TEST_RUN"
WATCHDOG_SECONDS = 150
T = 60.0


watchdog = module_watchdog(WATCHDOG_SECONDS, "deployed-federation tests")


def marked(token: str) -> list[psutil.Process]:
    """Live processes that inherited this module's marker (other runs' do not count)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == token and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@dataclass
class Deployment:
    work: Path
    token: str
    env: dict[str, str]
    federation: Path
    fleet: str
    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def her2fed(self, *args: str, timeout: float = T) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [EXE, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env=self.env,
            cwd=self.work,
        )

    def spawn(self, name: str, *args: str) -> subprocess.Popen[str]:
        log = self.work / f"{name}.out"
        with open(log, "w", encoding="utf-8") as out:
            proc = subprocess.Popen(
                [EXE, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=self.env,
                cwd=self.work,
            )
        self.procs[name] = proc
        self.logs[name] = log
        return proc

    def output(self, name: str) -> str:
        return self.logs[name].read_text(encoding="utf-8", errors="replace")

    def wait_for(self, name: str, text: str, timeout: float = T) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output(name):
            proc = self.procs[name]
            assert proc.poll() is None, f"{name} exited ({proc.returncode}):\n{self.output(name)}"
            assert time.monotonic() < deadline, f"{name}: no {text!r}:\n{self.output(name)}"
            time.sleep(0.2)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _share_public_files(cons: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for file in (cons / "pki" / "ca.pem", cons / "coordinator.pub", cons / "consortium.toml"):
        shutil.copy(file, target / file.name)


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("deployed")
    token = secrets.token_hex(8)
    env = {**os.environ, MARK: token}
    fleet, aggregation, link = free_port(), free_port(), free_port()
    d = Deployment(work, token, env, work / "cons" / "federation.toml", f"127.0.0.1:{fleet}")
    try:
        # independent steps run side by side: each CLI call costs seconds of imports
        made = subprocess.Popen(
            [sys.executable, str(ROOT / "examples/generic/make_sites.py"), str(work / "sites")],
            stdout=subprocess.DEVNULL,
            env=env,
        )
        init = d.her2fed(
            "consortium", "init", "cons",
            "--host", "127.0.0.1",
            *[a for s in SITES for a in ("--site", s)],
            "--bind", "127.0.0.1",
            "--fleet-port", str(fleet),
            "--aggregation-port", str(aggregation),
            "--superlink-port", str(link),
            "--name", "test consortium",
        )  # fmt: skip
        _ok(init)
        # the lead serves before any site is added: add-site registers at the running SuperLink
        d.spawn("serve", "consortium", "serve", "cons/federation.toml")
        assert made.wait(T) == 0
        munich = work / "sites" / "munich" / "site.toml"
        munich.write_text(
            munich.read_text(encoding="utf-8")
            + '\n[keys]\nsite_key = "secret/identity.key"\nnode_key = "secret/fleet.key"\n'
            'coordinator_key = "trust/coordinator.pub"\nca_cert = "trust/ca.pem"\n'
            'consortium_registry = "trust/consortium.toml"\n',
            encoding="utf-8",
        )
        keygen = {
            site: subprocess.Popen(
                [EXE, "site", "keys", f"sites/{site}/site.toml"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=work,
            )
            for site in SITES
        }
        for site, proc in keygen.items():
            out, err = proc.communicate(timeout=T)
            assert proc.returncode == 0, err
            card = work / "sites" / site / ("secret" if site == "munich" else "keys")
            assert f"wrote {(card / f'{site}.card.toml').relative_to(work)}" in out
        # each privacy officer approves the signed study (the sites answer nothing else)
        approve(STUDY, [work / "sites" / s / "site.toml" for s in SITES])
        # the reference: the same site configs in one process (runs while the federation starts)
        d.spawn(
            "local",
            "local", str(STUDY),
            *[a for s in SITES for a in ("--site", f"{s}={work / 'sites' / s / 'site.toml'}")],
            "--out", str(work / "local"), "--quiet",
        )  # fmt: skip
        # the impostor: athens' config and identity key, a node key nobody registered
        shutil.copytree(work / "sites" / "athens", work / "impostor")
        (work / "impostor" / "keys" / "node.key").unlink()
        impostor = subprocess.Popen(
            [EXE, "site", "keys", "impostor/site.toml"],
            stdout=subprocess.DEVNULL,
            env=env,
            cwd=work,
        )
        d.wait_for("serve", "fleet gateway on")
        for site in SITES:
            card = work / "sites" / site / ("secret" if site == "munich" else "keys")
            added = _ok(
                d.her2fed(
                    "consortium", "add-site", "cons/federation.toml", f"{card}/{site}.card.toml"
                )
            )
            assert "node key registered at the running SuperLink" in added
        for site in SITES:
            trust = "trust" if site == "munich" else "consortium"
            _share_public_files(work / "cons", work / "sites" / site / trust)
        _share_public_files(work / "cons", work / "impostor" / "consortium")
        assert impostor.wait(T) == 0
        for site in SITES:
            d.spawn(site, "site", "start", f"sites/{site}/site.toml", "--superlink", d.fleet)
        d.spawn("impostor", "site", "start", "impostor/site.toml", "--superlink", d.fleet)
        yield d
    finally:
        for proc in d.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in d.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for leftover in marked(token):
            leftover.kill()


def study_run(out: str) -> tuple[str, ...]:
    """`her2fed study run` of the demo study on the test consortium, results in ``out``."""
    return (
        "study", "run", str(STUDY),
        "--federation", "cons/federation.toml",
        "--out", out,
        "--wait-sites", "45",
        "--open-timeout", "45",
    )  # fmt: skip


def test_the_study_on_the_deployed_federation_equals_the_local_run(dep: Deployment) -> None:
    """Three hospitals connect outbound with their own keys; `study run` opens the session
    through the SuperLink's Control API and gives exactly `her2fed local --transport
    inprocess`'s analyses on the same site configs, with results.json and report.html."""
    for site in SITES:
        dep.wait_for(site, "connected: the SuperLink accepted this site's node key")
    run = dep.her2fed(*study_run("out"), timeout=100)
    assert run.returncode == 0, run.stderr
    assert "session open at 3 sites" in run.stderr and "rfs_cox" in run.stdout
    assert dep.procs["local"].wait(T) == 0, dep.output("local")
    deployed = json.loads((dep.work / "out" / "results.json").read_text())
    local = json.loads((dep.work / "local" / "results.json").read_text())
    differ = [a for a in local["analyses"] if deployed["analyses"].get(a) != local["analyses"][a]]
    assert deployed["analyses"] == local["analyses"], f"analyses that differ: {differ}"
    assert (dep.work / "out" / "report.html").stat().st_size > 10_000
    study = deployed["study"]
    assert study["sites"] == sorted(SITES)
    assert study["countries"] == {"athens": "GR", "oslo": "NO", "munich": "DE"}
    assert study["transport"] == "grpc"
    assert study["aggregation"]["deployment"]["federation"] == "test consortium"
    for site in SITES:
        dep.wait_for("serve", f"site {site}: online", 5)


def test_a_coordinator_killed_mid_study_leaves_the_sites_ready_for_the_next(
    dep: Deployment,
) -> None:
    """The coordinator process is SIGKILLed in the middle of the rounds (no clean-up of any
    kind): it releases nothing, every site ends that session by itself and stays connected,
    and the next `study run` completes with exactly the local numbers."""
    for site in SITES:
        dep.wait_for(site, "connected: the SuperLink accepted this site's node key")
    crashed = dep.spawn("crashed", *study_run("crashed"))
    dep.wait_for("crashed", "round 2", timeout=100)
    crashed.send_signal(signal.SIGKILL)
    assert crashed.wait(T) == -signal.SIGKILL
    assert not (dep.work / "crashed" / "results.json").exists()
    for site in SITES:
        dep.wait_for(site, " ended: ", timeout=60)  # the site noticed, on its own
        assert dep.procs[site].poll() is None, dep.output(site)
    again = dep.her2fed(*study_run("again"), timeout=150)
    assert again.returncode == 0, again.stderr
    assert dep.procs["local"].wait(T) == 0, dep.output("local")
    local = json.loads((dep.work / "local" / "results.json").read_text())
    after = json.loads((dep.work / "again" / "results.json").read_text())
    assert after["analyses"] == local["analyses"]
    assert after["study"]["sites"] == sorted(SITES)


def test_a_site_never_opens_an_inbound_port(dep: Deployment) -> None:
    """Everything a hospital runs (supervisor, SuperNode, agent) listens on loopback only:
    the SuperNode's runtime API binds 127.0.0.1 and nothing else listens."""
    for site in SITES:
        root = psutil.Process(dep.procs[site].pid)
        family = [root, *root.children(recursive=True)]
        assert len(family) >= 3, site  # supervisor, SuperNode, agent
        listening = [
            c.laddr
            for p in family
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening, site
        assert all(addr.ip in ("127.0.0.1", "::1") for addr in listening), (site, listening)
        out = dep.output(site)
        assert "runtime API      127.0.0.1:" in out and "no inbound port" in out


def test_a_node_key_the_consortium_did_not_register_is_refused(dep: Deployment) -> None:
    """A site whose node key the consortium never registered (here: athens' config and identity
    key with another node key) is refused by the SuperLink's node authentication; `site start`
    stops with one line naming the key and the fix, and the real athens is unaffected."""
    impostor = dep.procs["impostor"]
    assert impostor.wait(T) == 2, dep.output("impostor")
    out = dep.output("impostor")
    error = [line for line in out.splitlines() if line.startswith("her2fed: error:")]
    assert len(error) == 1, out
    assert "refused this site's node key" in error[0]
    assert "her2fed consortium add-site" in error[0]
    assert "Traceback" not in out
    link_log = (dep.work / "cons" / "logs" / "superlink.log").read_text(errors="replace")
    assert "No SuperNode found with the given public key" in link_log
    assert dep.procs["athens"].poll() is None


def test_stopping_leaves_no_process_behind(dep: Deployment) -> None:
    """Ctrl-C (SIGINT) stops one site, SIGTERM the others and the consortium server: each
    stops its SuperNode/agent or SuperLink/SuperExec/gateway, exits 0, and no process
    carrying this run's marker is left."""
    assert marked(dep.token), "the federation should be running before the stop"
    order: list[tuple[str, Callable[[subprocess.Popen[str]], Any]]] = [
        ("athens", lambda p: p.send_signal(signal.SIGINT)),
        ("oslo", lambda p: p.send_signal(signal.SIGTERM)),
        ("munich", lambda p: p.send_signal(signal.SIGTERM)),
        ("serve", lambda p: p.send_signal(signal.SIGTERM)),
    ]
    for name, stop in order:
        stop(dep.procs[name])
    for name, _ in order:
        assert dep.procs[name].wait(30) == 0, dep.output(name)
        assert dep.output(name).rstrip().endswith("stopped"), dep.output(name)[-2000:]
    deadline = time.monotonic() + 10
    while marked(dep.token) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marked(dep.token) == []


def test_site_start_names_a_missing_key_and_an_unknown_site(
    dep: Deployment, tmp_path: Path
) -> None:
    """Preflight errors a site can make are one line naming the file and the fix, before any
    process starts: no keys yet, and a site the consortium registry does not list."""
    shutil.copytree(
        dep.work / "sites" / "oslo",
        tmp_path / "tromso",
        ignore=shutil.ignore_patterns("keys", "consortium"),
    )
    site = tmp_path / "tromso" / "site.toml"
    site.write_text(site.read_text().replace('id = "oslo"', 'id = "tromso"'))

    def her2fed(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [EXE, *args], capture_output=True, text=True, check=False, timeout=T, env=dep.env
        )

    first = her2fed("site", "start", str(site), "--superlink", "127.0.0.1:9")
    assert first.returncode == 2
    assert first.stderr.count("\n") == 1, first.stderr
    assert "keys.site_key" in first.stderr and "her2fed site keys" in first.stderr

    assert her2fed("site", "keys", str(site)).returncode == 0
    assert (tmp_path / "tromso" / "keys" / "site.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "tromso" / "keys" / "node.key").stat().st_mode & 0o777 == 0o600
    _share_public_files(dep.work / "cons", tmp_path / "tromso" / "consortium")
    second = her2fed("site", "start", str(site), "--superlink", "127.0.0.1:9")
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1, second.stderr
    assert "does not list site 'tromso'" in second.stderr and "add-site" in second.stderr
    assert marked(dep.token) == []


def test_federation_toml_keeps_the_control_api_off_the_network(tmp_path: Path) -> None:
    """FEDERATION.toml is validated: a SuperLink address that is not loopback (Flower's
    Control API has no authentication) and unknown keys are refused with the fix."""
    from coordinator.federation.consortium import init_consortium, load_federation
    from her2fed.errors import SpecError

    made = init_consortium(tmp_path / "c", hosts=["consortium.example.org"], sites=["a", "b"])
    config = load_federation(made.federation)
    assert config.superlink.startswith("127.0.0.1:") and config.sites == ("a", "b")
    assert config.fleet_public == "consortium.example.org:9092"
    assert config.ca_cert == tmp_path / "c" / "pki" / "ca.pem"
    text = made.federation.read_text()
    made.federation.write_text(text.replace('address = "127.0.0.1:', 'address = "0.0.0.0:'))
    with pytest.raises(SpecError, match=r"superlink\.address.*not a loopback.*Fix: bind"):
        load_federation(made.federation)
    made.federation.write_text(text.replace("[fleet]\n", "[fleet]\nport = 1\n"))
    with pytest.raises(SpecError, match=r"fleet\.port: unknown key"):
        load_federation(made.federation)
    with pytest.raises(SpecError, match="exists already"):
        init_consortium(tmp_path / "c", hosts=["x"])


def test_keys_table_is_relative_to_site_toml_and_checked(tmp_path: Path) -> None:
    """[keys] paths are relative to site.toml with documented defaults; unknown keys are
    errors; a missing file is named with its fix when the site starts."""
    from her2fed.errors import SpecError
    from site_agent.config import load_site, require_key_files

    site = tmp_path / "site.toml"
    base = '[site]\nid = "a"\ncountry = "GR"\n[data.analysis]\npath = "a.csv"\n'
    site.write_text(base)
    keys = load_site(site).key_paths
    assert keys.site_key == tmp_path / "keys" / "site.key"
    assert keys.consortium_registry == tmp_path / "consortium" / "consortium.toml"
    assert keys.lead_key == tmp_path / "consortium" / "lead.pub"
    assert keys.allowlist is None
    site.write_text(base + '[keys]\nca_cert = "trust/ca.pem"\nallowlist = "allow.toml"\n')
    keys = load_site(site).key_paths
    assert keys.ca_cert == tmp_path / "trust" / "ca.pem"
    assert keys.allowlist == tmp_path / "allow.toml"
    with pytest.raises(SpecError, match=r"keys\.site_key: .* does not exist\. Fix: run"):
        require_key_files(load_site(site))
    site.write_text(base + '[keys]\nsite_keys = "k"\n')
    with pytest.raises(SpecError, match=r"keys\.site_keys: unknown key"):
        load_site(site)
