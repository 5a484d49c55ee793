"""Endpoint names a study may use with ``dataset = "registry"``, and what they mean.

The site derives these from its registry extract (docs/registry_schema.md);
the study refers to them by name only, so every site computes the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

from her2fed.endpoints import ENDPOINTS_LINE, ENDPOINTS_PATIENT


@dataclass(frozen=True)
class EndpointInfo:
    per_line: bool  # one row per patient x line (else one row per patient)
    competing: bool  # event coded 0 censored / 1 next line / 2 death
    meaning: str


_MEANINGS = {
    "os_from_met_dx": "overall survival from metastatic diagnosis",
    "os_from_line_start": "overall survival from the start of line k",
    "pfs_line": "real-world progression-free survival on line k",
    "ttnt_line": "time from line k to the next line or death",
    "tot_line": "time on treatment of line k",
    "next_line_vs_death": "after line k ends: next line (1) vs death without a next line (2)",
}
COMPETING = frozenset({"next_line_vs_death"})

# names and row level come from the module that derives them, so they cannot drift
ENDPOINTS: dict[str, EndpointInfo] = {
    name: EndpointInfo(name in ENDPOINTS_LINE, name in COMPETING, _MEANINGS[name])
    for name in (*ENDPOINTS_PATIENT, *ENDPOINTS_LINE)
}
