"""How the transports size and reuse secure sessions, and that concurrency changes nothing.

The rules are a cost trade-off (a key set-up against masking zero padding),
but their outcomes are observable (key set-ups per study) and must never
change a pooled number.
"""

from __future__ import annotations

import pytest

from coordinator.orchestrate import run_study
from coordinator.transport import (
    MIN_SESSION_SHAPE,
    ROUNDS_PER_SESSION,
    InProcessTransport,
    reuse_session,
    session_shape,
)
from her2fed.cox import CoxResult
from her2fed.estimate import CurvesResult
from her2fed.km import KMCurve
from her2fed.secagg.config import SessionConfig
from her2fed.secagg.randomness import SeededRandom
from her2fed.study import Study
from site_agent.handlers import SiteAgent
from tests.fedrun import DATASET, analysis, load, site_config, split, study_of

ROSTER = ("a", "b", "c")


def config(n_ints: int, n_floats: int, rounds: int = ROUNDS_PER_SESSION) -> SessionConfig:
    return SessionConfig.create(
        ROSTER, n_rounds=rounds, n_ints=n_ints, n_floats=n_floats, rng=SeededRandom(b"t")
    )


def test_sessions_open_at_least_the_floor_and_never_shorter_than_the_round() -> None:
    assert session_shape(10, 20) == MIN_SESSION_SHAPE
    big = (MIN_SESSION_SHAPE[0] + 1, MIN_SESSION_SHAPE[1] * 3)
    assert session_shape(*big) == big


def test_a_round_that_does_not_fit_or_is_out_of_rounds_gets_a_new_session() -> None:
    c = config(*session_shape(100, 1000))
    assert reuse_session(c, 0, 100, 1000)
    assert not reuse_session(c, 0, 100, MIN_SESSION_SHAPE[1] + 1)  # longer
    assert not reuse_session(c, ROUNDS_PER_SESSION, 100, 1000)  # keys used up


def test_padding_beyond_a_quarter_of_a_long_round_means_a_new_session() -> None:
    long = config(0, 1_000_000)
    assert reuse_session(long, 1, 0, 1_000_000)
    assert reuse_session(long, 1, 0, 800_000)  # 200,000 padding <= 200,000
    assert not reuse_session(long, 1, 0, 500_000)  # half the vector would be zeros
    # below the floor, padding is always cheaper than a set-up
    small = config(*session_shape(0, 10))
    assert reuse_session(small, 1, 0, 1)


def _cox_agents(n_sites: int) -> tuple[Study, list[SiteAgent]]:
    cox = analysis(
        id="cox", kind="cox", time="week", event="arrest", covariates=["fin", "age", "prio"]
    )
    km = analysis(id="km", kind="km", time="week", event="arrest")
    study = study_of(cox, km, horizon_days=60)
    frames = split(load("rossi"), n_sites, seed=4)
    agents = [SiteAgent(site_config(i), study, tables={DATASET: f}) for i, f in enumerate(frames)]
    return study, agents


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_concurrent_sites_give_bit_identical_results(workers: int) -> None:
    study, agents = _cox_agents(5)
    ref = run_study(study, InProcessTransport(_cox_agents(5)[1], workers=1))
    out = run_study(study, InProcessTransport(agents, workers=workers))
    a, b = ref.results["cox"], out.results["cox"]
    assert isinstance(a, CoxResult) and isinstance(b, CoxResult)
    assert a.coef.tobytes() == b.coef.tobytes() and a.se.tobytes() == b.se.tobytes()
    ka, kb = ref.results["km"], out.results["km"]
    assert isinstance(ka, CurvesResult) and isinstance(kb, CurvesResult)
    sa, sb = ka.groups["all"], kb.groups["all"]
    assert isinstance(sa, KMCurve) and isinstance(sb, KMCurve)
    assert sa.surv.tobytes() == sb.surv.tobytes() and sa.std_err.tobytes() == sb.std_err.tobytes()
    # a 30-day-grid-sized study: round 1 and every Newton round share one key set-up
    assert out.aggregation["sessions"] == 1
