"""The central invariant: a federated estimate equals the pooled estimate.

Real datasets are dealt at random over 1-20 sites (some possibly empty); the
federated result must equal the same estimator on the pooled rows - ours on
a single site (bit for bit for everything computed from counts, to float
tolerance for Cox whose sums are added in a different order) and lifelines
on the raw pooled rows. Most properties check the statistics over the plain
in-process sum; ``test_secure_federated_equals_pooled`` checks that secure
aggregation changes none of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lifelines import CoxPHFitter, KaplanMeierFitter, NelsonAalenFitter
from lifelines.statistics import multivariate_logrank_test

from her2fed.cox import CoxResult
from her2fed.estimate import CurvesResult, LogrankOutcome, Result
from tests.fedrun import analysis, load, run_one, split
from tests.fedrun import run_one as run_plain

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# dataset -> (time, event, grouping column and its levels, Cox covariates)
CASES: dict[str, dict[str, Any]] = {
    "lung": {
        "time": "time",
        "event": "status",
        "by": ("sex", [1, 2]),
        "cox": ["age", "sex", "ph.ecog"],
    },
    "gbsg2": {
        "time": "time",
        "event": "cens",
        "by": ("tgrade", ["I", "II", "III"]),
        "cox": [
            "age",
            "tsize",
            "pnodes",
            "progrec",
            "estrec",
            {"column": "horTh", "levels": ["no", "yes"]},
        ],
    },
    "rossi": {
        "time": "week",
        "event": "arrest",
        "by": ("fin", [0, 1]),
        "cox": ["fin", "age", "race", "wexp", "mar", "paro", "prio"],
    },
    "waltons": {
        "time": "T",
        "event": "E",
        "by": ("group", ["control", "miR-137"]),
        "cox": [{"column": "group", "levels": ["control", "miR-137"]}],
    },
}
FRAMES = {name: load(name) for name in CASES}

datasets = st.sampled_from(sorted(CASES))
n_sites = st.integers(min_value=1, max_value=20)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def spec(name: str, kind: str) -> dict[str, Any]:
    case = CASES[name]
    out: dict[str, Any] = {"kind": kind, "time": case["time"], "event": case["event"]}
    col, levels = case["by"]
    if kind == "cox":
        out["covariates"] = case["cox"]
    elif kind != "nelson_aalen":
        out["by"] = {"column": col, "levels": levels}
    return out


def assert_same(a: Result, b: Result, cox_rtol: float = 1e-9) -> None:
    """Equal results: exact for count-based ones, float tolerance for Cox."""
    if isinstance(a, CoxResult):
        assert isinstance(b, CoxResult)
        np.testing.assert_allclose(a.coef, b.coef, rtol=cox_rtol, atol=1e-12)
        np.testing.assert_allclose(a.se, b.se, rtol=cox_rtol, atol=1e-12)
        np.testing.assert_allclose(a.loglik_final, b.loglik_final, rtol=1e-12)
        assert (a.n, a.n_events, a.n_dropped) == (b.n, b.n_events, b.n_dropped)
        return
    if isinstance(a, LogrankOutcome):
        assert isinstance(b, LogrankOutcome)
        np.testing.assert_allclose(
            [a.test.chisq, *a.test.observed, *a.test.expected],
            [b.test.chisq, *b.test.observed, *b.test.expected],
            rtol=1e-12,
        )
        return
    assert isinstance(a, CurvesResult) and isinstance(b, CurvesResult)
    assert a.groups.keys() == b.groups.keys() and a.n_dropped == b.n_dropped
    for key, ca in a.groups.items():
        cb = b.groups[key]
        for field in ca.__dataclass_fields__:
            va, vb = getattr(ca, field), getattr(cb, field)
            if isinstance(va, np.ndarray):
                np.testing.assert_array_equal(va, vb, err_msg=f"{key}.{field}")
            elif field == "quantiles":
                np.testing.assert_array_equal(
                    [(q.prob, q.estimate, q.lower, q.upper) for q in va],
                    [(q.prob, q.estimate, q.lower, q.upper) for q in vb],
                )
            else:
                assert va == vb, f"{key}.{field}"


@SETTINGS
@given(
    name=datasets,
    sites=n_sites,
    seed=seeds,
    kind=st.sampled_from(["km", "nelson_aalen", "logrank", "cox"]),
)
def test_federated_equals_pooled(name: str, sites: int, seed: int, kind: str) -> None:
    df = FRAMES[name]
    a = analysis(**spec(name, kind))
    pooled = run_one(a, [df], secure=False)
    federated = run_one(a, split(df, sites, seed), secure=False)
    assert_same(federated, pooled, cox_rtol=1e-8)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=datasets,
    sites=st.integers(3, 12),
    seed=seeds,
    kind=st.sampled_from(["km", "nelson_aalen", "logrank", "cox"]),
)
def test_secure_federated_equals_pooled(name: str, sites: int, seed: int, kind: str) -> None:
    """Through pairwise-masked secure aggregation: counts bit-exact, Cox to 1e-8."""
    df = FRAMES[name]
    a = analysis(**spec(name, kind))
    pooled = run_one(a, [df], secure=False)
    assert_same(run_one(a, split(df, sites, seed), secure=True), pooled, cox_rtol=1e-8)


@SETTINGS
@given(sites=n_sites, seed=seeds, by_sex=st.booleans())
def test_cif_federated_equals_pooled(sites: int, seed: int, by_sex: bool) -> None:
    df = load("mgus2")
    extra = {"by": {"column": "sex", "levels": ["F", "M"]}} if by_sex else {}
    a = analysis(kind="cif", time="etime", event="event", causes=[1, 2], **extra)
    assert_same(run_one(a, split(df, sites, seed), secure=False), run_one(a, [df], secure=False))


@SETTINGS
@given(
    name=datasets,
    sites=st.integers(2, 12),
    seed=seeds,
    kind=st.sampled_from(["km", "logrank", "cox"]),
)
def test_metamorphic_row_site_order_and_splitting(
    name: str, sites: int, seed: int, kind: str
) -> None:
    df = FRAMES[name]
    a = analysis(**spec(name, kind))
    frames = split(df, sites, seed)

    def run_one(a: Any, frames: list[pd.DataFrame]) -> Result:  # plain sums: statistics only
        return run_plain(a, frames, secure=False)

    base = run_one(a, frames)
    rng = np.random.default_rng(seed)
    # row order within every site
    shuffled = [f.sample(frac=1.0, random_state=int(rng.integers(2**31))) for f in frames]
    assert_same(run_one(a, shuffled), base)
    # site order
    assert_same(run_one(a, list(reversed(frames))), base)
    # splitting the largest site in two
    big = int(np.argmax([len(f) for f in frames]))
    half = len(frames[big]) // 2
    more = [*frames[:big], frames[big].iloc[:half], frames[big].iloc[half:], *frames[big + 1 :]]
    assert_same(run_one(a, more), base)


# --- pooled rows through lifelines -------------------------------------------------


def _complete(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    return df[cols].dropna().reset_index(drop=True)


@SETTINGS
@given(name=datasets, sites=n_sites, seed=seeds)
def test_km_and_na_equal_lifelines_on_pooled_rows(name: str, sites: int, seed: int) -> None:
    case = CASES[name]
    df = FRAMES[name]
    km = run_one(
        analysis(kind="km", time=case["time"], event=case["event"], conf_type="log-log"),
        split(df, sites, seed),
        secure=False,
    )
    na = run_one(
        analysis(kind="nelson_aalen", time=case["time"], event=case["event"]),
        split(df, sites, seed),
        secure=False,
    )
    assert isinstance(km, CurvesResult) and isinstance(na, CurvesResult)
    curve, hazard = km.groups["all"], na.groups["all"]
    ref = KaplanMeierFitter().fit(df[case["time"]], df[case["event"]])
    ref_s = ref.survival_function_.iloc[:, 0]
    at = (
        ref_s.index.to_numpy()[1:]
        if ref_s.index[0] == 0 and 0 not in curve.time
        else ref_s.index.to_numpy()
    )
    np.testing.assert_allclose(curve.surv, ref_s.loc[at].to_numpy(), rtol=1e-12)
    # lifelines' default band is R's log-log ("exponential Greenwood")
    ci = ref.confidence_interval_.loc[at]
    finite = np.isfinite(curve.lower)
    np.testing.assert_allclose(curve.lower[finite], ci.iloc[:, 0].to_numpy()[finite], rtol=1e-9)
    assert curve.median.estimate == ref.median_survival_time_ or (
        np.isnan(curve.median.estimate) and np.isinf(ref.median_survival_time_)
    )
    ref_h = (
        NelsonAalenFitter(nelson_aalen_smoothing=False)
        .fit(df[case["time"]], df[case["event"]])
        .cumulative_hazard_
    )
    np.testing.assert_allclose(hazard.cumhaz, ref_h.iloc[:, 0].loc[at].to_numpy(), rtol=1e-12)


@SETTINGS
@given(name=datasets, sites=n_sites, seed=seeds)
def test_logrank_equals_lifelines_on_pooled_rows(name: str, sites: int, seed: int) -> None:
    case = CASES[name]
    df = FRAMES[name]
    res = run_one(analysis(**spec(name, "logrank")), split(df, sites, seed), secure=False)
    assert isinstance(res, LogrankOutcome)
    col, _ = case["by"]
    ref = multivariate_logrank_test(df[case["time"]], df[col], df[case["event"]])
    np.testing.assert_allclose(res.test.chisq, ref.test_statistic, rtol=1e-9)
    np.testing.assert_allclose(res.test.p, ref.p_value, rtol=1e-7)


@SETTINGS
@given(name=datasets, sites=n_sites, seed=seeds)
def test_cox_equals_lifelines_on_pooled_rows(name: str, sites: int, seed: int) -> None:
    case = CASES[name]
    res = run_one(analysis(**spec(name, "cox")), split(FRAMES[name], sites, seed), secure=False)
    assert isinstance(res, CoxResult)
    df = FRAMES[name]
    cols = [c if isinstance(c, str) else c["column"] for c in case["cox"]]
    data = _complete(df, [case["time"], case["event"], *cols])
    for c in case["cox"]:
        if not isinstance(c, str):  # dummy-code like the study does: column[level]
            for lv in c["levels"][1:]:
                data[f"{c['column']}[{lv}]"] = (data[c["column"]] == lv).astype(float)
            data = data.drop(columns=c["column"])
    ref = CoxPHFitter().fit(data, case["time"], case["event"])
    np.testing.assert_allclose(
        res.coef, ref.params_.loc[list(res.names)].to_numpy(), rtol=2e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        res.se, ref.standard_errors_.loc[list(res.names)].to_numpy(), rtol=2e-5
    )
    np.testing.assert_allclose(res.loglik_final, ref.log_likelihood_, rtol=1e-9)
