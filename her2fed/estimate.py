"""Pooled estimates per analysis, driven as small state machines.

Each ``AnalysisRun`` says which queries it needs next, receives the merged
(summed) answers, and ends with a frozen result. The coordinator batches the
queries of every run into the same round, so a study needs one round for all
non-Cox analyses plus the Newton rounds of its Cox models, whatever the
transport. Runs never learn how many sites contributed.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from her2fed.attrition import A3Result, AttritionCounts, a3
from her2fed.cif import CIFCurve, aalen_johansen
from her2fed.counts import EventTable
from her2fed.cox import (
    CoxDerivs,
    CoxLocalFit,
    CoxMoments,
    CoxResult,
    CoxSums,
    cox_result,
    derivs_from_sums,
    newton,
    warm_start,
)
from her2fed.disclosure import (
    Blocks,
    Release,
    ReleaseRule,
    coarsen,
    release_attrition,
    release_table,
)
from her2fed.dp import clip_all
from her2fed.errors import EstimationError
from her2fed.grid import TimeGrid
from her2fed.km import KMCurve, NACurve, kaplan_meier, nelson_aalen
from her2fed.logrank import LogrankParts, LogrankResult, logrank_test, parts_from_table
from her2fed.pathways import PathwayCounts, SankeyTable, group_rare
from her2fed.protocol import Query, Step, first_steps
from her2fed.study import Analysis
from her2fed.summary import Additive


@dataclass(frozen=True)
class CurvesResult:
    """KM, Nelson-Aalen or CIF curves per declared group level."""

    kind: str
    groups: dict[str, KMCurve] | dict[str, NACurve] | dict[str, CIFCurve]
    n_dropped: int


@dataclass(frozen=True)
class LogrankOutcome:
    """A log-rank test with the group labels its vectors refer to."""

    labels: tuple[str, ...]
    test: LogrankResult
    n_dropped: int


@dataclass(frozen=True)
class AttritionResult:
    """Pooled attrition counts per group and line slot, with A3 from the pooled CIF.

    ``overall``/``a3_overall`` add all groups; with no ``by`` they equal the
    single group ``all``.
    """

    labels: tuple[str, ...]
    counts: AttritionCounts
    a3: A3Result
    overall: AttritionCounts
    a3_overall: A3Result
    withheld: Mapping[str, NDArray[np.bool_]] = field(default_factory=dict)
    """Disclosure control: per count field, the [group, slot(, state)] cells not released."""
    withheld_total: Mapping[str, NDArray[np.bool_]] = field(default_factory=dict)
    """The same for ``overall`` ([slot(, state)])."""


@dataclass(frozen=True)
class PathwaysResult:
    table: SankeyTable


def _key(beta: np.ndarray) -> tuple[float, ...]:
    return tuple(float(b) for b in beta)


Result = CurvesResult | LogrankOutcome | CoxResult | AttritionResult | PathwaysResult


def estimate_attrition(
    analysis: Analysis, grid: TimeGrid, counts: AttritionCounts, table: EventTable
) -> AttritionResult:
    """A1, A2, A4 read the counts; A3 reads the merged next-line-vs-death table."""
    pooled_table = EventTable(
        events=table.events.sum(axis=1, keepdims=True),
        censored=table.censored.sum(axis=1, keepdims=True),
        dropped=table.dropped,
    )
    return AttritionResult(
        labels=analysis.group_labels,
        counts=counts,
        a3=a3(table, grid),
        overall=counts.overall(),
        a3_overall=a3(pooled_table, grid),
    )


def estimate_table(analysis: Analysis, grid: TimeGrid, table: EventTable) -> Result:
    """Estimates that read only a merged event table."""
    labels = analysis.group_labels
    dropped = int(table.dropped[0])
    if analysis.kind == "logrank":
        return LogrankOutcome(
            labels, logrank_test(parts_from_table(table, analysis.rho), analysis.rho), dropped
        )
    events = table.events.sum(axis=0)  # [g, k, b] pooled over strata
    censored = table.censored.sum(axis=0)
    if analysis.kind == "km":
        km = {
            lab: kaplan_meier(
                grid.times,
                events[g].sum(axis=0),
                censored[g],
                conf_type=analysis.conf_type,
                conf_level=analysis.conf_level,
                probs=analysis.quantiles,
            )
            for g, lab in enumerate(labels)
        }
        return CurvesResult("km", km, dropped)
    if analysis.kind == "nelson_aalen":
        na = {
            lab: nelson_aalen(grid.times, events[g].sum(axis=0), censored[g])
            for g, lab in enumerate(labels)
        }
        return CurvesResult("nelson_aalen", na, dropped)
    if analysis.kind == "cif":
        cif = {
            lab: aalen_johansen(grid.times, events[g], censored[g]) for g, lab in enumerate(labels)
        }
        return CurvesResult("cif", cif, dropped)
    raise ValueError(f"{analysis.kind} is not estimated from an event table")


class AnalysisRun:
    """One analysis in flight: pending queries, merged answers, final result."""

    def __init__(
        self,
        analysis: Analysis,
        grid: TimeGrid,
        release: ReleaseRule | None = None,
        dp_noise_variance: float = 0.0,
    ) -> None:
        """``dp_noise_variance`` > 0: the sites added DP noise, so counts are clipped first."""
        self.analysis = analysis
        self.grid = grid
        self.rule = release if release is not None and release.active else None
        self.release: Release | None = None
        """What disclosure control did before estimation (None: nothing to do or no rule)."""
        self.dp_noise_variance = dp_noise_variance
        self.released: EventTable | None = None
        """The released event table (after disclosure control), which sites check once more."""
        self.blocks: dict[int, Blocks] = {}
        """Per series, merged bins fixed by leave-one-out rounds (others: the greedy merge)."""
        self._pooled: tuple[Additive, ...] = ()
        self.result: Result | None = None
        self.rounds = 0
        # a Cox model's event table serves only to merge risk-set bins under a release rule
        self._pending: list[Query] = [
            Query(analysis.id, s)
            for s in first_steps(analysis)
            if not (analysis.kind == "cox" and s == "table" and self.rule is None)
        ]
        self._moments: CoxMoments | None = None
        self._newton: Generator[np.ndarray, CoxDerivs, object] | None = None
        self._center: tuple[float, ...] = ()
        self._waiting: np.ndarray = np.zeros(0)  # the beta Newton waits to be evaluated at
        self._asked: list[np.ndarray] = []
        self._known: dict[tuple[float, ...], CoxDerivs] = {}
        self._bins: tuple[int, ...] = ()  # merged risk-set bins of a Cox model (cells)

    @property
    def done(self) -> bool:
        return self.result is not None

    def queries(self) -> list[Query]:
        return list(self._pending)

    def receive(self, merged: Sequence[Additive]) -> None:
        """Take the merged answers to ``queries()`` and move to the next state."""
        self.rounds += 1
        step = self._pending[0].step
        if self.dp_noise_variance > 0:
            merged = clip_all(merged)  # noisy counts can be < 0; clipping is free post-processing
        self._pending = []
        if step == "attrition_counts":
            self._pooled = tuple(merged)
            self._release_attrition()
            return
        if step in ("cox_moments", "cox_sums", "cox_derivs"):
            self._receive_cox(step, merged)
            return
        (summary,) = merged
        if step == "pathways":
            assert isinstance(summary, PathwayCounts)
            min_count = self.analysis.min_count
            if self.rule is not None:  # the site's minimum cell wins over a laxer study
                min_count = max(min_count, self.rule.min_cell)
            self.result = PathwaysResult(group_rare(summary, min_count))
        elif step == "table":
            self._pooled = (summary,)
            self._release_table()
        elif step == "logrank_parts":
            assert isinstance(summary, LogrankParts)
            self.result = LogrankOutcome(
                self.analysis.group_labels,
                logrank_test(summary, self.analysis.rho),
                int(summary.dropped[0]),
            )

    @property
    def top_slot(self) -> int | None:
        """Attrition: the line slot later slots were merged into (the A3 table's strata too)."""
        return None if self.release is None else self.release.top_slot

    def refuse(self, failing: Mapping[int, Sequence[int]], *, suppress: bool = False) -> None:
        """Sites' leave-one-out checks refused these merged bins (by their last bin): merge each
        with a neighbour (or suppress the series), release and estimate again."""
        assert self.release is not None
        for series, ends in failing.items():
            current = self.release.blocks.get(series, ())
            self.blocks[series] = () if suppress else coarsen(current, set(ends))
        if self.analysis.kind == "attrition":
            self._release_attrition()
        else:
            self._release_table()

    def _release_table(self) -> None:
        (table,) = self._pooled
        assert isinstance(table, EventTable)
        if self.rule is not None:
            table, self.release = release_table(table, self.rule, self.blocks)
            self.released = table
        self.result = estimate_table(self.analysis, self.grid, table)

    def _release_attrition(self) -> None:
        counts, table = self._pooled
        assert isinstance(counts, AttritionCounts) and isinstance(table, EventTable)
        if self.rule is None:
            self.result = estimate_attrition(self.analysis, self.grid, counts, table)
            return
        released = release_attrition(counts, table, self.rule, self.blocks)
        self.release = released.release
        self.released = released.table
        self.result = replace(
            estimate_attrition(self.analysis, self.grid, released.counts, released.table),
            withheld=released.withheld,
            withheld_total=released.withheld_total,
        )

    def _receive_cox(self, step: str, merged: Sequence[Additive]) -> None:
        if step == "cox_moments":
            moments, fit, *table = merged
            assert isinstance(moments, CoxMoments) and isinstance(fit, CoxLocalFit)
            if table and self.rule is not None:
                assert isinstance(table[0], EventTable)
                self._merge_risk_sets(table[0])
            self._start_cox(moments, fit)
            return
        ties = self.analysis.ties
        for summary, beta in zip(merged, self._asked, strict=True):
            derivs = summary if isinstance(summary, CoxDerivs) else None
            if isinstance(summary, CoxSums):
                derivs = derivs_from_sums(summary, beta, ties)
            assert derivs is not None
            self._known[_key(beta)] = derivs
        self._advance()

    def _start_cox(self, moments: CoxMoments, fit: CoxLocalFit) -> None:
        n = int(moments.n[0])
        if n == 0 or int(moments.n_events[0]) == 0:
            raise EstimationError(
                f"analysis {self.analysis.id!r}: no complete cases with an event across the sites; "
                "check the event column and missing covariates"
            )
        self._moments = moments
        self._center = tuple(float(v) for v in moments.sum_x / n)
        start = warm_start(fit)
        self._newton = newton(len(self._center), start=start)
        self._waiting = next(self._newton)  # beta = 0: R's initial log-likelihood and score test
        # beta = 0 and the warm start go out in the same round
        self._ask([self._waiting] if start is None else [self._waiting, start])

    def _merge_risk_sets(self, table: EventTable) -> None:
        """Risk-set bins merged by the release rules, so every per-bin sum a site sends
        covers at least ``min_cell`` patients leaving (and 0 or >= min_cell deaths)."""
        assert self.rule is not None
        _, self.release = release_table(table, self.rule)
        n_bins = table.events.shape[-1]
        n_groups = table.events.shape[1]
        self._bins = tuple(
            (series // n_groups) * n_bins + end
            for series, blocks in sorted(self.release.blocks.items())
            for _, end in blocks
        )

    def _ask(self, betas: list[np.ndarray]) -> None:
        self._asked = betas
        step: Step = "cox_derivs" if self.analysis.strata_by_site else "cox_sums"
        self._pending = [
            Query(self.analysis.id, step, tuple(float(b) for b in beta), self._center, self._bins)
            for beta in betas
        ]

    def _advance(self) -> None:
        """Feed Newton every evaluation already known; ask for the first one that is not."""
        assert self._newton is not None and self._moments is not None
        try:
            while _key(self._waiting) in self._known:
                self._waiting = self._newton.send(self._known[_key(self._waiting)])
            self._ask([self._waiting])
        except StopIteration as stop:
            self.result = cox_result(
                stop.value,
                self.analysis.coef_names,
                self._moments,
                self.analysis.ties,
                self.analysis.conf_level,
            )
        except EstimationError as err:
            raise EstimationError(f"analysis {self.analysis.id!r}: {err}") from None
