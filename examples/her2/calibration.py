"""Do the synthetic cohorts, analysed by her2fed, reproduce the published figures?

Generates large cohorts per country (so sampling error is small), runs them
through the site agent (registry validation aside: frames are handed over
directly), line-of-therapy derivation, endpoints and the pooled estimators,
and prints target vs achieved as a markdown table (docs/calibration.md is
this script's output). tests/test_calibration.py asserts the same numbers
within sampling error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from coordinator.orchestrate import run_study
from coordinator.results import pooled_json
from coordinator.transport import InProcessTransport
from her2fed.study import Study, parse_study
from site_agent.config import Policy, SiteConfig
from site_agent.handlers import SiteAgent
from site_agent.synth import synthesize

MONTH = 30.4375
N = 3000  # patients per country: binomial SD of a 30 % share ~ 0.8 points


@dataclass(frozen=True)
class Check:
    cohort: str
    figure: str
    target: float
    achieved: float
    tolerance: float  # absolute, in the figure's unit

    @property
    def ok(self) -> bool:
        return abs(self.achieved - self.target) <= self.tolerance


STUDY = {
    "study": {"name": "calibration", "grid_days": 1, "horizon_days": 3650},
    "analysis": [
        {"id": "att", "kind": "attrition", "dataset": "registry"},
        {
            "id": "pfs",
            "kind": "km",
            "dataset": "registry",
            "endpoint": "pfs_line",
            "lines": [1, 2, 3, 4],
            "by": {"column": "line", "levels": [1, 2, 3, 4]},
        },
        {
            "id": "os2",
            "kind": "km",
            "dataset": "registry",
            "endpoint": "os_from_line_start",
            "lines": [2],
        },
        {"id": "os", "kind": "km", "dataset": "registry", "endpoint": "os_from_met_dx"},
    ],
}


def analyse(countries: tuple[str, ...], n: int = N, seed: int = 7) -> dict[str, object]:
    study: Study = parse_study(STUDY)
    # the generator is checked on the exact pooled figures (1-day grid, no release coarsening)
    policy = Policy(min_grid_days=1, min_cell=0, min_at_risk=0)
    agents = [
        SiteAgent(
            SiteConfig(Path(f"{c}.toml"), f"{c.lower()}-{i}", c, policy=policy),
            study,
            registry=synthesize(c, n, seed + i, f"{c.lower()}-{i}"),
        )
        for i, c in enumerate(countries)
    ]
    out = run_study(study, InProcessTransport(agents, secure=len(agents) >= 3))
    return {a.id: pooled_json(a, out.results[a.id]) for a in study.analyses}


def _med(res: dict[str, object], aid: str, group: str) -> float:
    value = res[aid]["groups"][group]["median"]  # type: ignore[index]
    return float("nan") if value is None else float(value) / MONTH


def checks() -> list[Check]:
    out: list[Check] = []
    no = analyse(("NO",))
    reach = no["att"]["groups"]["all"]["reach"]  # type: ignore[index]
    for k, target in ((1, 0.43), (2, 0.25), (3, 0.11)):
        out.append(Check("Norway", f"share reaching {k + 1}L", target, reach[k]["estimate"], 0.03))
    eu = analyse(("FR", "ES", "UK"))
    g = eu["att"]["groups"]["all"]  # type: ignore[index]
    out.append(
        Check("EU-5", "no 2L among treated (A1, line 1)", 0.296, g["A1"][0]["estimate"], 0.03)
    )
    no_next = g["no_next"][0]
    states = {s: v[0] for s, v in g["end_states"].items()}
    other = states["on_treatment"] + states["off_treatment_follow_up"] + states["other"]
    # the four published reasons cover 96.3 % of patients; compare shares of those four
    covered = 0.374 + 0.150 + 0.140 + 0.299
    for label, value, share in (
        ("death", states["death"], 0.374),
        ("end-of-life palliative care", states["palliative"], 0.150),
        ("lost to follow-up", states["lost_to_follow_up"], 0.140),
        ("other (alive, off or on treatment)", other, 0.299),
    ):
        out.append(
            Check(
                "EU-5",
                f"reason for no 2L: {label} (of the four reasons)",
                share / covered,
                value / no_next,
                0.05,
            )
        )
    de = analyse(("DE",))
    a3 = de["att"]["groups"]["all"]["A3"][0]["estimate"]  # type: ignore[index]
    out.append(Check("PRAEGNANT", "P(2L within 5 y), death competing", 0.67, 1 - a3, 0.03))
    gr = analyse(("GR",))
    for line, target in (("2", 7.7), ("3", 6.4), ("4", 5.6)):
        out.append(
            Check("togetHER", f"median PFS {line}L (months)", target, _med(gr, "pfs", line), 0.9)
        )
    out.append(
        Check("togetHER", "median OS from 2L start (months)", 25.0, _med(gr, "os2", "all"), 2.5)
    )
    dk = analyse(("DK",))
    out.append(Check("Danish BCG", "median OS (months)", 42.3, _med(dk, "os", "all"), 3.5))
    for line, target in (("1", 13.4), ("2", 6.6), ("3", 5.8)):
        out.append(
            Check("Danish BCG", f"median PFS {line}L (months)", target, _med(dk, "pfs", line), 1.0)
        )
    return out


def markdown(rows: list[Check]) -> str:
    lines = [
        "# Calibration of the synthetic cohorts",
        "",
        f"Generated by `.venv/bin/python examples/her2/calibration.py` ({N:,} synthetic patients "
        "per country, seed 7): each cohort analysed by her2fed itself - registry rows, derived "
        "lines of therapy, endpoints, pooled estimators - against the published figure "
        "(`../shared/cohorts.md`). `tests/test_calibration.py` asserts the tolerances.",
        "",
        "| cohort | figure | published | her2fed on synthetic data | tolerance | ok |",
        "|---|---|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.cohort} | {r.figure} | {r.target:.3g} | {r.achieved:.3g} | "
            f"±{r.tolerance:g} | {'yes' if r.ok else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = markdown(checks())
    print(text)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text, encoding="utf-8")
