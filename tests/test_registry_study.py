"""Registry studies (lines of therapy, endpoints, attrition, pathways) federate exactly.

Three synthetic sites answer through the real pipeline; one site holding all
their raw registry rows must give the same pooled numbers.
"""

from __future__ import annotations

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
from her2fed.errors import SpecError
from her2fed.study import Study, parse_study
from site_agent.handlers import SiteAgent
from site_agent.synth import synthesize
from tests.fedrun import site_config

STUDY = Path(__file__).resolve().parents[1] / "examples" / "her2" / "study.toml"
SITES = (("athens", "GR", 300), ("oslo", "NO", 400), ("munich", "DE", 350))


@pytest.fixture(scope="module")
def frames() -> list[dict[str, pd.DataFrame]]:
    return [synthesize(c, n, seed=i + 1, site_id=s) for i, (s, c, n) in enumerate(SITES)]


def without_country(study: Study) -> Study:
    """The example study with grouping and strata by site/country removed (one pooled site)."""
    keep = tuple(
        replace(a, by=None if a.by and a.by.column == "country" else a.by, strata_by_site=False)
        for a in study.analyses
        if a.kind != "logrank"
    )
    return Study(study.name, study.grid, keep, study.rules)


def run(study: Study, sites: list[dict[str, pd.DataFrame]]) -> dict[str, Any]:
    agents = [
        SiteAgent(replace(site_config(i), country=SITES[i][1]), study, registry=f)
        for i, f in enumerate(sites)
    ]
    out = run_study(study, InProcessTransport(agents, secure=len(agents) >= 3))
    return {a.id: pooled_json(a, out.results[a.id]) for a in study.analyses}


def test_three_sites_equal_one_site_with_all_rows(frames: list[dict[str, pd.DataFrame]]) -> None:
    study = without_country(load_study(STUDY).study)
    pooled_frames = {k: pd.concat([f[k] for f in frames], ignore_index=True) for k in frames[0]}
    fed, one = run(study, frames), run(study, [pooled_frames])
    for aid in ("attrition", "pathways", "os_km_hr", "pfs_by_line", "next_line_vs_death"):
        assert fed[aid] == one[aid], aid
    np.testing.assert_allclose(
        list(fed["os_cox"]["coef"].values()), list(one["os_cox"]["coef"].values()), rtol=1e-9
    )


def test_whole_example_study_runs_and_is_consistent(frames: list[dict[str, pd.DataFrame]]) -> None:
    study = load_study(STUDY).study
    res = run(study, frames)
    att = res["attrition"]
    total = att["groups"]["all"]
    by_country = [att["groups"][c] for c in ("GR", "NO", "DE")]
    assert total["patients"] == sum(n for *_, n in SITES) - 0  # every synthetic patient is HER2+
    for key in ("started", "finished", "no_next"):
        assert total[key] == [sum(g[key][k] for g in by_country) for k in range(4)]
    # A1 after line 1 is in the range the published cohorts report (25-45 %)
    assert 0.2 < total["A1"][0]["estimate"] < 0.5
    assert res["pfs_by_line"]["groups"]["2"]["median"] is not None
    cif = res["next_line_vs_death"]["groups"]["1"]
    assert cif["cif"]["1"][-1] + cif["cif"]["2"][-1] <= 1.0 + 1e-12


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"kind": "km", "endpoint": "next_line_vs_death"}, 'use kind = "cif"'),
        ({"kind": "km", "endpoint": "os_from_met_dx", "lines": [2]}, "one row per patient"),
        ({"kind": "km", "endpoint": "pfs"}, "unknown endpoint 'pfs'"),
        ({"kind": "km", "endpoint": "pfs_line", "time": "t"}, "name an endpoint, not columns"),
        ({"kind": "attrition", "dataset": "analysis"}, 'set dataset = "registry"'),
    ],
)
def test_registry_spec_errors(patch: dict[str, Any], message: str) -> None:
    analysis = {"id": "a", "dataset": "registry", **patch}
    doc = {"study": {"name": "s", "grid_days": 30, "horizon_days": 3650}, "analysis": [analysis]}
    with pytest.raises(SpecError, match="Fix:") as info:
        parse_study(doc)
    assert message in str(info.value)


def test_attrition_needs_five_years_of_horizon() -> None:
    doc = {
        "study": {"name": "s", "grid_days": 30, "horizon_days": 1000},
        "analysis": [{"id": "a", "kind": "attrition", "dataset": "registry"}],
    }
    with pytest.raises(SpecError, match="horizon_days >= 1826"):
        parse_study(doc)


def test_site_without_registry_says_how_to_declare_it() -> None:
    study = load_study(STUDY).study
    agent = SiteAgent(site_config(0), study)
    from her2fed.protocol import Query

    with pytest.raises(SpecError, match=r"add \[data.registry\]"):
        agent.answer([Query("os_km_hr", "table")])
