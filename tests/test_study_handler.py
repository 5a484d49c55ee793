"""The site's study handler without the network: approval, audit records, refusals, DP cost.

The same handler runs behind the gRPC stream (tests/test_grpc_federation.py
covers it there, between real processes); here each step is called directly
so every record it writes can be checked one by one.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from her2fed.protocol import Query
from her2fed.secagg.registry import Registry, public_key_bytes
from site_agent.config import load_site
from site_agent.federation.client import SiteRefusal
from site_agent.federation.keys import generate_key, read_private_key, write_private_key
from site_agent.federation.session import SessionInfo, SiteIdentity
from site_agent.federation.study_handler import StudySession, encode_queries
from tests.rehearsal import approve

ROOT = Path(__file__).resolve().parents[1]
GENERIC = ROOT / "examples" / "generic" / "study.toml"
SESSION = "ab" * 16


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    subprocess.run(
        [sys.executable, str(ROOT / "examples/generic/make_sites.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    return tmp_path / "athens" / "site.toml"


def session(site: Path, study: bytes, *, key_path: Path | None = None) -> StudySession:
    cfg = load_site(site)
    key = read_private_key(key_path or cfg.key_paths.site_key)
    coordinator = generate_key()
    identity = SiteIdentity(
        site_id="athens",
        site_key=key,
        coordinator_key=coordinator.public_key(),
        ca_cert=b"",
        allowed_hosts=frozenset({"127.0.0.1"}),
        consortium=Registry(
            sites={"athens": public_key_bytes(key.public_key())},
            coordinator=public_key_bytes(coordinator.public_key()),
        ),
    )
    digest = "sha256:" + hashlib.sha256(study).hexdigest()
    node_config = {"site-config": str(site)}
    info = SessionInfo("athens", SESSION, digest, "127.0.0.1:1", node_config, identity)
    return StudySession(info)


def records(site: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (site.parent / "audit.jsonl").read_text().splitlines()]


def test_each_step_is_logged_before_the_reply_leaves(site: Path) -> None:
    approve(GENERIC, [site])
    study = GENERIC.read_bytes()
    handler = session(site, study)
    accepted = handler("study", study)
    assert json.loads(accepted) == {"min_cell": 5, "min_at_risk": 10}
    layouts = handler("prepare", encode_queries([Query("rfs_km_hormon", "table")]))
    kinds = [r["kind"] for r in records(site)]
    assert kinds[-5:] == [
        "session_opened",
        "query_received",
        "payload_sent",
        "query_received",
        "payload_sent",
    ]
    sent = records(site)[-1]
    assert sent["sha256"] == hashlib.sha256(layouts).hexdigest() and sent["size"] == len(layouts)
    assert {"name": "min_cohort", "passed": True, "threshold": 10, "analysis": "rfs_km_hormon"} in (
        sent["details"]["checks"]
    )
    query = records(site)[-2]
    assert query["details"]["queries"][0]["analysis"] == "rfs_km_hormon"


def test_an_unapproved_study_is_refused_and_the_refusal_logged(site: Path) -> None:
    approve(GENERIC, [site])  # keys and the lead key; this other study is not approved
    other = GENERIC.read_bytes() + b"\n# changed\n"
    handler = session(site, other)
    with pytest.raises(SiteRefusal, match="study_approval"):
        handler("study", other)
    last = records(site)[-1]
    assert last["kind"] == "refusal" and last["details"]["rule"] == "study_approval"
    with pytest.raises(SiteRefusal, match="no study has been accepted"):
        handler("prepare", encode_queries([Query("rfs_km_hormon", "table")]))


def test_the_agent_must_run_with_the_sites_own_key(site: Path, tmp_path: Path) -> None:
    approve(GENERIC, [site])
    stranger = tmp_path / "stranger.key"
    write_private_key(generate_key(), stranger)
    with pytest.raises(SiteRefusal, match=r"another identity key than \[keys\] site_key"):
        session(site, GENERIC.read_bytes(), key_path=stranger)


def test_a_dp_round_states_its_privacy_cost(site: Path, tmp_path: Path) -> None:
    study_path = tmp_path / "dp.toml"
    study_path.write_text(
        '[study]\nname = "dp"\ngrid_days = 30\nhorizon_days = 2880\ndp_noise_variance = 25\n\n'
        '[[analysis]]\nid = "km"\nkind = "km"\ndataset = "analysis"\ntime = "time"\n'
        'event = "cens"\n'
    )
    approve(study_path, [site])
    study = study_path.read_bytes()
    handler = session(site, study)
    handler("study", study)
    handler("prepare", encode_queries([Query("km", "table")]))
    cost = handler.prepared_dp
    assert cost is not None and cost.epsilon > 0 and cost.delta == 1e-6
    assert "noise variance 25" in cost.mechanism


def test_a_round_with_fewer_sites_than_the_policy_wants_is_refused(site: Path) -> None:
    """The site masks nothing into a sum of fewer sites than its min_sites (default 3)."""
    from her2fed.secagg import messages

    approve(GENERIC, [site])
    study = GENERIC.read_bytes()
    handler = session(site, study)
    handler("study", study)
    handler("prepare", encode_queries([Query("rfs_km_hormon", "table")]))
    begin = messages.RoundBegin(
        session_id=b"\x01" * 32,
        round=1,
        sender="coordinator",
        recipient="athens",
        signature=b"\x00" * 64,
        participants=("athens", "oslo"),
    )
    with pytest.raises(SiteRefusal, match=r"min_sites = 3.*2 contributing site"):
        handler("secagg", begin.to_bytes())
    last = records(site)[-1]
    assert last["kind"] == "refusal" and last["details"]["rule"] == "min_sites"
