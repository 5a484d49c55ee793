"""Test helpers: run analyses across in-memory sites through the real pipeline.

The sites are real ``SiteAgent`` objects behind the real in-process transport;
only the file reading is replaced by handing each agent its DataFrame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from coordinator.orchestrate import run_study
from coordinator.transport import MIN_SECURE_SITES, InProcessTransport
from her2fed.estimate import Result
from her2fed.grid import TimeGrid
from her2fed.study import Analysis, Study, parse_analysis
from site_agent.config import RESEARCH_POLICY, Policy, SiteConfig
from site_agent.handlers import SiteAgent

DATA = Path(__file__).parent / "golden" / "data"
DATASET = "d"
# Statistical tests compare with estimators on the pooled rows: the research policy
# (1-day grids, empty sites allowed, release rules off); the policy and release rules
# are tested in test_policy.py and test_disclosure.py.


def load(name: str) -> pd.DataFrame:
    return pd.read_csv(DATA / f"{name}.csv")


def analysis(**spec: Any) -> Analysis:
    spec.setdefault("id", "a")
    spec.setdefault("dataset", DATASET)
    return parse_analysis(spec, "test")


def study_of(*analyses: Analysis, grid_days: int = 1, horizon_days: int = 4000) -> Study:
    return Study("test", TimeGrid(grid_days, horizon_days), tuple(analyses))


def split(df: pd.DataFrame, n_sites: int, seed: int) -> list[pd.DataFrame]:
    """Rows assigned to sites at random (sites may be empty), order shuffled too."""
    rng = np.random.default_rng(seed)
    site = rng.integers(0, n_sites, size=len(df))
    order = rng.permutation(len(df))
    shuffled, owner = df.iloc[order], site[order]
    return [shuffled[owner == s].reset_index(drop=True) for s in range(n_sites)]


def site_config(i: int, policy: Policy = RESEARCH_POLICY) -> SiteConfig:
    return SiteConfig(Path(f"site{i}.toml"), f"site{i}", "XX", policy=policy)


def run(study: Study, frames: list[pd.DataFrame], *, secure: bool = True) -> dict[str, Result]:
    agents = [SiteAgent(site_config(i), study, tables={DATASET: f}) for i, f in enumerate(frames)]
    # runs of three or more sites go through secure aggregation unless a test opts out
    transport = InProcessTransport(agents, secure=secure and len(agents) >= MIN_SECURE_SITES)
    return run_study(study, transport).results


def run_one(a: Analysis, frames: list[pd.DataFrame], *, secure: bool = True, **grid: int) -> Result:
    """One analysis over in-memory sites; the horizon defaults to the data's last time.

    A horizon far beyond the data only adds empty grid bins, which cost time
    under secure aggregation and change no estimate.
    """
    if "horizon_days" not in grid:
        last = max((float(f[a.time].max()) for f in frames if len(f)), default=1.0)
        grid["horizon_days"] = max(int(np.ceil(last)), grid.get("grid_days", 1))
    return run(study_of(a, **grid), frames, secure=secure)[a.id]
