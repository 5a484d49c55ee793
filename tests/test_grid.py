"""Grid semantics: round up to the grid, censor administratively at the horizon."""

from __future__ import annotations

import numpy as np
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter

from her2fed.cox import CoxResult
from her2fed.errors import SpecError
from her2fed.estimate import CurvesResult
from her2fed.grid import TimeGrid
from tests.fedrun import analysis, load, run_one, split


def test_times_round_up_and_horizon_censors() -> None:
    grid = TimeGrid(30, 90)
    bins, ev = grid.bin(np.array([0.0, 1, 30, 31, 89.5, 90, 91, 500]), np.ones(8, np.int64))
    assert bins.tolist() == [0, 1, 1, 2, 3, 3, 3, 3]
    assert ev.tolist() == [1, 1, 1, 1, 1, 1, 0, 0]  # an event after the horizon is censored
    assert grid.n_bins == 4 and grid.times.tolist() == [0, 30, 60, 90]


@pytest.mark.parametrize(("grid_days", "horizon_days"), [(0, 10), (30, 10), (1.5, 10)])
def test_bad_grid_is_refused(grid_days: object, horizon_days: int) -> None:
    with pytest.raises(SpecError, match="Fix:"):
        TimeGrid(grid_days, horizon_days)  # type: ignore[arg-type]


@pytest.mark.parametrize(("grid_days", "horizon_days"), [(1, 5000), (7, 5000), (30, 1500)])
def test_binned_km_equals_lifelines_on_binned_times(grid_days: int, horizon_days: int) -> None:
    """The federated KM on a grid is the unbinned KM of times rounded up and capped."""
    df = load("gbsg2")
    res = run_one(
        analysis(kind="km", time="time", event="cens"),
        split(df, 5, seed=1),
        grid_days=grid_days,
        horizon_days=horizon_days,
    )
    assert isinstance(res, CurvesResult)
    t = np.minimum(df["time"], horizon_days)
    e = np.where(df["time"] > horizon_days, 0, df["cens"])
    binned = np.ceil(t / grid_days) * grid_days
    ref = KaplanMeierFitter().fit(binned, e).survival_function_.iloc[:, 0]
    got = res.groups["all"]
    np.testing.assert_allclose(got.surv, ref.loc[got.time].to_numpy(), rtol=1e-12)


def test_one_day_grid_cox_equals_unbinned_cox() -> None:
    df = load("rossi")
    covs = ["fin", "age", "prio"]
    res = run_one(
        analysis(kind="cox", time="week", event="arrest", covariates=covs),
        split(df, 4, seed=2),
        grid_days=1,
        horizon_days=60,
    )
    assert isinstance(res, CoxResult)
    ref = CoxPHFitter().fit(df[["week", "arrest", *covs]], "week", "arrest")
    np.testing.assert_allclose(res.coef, ref.params_.to_numpy(), rtol=1e-6)
