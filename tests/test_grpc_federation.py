"""`her2fed local --transport grpc`: a real federation gives exactly the in-process numbers.

Real processes on loopback: a Flower SuperLink, one SuperNode (process
isolation) and site agent per site, the aggregation service, TLS with a CA
generated for the run. Every query and every secure-aggregation message
crosses the gRPC stream between processes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
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
from coordinator.transport import AggregationError, InProcessTransport, SitesDropped
from site_agent.config import load_site
from site_agent.handlers import SiteAgent
from tests.rehearsal import approve

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
    sites = {s: out / s / "site.toml" for s in ("athens", "oslo", "munich")}
    # a fourth site with oslo's data (its own directory: its own keys and audit log)
    shutil.copytree(out / "oslo", out / "extra")
    extra = out / "extra" / "site.toml"
    extra.write_text(extra.read_text().replace('id = "oslo"', 'id = "extra"'))
    approve(GENERIC, [*sites.values(), extra])
    return sites


def spec(name: str, config: Path) -> SiteSpec:
    """A site of the local federation running as itself: its config and its own key."""
    key = load_site(config).key_paths.site_key
    return SiteSpec(name, site_config=str(config), handler=HANDLER, identity_key=str(key))


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
    sites = {s: out / s / "site.toml" for s in ("athens", "oslo", "munich")}
    approve(HER2, sites.values())
    return sites


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
    paths = {**generic_sites, "extra": generic_sites["oslo"].parents[1] / "extra" / "site.toml"}
    specs = [spec(n, p) for n, p in paths.items()]
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
    assert outcome.aggregation["float_encoding"] == (
        "fixed point, 2 x 48-bit limbs, 48 fractional bits"  # the sessions' format, not a label
    )
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
    specs = [spec(n, p) for n, p in generic_sites.items()]
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


def _records(config: Path) -> list[dict[str, Any]]:
    log = config.parent / "audit.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_every_request_and_reply_is_in_the_sites_signed_audit_log(
    generic_sites: dict[str, Path], tmp_path: Path
) -> None:
    """After a real run, each site's log verifies under its own key and holds, per session,
    the request before every reply: the study accepted, the summaries' layouts with the
    policy rules they passed, and each masked vector with its secure-aggregation participants."""
    before = {s: len(_records(p)) for s, p in generic_sites.items()}
    run_cli(GENERIC, generic_sites, tmp_path / "run", "grpc")
    for site, config in generic_sites.items():
        verified = subprocess.run(
            [EXE, "site", "audit", "verify", str(config)], capture_output=True, text=True
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        new = _records(config)[before[site] :]
        kinds = [r["kind"] for r in new]
        assert kinds[0] == "session_opened" and "refusal" not in kinds, kinds
        session = {r["session_id"] for r in new}
        assert len(session) == 1  # one study, one session, every record names it
        sent = [r for r in new if r["kind"] == "payload_sent"]
        for rec in sent:  # a reply is recorded right after the request it answers
            assert new[new.index(rec) - 1]["kind"] == "query_received"
        study = next(r for r in sent if r["details"]["step"] == "study")
        accepted = b'{"min_cell": 5, "min_at_risk": 10}'  # the site's public release thresholds
        assert study["size"] == len(accepted)
        assert study["sha256"] == hashlib.sha256(accepted).hexdigest()
        masked = [r for r in sent if "masked summaries" in r["details"]["what"]]
        assert masked, "no masked vector recorded"
        for rec in masked:
            assert sorted(rec["details"]["participants"]) == sorted(generic_sites)
            checks = rec["details"]["checks"]
            assert {c["name"] for c in checks} >= {"min_cohort"}
            assert all(c["passed"] for c in checks)
            assert rec["size"] > 1000  # the masked vector itself, not a summary of it


def test_a_study_not_approved_at_a_site_is_refused_there_and_logged(
    generic_sites: dict[str, Path], tmp_path: Path
) -> None:
    """A study changed by one byte is another study: munich never approved it, so munich
    refuses it (rule study_approval, logged at munich) and the coordinator names munich."""
    changed = tmp_path / "study.toml"
    changed.write_bytes(GENERIC.read_bytes() + b"\n# one more line\n")
    approve(changed, [generic_sites["athens"], generic_sites["oslo"]])
    loaded = load_study(changed)
    before = len(_records(generic_sites["munich"]))
    specs = [spec(n, p) for n, p in generic_sites.items()]
    with LocalFederation(specs, workdir=tmp_path / "fed") as fed:
        session, _ = fed.open_session(loaded.hash)
        assert fed.coordinator_key is not None and fed.consortium is not None
        with pytest.raises(SitesDropped, match=r"munich: .*study_approval.*not been approved"):
            GrpcTransport(
                session,
                changed.read_bytes(),
                coordinator_key=fed.coordinator_key,
                consortium=fed.consortium,
                timeout=20.0,
            )
        session.close()
    assert not fed.leftovers()
    new = _records(generic_sites["munich"])[before:]
    refusal = [r for r in new if r["kind"] == "refusal"]
    assert len(refusal) == 1 and refusal[0]["details"]["rule"] == "study_approval"
    assert refusal[0]["study_hash"] == loaded.hash
    assert not [r for r in new if r["kind"] == "payload_sent"]  # munich sent nothing


def test_local_names_every_site_that_has_not_approved(
    generic_sites: dict[str, Path], tmp_path: Path
) -> None:
    changed = tmp_path / "study.toml"
    changed.write_bytes(GENERIC.read_bytes() + b"\n# not approved anywhere\n")
    args = [a for name, path in generic_sites.items() for a in ("--site", f"{name}={path}")]
    proc = subprocess.run(
        [EXE, "local", str(changed), *args, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    for site in generic_sites:
        assert f"site {site}: refused by site policy study_approval" in proc.stderr
    assert "her2fed site approve" in proc.stderr
    assert not (tmp_path / "o" / "results.json").exists()
