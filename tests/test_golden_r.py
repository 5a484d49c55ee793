"""Federated estimates equal R's survival package on real data.

Golden values: tests/golden/golden.json, made by tests/golden/make_golden.R
(regenerate with tests/golden/regenerate.sh). Each case runs once on one site
and once split over seven random sites; both must match R.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from her2fed.cox import CoxResult
from her2fed.estimate import CurvesResult, LogrankOutcome
from tests.fedrun import analysis, load, run_one, split

GOLDEN = json.loads((Path(__file__).parent / "golden" / "golden.json").read_text())
REL = 1e-9


def close(ours: Any, theirs: Any, rtol: float = REL, atol: float = 1e-12) -> None:
    a = np.asarray(ours, dtype=float)
    b = np.asarray([np.nan if v is None else v for v in np.ravel(theirs)], dtype=float).reshape(
        np.shape(theirs)
    )
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


def _by(case: dict[str, Any], df: Any) -> dict[str, Any]:
    if case["by"] is None:
        return {}
    return {"by": {"column": case["by"], "levels": list(case["groups"].keys())}}


def frames_for(name: str) -> list[Any]:
    df = load(name)
    return [[df], split(df, 7, seed=len(name))]


@pytest.mark.parametrize("case_id", sorted(GOLDEN["km"]))
@pytest.mark.parametrize("conf_type", ["log", "log-log", "plain"])
@pytest.mark.parametrize("sites", [1, 7])
def test_km_and_nelson_aalen(case_id: str, conf_type: str, sites: int) -> None:
    case = GOLDEN["km"][case_id]
    df = load(case["dataset"])
    frames = [df] if sites == 1 else split(df, sites, seed=3)
    common = {"time": case["time"], "event": case["event"], **_by(case, df)}
    km = run_one(analysis(kind="km", conf_type=conf_type, **common), frames)
    na = run_one(analysis(kind="nelson_aalen", **common), frames)
    assert isinstance(km, CurvesResult) and isinstance(na, CurvesResult)
    for label, want in case["groups"].items():
        got = km.groups[label]
        close(got.time, want["time"])
        close(got.n_risk, want["n_risk"])
        close(got.n_event, want["n_event"])
        close(got.n_censor, want["n_censor"])
        close(got.surv, want["surv"])
        close(got.std_err, want["std_err"])
        ci = want["ci"][conf_type]
        close(got.lower, ci["lower"])
        close(got.upper, ci["upper"])
        for q in got.quantiles:
            close([q.estimate, q.lower, q.upper], ci["quantiles"][str(q.prob)])
        close(na.groups[label].cumhaz, want["cumhaz"])  # type: ignore[union-attr]
        close(na.groups[label].std_err, want["std_chaz"])


@pytest.mark.parametrize("case_id", sorted(GOLDEN["logrank"]))
@pytest.mark.parametrize("sites", [1, 7])
def test_logrank(case_id: str, sites: int) -> None:
    case = GOLDEN["logrank"][case_id]
    df = load(case["dataset"])
    frames = [df] if sites == 1 else split(df, sites, seed=5)
    spec: dict[str, Any] = {
        "kind": "logrank",
        "time": case["time"],
        "event": case["event"],
        "rho": case["rho"],
        "by": {"column": case["group"], "levels": case["levels"]},
    }
    if case["strata"]:
        spec["strata"] = [
            {"column": case["strata"], "levels": sorted(df[case["strata"]].unique().tolist())}
        ]
    res = run_one(analysis(**spec), frames)
    assert isinstance(res, LogrankOutcome)
    close(res.test.chisq, case["chisq"])
    assert res.test.df == case["df"]
    close(res.test.p, case["p"])
    close(res.test.observed, [case["observed"][lv] for lv in case["levels"]])
    close(res.test.expected, [case["expected"][lv] for lv in case["levels"]])
    close(res.test.variance, case["var"])


@pytest.mark.parametrize("case_id", sorted(GOLDEN["cif"]))
@pytest.mark.parametrize("sites", [1, 7])
def test_cif(case_id: str, sites: int) -> None:
    case = GOLDEN["cif"][case_id]
    df = load(case["dataset"])
    frames = [df] if sites == 1 else split(df, sites, seed=11)
    res = run_one(
        analysis(
            kind="cif", time=case["time"], event=case["event"], causes=[1, 2], **_by(case, df)
        ),
        frames,
    )
    assert isinstance(res, CurvesResult)
    for label, want in case["groups"].items():
        got = res.groups[label]
        close(got.time, want["time"])
        close(got.n_risk, want["n_risk"])
        for i, cause in enumerate(("1", "2")):
            close(got.cif[:, i], want["cif"][cause])  # type: ignore[union-attr]
            close(
                got.std_err[:, i],
                want["std_err"][cause],
            )  # type: ignore[union-attr]


def _covariate(c: dict[str, Any]) -> Any:
    if c["type"] == "numeric":
        return c["name"]
    return {"column": c["name"], "levels": c["levels"], "reference": c["reference"]}


@pytest.mark.parametrize("case_id", sorted(GOLDEN["cox"]))
@pytest.mark.parametrize("sites", [1, 7])
def test_cox(case_id: str, sites: int) -> None:
    case = GOLDEN["cox"][case_id]
    df = load(case["dataset"])
    frames = [df] if sites == 1 else split(df, sites, seed=13)
    spec: dict[str, Any] = {
        "kind": "cox",
        "time": case["time"],
        "event": case["event"],
        "ties": case["ties"],
        "covariates": [_covariate(c) for c in case["covariates"]],
    }
    if case["strata"]:
        spec["strata"] = [
            {"column": case["strata"], "levels": sorted(df[case["strata"]].unique().tolist())}
        ]
    res = run_one(analysis(**spec), frames)
    assert isinstance(res, CoxResult)
    names = list(case["coef"])
    assert list(res.names) == names
    close(res.coef, [case["coef"][n] for n in names], rtol=1e-6)
    close(res.se, [case["se"][n] for n in names], rtol=1e-6)
    close([res.loglik_initial, res.loglik_final], case["loglik"], rtol=1e-9)
    assert res.n == case["n"] and res.n_dropped == case["n_dropped"]
    assert res.n_events == case["nevent"]
    close(res.score_test.stat, case["score_test"]["stat"], rtol=1e-6)
    close(res.wald_test.stat, case["wald_test"]["stat"], rtol=1e-6)
    close(res.lr_test.stat, case["lr_test"]["stat"], rtol=1e-6)


@pytest.mark.parametrize("case_id", sorted(GOLDEN["cif"]))
def test_cif_equals_cmprsk_cuminc(case_id: str) -> None:
    """Point estimates also agree with cmprsk::cuminc (whose variance differs by design)."""
    case = GOLDEN["cif"][case_id]
    df = load(case["dataset"])
    res = run_one(
        analysis(
            kind="cif", time=case["time"], event=case["event"], causes=[1, 2], **_by(case, df)
        ),
        split(df, 4, seed=19),
    )
    assert isinstance(res, CurvesResult)
    for label, want in case["groups"].items():
        got = res.groups[label]
        for i, cause in enumerate(("1", "2")):
            ref = want["cuminc"][cause]
            # cuminc lists each jump twice (before/after); the last value at a time is the CIF
            last = {t: e for t, e in zip(ref["time"], ref["est"], strict=True)}
            times = np.array(sorted(t for t in last if t > 0))
            idx = np.searchsorted(got.time, times)
            close(got.cif[idx, i], [last[t] for t in times])  # type: ignore[union-attr]
