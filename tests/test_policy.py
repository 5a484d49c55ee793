"""Site policy: each rule refuses with its name and threshold; nothing is released."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.transport import SiteFailure
from her2fed.protocol import Query
from site_agent.config import Policy
from site_agent.handlers import SiteAgent
from tests.fedrun import DATASET, analysis, load, run, site_config, split, study_of
from tests.rehearsal import approve

KM = analysis(
    id="km", kind="km", time="week", event="arrest", by={"column": "fin", "levels": [0, 1]}
)
COX = analysis(id="cox", kind="cox", time="week", event="arrest", covariates=["fin", "age", "prio"])


def agent(policy: Policy, *analyses: object, grid_days: int = 30) -> SiteAgent:
    study = study_of(*analyses, grid_days=grid_days, horizon_days=120)  # type: ignore[arg-type]
    return SiteAgent(site_config(0, policy), study, tables={DATASET: load("rossi")})


def refused(rule: str, threshold: object, a: SiteAgent, query: Query) -> str:
    with pytest.raises(Exception) as info:
        a.answer([query])
    message = str(info.value)
    assert f"refused by site policy {rule} = {threshold!r}" in message and "Fix:" in message
    return message


def test_default_policy_refuses_a_grid_finer_than_30_days() -> None:
    msg = refused("min_grid_days", 30, agent(Policy(), KM, grid_days=7), Query("km", "table"))
    assert "grid of 7 day(s)" in msg


def test_grid_allowed_when_the_policy_says_so() -> None:
    assert agent(Policy(min_grid_days=7), KM, grid_days=7).answer([Query("km", "table")])


def test_cli_run_with_fine_grid_releases_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "s"
    site.mkdir()
    load("rossi").to_csv(site / "a.csv", index=False)
    (site / "site.toml").write_text(
        '[site]\nid = "s"\ncountry = "GR"\n[data.analysis]\npath = "a.csv"\n'
    )
    study = tmp_path / "study.toml"
    study.write_text(
        '[study]\nname = "t"\ngrid_days = 1\nhorizon_days = 100\n[[analysis]]\n'
        'id = "km"\nkind = "km"\ndataset = "analysis"\ntime = "week"\n'
        'event = "arrest"\n'
    )
    approve(study, [site / "site.toml"])  # approved, and still refused by the grid rule
    code = main(
        [
            "local",
            str(study),
            *[a for i in (1, 2, 3) for a in ("--site", f"s{i}={site / 'site.toml'}")],
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "min_grid_days = 30" in err and "grid_days >= 30" in err
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize(
    ("policy", "rule", "threshold"),
    [
        (Policy(allowed_kinds=("km",)), "allowed_kinds", ["km"]),
        (Policy(allowed_covariates=("fin", "age")), "allowed_covariates", ["fin", "age"]),
        (Policy(allowed_datasets=("other",)), "allowed_datasets", ["other"]),
    ],
)
def test_allow_lists(policy: Policy, rule: str, threshold: object) -> None:
    refused(rule, threshold, agent(policy, COX), Query("cox", "cox_moments"))


def test_too_many_levels() -> None:
    many = analysis(
        id="km",
        kind="km",
        time="week",
        event="arrest",
        by={"column": "prio", "levels": list(range(41))},
    )
    refused("max_levels", 40, agent(Policy(), many), Query("km", "table"))


def test_tiny_cohort_is_refused() -> None:
    tiny = SiteAgent(
        site_config(0, Policy()),
        study_of(KM, grid_days=30, horizon_days=120),
        tables={DATASET: load("rossi").head(9)},
    )
    refused("min_cohort", 10, tiny, Query("km", "table"))


def test_cox_parameter_limit_and_iteration_cap() -> None:
    small = SiteAgent(
        site_config(0, Policy(min_cohort=0)),
        study_of(COX, grid_days=30, horizon_days=120),
        tables={DATASET: load("rossi").head(8)},
    )
    refused("cox_max_params_per_row", 0.33, small, Query("cox", "cox_moments"))
    capped = agent(Policy(cox_max_iterations=2), COX)
    q = Query("cox", "cox_sums", (0.0, 0.0, 0.0), (0.5, 24.0, 3.0))
    capped.answer([q])
    capped.answer([q])
    refused("cox_max_iterations", 2, capped, q)


def test_refusal_reaches_the_coordinator_with_the_site_name() -> None:
    frames = split(load("rossi"), 3, seed=1)
    study = study_of(KM, grid_days=30, horizon_days=120)
    from coordinator.orchestrate import run_study
    from coordinator.transport import InProcessTransport

    agents = [
        SiteAgent(
            site_config(i, Policy(allowed_kinds=("cox",)) if i == 1 else Policy()),
            study,
            tables={DATASET: f},
        )
        for i, f in enumerate(frames)
    ]
    with pytest.raises(SiteFailure) as info:
        run_study(study, InProcessTransport(agents))
    assert info.value.site == "site1" and "allowed_kinds" in info.value.reason
    assert run(study, frames)  # the research policy used elsewhere accepts the same study


def test_a_group_that_is_one_site_is_a_per_site_release() -> None:
    """KM "by hospital" is each hospital's own curve: with per_site_release off (the default)
    a site refuses the release at its leave-one-out check; a site that allows it answers."""
    from coordinator.orchestrate import run_study
    from coordinator.transport import InProcessTransport
    from site_agent.config import SiteConfig

    frames = split(load("gbsg2"), 3, seed=2)
    for i, f in enumerate(frames):
        f["hospital"] = f"h{i}"
    by_site = analysis(
        id="km",
        kind="km",
        time="time",
        event="cens",
        by={"column": "hospital", "levels": ["h0", "h1", "h2"]},
    )
    study = study_of(by_site, grid_days=30, horizon_days=2880)

    def agents(policy: Policy) -> list[SiteAgent]:
        return [
            SiteAgent(SiteConfig(Path(f"s{i}.toml"), f"s{i}", "XX", policy=policy), study,
                      tables={DATASET: f})
            for i, f in enumerate(frames)
        ]  # fmt: skip

    with pytest.raises(SiteFailure, match=r"per_site_release = False.*comes from this site alone"):
        run_study(study, InProcessTransport(agents(Policy())))
    allowed = run_study(study, InProcessTransport(agents(Policy(per_site_release=True))))
    assert set(allowed.results) == {"km"}


def test_a_site_wanting_more_contributors_refuses_a_smaller_sum() -> None:
    """min_sites is the site's own rule, not only the coordinator's floor of three."""
    from coordinator.orchestrate import run_study
    from coordinator.transport import InProcessTransport
    from site_agent.config import SiteConfig

    frames = split(load("rossi"), 3, seed=3)
    study = study_of(KM, grid_days=30, horizon_days=120)
    policies = [Policy(), Policy(min_sites=4), Policy()]
    agents = [
        SiteAgent(SiteConfig(Path(f"s{i}.toml"), f"s{i}", "XX", policy=p), study,
                  tables={DATASET: f})
        for i, (p, f) in enumerate(zip(policies, frames, strict=True))
    ]  # fmt: skip
    with pytest.raises(SiteFailure, match=r"s1.*min_sites = 4.*3 contributing site"):
        run_study(study, InProcessTransport(agents))
