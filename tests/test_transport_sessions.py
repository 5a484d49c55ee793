"""How the transports size and reuse secure sessions, and that concurrency changes nothing.

The rules are a cost trade-off (a key set-up against masking zero padding),
but their outcomes are observable (key set-ups per study) and must never
change a pooled number.
"""

from __future__ import annotations

import pytest

from coordinator.orchestrate import run_study
from coordinator.transport import (
    PAD_ALLOWANCE,
    ROUNDS_PER_SESSION,
    InProcessTransport,
    reuse_session,
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


def test_a_round_that_does_not_fit_or_is_out_of_rounds_gets_a_new_session() -> None:
    c = config(100, 1000)
    assert reuse_session(c, 0, 100, 1000)
    assert reuse_session(c, 0, 1, 1)  # short rounds share the session: padding is cheap
    assert not reuse_session(c, 0, 101, 1000)  # longer
    assert not reuse_session(c, ROUNDS_PER_SESSION, 100, 1000)  # keys used up


def test_padding_beyond_the_allowance_and_a_quarter_of_the_round_means_a_new_session() -> None:
    long = config(0, 1_000_000)  # 2 million ring elements: 2 limbs of 48 bits a float
    assert long.encoding.ring_length == 2_000_000
    assert reuse_session(long, 1, 0, 1_000_000)
    assert reuse_session(long, 1, 0, 800_000)  # 400,000 padding <= 1,600,000 / 4
    assert not reuse_session(long, 1, 0, 700_000)  # 600,000 > max(PAD_ALLOWANCE, 1,400,000 / 4)
    assert not reuse_session(long, 1, 0, 500_000)  # the Cox case: half the vector zeros
    # a vector no longer than the allowance may always be padded to it
    assert reuse_session(config(0, PAD_ALLOWANCE // 2), 1, 0, 1)


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
    # short vectors: round 1 opens a session, the longer round 2 a second one that the
    # remaining (shorter) Newton rounds share
    assert out.aggregation["sessions"] == 2
    # provenance names the float format the sessions used (5 sites: the 2 x 48-bit default)
    assert out.aggregation["float_encoding"] == "fixed point, 2 x 48-bit limbs, 48 fractional bits"
