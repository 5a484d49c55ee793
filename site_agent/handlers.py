"""Answering queries: study analysis + site rows -> fixed-shape summary.

The agent prepares each analysis's rows once (validation included) and then
answers any number of rounds from the cached arrays, so a Cox fit does not
re-read files per Newton step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from her2fed.catalog import ENDPOINTS
from her2fed.counts import EventTable
from her2fed.cox import CoxRows
from her2fed.disclosure import ReleaseRule, leave_one_out, sole_series, top_code_strata
from her2fed.dp import BudgetDecision
from her2fed.errors import DataError, ProtocolError
from her2fed.protocol import Prepared, Query, RegistryRows, local_summary, registry_summary
from her2fed.study import REGISTRY, REGISTRY_KINDS, Analysis, Study
from her2fed.summary import Additive
from site_agent.cohorts import CohortMemory
from site_agent.config import SiteConfig
from site_agent.data import level_codes, prepare
from site_agent.derived import DerivedRegistry, derive_registry
from site_agent.dp_site import privatize
from site_agent.policy import PolicyRefusal, check_query, check_study
from site_agent.sources import load_site_registry, load_site_table

Released = tuple[EventTable, int | None]
"""A released event table and, for attrition, the line slot later slots were merged into."""

Failing = dict[str, dict[int, list[int]]]
"""Leave-one-out refusals: analysis id -> series -> last bins of the refused merged bins."""


class SiteAgent:
    def __init__(
        self,
        config: SiteConfig,
        study: Study,
        tables: dict[str, pd.DataFrame] | None = None,
        registry: dict[str, pd.DataFrame] | None = None,
        cohorts: CohortMemory | None = None,
    ) -> None:
        """``tables``/``registry`` pre-load data by name (tests, benchmarks, other readers)."""
        self.config = config
        self.study = study
        self.cohorts = cohorts
        """Set on the live query path: the site's memory of answered cohorts (differencing)."""
        self._tables: dict[str, pd.DataFrame] = dict(tables or {})
        self._registry_frames = registry
        self._derived: DerivedRegistry | None = None
        self._rows: dict[str, Prepared | RegistryRows] = {}
        self._cox_cache: dict[str, CoxRows] = {}
        self._steps: dict[str, int] = {}  # Newton evaluations answered per Cox analysis
        self._study_checked = False
        self._own: dict[str, EventTable] = {}  # own curve / A3 tables, for leave-one-out
        self.last_dp: BudgetDecision | None = None
        """The DP budget the last round charged (None: no noise in this study)."""
        self.last_checks: list[tuple[str, str, object]] = []
        """(analysis id, rule, threshold) of every policy rule the last round's queries passed."""

    @property
    def site_id(self) -> str:
        return self.config.site_id

    @property
    def release_rule(self) -> ReleaseRule:
        """This site's thresholds for the pooled release (public: sent when it accepts a study)."""
        policy = self.config.policy
        return ReleaseRule(policy.min_cell, policy.min_at_risk)

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
            analysis = self.analysis(analysis_id)
            rows, frame, ids = self._rows_for(analysis)
            if self.cohorts is not None:  # differencing check, before anything is computed
                positions = (
                    np.flatnonzero(rows.line_group >= 0)
                    if isinstance(rows, RegistryRows)
                    else rows.rows
                )
                cohort = self.cohorts.fingerprints(frame, positions, ids)
                self.cohorts.check_and_remember(analysis, cohort, self.config.policy.min_cell)
            self._rows[analysis_id] = rows
        return self._rows[analysis_id]

    def _rows_for(
        self, analysis: Analysis
    ) -> tuple[Prepared | RegistryRows, pd.DataFrame, tuple[str, ...]]:
        """The analysis's rows, the frame they come from, and that frame's id columns."""
        if analysis.dataset != REGISTRY:
            path = self.config.tables.get(analysis.dataset, self.config.path)
            table = self.table(analysis.dataset)
            return prepare(table, analysis, str(path)), table, ()
        derived = self.derived()
        where = f"{self.config.path}: registry (derived rows)"
        line_ids = ("patient_id", "line")
        if analysis.kind in REGISTRY_KINDS:
            if analysis.by is None:
                rows = RegistryRows(
                    derived.lines,
                    np.zeros(len(derived.lines), np.int64),
                    np.zeros(len(derived.patients), np.int64),
                )
            else:
                rows = RegistryRows(
                    derived.lines,
                    level_codes(derived.lines, analysis.by, where),
                    level_codes(derived.patients, analysis.by, where),
                )
            return rows, derived.lines, line_ids
        assert analysis.endpoint is not None
        if ENDPOINTS[analysis.endpoint].per_line:
            frame = derived.lines
            if analysis.lines:
                frame = frame[frame["line"].isin(analysis.lines)].reset_index(drop=True)
            return prepare(frame, analysis, where), frame, line_ids
        return prepare(derived.patients, analysis, where), derived.patients, ("patient_id",)

    def answer(self, queries: Sequence[Query], n_sites: int | None = None) -> list[Additive]:
        """Summaries for one round; every query passes the site's policy first.

        ``n_sites`` (the sites summed with this one) sizes this site's share of
        differential-privacy noise when the study asks for it; unknown, the
        policy's ``min_sites`` is assumed, which over-noises (``dp_site.privatize``).
        """
        if not self._study_checked:
            check_study(self.config.policy, self.study)
            self._study_checked = True
        out: list[Additive] = []
        checks: list[tuple[str, str, object]] = []
        self.last_checks = checks
        self.last_dp = None
        for q in queries:
            analysis, rows = self.analysis(q.analysis_id), self.rows(q.analysis_id)
            seen = self._steps.get(q.analysis_id, 0)
            n = len(rows.patient_group) if isinstance(rows, RegistryRows) else rows.time.size
            applied = check_query(self.config.policy, analysis, q, n, seen)
            checks.extend((q.analysis_id, rule, threshold) for rule, threshold in applied)
            if isinstance(rows, RegistryRows):
                out.append(registry_summary(self.study.grid, analysis, rows, q))
                continue
            if q.step in ("cox_sums", "cox_derivs"):
                self._steps[q.analysis_id] = seen + 1
            out.append(local_summary(self.study.grid, analysis, rows, q, self._cox_cache))
        for q, summary in zip(queries, out, strict=True):
            if q.step in ("table", "attrition_cif") and isinstance(summary, EventTable):
                self._own[q.analysis_id] = summary
        return privatize(self, queries, out, n_sites)

    def check_release(self, releases: Mapping[str, Released]) -> Failing:
        """Leave-one-out: per analysis, the released bins that, minus this site's own rows,
        leave other hospitals' counts of 1..min_cell-1 (empty: the site agrees).

        Under differential privacy the released counts are noisy, so the
        subtraction reveals nothing exact and the check is not needed.
        """
        if self.study.dp_noise_variance > 0:
            return {}
        failing: Failing = {}
        for aid, (released, top_slot) in releases.items():
            own = self._own.get(aid)
            if own is None:
                raise ProtocolError(
                    f"the release names analysis {aid!r}, whose table this site did not compute "
                    "in this session; refused"
                )
            if top_slot is not None:
                own = top_code_strata(own, top_slot)
            if released.events.shape != own.events.shape or (
                released.censored.shape != own.censored.shape
            ):
                raise ProtocolError(f"the release of analysis {aid!r} has the wrong shape; refused")
            if not self.config.policy.per_site_release and sole_series(released, own):
                raise PolicyRefusal(
                    "per_site_release",
                    False,
                    f"part of analysis {aid!r}'s release (a group or stratum) comes from this "
                    "site alone, so it would publish this hospital's own result",
                    "the study groups several sites together, or the privacy officer sets "
                    "per_site_release = true in [policy]",
                )
            bad = leave_one_out(released, own, self.release_rule)
            if bad:
                failing[aid] = bad
        return failing
