"""Answering queries: study analysis + site rows -> fixed-shape summary.

The agent prepares each analysis's rows once (validation included) and then
answers any number of rounds from the cached arrays, so a Cox fit does not
re-read files per Newton step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from her2fed.catalog import ENDPOINTS
from her2fed.cox import CoxRows
from her2fed.errors import DataError, ProtocolError
from her2fed.protocol import Prepared, Query, RegistryRows, local_summary, registry_summary
from her2fed.study import REGISTRY, REGISTRY_KINDS, Analysis, Study
from her2fed.summary import Additive
from site_agent.config import SiteConfig
from site_agent.data import level_codes, prepare
from site_agent.derived import DerivedRegistry, derive_registry
from site_agent.policy import check_query, check_study
from site_agent.sources import load_site_registry, load_site_table


class SiteAgent:
    def __init__(
        self,
        config: SiteConfig,
        study: Study,
        tables: dict[str, pd.DataFrame] | None = None,
        registry: dict[str, pd.DataFrame] | None = None,
    ) -> None:
        """``tables``/``registry`` pre-load data by name (tests, benchmarks, other readers)."""
        self.config = config
        self.study = study
        self._tables: dict[str, pd.DataFrame] = dict(tables or {})
        self._registry_frames = registry
        self._derived: DerivedRegistry | None = None
        self._rows: dict[str, Prepared | RegistryRows] = {}
        self._cox_cache: dict[str, CoxRows] = {}
        self._steps: dict[str, int] = {}  # Newton evaluations answered per Cox analysis
        self._study_checked = False

    @property
    def site_id(self) -> str:
        return self.config.site_id

    def table(self, name: str) -> pd.DataFrame:
        if name not in self._tables:
            self._tables[name] = load_site_table(self.config, name)
        return self._tables[name]

    def derived(self) -> DerivedRegistry:
        """The site's HER2+ cohort with lines and endpoints, derived once per study."""
        if self._derived is None:
            frames = self._registry_frames
            if frames is None:
                if not self.config.has_registry:
                    raise DataError(
                        f"{self.config.path}: data.registry",
                        "the study reads the HER2+ registry, which this site does not declare",
                        "add [data.registry] with patients, treatments and progressions files "
                        "(see docs/registry_schema.md)",
                    )
                reg = load_site_registry(self.config)
                frames = {
                    "patients": reg.patients,
                    "treatments": reg.treatments,
                    "progressions": reg.progressions,
                    "care_events": reg.care_events,
                }
            self._derived = derive_registry(
                frames["patients"],
                frames["treatments"],
                frames["progressions"],
                frames.get("care_events"),
                country=self.config.country,
                rules=self.study.rules,
            )
        return self._derived

    def analysis(self, analysis_id: str) -> Analysis:
        try:
            return self.study.analysis(analysis_id)
        except KeyError:
            raise ProtocolError(
                f"query names analysis {analysis_id!r}, which is not in the study this site "
                "accepted; refused"
            ) from None

    def rows(self, analysis_id: str) -> Prepared | RegistryRows:
        if analysis_id not in self._rows:
            self._rows[analysis_id] = self._rows_for(self.analysis(analysis_id))
        return self._rows[analysis_id]

    def _rows_for(self, analysis: Analysis) -> Prepared | RegistryRows:
        if analysis.dataset != REGISTRY:
            path = self.config.tables.get(analysis.dataset, self.config.path)
            return prepare(self.table(analysis.dataset), analysis, str(path))
        derived = self.derived()
        where = f"{self.config.path}: registry (derived rows)"
        if analysis.kind in REGISTRY_KINDS:
            if analysis.by is None:
                return RegistryRows(
                    derived.lines,
                    np.zeros(len(derived.lines), np.int64),
                    np.zeros(len(derived.patients), np.int64),
                )
            return RegistryRows(
                derived.lines,
                level_codes(derived.lines, analysis.by, where),
                level_codes(derived.patients, analysis.by, where),
            )
        assert analysis.endpoint is not None
        if ENDPOINTS[analysis.endpoint].per_line:
            frame = derived.lines
            if analysis.lines:
                frame = frame[frame["line"].isin(analysis.lines)].reset_index(drop=True)
        else:
            frame = derived.patients
        return prepare(frame, analysis, where)

    def answer(self, queries: Sequence[Query]) -> list[Additive]:
        """Summaries for one round; every query passes the site's policy first."""
        if not self._study_checked:
            check_study(self.config.policy, self.study)
            self._study_checked = True
        out: list[Additive] = []
        for q in queries:
            analysis, rows = self.analysis(q.analysis_id), self.rows(q.analysis_id)
            seen = self._steps.get(q.analysis_id, 0)
            if isinstance(rows, RegistryRows):
                check_query(self.config.policy, analysis, q, len(rows.patient_group), seen)
                out.append(registry_summary(self.study.grid, analysis, rows, q))
                continue
            check_query(self.config.policy, analysis, q, rows.time.size, seen)
            if q.step in ("cox_sums", "cox_derivs"):
                self._steps[q.analysis_id] = seen + 1
            out.append(local_summary(self.study.grid, analysis, rows, q, self._cox_cache))
        return out
