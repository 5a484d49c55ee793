"""What distributed DP costs in accuracy: KM of overall survival at one year.

Three synthetic HER2+ registries (300 + 400 + 300 patients, ``site_agent.synth``)
answer one KM analysis (``os_from_met_dx``, all patients pooled, 30-day grid)
through the real pipeline - site agents, secure aggregation, orchestrator -
once exactly and ``--repeats`` times per noise variance with fresh site
secrets (fresh noise). The table in docs/privacy.md comes from this script:
``.venv/bin/python -m bench.dp_accuracy``. It prints Markdown; nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from coordinator.orchestrate import run_study
from coordinator.transport import InProcessTransport
from her2fed import dp
from her2fed.estimate import CurvesResult
from her2fed.grid import TimeGrid
from her2fed.km import KMCurve
from her2fed.study import Study, parse_analysis
from site_agent.config import Policy, SiteConfig
from site_agent.handlers import SiteAgent
from site_agent.synth import synthesize

SITES = (("athens", "GR", 300), ("oslo", "NO", 400), ("munich", "DE", 300))
DAY = 365.0


def km_at(curve: KMCurve, day: float) -> float:
    rows = curve.time <= day
    return float(curve.surv[rows][-1]) if rows.any() else 1.0


def one_year(study: Study, frames: Sequence[dict[str, pd.DataFrame]], where: Path) -> float:
    policy = Policy(min_cohort=0, dp_rho_per_study=10.0)
    agents = [
        SiteAgent(SiteConfig(where / s / "site.toml", s, c, policy=policy), study, registry=f)
        for (s, c, _), f in zip(SITES, frames, strict=True)
    ]
    result = run_study(study, InProcessTransport(agents)).results["os"]
    assert isinstance(result, CurvesResult)
    curve = result.groups["all"]
    assert isinstance(curve, KMCurve)
    return km_at(curve, DAY)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--variances", default="0,4,25,100")
    args = parser.parse_args(argv)
    frames = [synthesize(c, n, seed=i + 1, site_id=s) for i, (s, c, n) in enumerate(SITES)]
    km = parse_analysis(
        {"id": "os", "kind": "km", "dataset": "registry", "endpoint": "os_from_met_dx"}, "os"
    )
    base = Study("dp-accuracy", TimeGrid(30, 1830), (km,))
    print("| σ² | ρ per query | ε (δ = 1e-6) | S(1 y) mean | mean abs. err. | sd | max abs. err. |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        exact = one_year(base, frames, Path(tmp) / "exact")
        for v in (float(x) for x in args.variances.split(",")):
            if v == 0:
                print(f"| 0 | 0 | 0 | {exact:.4f} | 0 | 0 | 0 |")
                continue
            study = replace(base, dp_noise_variance=v)
            got = np.array(
                [one_year(study, frames, Path(tmp) / f"v{v}-r{r}") for r in range(args.repeats)]
            )
            err = np.abs(got - exact)
            rho = dp.skellam_rho(v, dp.Sensitivity(1.0, 1.0))
            print(
                f"| {v:g} | {rho:.4f} | {dp.epsilon_delta(rho):.2f} | {got.mean():.4f} | "
                f"{err.mean():.4f} | {got.std(ddof=1):.4f} | {err.max():.4f} |"
            )
    print(f"\nexact S(1 y) = {exact:.4f}; {args.repeats} noisy runs per σ² (fresh site secrets)")
    return 0 if math.isfinite(exact) else 1


if __name__ == "__main__":
    raise SystemExit(main())
