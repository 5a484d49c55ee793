"""``her2fed local`` and ``her2fed site check`` as a user runs them (real processes)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from coordinator.orchestrate import run_study
from coordinator.results import pooled_json
from coordinator.study import load_study
from coordinator.transport import InProcessTransport
from site_agent.config import Policy, SiteConfig, load_site
from site_agent.handlers import SiteAgent
from tests.rehearsal import approve

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).parent / "her2fed")
STUDY = ROOT / "examples" / "generic" / "study.toml"
SITES = ("athens", "oslo", "munich")


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, cwd=ROOT)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    made = sh(sys.executable, "examples/generic/make_sites.py", str(out / "sites"))
    assert made.returncode == 0, made.stderr
    approve(STUDY, [out / "sites" / s / "site.toml" for s in SITES])
    proc = sh(
        EXE,
        "local",
        str(STUDY),
        *[a for s in SITES for a in ("--site", f"{s}={out / 'sites' / s / 'site.toml'}")],
        "--out",
        str(out / "run"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "round 1" in proc.stderr and "wrote" in proc.stderr  # progress is shown
    assert "rfs_cox" in proc.stdout  # the summary table
    return out


def results(demo: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((demo / "run" / "results.json").read_text())
    return doc


def test_results_follow_the_contract(demo: Path) -> None:
    doc = results(demo)
    study = doc["study"]
    assert study["hash"] == "sha256:" + hashlib.sha256(STUDY.read_bytes()).hexdigest()
    assert study["sites"] == list(SITES)
    a = doc["analyses"]
    km = a["rfs_km_hormon"]
    assert km["kind"] == "km" and km["per_site"] is None
    for key in (
        "time",
        "n_risk",
        "n_event",
        "n_censor",
        "surv",
        "std_err",
        "lower",
        "upper",
        "median",
        "median_lower",
        "median_upper",
    ):
        assert key in km["pooled"]["groups"]["no"], key
    cox = a["rfs_cox"]["pooled"]
    for key in (
        "coef",
        "se",
        "z",
        "p",
        "hr",
        "hr_lower",
        "hr_upper",
        "loglik_initial",
        "loglik_final",
        "iterations",
        "lr_test",
        "wald_test",
        "score_test",
    ):
        assert key in cox, key
    assert set(cox["coef"]) == {
        "age",
        "tsize",
        "pnodes",
        "progrec",
        "horTh[yes]",
        "tgrade[II]",
        "tgrade[III]",
    }
    lr = a["rfs_logrank_grade"]["pooled"]
    assert lr["df"] == 2 and set(lr["observed"]) == {"I", "II", "III"}
    cif = a["progression_vs_death"]["pooled"]["groups"]["F"]
    assert set(cif["cif"]) == {"1", "2"} and len(cif["cif"]["1"]) == len(cif["time"])


def test_three_sites_equal_one_pooled_site(demo: Path) -> None:
    """The secure 3-site run gives the numbers of one site holding every row (plain sum).

    Release rules off on both sides: under them the merged bins depend on how
    rows are split (leave-one-out asks each site), which is the point of them;
    tests/test_disclosure.py checks the release is exact on its own bins.
    """
    loaded = load_study(STUDY)
    exact = Policy(min_cell=0, min_at_risk=0)
    sites = [
        SiteAgent(replace(load_site(demo / "sites" / s / "site.toml"), policy=exact), loaded.study)
        for s in SITES
    ]
    fed_run = run_study(loaded.study, InProcessTransport(sites))
    fed = {a.id: {"pooled": pooled_json(a, fed_run.results[a.id])} for a in loaded.study.analyses}
    tables = {
        t: pd.concat([pd.read_csv(demo / "sites" / s / f"{t}.csv") for s in SITES])
        for t in ("analysis", "competing")
    }
    pooled = SiteConfig(Path("pooled.toml"), "pooled", "XX", policy=exact)
    agent = SiteAgent(pooled, loaded.study, tables=tables)
    out = run_study(loaded.study, InProcessTransport([agent], secure=False))
    one = {a.id: pooled_json(a, out.results[a.id]) for a in loaded.study.analyses}
    # counts travel as integers: bit-exact through secure aggregation
    for aid in ("rfs_km_hormon", "progression_vs_death", "rfs_logrank_grade", "rfs_na"):
        assert json.loads(json.dumps(one[aid])) == json.loads(json.dumps(fed[aid]["pooled"])), aid
    for key in ("coef", "se"):
        a, b = one["rfs_cox"][key], fed["rfs_cox"]["pooled"][key]
        np.testing.assert_allclose(list(a.values()), list(b.values()), rtol=1e-9)
    assert str(fed_run.aggregation["method"]).startswith("pairwise-masked")


def test_site_check_passes_and_prints_aggregates_only(demo: Path, tmp_path: Path) -> None:
    """A sentinel patient value planted in the data must not reach the screen."""
    site = tmp_path / "athens"
    site.mkdir()
    for table in ("analysis", "competing"):
        df = pd.read_csv(demo / "sites" / "athens" / f"{table}.csv")
        if table == "analysis":
            df.loc[0, "progrec"] = 7777771
            df.loc[1, "time"] = 6666661
        df.to_csv(site / f"{table}.csv", index=False)
    (site / "site.toml").write_text((demo / "sites" / "athens" / "site.toml").read_text())
    proc = sh(EXE, "site", "check", str(site / "site.toml"), "--study", str(STUDY))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check passed" in proc.stdout
    assert "[ OK ] analysis rfs_cox" in proc.stdout
    assert "7777771" not in proc.stdout + proc.stderr
    assert "6666661" not in proc.stdout + proc.stderr


def test_site_check_reports_bad_data(demo: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    df = pd.read_csv(demo / "sites" / "oslo" / "analysis.csv")
    df.loc[3, "time"] = -5
    df.to_csv(bad / "analysis.csv", index=False)
    (bad / "site.toml").write_text(
        '[site]\nid = "b"\ncountry = "NO"\n[data.analysis]\npath = "analysis.csv"\n'
    )
    proc = sh(EXE, "site", "check", str(bad / "site.toml"), "--study", str(STUDY))
    assert proc.returncode == 1
    assert "negative time(s), first at data row 4" in proc.stdout
    assert 'add [data.competing] path = "competing.csv"' in proc.stdout
    assert "check FAILED" in proc.stdout


def test_help_is_there() -> None:
    for args in (("--help",), ("local", "--help"), ("site", "check", "--help")):
        proc = sh(EXE, *args)
        assert proc.returncode == 0 and "usage: her2fed" in proc.stdout


def _released_cells(doc: dict[str, Any]) -> list[tuple[str, str, int, int, int]]:
    """(analysis, group, n_risk, events of a cause, everyone leaving) per released row."""
    out = []
    for aid, a in doc["analyses"].items():
        if a["kind"] not in ("km", "nelson_aalen", "cif"):
            continue
        for label, g in a["pooled"]["groups"].items():
            for i, n_risk in enumerate(g["n_risk"]):
                events = g["n_event"]
                causes = events.values() if isinstance(events, dict) else [events]
                per_cause = [c[i] for c in causes]
                # Nelson-Aalen rows carry no censorings: the next row's n_risk gives the drop
                nxt = g["n_risk"][i + 1] if i + 1 < len(g["n_risk"]) else 0
                leaving = sum(per_cause) + g["n_censor"][i] if "n_censor" in g else n_risk - nxt
                out.extend((aid, label, n_risk, e, leaving) for e in per_cause)
    return out


def test_the_release_passes_the_sites_disclosure_rules(demo: Path) -> None:
    """Under the sites' default policy every released curve row shows 0 or >= 5 events of each
    cause and >= 5 patients leaving, with >= 10 at risk; each analysis says what was done."""
    doc = results(demo)
    assert doc["study"]["disclosure"]["min_cell"] == 5
    rows = _released_cells(doc)
    assert len(rows) > 50
    for aid, label, n_risk, events, leaving in rows:
        assert events == 0 or events >= 5, (aid, label, events)
        assert leaving >= 5 and n_risk >= 10, (aid, label, leaving, n_risk)
    km = doc["analyses"]["rfs_km_hormon"]["disclosure"]
    assert km["bins_merged"] > 0 and km["bins_released"] > 0
