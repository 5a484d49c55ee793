"""Optional distributed differential privacy: the noise, its determinism, the budget,
the refusals, and that a DP study still runs end to end (docs/privacy.md)."""

from __future__ import annotations

import json
import math
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from coordinator.orchestrate import run_study
from coordinator.report import render_report
from coordinator.results import pooled_json, results_document
from coordinator.study import load_study
from coordinator.transport import InProcessTransport, SiteFailure
from her2fed import dp
from her2fed.attrition import AttritionCounts
from her2fed.counts import EventTable
from her2fed.errors import SpecError
from her2fed.estimate import CurvesResult, estimate_table
from her2fed.grid import TimeGrid
from her2fed.km import KMCurve
from her2fed.protocol import Query, local_summary
from her2fed.study import Study, parse_analysis, parse_study
from her2fed.summary import Additive, merge
from site_agent.approval import describe_header
from site_agent.config import Policy, SiteConfig, parse_site
from site_agent.data import prepare
from site_agent.dp_site import SECRET_FILE, load_ledger, site_secret, spent
from site_agent.handlers import SiteAgent
from site_agent.policy import PolicyRefusal
from site_agent.synth import synthesize
from tests.fedrun import DATASET, RESEARCH_POLICY, analysis, study_of
from tests.rehearsal import approve

KM = analysis(id="km", kind="km", time="days", event="status")
KM_BY = analysis(
    id="km_by", kind="km", time="days", event="status", by={"column": "arm", "levels": ["A", "B"]}
)
COX = analysis(id="cox", kind="cox", time="days", event="status", covariates=["age"])


def cohort(n: int, seed: int) -> pd.DataFrame:
    """Exponential survival (median ~2 years) with uniform censoring up to 5 years."""
    rng = np.random.default_rng(seed)
    event_time = rng.exponential(365.25 * 2 / math.log(2), n)
    censor_time = rng.uniform(0, 5 * 365.25, n)
    return pd.DataFrame(
        {
            "days": np.ceil(np.minimum(event_time, censor_time)),
            "status": (event_time <= censor_time).astype(int),
            "arm": rng.choice(["A", "B"], n),
            "age": rng.normal(60, 10, n).round(),
        }
    )


def dp_study(*analyses: object, variance: float = 25.0, name: str = "dp-test") -> Study:
    base = study_of(*analyses, grid_days=30, horizon_days=1800)  # type: ignore[arg-type]
    return replace(base, name=name, dp_noise_variance=variance)


def config(tmp: Path, i: int, policy: Policy = RESEARCH_POLICY) -> SiteConfig:
    return SiteConfig(tmp / f"site{i}" / "site.toml", f"site{i}", "XX", policy=policy)


def agent(tmp: Path, study: Study, frame: pd.DataFrame, i: int = 0, **policy: object) -> SiteAgent:
    return SiteAgent(
        config(tmp, i, replace(RESEARCH_POLICY, **policy)), study, tables={DATASET: frame}
    )


# --- the noise ---------------------------------------------------------------------------


def test_sum_of_site_shares_has_the_target_variance() -> None:
    # Three sites each add variance 25/3 to 40,000 cells; the pooled noise must have
    # variance 25. For Skellam noise of variance v the fourth central moment is
    # 3v^2 + v, so the sample variance has sd sqrt((2v^2 + v) / n) = 0.18 here; a
    # tolerance of 1.0 is 5.6 sd (a false alarm has probability < 1e-7, and the
    # seeds are fixed anyway). A wrong split (e.g. v per site, or v/k^2) misses by >= 8.
    n, v, k = 40_000, 25.0, 3
    total = sum(dp.skellam_noise(bytes([i]) * 32, n, dp.site_share(v, k)) for i in range(k))
    assert isinstance(total, np.ndarray) and total.dtype == np.int64
    assert abs(float(total.var()) - v) < 1.0
    assert abs(float(total.mean())) < 5 * math.sqrt(v / n)  # centred: 5 sd of the mean
    # and the noise is really spread over the integers, not a constant offset
    assert len(np.unique(total)) > 20


def test_noise_goes_on_every_count_of_an_event_table_and_only_there() -> None:
    table = EventTable(
        events=np.zeros((1, 2, 1, 50), np.int64),
        censored=np.zeros((1, 2, 50), np.int64),
        dropped=np.zeros(1, np.int64),
    )
    noisy = dp.noisy_summary(table, b"s" * 32, 100.0)
    assert isinstance(noisy, EventTable) and noisy.layout() == table.layout()
    assert np.count_nonzero(noisy.events) > 80 and np.count_nonzero(noisy.censored) > 80


def test_float_summaries_are_not_noised_but_refused() -> None:
    a = parse_analysis(
        {"id": "c", "kind": "cox", "dataset": "d", "time": "t", "event": "e", "covariates": ["x"]},
        "t",
    )
    rows = pd.DataFrame({"t": [1.0, 2.0, 3.0], "e": [1, 0, 1], "x": [0.1, 0.2, 0.3]})
    summary = local_summary(study_of(a).grid, a, prepare(rows, a, "x"), Query("c", "cox_moments"))
    with pytest.raises(dp.DPUnsupported, match="float fields"):
        dp.noisy_summary(summary, b"s" * 32, 1.0)


def test_rho_is_at_least_the_gaussian_one_and_falls_with_the_variance() -> None:
    one = dp.Sensitivity(1.0, 1.0)
    for v in (1.0, 4.0, 25.0, 100.0):
        assert dp.skellam_rho(v, one) >= 1 / (2 * v)
    # v = 25, D1 = D2 = 1: 1/50 + min(8/2500, 3/50) = 0.0232
    assert dp.skellam_rho(25.0, one) == pytest.approx(0.02 + 8 / 2500)
    assert dp.skellam_rho(100.0, one) < dp.skellam_rho(25.0, one)
    assert dp.skellam_rho(25.0, dp.Sensitivity(3.0, 3.0)) > dp.skellam_rho(25.0, one)
    assert dp.skellam_rho(0.0, one) == math.inf
    # integer orders only: never below the real-order (zCDP) conversion, and the best order
    for rho in (0.0052, 0.0232, 0.25, 0.5, 3.0):
        eps = dp.epsilon_delta(rho, 1e-6)
        assert eps >= rho + 2 * math.sqrt(rho * math.log(1e6)) - 1e-12
        brute = min(rho * a + math.log(1e6) / (a - 1) for a in range(2, 100_000))
        assert eps == pytest.approx(brute)


def test_per_line_sensitivity_counts_the_lines_a_patient_can_add() -> None:
    per_line = parse_analysis(
        {"id": "p", "kind": "km", "dataset": "registry", "endpoint": "pfs_line"}, "t"
    )
    chosen = replace(per_line, lines=(1, 2))
    patient = parse_analysis(
        {"id": "o", "kind": "km", "dataset": "registry", "endpoint": "os_from_met_dx"}, "t"
    )
    q = Query("p", "table")
    assert dp.sensitivity(per_line, q, max_lines=7) == dp.Sensitivity(7.0, 7.0)
    assert dp.sensitivity(chosen, q, max_lines=7) == dp.Sensitivity(2.0, 2.0)
    assert dp.sensitivity(patient, q, max_lines=7) == dp.Sensitivity(1.0, 1.0)
    attr = parse_analysis({"id": "a", "kind": "attrition", "dataset": "registry"}, "t")
    s = dp.sensitivity(attr, Query("a", "attrition_counts"), max_lines=3)
    assert s.l1 == 1 + 4 + 7 * 3 and s.l2 == pytest.approx(math.sqrt(1 + 4 + 7 * 9))


# --- determinism and seeds -----------------------------------------------------------------


def test_identical_queries_give_identical_noisy_answers(tmp_path: Path) -> None:
    frame = cohort(300, 1)
    study = dp_study(KM)
    first = agent(tmp_path, study, frame).answer([Query("km", "table")], n_sites=3)[0]
    # a new agent (a new session) with the same site files asks again
    again = agent(tmp_path, study, frame).answer([Query("km", "table")], n_sites=3)[0]
    assert_same(first, again)
    # renamed, with only coordinator-side settings changed: the same release
    renamed = replace(KM, id="km_renamed", conf_level=0.9, quantiles=(0.5,))
    other = dp_study(renamed, name="dp-test")
    third = agent(tmp_path, other, frame).answer([Query("km_renamed", "table")], n_sites=3)[0]
    assert_same(first, third)
    exact = agent(tmp_path, replace(study, dp_noise_variance=0.0), frame).answer(
        [Query("km", "table")]
    )[0]
    assert not same(first, exact)  # and it is noisy at all


def test_different_queries_or_data_draw_different_noise(tmp_path: Path) -> None:
    frame = cohort(300, 1)
    q = [Query("km", "table")]
    base = dp_study(KM)
    a = agent(tmp_path, base, frame).answer(q, n_sites=3)[0]
    exact_a = exact_table(base, frame)
    # the same question on one more patient: fresh noise, not the old noise shifted
    more = pd.concat([frame, cohort(1, 99)], ignore_index=True)
    b = agent(tmp_path, base, more).answer(q, n_sites=3)[0]
    exact_b = exact_table(base, more)
    assert isinstance(a, EventTable) and isinstance(b, EventTable)
    noise_a = a.censored - exact_a.censored
    noise_b = b.censored - exact_b.censored
    assert not np.array_equal(noise_a, noise_b)
    # another secret (another site) and another grid also change the noise
    c = agent(tmp_path, base, frame, i=1).answer(q, n_sites=3)[0]
    assert not same(a, c)
    d = agent(tmp_path, dp_study(replace(KM, event="status")), frame).answer(q, n_sites=4)[0]
    assert not same(a, d)  # n_sites is part of the release: a new draw


def exact_table(study: Study, frame: pd.DataFrame) -> EventTable:
    a = study.analyses[0]
    out = local_summary(study.grid, a, prepare(frame, a, "x"), Query(a.id, "table"))
    assert isinstance(out, EventTable)
    return out


def same(a: Additive, b: Additive) -> bool:
    pairs = zip(a.arrays().values(), b.arrays().values(), strict=True)
    return all(np.array_equal(x, y) for x, y in pairs)


def assert_same(a: Additive, b: Additive) -> None:
    assert type(a) is type(b) and same(a, b)


def test_dp_off_by_default_is_bit_identical_and_touches_no_files(tmp_path: Path) -> None:
    frame = cohort(300, 2)
    study = study_of(KM_BY, grid_days=30, horizon_days=1800)
    assert study.dp_noise_variance == 0.0 and Policy().dp_noise_variance == 0.0
    got = agent(tmp_path, study, frame).answer([Query("km_by", "table")])[0]
    want = local_summary(study.grid, KM_BY, prepare(frame, KM_BY, "x"), Query("km_by", "table"))
    assert_same(got, want)
    assert not (tmp_path / "site0").exists()  # no secret, no ledger


# --- budget --------------------------------------------------------------------------------


def test_budget_is_spent_once_per_release_and_then_refused(tmp_path: Path) -> None:
    frame = cohort(300, 3)
    study = dp_study(KM, KM_BY)
    rho = dp.skellam_rho(25.0, dp.Sensitivity(1, 1))
    limit = 1.5 * rho  # room for one release, not two
    site = agent(tmp_path, study, frame, dp_rho_per_study=limit)
    site.answer([Query("km", "table")], n_sites=3)
    assert spent(site.config, "dp-test") == pytest.approx(rho)
    site.answer([Query("km", "table")], n_sites=3)  # a repeat: free
    agent(tmp_path, study, frame, dp_rho_per_study=limit).answer([Query("km", "table")], n_sites=3)
    assert spent(site.config, "dp-test") == pytest.approx(rho)
    with pytest.raises(PolicyRefusal) as info:
        site.answer([Query("km_by", "table")], n_sites=3)
    msg = str(info.value)
    assert info.value.rule == "dp_budget_exhausted"
    assert f"refused by site policy dp_budget_exhausted = {limit!r}" in msg
    assert "spent rho = 0.0232" in msg and "Fix:" in msg and "dp_rho_per_study" in msg
    assert spent(site.config, "dp-test") == pytest.approx(rho)  # the refusal charged nothing
    # another study has its own budget
    fresh = agent(tmp_path, replace(study, name="other"), frame, dp_rho_per_study=limit)
    fresh.answer([Query("km_by", "table")], n_sites=3)
    assert set(load_ledger(site.config)) == {"dp-test", "other"}


def test_a_round_is_charged_or_refused_as_a_whole(tmp_path: Path) -> None:
    frame = cohort(300, 3)
    rho = dp.skellam_rho(25.0, dp.Sensitivity(1, 1))
    site = agent(tmp_path, dp_study(KM, KM_BY), frame, dp_rho_per_study=1.5 * rho)
    with pytest.raises(PolicyRefusal, match="dp_budget_exhausted"):
        site.answer([Query("km", "table"), Query("km_by", "table")], n_sites=3)
    assert spent(site.config, "dp-test") == 0.0


# --- refusals ------------------------------------------------------------------------------


def test_cox_is_refused_under_dp_with_its_rule(tmp_path: Path) -> None:
    site = agent(tmp_path, dp_study(COX), cohort(100, 4))
    with pytest.raises(PolicyRefusal) as info:
        site.answer([Query("cox", "cox_moments")], n_sites=3)
    assert info.value.rule == "dp_cox_unsupported" and "Fix:" in str(info.value)
    # and through the coordinator it arrives as a clean reason from every site
    agents = [agent(tmp_path, dp_study(COX), cohort(100, i), i=i) for i in range(3)]
    with pytest.raises(SiteFailure, match="dp_cox_unsupported"):
        run_study(dp_study(COX), InProcessTransport(agents))


def test_a_study_with_less_noise_than_the_site_floor_is_refused(tmp_path: Path) -> None:
    site = agent(tmp_path, dp_study(KM, variance=4.0), cohort(50, 5), dp_noise_variance=25.0)
    with pytest.raises(PolicyRefusal) as info:
        site.answer([Query("km", "table")])
    assert info.value.rule == "dp_noise_variance" and info.value.threshold == 25.0
    # the floor is met: answered, with noise
    ok = agent(tmp_path, dp_study(KM, variance=25.0), cohort(50, 5), dp_noise_variance=25.0)
    assert ok.answer([Query("km", "table")])


def test_policy_and_study_parse_the_dp_keys() -> None:
    cfg = parse_site(
        {
            "site": {"id": "s", "country": "GR"},
            "data": {"d": {"path": "d.csv"}},
            "policy": {"dp_noise_variance": 25, "dp_rho_per_study": 0.25},
        },
        Path("site.toml"),
    )
    assert cfg.policy.dp_noise_variance == 25.0 and cfg.policy.dp_rho_per_study == 0.25
    assert cfg.policy.dp_max_lines_per_patient == 10
    doc = {
        "study": {"name": "s", "grid_days": 30, "horizon_days": 365, "dp_noise_variance": 9},
        "analysis": [{"id": "k", "kind": "km", "dataset": "d", "time": "t", "event": "e"}],
    }
    assert parse_study(doc).dp_noise_variance == 9.0
    doc["study"]["dp_noise_variance"] = -1  # type: ignore[index]
    with pytest.raises(SpecError, match="dp_noise_variance"):
        parse_study(doc)


# --- the site secret -----------------------------------------------------------------------


def test_secret_file_is_private_and_stable(tmp_path: Path) -> None:
    cfg = config(tmp_path, 0)
    first = site_secret(cfg)
    path = cfg.path.parent / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) == 32
    assert site_secret(cfg) == first
    path.chmod(0o644)
    with pytest.raises(SpecError, match="chmod 600"):
        site_secret(cfg)


def test_secret_comes_from_the_identity_key_when_there_is_one(tmp_path: Path) -> None:
    cfg = config(tmp_path, 0)
    key = cfg.key_paths.site_key
    key.parent.mkdir(parents=True)
    key.write_bytes(b"an ed25519 key file")
    derived = site_secret(cfg)
    assert len(derived) == 32 and not (cfg.path.parent / SECRET_FILE).exists()
    key.write_bytes(b"another key")
    assert site_secret(cfg) != derived


# --- end to end ----------------------------------------------------------------------------


def km_at(curve: KMCurve, day: float) -> float:
    rows = curve.time <= day
    return float(curve.surv[rows][-1]) if rows.any() else 1.0


def test_km_over_three_sites_with_dp_stays_close_to_exact(tmp_path: Path) -> None:
    frames = [cohort(n, 10 + i) for i, n in enumerate((300, 400, 300))]
    study = dp_study(KM)
    agents = [agent(tmp_path, study, f, i=i) for i, f in enumerate(frames)]
    outcome = run_study(study, InProcessTransport(agents))
    noisy = outcome.results["km"]
    assert isinstance(noisy, CurvesResult)
    assert outcome.aggregation["differential_privacy"]["noise_variance"] == 25.0  # type: ignore[index]
    pooled = merge(exact_table(study, f) for f in frames)
    exact = estimate_table(KM, study.grid, pooled)
    assert isinstance(exact, CurvesResult)
    s_noisy, s_exact = (km_at(r.groups["all"], 365) for r in (noisy, exact))  # type: ignore[arg-type]
    # The noise's own sd of S(1 year), by Monte Carlo on the pooled table (variance 25
    # on every count, clipped as the coordinator clips): 4 of those sds is "close".
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(300):
        noisy_table = EventTable(
            events=pooled.events
            + rng.poisson(12.5, pooled.events.shape)
            - rng.poisson(12.5, pooled.events.shape),
            censored=pooled.censored
            + rng.poisson(12.5, pooled.censored.shape)
            - rng.poisson(12.5, pooled.censored.shape),
            dropped=pooled.dropped,
        )
        r = estimate_table(KM, study.grid, dp.clip_counts(noisy_table))  # type: ignore[arg-type]
        draws.append(km_at(r.groups["all"], 365))  # type: ignore[union-attr, arg-type]
    sd = float(np.std(draws))
    assert 0 < sd < 0.05  # the noise matters, but 1000 patients carry it
    assert abs(s_noisy - s_exact) < 4 * sd
    assert s_noisy != s_exact


def test_attrition_under_dp_runs_and_stays_consistent(tmp_path: Path) -> None:
    sites = (("athens", "GR", 200), ("oslo", "NO", 250), ("munich", "DE", 200))
    frames = [synthesize(c, n, seed=i + 1, site_id=s) for i, (s, c, n) in enumerate(sites)]
    attr = parse_analysis({"id": "attr", "kind": "attrition", "dataset": "registry"}, "t")
    study = Study("dp-registry", TimeGrid(30, 2000), (attr,), dp_noise_variance=400.0)
    policy = replace(RESEARCH_POLICY, dp_rho_per_study=100.0)
    agents = [
        SiteAgent(config(tmp_path, i, policy), study, registry=f) for i, f in enumerate(frames)
    ]
    result = run_study(study, InProcessTransport(agents)).results["attr"]
    counts = result.counts  # type: ignore[union-attr]
    assert isinstance(counts, AttritionCounts)
    assert (counts.no_next <= counts.started).all() and (counts.finished <= counts.started).all()
    assert (counts.reached <= counts.patients[:, None]).all()
    assert all((v >= 0).all() for v in counts.arrays().values())
    # a study that picks its lines is bounded by them, whatever the policy's bound
    picked = parse_analysis(
        {"id": "l2", "kind": "km", "dataset": "registry", "endpoint": "pfs_line", "lines": [2]},
        "t",
    )
    strict = replace(policy, dp_max_lines_per_patient=1)
    two = SiteAgent(
        config(tmp_path, 0, strict), replace(study, analyses=(picked,)), registry=frames[0]
    )
    assert two.answer([Query("l2", "table")], n_sites=3)
    # a bound of one line per patient is false for these data: refused by name
    tight = replace(policy, dp_max_lines_per_patient=1)
    one = SiteAgent(config(tmp_path, 0, tight), study, registry=frames[0])
    with pytest.raises(PolicyRefusal) as info:
        one.answer([Query("attr", "attrition_counts"), Query("attr", "attrition_cif")])
    assert info.value.rule == "dp_max_lines_per_patient"


def test_results_and_report_say_the_numbers_are_noisy(tmp_path: Path) -> None:
    study = dp_study(KM)
    agents = [agent(tmp_path, study, cohort(100, 20 + i), i=i) for i in range(3)]
    outcome = run_study(study, InProcessTransport(agents))
    doc = results_document(
        name=study.name,
        study_hash="sha256:" + "0" * 64,
        analyses={a.id: a for a in study.analyses},
        results=outcome.results,
        sites=outcome.sites,
        grid_days=study.grid.grid_days,
        horizon_days=study.grid.horizon_days,
        rounds=outcome.rounds,
        transport="inprocess",
        aggregation=dict(outcome.aggregation),
    )
    assert doc["study"]["aggregation"]["differential_privacy"]["noise_variance"] == 25.0
    assert "every pooled count carries noise of variance 25.0" in render_report(doc)
    plain = replace(study, dp_noise_variance=0.0)
    exact = run_study(
        plain, InProcessTransport([agent(tmp_path, plain, cohort(100, i), i=i) for i in range(3)])
    )
    assert "differential_privacy" not in exact.aggregation


def test_the_officer_sees_the_noise_when_approving() -> None:
    noisy = "\n".join(describe_header(dp_study(KM, variance=25.0)))
    assert "noise of variance 25 (sd 5)" in noisy
    assert "differential privacy" not in "\n".join(describe_header(study_of(KM)))


def test_her2fed_local_runs_a_dp_study_end_to_end(tmp_path: Path) -> None:
    """The user's path: a study file declaring DP, site files, the CLI, results.json."""
    root = Path(__file__).resolve().parents[1]
    made = subprocess.run(
        [sys.executable, "examples/generic/make_sites.py", str(tmp_path / "sites")],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
    )
    assert made.returncode == 0, made.stderr
    study = tmp_path / "dp.toml"
    study.write_text(
        '[study]\nname = "dp demo"\ngrid_days = 30\nhorizon_days = 2880\n'
        "dp_noise_variance = 25\n\n"
        '[[analysis]]\nid = "km"\nkind = "km"\ndataset = "analysis"\n'
        'time = "time"\nevent = "cens"\n'
    )
    sites = ("athens", "oslo", "munich")
    approve(study, [tmp_path / "sites" / s / "site.toml" for s in sites])
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "her2fed"),
            "local",
            str(study),
            *[a for s in sites for a in ("--site", f"{s}={tmp_path / 'sites' / s / 'site.toml'}")],
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    assert doc["study"]["aggregation"]["differential_privacy"]["noise_variance"] == 25.0
    for s in sites:
        site_dir = tmp_path / "sites" / s
        # the noise secret derives from the site's identity key: no extra file to guard
        assert (site_dir / "keys" / "site.key").exists() and not (site_dir / SECRET_FILE).exists()
        ledger = json.loads((site_dir / "dp" / "budget.json").read_text())
        assert list(ledger) == ["dp demo"] and len(ledger["dp demo"]) == 1


def test_every_non_cox_analysis_of_the_her2_study_survives_heavy_noise(tmp_path: Path) -> None:
    """Clipping keeps KM, CIF, log-rank, attrition and pathways computable at sd 20."""
    loaded = load_study(Path(__file__).resolve().parents[1] / "examples" / "her2" / "study.toml")
    keep = tuple(a for a in loaded.study.analyses if a.kind != "cox")
    study = replace(loaded.study, analyses=keep, dp_noise_variance=400.0)
    sites = (("athens", "GR", 150), ("oslo", "NO", 150), ("munich", "DE", 150))
    policy = replace(RESEARCH_POLICY, dp_rho_per_study=1000.0)
    agents = [
        SiteAgent(
            replace(config(tmp_path, i, policy), country=c),
            study,
            registry=synthesize(c, n, seed=i + 7, site_id=s),
        )
        for i, (s, c, n) in enumerate(sites)
    ]
    outcome = run_study(study, InProcessTransport(agents))
    assert set(outcome.results) == {a.id for a in keep}
    for a in keep:
        json.dumps(pooled_json(a, outcome.results[a.id]))  # every result serialises
    km = outcome.results["os_km_hr"]
    assert isinstance(km, CurvesResult)
    for curve in km.groups.values():
        assert isinstance(curve, KMCurve)
        surv = curve.surv[np.isfinite(curve.surv)]
        assert ((surv >= 0) & (surv <= 1)).all() and (np.diff(surv) <= 1e-12).all()
