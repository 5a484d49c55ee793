"""What the coordinator asks and what a site computes in answer.

A query names an analysis of the (approved) study and a step; Cox steps carry
the current coefficients and the pooled covariate means. Queries are data,
never code: a site maps each step to one of the fixed functions below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from her2fed.attrition import a3_event_table, attrition_counts
from her2fed.counts import event_table
from her2fed.cox import (
    CoxRows,
    cox_moments,
    cox_rows,
    cox_sums,
    derivs_from_sums,
    local_fit,
    recentred,
)
from her2fed.errors import ProtocolError
from her2fed.grid import FloatArray, IntArray, TimeGrid
from her2fed.logrank import parts_from_table
from her2fed.pathways import pathway_counts
from her2fed.study import Analysis
from her2fed.summary import Additive

Step = Literal[
    "table",
    "logrank_parts",
    "cox_moments",
    "cox_local_fit",
    "cox_sums",
    "cox_derivs",
    "attrition_counts",
    "attrition_cif",
    "pathways",
]


@dataclass(frozen=True)
class Query:
    analysis_id: str
    step: Step
    beta: tuple[float, ...] = ()
    center: tuple[float, ...] = ()
    bins: tuple[int, ...] = ()
    """``cox_sums``: the merged risk-set bins as cells (stratum * n_bins + last bin), so that
    every released per-bin sum covers at least ``min_cell`` patients; empty: the grid."""


def allowed_steps(analysis: Analysis) -> tuple[Step, ...]:
    """The only steps a site computes for this analysis."""
    if analysis.kind == "attrition":
        return ("attrition_counts", "attrition_cif")
    if analysis.kind == "pathways":
        return ("pathways",)
    if analysis.kind == "cox":
        if analysis.strata_by_site:  # derivatives only: no per-bin sum leaves a site
            return ("cox_moments", "cox_local_fit", "cox_derivs")
        return ("cox_moments", "cox_local_fit", "table", "cox_sums")
    if analysis.kind == "logrank" and analysis.strata_by_site:
        return ("logrank_parts",)
    return ("table",)


def check_query(analysis: Analysis, query: Query) -> None:
    """Refuse a query whose step or parameters do not fit the analysis."""
    allowed = allowed_steps(analysis)
    if query.step not in allowed:
        raise ProtocolError(
            f"query step {query.step!r} is not allowed for analysis {analysis.id!r} "
            f"(kind {analysis.kind}); allowed: {list(allowed)}"
        )
    p = len(analysis.coef_names)
    needs_beta = query.step in ("cox_sums", "cox_derivs")
    if needs_beta and (len(query.beta) != p or len(query.center) != p):
        raise ProtocolError(
            f"query for analysis {analysis.id!r} carries {len(query.beta)} coefficients and "
            f"{len(query.center)} centres; the study declares {p}"
        )
    if not needs_beta and (query.beta or query.center):
        raise ProtocolError(f"step {query.step!r} takes no coefficients")
    if not all(np.isfinite(v) for v in (*query.beta, *query.center)):
        raise ProtocolError(f"query for analysis {analysis.id!r} carries non-finite numbers")
    if query.bins and query.step != "cox_sums":
        raise ProtocolError(f"step {query.step!r} takes no merged bins")
    cells = np.asarray(query.bins, dtype=np.int64)
    if cells.size and (cells[0] < 0 or (np.diff(cells) <= 0).any()):
        raise ProtocolError(
            f"query for analysis {analysis.id!r} carries merged bins that are not increasing"
        )


def first_steps(analysis: Analysis) -> tuple[Step, ...]:
    """The steps that open an analysis (all analyses open in the same round)."""
    if analysis.kind == "cox":
        # the Cox rows' event table: the coordinator merges risk-set bins from it
        return ("cox_moments", "cox_local_fit") + (() if analysis.strata_by_site else ("table",))
    if analysis.kind == "attrition":
        return ("attrition_counts", "attrition_cif")
    return allowed_steps(analysis)


@dataclass(frozen=True)
class RegistryRows:
    """A site's derived per-line rows with each row's (and patient's) group level."""

    lines: pd.DataFrame
    line_group: IntArray
    patient_group: IntArray


@dataclass(frozen=True)
class Prepared:
    """A site's validated rows for one analysis, as arrays (complete cases only).

    ``event`` is 0 for censored, else the cause index 1..K in the order the
    study declares the causes; ``group`` and ``stratum`` are level indices;
    ``x`` is the covariate design (dummies for categorical levels).
    """

    time: FloatArray
    event: IntArray
    group: IntArray
    stratum: IntArray
    x: FloatArray
    dropped: int
    rows: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Positions of the complete cases in the site's table (the site's differencing check)."""


def registry_summary(
    grid: TimeGrid, analysis: Analysis, rows: RegistryRows, query: Query
) -> Additive:
    """Attrition and pathway counts: fixed shape (groups x line slots), additive."""
    check_query(analysis, query)
    n_groups = len(analysis.group_labels)
    if query.step == "attrition_counts":
        return attrition_counts(
            rows.lines,
            rows.line_group,
            n_groups,
            analysis.max_line,
            patient_group_codes=rows.patient_group,
        )
    if query.step == "attrition_cif":
        return a3_event_table(rows.lines, rows.line_group, n_groups, grid, analysis.max_line)
    return pathway_counts(rows.lines, rows.line_group, n_groups, analysis.max_line)


def local_summary(
    grid: TimeGrid,
    analysis: Analysis,
    rows: Prepared,
    query: Query,
    cox_cache: dict[str, CoxRows] | None = None,
) -> Additive:
    """The fixed-shape summary a site releases for one query.

    ``cox_cache`` (kept by the caller per site) holds each Cox analysis's rows
    arranged for the current centre, so Newton steps after the first do not
    redo that work.
    """
    check_query(analysis, query)
    if query.step in ("table", "logrank_parts"):
        table = event_table(
            grid,
            rows.time,
            rows.event,
            rows.group,
            rows.stratum,
            n_groups=len(analysis.group_labels),
            n_causes=len(analysis.causes) if analysis.kind == "cif" else 1,
            n_strata=analysis.n_strata,
            dropped=rows.dropped,
        )
        return table if query.step == "table" else parts_from_table(table, analysis.rho)
    if query.step == "cox_moments":
        return cox_moments(rows.x, rows.event, rows.dropped)
    if query.step == "cox_local_fit":
        own_center = tuple(float(v) for v in rows.x.mean(axis=0)) if rows.time.size else ()
        own = cox_rows(
            grid,
            rows.time,
            rows.event,
            rows.stratum,
            rows.x,
            own_center or (0.0,) * rows.x.shape[1],
            analysis.n_strata,
        )
        if cox_cache is not None:  # the pooled steps on the same bins only re-centre it
            cox_cache[analysis.id] = own
        return local_fit(own, analysis.ties)
    cache = {} if cox_cache is None else cox_cache
    arranged = cache.get(analysis.id)
    if arranged is not None and arranged.bins == query.bins and arranged.center != query.center:
        arranged = recentred(arranged, query.center)
        cache[analysis.id] = arranged
    if arranged is None or arranged.center != query.center or arranged.bins != query.bins:
        if query.bins and query.bins[-1] >= analysis.n_strata * grid.n_bins:
            raise ProtocolError(f"query for analysis {analysis.id!r} names bins past the grid")
        arranged = cox_rows(
            grid,
            rows.time,
            rows.event,
            rows.stratum,
            rows.x,
            query.center,
            analysis.n_strata,
            query.bins,
        )
        cache[analysis.id] = arranged
    beta = np.asarray(query.beta, dtype=np.float64)
    sums = cox_sums(arranged, beta)
    if query.step == "cox_sums":
        return sums
    return derivs_from_sums(sums, beta, analysis.ties)
