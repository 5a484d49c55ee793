"""Attrition between lines of therapy under the four published definitions.

Studies report attrition differently (``cohorts.md``), so the federation
computes every definition on the same pooled data, side by side:

- **A1** no next line / patients who started line k.
- **A2** no next line / patients who finished line k (lines still running at
  last contact, end state ``on_treatment``, are removed from both).
- **A3** 1 - cumulative incidence of a next line at 5 years after the end of
  line k, death without a next line competing (Aalen-Johansen).
- **A4** no next line **and** death within 6 months (183 days) of the end of
  line k / patients whose line k ended (= finished, as in A2).

A1, A2 and A4 are ratios of counts, so a site releases only the fixed-shape
integer counts of ``AttritionCounts`` (per declared group level and line slot)
and the pooled ratios equal the ratios on the pooled rows exactly. A3 needs an
event table of ``next_line_vs_death`` per line slot: ``a3_event_table`` builds
it at the site (an additive ``her2fed.counts.EventTable`` with the line slot as
stratum, the group as group and causes 1 = next line, 2 = death), and ``a3``
reads the merged table with ``her2fed.cif.aalen_johansen``. On a 1-day grid
A3 is the unbinned estimate; a coarser grid rounds times up as everywhere.

Line slots are 1..K with the last one top-coded: slot K counts every line
k >= K (each such line of a patient once). ``reached[g, k]`` is not top-coded:
patients with at least k lines, so that the share of *all* patients reaching
line k (Norway's definition) can be read as ``reached / patients``.

Confidence intervals: Wilson score intervals by default (good coverage at the
small counts of later lines, defined at 0 and n, closed form); Clopper-Pearson
("exact") on request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from her2fed.cif import aalen_johansen
from her2fed.counts import EventTable, event_table
from her2fed.dists import z_two_sided
from her2fed.endpoints import END_STATES
from her2fed.grid import TimeGrid
from her2fed.lot import IntArray
from her2fed.summary import Additive

DEFAULT_K = 4
A4_DEATH_DAYS = 183
A3_HORIZON_DAYS = 1826  # 5 years of 365.25 days
CIMethod = Literal["wilson", "exact"]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class AttritionCounts(Additive):
    """Counts per group ``g`` and line slot ``k`` (0-based; the last slot is K+).

    ``patients[g]`` all patients (with or without a line); ``reached[g, k]``
    patients with at least k+1 lines; ``started`` line rows in slot k;
    ``started_anti_her2`` those whose line includes an anti-HER2 drug;
    ``finished`` those not running at last contact (end state not
    ``on_treatment``); ``no_next`` those without a next line;
    ``no_next_finished`` finished without a next line; ``no_next_death``
    without a next line and dead within the A4 window of the line end;
    ``end_state[g, k, s]`` by ``END_STATES``; ``dropped[0]`` line rows without
    a group level.
    """

    patients: NDArray[np.int64]
    reached: NDArray[np.int64]
    started: NDArray[np.int64]
    started_anti_her2: NDArray[np.int64]
    finished: NDArray[np.int64]
    no_next: NDArray[np.int64]
    no_next_finished: NDArray[np.int64]
    no_next_death: NDArray[np.int64]
    end_state: NDArray[np.int64]
    dropped: NDArray[np.int64]

    @property
    def n_groups(self) -> int:
        return int(self.started.shape[0])

    @property
    def k(self) -> int:
        return int(self.started.shape[1])

    def overall(self) -> AttritionCounts:
        """The same counts with all groups added into one (group axis of length 1)."""
        out: dict[str, NDArray[np.int64]] = {}
        for name, value in self.arrays().items():
            out[name] = value if name == "dropped" else value.sum(axis=0, keepdims=True)
        return AttritionCounts(**out)


def _codes(codes: Any, n: int, n_groups: int, what: str) -> IntArray:
    arr = np.asarray(codes, dtype=np.int64)
    if arr.shape != (n,):
        raise ValueError(f"{what} has shape {arr.shape}, expected ({n},)")
    if (arr >= n_groups).any() or (arr < -1).any():
        raise ValueError(f"{what} must be level indices 0..{n_groups - 1} (or -1 for missing)")
    return arr


def _slot(line: IntArray, k: int) -> IntArray:
    return np.minimum(line, k) - 1


def attrition_counts(
    line_rows: pd.DataFrame,
    group_codes: Any,
    n_groups: int,
    K: int = DEFAULT_K,
    *,
    patient_group_codes: Any = None,
    death_days: int = A4_DEATH_DAYS,
) -> AttritionCounts:
    """A site's attrition counts from its per-line endpoint rows.

    ``line_rows`` is ``EndpointTables.lines`` (``line``, ``end_state``,
    ``anti_her2``, ``next_line_vs_death_time``/``_event``); ``group_codes``
    gives each row's declared level index (-1 = missing level: dropped and
    counted). ``patient_group_codes`` (one per patient, lines or not) fills
    ``patients``; without it ``patients`` is 0. ``death_days`` must be the
    value the study fixes, as it shapes the counts.
    """
    if K < 1 or n_groups < 1:
        raise ValueError("K and n_groups must be >= 1")
    n = len(line_rows)
    g = _codes(group_codes, n, n_groups, "group_codes")
    line = line_rows["line"].to_numpy(np.int64)
    if (line < 1).any():
        raise ValueError("line numbers must be >= 1")
    state_codes = pd.Categorical(line_rows["end_state"], categories=list(END_STATES)).codes
    if (state_codes < 0).any():
        raise ValueError(f"end_state values must be one of {list(END_STATES)}")
    keep = g >= 0
    g, line, st = g[keep], line[keep], np.asarray(state_codes, dtype=np.int64)[keep]
    her2 = line_rows["anti_her2"].to_numpy(bool)[keep]
    ev = line_rows["next_line_vs_death_event"].to_numpy(np.int64)[keep]
    t = line_rows["next_line_vs_death_time"].to_numpy(np.int64)[keep]
    slot = _slot(line, K)
    cell = g * K + slot
    size = n_groups * K

    def count(mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        return np.bincount(cell[mask], minlength=size).astype(np.int64).reshape(n_groups, K)

    on_treatment = st == END_STATES.index("on_treatment")
    no_next = ev != 1
    finished = ~on_treatment
    exact = line <= K
    reached = (
        np.bincount((g * K + line - 1)[exact], minlength=size).astype(np.int64).reshape(n_groups, K)
    )
    n_states = len(END_STATES)
    end_state = np.bincount(cell * n_states + st, minlength=size * n_states).astype(np.int64)
    patients = np.zeros(n_groups, dtype=np.int64)
    if patient_group_codes is not None:
        pg = np.asarray(patient_group_codes, dtype=np.int64)
        pg = _codes(pg, pg.size, n_groups, "patient_group_codes")
        patients = np.bincount(pg[pg >= 0], minlength=n_groups).astype(np.int64)
    everything = np.ones(g.size, dtype=bool)
    return AttritionCounts(
        patients=patients,
        reached=reached,
        started=count(everything),
        started_anti_her2=count(her2),
        finished=count(finished),
        no_next=count(no_next),
        no_next_finished=count(no_next & finished),
        no_next_death=count((ev == 2) & (t <= death_days)),
        end_state=end_state.reshape(n_groups, K, n_states),
        dropped=np.array([int((~keep).sum())], dtype=np.int64),
    )


@dataclass(frozen=True)
class Proportions:
    """Numerator / denominator with CI, arrays of shape [group, line slot]; NaN where n = 0."""

    numerator: NDArray[np.int64]
    denominator: NDArray[np.int64]
    estimate: FloatArray
    lower: FloatArray
    upper: FloatArray
    method: str
    conf_level: float


def proportion_ci(
    x: NDArray[np.int64],
    n: NDArray[np.int64],
    *,
    conf_level: float = 0.95,
    method: CIMethod = "wilson",
) -> Proportions:
    """Binomial proportions with Wilson or Clopper-Pearson confidence intervals."""
    if not 0 < conf_level < 1:
        raise ValueError("conf_level must be in (0, 1)")
    xf, nf = x.astype(np.float64), n.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(nf > 0, xf / nf, np.nan)
        alpha = 1.0 - conf_level
        if method == "wilson":
            z = z_two_sided(conf_level)
            denom = nf + z * z
            centre = (xf + z * z / 2) / denom
            half = z / denom * np.sqrt(xf * (nf - xf) / nf + z * z / 4)
            lower = np.where(nf > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
            upper = np.where(nf > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
        elif method == "exact":
            from scipy.stats import beta  # only the exact interval needs it

            lo = beta.ppf(alpha / 2, xf, nf - xf + 1)
            hi = beta.ppf(1 - alpha / 2, xf + 1, nf - xf)
            lower = np.where(nf > 0, np.where(xf > 0, lo, 0.0), np.nan)
            upper = np.where(nf > 0, np.where(xf < nf, hi, 1.0), np.nan)
        else:
            raise ValueError(f"method must be 'wilson' or 'exact', got {method!r}")
    return Proportions(
        x.astype(np.int64),
        n.astype(np.int64),
        p.astype(np.float64),
        np.asarray(lower, dtype=np.float64),
        np.asarray(upper, dtype=np.float64),
        method,
        conf_level,
    )


def a1(counts: AttritionCounts, **ci: Any) -> Proportions:
    """No next line among patients who started line k."""
    return proportion_ci(counts.no_next, counts.started, **ci)


def a2(counts: AttritionCounts, **ci: Any) -> Proportions:
    """No next line among patients who finished line k (still on treatment removed)."""
    return proportion_ci(counts.no_next_finished, counts.finished, **ci)


def a4(counts: AttritionCounts, **ci: Any) -> Proportions:
    """No next line and death within the A4 window, among patients whose line k ended."""
    return proportion_ci(counts.no_next_death, counts.finished, **ci)


def reach(counts: AttritionCounts, **ci: Any) -> Proportions:
    """Share of all patients (with or without a line) who reached line k."""
    patients = np.broadcast_to(counts.patients[:, None], counts.reached.shape)
    return proportion_ci(counts.reached, np.ascontiguousarray(patients), **ci)


def a3_event_table(
    line_rows: pd.DataFrame,
    group_codes: Any,
    n_groups: int,
    grid: TimeGrid,
    K: int = DEFAULT_K,
) -> EventTable:
    """A site's next-line-vs-death event table: stratum = line slot, causes 1 and 2."""
    n = len(line_rows)
    g = _codes(group_codes, n, n_groups, "group_codes")
    keep = g >= 0
    line = line_rows["line"].to_numpy(np.int64)[keep]
    time = line_rows["next_line_vs_death_time"].to_numpy(np.float64)[keep]
    event = line_rows["next_line_vs_death_event"].to_numpy(np.int64)[keep]
    return event_table(
        grid,
        time,
        event,
        g[keep],
        _slot(line, K),
        n_groups=n_groups,
        n_causes=2,
        n_strata=K,
        dropped=int((~keep).sum()),
    )


@dataclass(frozen=True)
class A3Result:
    """1 - CIF(next line) at ``horizon_days`` per [group, line slot], IJ SE and plain CI."""

    estimate: FloatArray
    std_err: FloatArray
    lower: FloatArray
    upper: FloatArray
    cif_next_line: FloatArray
    cif_death: FloatArray
    horizon_days: int
    conf_level: float


def a3(
    table: EventTable,
    grid: TimeGrid,
    *,
    horizon_days: int = A3_HORIZON_DAYS,
    conf_level: float = 0.95,
) -> A3Result:
    """A3 from the merged ``a3_event_table``: 1 - Aalen-Johansen CIF of a next line.

    The CIF is read at the last grid time <= ``horizon_days`` that has an
    event or censoring (a step function); the CI is estimate +/- z * SE,
    clipped to [0, 1]. NaN where a group/slot has no rows.
    """
    if grid.horizon_days < horizon_days:
        raise ValueError(
            f"the grid ends at {grid.horizon_days} days, before the A3 horizon {horizon_days}"
        )
    n_slots, n_groups = table.n_strata, table.n_groups
    shape = (n_groups, n_slots)
    cif1, cif2, se = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for k in range(n_slots):
        for g in range(n_groups):
            ev, cens = table.events[k, g], table.censored[k, g]
            if ev.sum() + cens.sum() == 0:
                continue
            curve = aalen_johansen(grid.times, ev, cens)
            rows = np.nonzero(curve.time <= horizon_days)[0]
            if rows.size == 0:
                cif1[g, k], cif2[g, k], se[g, k] = 0.0, 0.0, 0.0
                continue
            r = int(rows[-1])
            cif1[g, k], cif2[g, k], se[g, k] = curve.cif[r, 0], curve.cif[r, 1], curve.std_err[r, 0]
    z = z_two_sided(conf_level)
    est = 1.0 - cif1
    return A3Result(
        estimate=est,
        std_err=se,
        lower=np.clip(est - z * se, 0.0, 1.0),
        upper=np.clip(est + z * se, 0.0, 1.0),
        cif_next_line=cif1,
        cif_death=cif2,
        horizon_days=horizon_days,
        conf_level=conf_level,
    )


def side_by_side(
    counts: AttritionCounts,
    a3_result: A3Result | None = None,
    *,
    group_labels: tuple[str, ...] | None = None,
    conf_level: float = 0.95,
    method: CIMethod = "wilson",
) -> list[Mapping[str, Any]]:
    """One JSON-ready record per (group, line slot, definition): the report's table."""
    labels = group_labels or tuple(str(i) for i in range(counts.n_groups))
    if len(labels) != counts.n_groups:
        raise ValueError("group_labels must name every group")
    slots = [str(k + 1) for k in range(counts.k - 1)] + [f"{counts.k}+"]
    out: list[Mapping[str, Any]] = []
    defs = {"A1": a1, "A2": a2, "A4": a4}
    for name, fn in defs.items():
        prop = fn(counts, conf_level=conf_level, method=method)
        for g, lab in enumerate(labels):
            for k, slot in enumerate(slots):
                out.append(
                    {
                        "group": lab,
                        "line": slot,
                        "definition": name,
                        "numerator": int(prop.numerator[g, k]),
                        "denominator": int(prop.denominator[g, k]),
                        "estimate": float(prop.estimate[g, k]),
                        "lower": float(prop.lower[g, k]),
                        "upper": float(prop.upper[g, k]),
                    }
                )
    if a3_result is not None:
        for g, lab in enumerate(labels):
            for k, slot in enumerate(slots):
                out.append(
                    {
                        "group": lab,
                        "line": slot,
                        "definition": "A3",
                        "estimate": float(a3_result.estimate[g, k]),
                        "std_err": float(a3_result.std_err[g, k]),
                        "lower": float(a3_result.lower[g, k]),
                        "upper": float(a3_result.upper[g, k]),
                    }
                )
    return out
