"""Sites refuse queries the study does not allow; Cox edge cases fail clearly."""

from __future__ import annotations

import numpy as np
import pytest

from her2fed.cox import CoxResult
from her2fed.errors import EstimationError, ProtocolError
from her2fed.protocol import Query
from site_agent.handlers import SiteAgent
from tests.fedrun import DATASET, analysis, load, run_one, site_config, split, study_of

COX = analysis(id="cox", kind="cox", time="week", event="arrest", covariates=["fin", "age"])
KM = analysis(id="km", kind="km", time="week", event="arrest")


def agent() -> SiteAgent:
    return SiteAgent(site_config(0), study_of(COX, KM), tables={DATASET: load("rossi")})


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (Query("drop_table", "table"), "not in the study"),
        (Query("km", "cox_sums", (0.0,), (0.0,)), "not allowed for analysis 'km'"),
        (Query("cox", "pathways"), "not allowed for analysis 'cox'"),
        (Query("cox", "cox_sums", (0.0, 0.0), (0.0, 0.0), (7, 3)), "not increasing"),
        (Query("cox", "cox_sums", (0.0,), (0.0,)), "carries 1 coefficients"),
        (Query("cox", "cox_sums", (0.0, float("nan")), (0.0, 0.0)), "non-finite"),
        (Query("km", "table", (1.0,)), "takes no coefficients"),
    ],
)
def test_hostile_queries_are_refused(query: Query, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        agent().answer([query])


def test_valid_queries_are_answered() -> None:
    out = agent().answer([Query("km", "table"), Query("cox", "cox_sums", (0.1, 0.0), (0.5, 24.0))])
    assert len(out) == 2


def test_collinear_covariates_name_the_fix() -> None:
    df = load("rossi").assign(age2=lambda d: 2 * d["age"])
    a = analysis(kind="cox", time="week", event="arrest", covariates=["age", "age2"])
    with pytest.raises(EstimationError, match=r"collinear.*remove one"):
        run_one(a, split(df, 3, seed=1))


def test_no_events_is_an_error_not_a_number() -> None:
    df = load("rossi").assign(arrest=0)
    a = analysis(kind="cox", time="week", event="arrest", covariates=["age"])
    with pytest.raises(EstimationError, match="no complete cases with an event"):
        run_one(a, [df])


def test_separation_is_reported_as_non_convergence() -> None:
    df = load("rossi")
    df["sep"] = df["arrest"]  # everyone with sep = 1 has the event: monotone likelihood
    a = analysis(kind="cox", time="week", event="arrest", covariates=["sep", "age"])
    res = run_one(a, [df])
    assert isinstance(res, CoxResult)
    assert len(res.warnings) == 1 and "'sep' may be infinite" in res.warnings[0]
    assert res.coef[0] > 5


def test_dropped_rows_are_counted() -> None:
    df = load("lung")
    a = analysis(kind="cox", time="time", event="status", covariates=["age", "ph.ecog", "wt.loss"])
    res = run_one(a, split(df, 4, seed=3))
    assert isinstance(res, CoxResult)
    expected = int(df[["age", "ph.ecog", "wt.loss"]].isna().any(axis=1).sum())
    assert res.n_dropped == expected and res.n == len(df) - expected
    assert np.isfinite(res.coef).all() and res.warnings == ()


def test_warm_start_lands_near_the_pooled_fit_and_saves_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Round 1 securely sums the sites' own fits; Newton starts much closer to the optimum."""
    import her2fed.estimate
    from coordinator.orchestrate import run_study
    from coordinator.transport import InProcessTransport
    from her2fed.cox import CoxLocalFit, warm_start
    from her2fed.summary import merge

    # three sites of ~230 patients: the size of a real hospital cohort
    covs = ["age", "tsize", "pnodes", "progrec", "estrec"]
    a = analysis(kind="cox", time="time", event="cens", covariates=covs)
    study = study_of(a, horizon_days=2700)
    frames = split(load("gbsg2"), 3, seed=2)

    def agents() -> list[SiteAgent]:
        return [SiteAgent(site_config(i), study, tables={DATASET: f}) for i, f in enumerate(frames)]

    fits = [ag.answer([Query("a", "cox_local_fit")])[0] for ag in agents()]
    assert all(isinstance(f, CoxLocalFit) for f in fits)
    start = warm_start(merge(fits))  # type: ignore[type-var]
    warm = run_study(study, InProcessTransport(agents()))
    res = warm.results["a"]
    assert isinstance(res, CoxResult) and start is not None
    info = np.linalg.inv(np.diag(res.se**2))  # the information metric, diagonal part
    assert (start - res.coef) @ info @ (start - res.coef) < res.coef @ info @ res.coef
    monkeypatch.setattr(her2fed.estimate, "warm_start", lambda fit: None)
    cold = run_study(study, InProcessTransport(agents()))
    cold_res = cold.results["a"]
    assert isinstance(cold_res, CoxResult)
    np.testing.assert_allclose(cold_res.coef, res.coef, rtol=1e-6)  # same optimum either way
    assert warm.rounds < cold.rounds, (warm.rounds, cold.rounds)
