"""From a site's registry extract to the rows analyses read (never released).

The HER2-positive cohort is selected, lines of therapy are derived with the
study's rule set, endpoints are computed per patient and per line, and the
site's country is attached so a study can group or stratify by it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from her2fed.endpoints import derive_endpoints
from her2fed.lot import LinesResult, RuleSet, derive_lines


@dataclass(frozen=True)
class DerivedRegistry:
    patients: pd.DataFrame  # one row per HER2+ patient
    lines: pd.DataFrame  # one row per patient x line
    lines_result: LinesResult
    n_not_her2_positive: int


def derive_registry(
    patients: pd.DataFrame,
    treatments: pd.DataFrame,
    progressions: pd.DataFrame,
    care_events: pd.DataFrame | None,
    *,
    country: str,
    rules: RuleSet,
) -> DerivedRegistry:
    """Cohort selection, lines, endpoints; the frames the registry analyses read."""
    her2 = patients["her2_status"].astype(str).str.upper() == "POS"
    cohort = patients[her2].reset_index(drop=True)
    ids = set(cohort["patient_id"])

    def of_cohort(frame: pd.DataFrame | None) -> pd.DataFrame | None:
        if frame is None:
            return None
        return frame[frame["patient_id"].isin(ids)].reset_index(drop=True)

    treat = of_cohort(treatments)
    prog = of_cohort(progressions)
    assert treat is not None and prog is not None
    lines = derive_lines(cohort, treat, rules)
    tables = derive_endpoints(cohort, lines, prog, rules, care_events=of_cohort(care_events))
    return DerivedRegistry(
        patients=tables.patients.assign(country=country),
        lines=tables.lines.assign(country=country),
        lines_result=lines,
        n_not_her2_positive=int((~her2).sum()),
    )
