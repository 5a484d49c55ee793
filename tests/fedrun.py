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
from coordinator.transport import InProcessTransport
from her2fed.estimate import Result
from her2fed.grid import TimeGrid
from her2fed.study import Analysis, Study, parse_analysis
from site_agent.config import SiteConfig
from site_agent.handlers import SiteAgent

DATA = Path(__file__).parent / "golden" / "data"
DATASET = "d"


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


def run(study: Study, frames: list[pd.DataFrame]) -> dict[str, Result]:
    agents = [
        SiteAgent(SiteConfig(Path(f"site{i}.toml"), f"site{i}", "XX"), study, tables={DATASET: f})
        for i, f in enumerate(frames)
    ]
    return run_study(study, InProcessTransport(agents)).results


def run_one(a: Analysis, frames: list[pd.DataFrame], **grid: int) -> Result:
    return run(study_of(a, **grid), frames)[a.id]
