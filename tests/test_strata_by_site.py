"""Stratifying by site equals stratifying by a site column on the pooled rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter

from her2fed.cox import CoxResult
from her2fed.estimate import LogrankOutcome
from tests.fedrun import analysis, load, run_one, split

N_SITES = 5


def frames_with_site(name: str) -> tuple[list[pd.DataFrame], pd.DataFrame]:
    frames = split(load(name), N_SITES, seed=17)
    frames = [f.assign(site_col=i) for i, f in enumerate(frames)]
    return frames, pd.concat(frames, ignore_index=True)


SITE_STRATA = [{"column": "site_col", "levels": list(range(N_SITES))}]


@pytest.mark.parametrize("rho", [0.0, 1.0])
def test_logrank_by_site(rho: float) -> None:
    frames, pooled = frames_with_site("gbsg2")
    common = {
        "kind": "logrank",
        "time": "time",
        "event": "cens",
        "rho": rho,
        "by": {"column": "horTh", "levels": ["no", "yes"]},
    }
    fed = run_one(analysis(**common, strata="site"), frames)
    ref = run_one(analysis(**common, strata=SITE_STRATA), [pooled])
    assert isinstance(fed, LogrankOutcome) and isinstance(ref, LogrankOutcome)
    np.testing.assert_allclose(fed.test.chisq, ref.test.chisq, rtol=1e-12)
    np.testing.assert_allclose(fed.test.variance, ref.test.variance, rtol=1e-12)
    unstratified = run_one(analysis(**common), [pooled])
    assert isinstance(unstratified, LogrankOutcome)
    assert abs(unstratified.test.chisq - fed.test.chisq) > 1e-6  # stratifying did something


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_by_site(ties: str) -> None:
    frames, pooled = frames_with_site("rossi")
    covs = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]
    common = {"kind": "cox", "time": "week", "event": "arrest", "covariates": covs, "ties": ties}
    fed = run_one(analysis(**common, strata="site"), frames)
    ref = run_one(analysis(**common, strata=SITE_STRATA), [pooled])
    assert isinstance(fed, CoxResult) and isinstance(ref, CoxResult)
    np.testing.assert_allclose(fed.coef, ref.coef, rtol=1e-9)
    np.testing.assert_allclose(fed.se, ref.se, rtol=1e-9)
    np.testing.assert_allclose(fed.loglik_final, ref.loglik_final, rtol=1e-12)
    if ties == "efron":
        life = CoxPHFitter(strata=["site_col"]).fit(
            pooled[["week", "arrest", "site_col", *covs]], "week", "arrest"
        )
        np.testing.assert_allclose(fed.coef, life.params_.loc[covs].to_numpy(), rtol=1e-5)
