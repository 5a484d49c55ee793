"""`her2fed local --transport grpc`: a real federation gives exactly the in-process numbers.

Real processes on loopback: a Flower SuperLink, one SuperNode (process
isolation) and site agent per site, the aggregation service, TLS with a CA
generated for the run. Every query and every secure-aggregation message
crosses the gRPC stream between processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coordinator.federation.local import LocalFederation, SiteSpec
from coordinator.grpc_transport import GrpcTransport
from coordinator.orchestrate import run_study
from coordinator.results import pooled_json
from coordinator.study import load_study
from coordinator.transport import AggregationError, InProcessTransport
from site_agent.config import load_site
from site_agent.handlers import SiteAgent

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).parent / "her2fed")
HANDLER = "site_agent.federation.study_handler:factory"
GENERIC = ROOT / "examples" / "generic" / "study.toml"
HER2 = ROOT / "examples" / "her2" / "study.toml"


def descendants_alive(token: str) -> list[int]:
    """Live processes that inherited this test's marker (other runs' processes do not count)."""
    needle = f"HER2FED_TEST_RUN={token}".encode()
    alive = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
                if state not in ("Z", "X"):
                    alive.append(int(proc.name))
        except OSError:
            continue
    return alive


def run_cli(study: Path, sites: dict[str, Path], out: Path, transport: str) -> dict[str, Any]:
    args = [a for name, path in sites.items() for a in ("--site", f"{name}={path}")]
    proc = subprocess.run(
        [EXE, "local", str(study), *args, "--out", str(out), "--transport", transport],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads((out / "results.json").read_text())
    return doc


@pytest.fixture(scope="module")
def generic_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("generic")
    subprocess.run(
        [sys.executable, str(ROOT / "examples/generic/make_sites.py"), str(out)],
        check=True,
        capture_output=True,
    )
    return {s: out / s / "site.toml" for s in ("athens", "oslo", "munich")}


@pytest.fixture(scope="module")
def her2_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("her2")
    subprocess.run(
        [
            EXE,
            "synth",
            "--out",
            str(out),
            "--sites",
            "athens:GR:150,oslo:NO:200,munich:DE:180",
            "--seed",
            "3",
        ],
        check=True,
        capture_output=True,
    )
    return {s: out / s / "site.toml" for s in ("athens", "oslo", "munich")}


@pytest.mark.parametrize("study", [GENERIC, HER2], ids=["generic", "her2"])
def test_grpc_equals_inprocess(
    study: Path, generic_sites: dict[str, Path], her2_sites: dict[str, Path], tmp_path: Path
) -> None:
    sites = generic_sites if study == GENERIC else her2_sites
    grpc = run_cli(study, sites, tmp_path / "grpc", "grpc")
    local = run_cli(study, sites, tmp_path / "inprocess", "inprocess")
    assert grpc["analyses"] == local["analyses"]
    assert grpc["study"]["transport"] == "grpc"
    assert "gRPC aggregation channel" in grpc["study"]["aggregation"]["method"]
    assert grpc["study"]["aggregation"]["rounds"] == grpc["study"]["rounds"]


def test_a_site_killed_mid_study_is_named_and_the_rest_finish(
    generic_sites: dict[str, Path], tmp_path: Path
) -> None:
    """Four sites; one dies after round 2; the study restarts and completes on three."""
    loaded = load_study(GENERIC)
    paths = {**generic_sites, "extra": generic_sites["oslo"]}
    specs = [SiteSpec(n, site_config=str(p), handler=HANDLER) for n, p in paths.items()]
    messages: list[str] = []
    with LocalFederation(specs, workdir=tmp_path / "fed") as fed:
        session, _ = fed.open_session(loaded.hash)
        assert fed.coordinator_key is not None and fed.consortium is not None
        transport = GrpcTransport(
            session,
            GENERIC.read_bytes(),
            coordinator_key=fed.coordinator_key,
            consortium=fed.consortium,
            timeout=20.0,
        )
        killed = False

        def progress(msg: str) -> None:
            nonlocal killed
            messages.append(msg)
            if msg.startswith("round 3") and not killed:
                fed.kill_site("extra")
                killed = True

        outcome = run_study(loaded.study, transport, progress)
        session.close()
    assert any("extra" in m and "restarting" in m for m in messages), messages
    assert outcome.sites == ("athens", "munich", "oslo")
    assert "extra" in outcome.aggregation["dropouts"]  # type: ignore[operator]
    agents = [
        SiteAgent(load_site(generic_sites[s]), loaded.study) for s in ("athens", "munich", "oslo")
    ]
    ref = run_study(loaded.study, InProcessTransport(agents))
    for a in loaded.study.analyses:
        assert pooled_json(a, outcome.results[a.id]) == pooled_json(a, ref.results[a.id]), a.id
    assert not fed.leftovers()


def test_too_few_sites_left_releases_nothing(
    generic_sites: dict[str, Path], tmp_path: Path
) -> None:
    loaded = load_study(GENERIC)
    specs = [SiteSpec(n, site_config=str(p), handler=HANDLER) for n, p in generic_sites.items()]
    with LocalFederation(specs, workdir=tmp_path / "fed") as fed:
        session, _ = fed.open_session(loaded.hash)
        assert fed.coordinator_key is not None and fed.consortium is not None
        transport = GrpcTransport(
            session,
            GENERIC.read_bytes(),
            coordinator_key=fed.coordinator_key,
            consortium=fed.consortium,
            timeout=20.0,
        )
        fed.kill_site("munich")
        with pytest.raises(AggregationError, match=r"only 2 site\(s\) remain.*nothing is released"):
            run_study(loaded.study, transport)
        session.close()
    assert not fed.leftovers()
