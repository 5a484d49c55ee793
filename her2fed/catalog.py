"""Names a study may use with ``dataset = "registry"``: endpoints and derived columns.

The site derives these from its registry extract (docs/registry_schema.md);
the study refers to them by name only, so every site computes the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EndpointInfo:
    per_line: bool  # one row per patient x line (else one row per patient)
    competing: bool  # event coded 0 censored / 1 next line / 2 death
    meaning: str


ENDPOINTS: dict[str, EndpointInfo] = {
    "os_from_met_dx": EndpointInfo(False, False, "overall survival from metastatic diagnosis"),
    "os_from_line_start": EndpointInfo(True, False, "overall survival from the start of line k"),
    "pfs_line": EndpointInfo(True, False, "real-world progression-free survival on line k"),
    "ttnt_line": EndpointInfo(True, False, "time from line k to the next line or death"),
    "tot_line": EndpointInfo(True, False, "time on treatment of line k"),
    "next_line_vs_death": EndpointInfo(
        True, True, "after line k ends: next line (1) vs death without a next line (2)"
    ),
}

# Columns on derived rows that a study may use for `by`, `strata` or covariates.
DERIVED_COLUMNS: tuple[str, ...] = (
    "line",
    "hr_status",
    "de_novo",
    "brain_mets",
    "age_at_met_dx",
    "age_group",
    "ecog",
    "regimen",
    "anti_her2",
    "country",
    "met_dx_year",
)
