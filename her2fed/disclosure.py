"""Disclosure control on what is released: the pooled tables after secure summation.

Secure aggregation hides each site's vector, but the pooled sum is published,
and a pooled cell of 1-4 patients (an event in a 30-day bin, the three
patients who stop after line 4) can single people out. The rules here turn a
pooled summary into the one that is released, and every rule keeps the
release an exact, documented estimator of the pooled rows:

**Event tables** (KM, Nelson-Aalen, CIF, log-rank, A3), ``events[s, g, k, b]``
and ``censored[s, g, b]``, one series per stratum and group:

1. *Horizon truncation.* A series' release stops before the first bin where
   fewer than ``min_at_risk`` remain at risk; everyone still at risk there
   is counted as censored in the last released bin. This is the same
   estimator with that series' follow-up administratively censored at that
   time, so no curve's tail rests on a handful of patients.
2. *Small series suppressed.* A series whose total events of a cause, or
   total of patients leaving the risk set, is 1..min_cell-1 cannot be
   released at any resolution; it is zeroed and reported as suppressed.
3. *Bins merged.* Within a series, consecutive grid bins are merged so that
   every released cell is 0 or at least ``min_cell``: events of each cause,
   and everyone leaving (events plus censorings: the drop in the number at
   risk, which would otherwise reveal a small number censored). Bins are
   taken greedily from the start, a merged bin closes as soon as its cells
   pass, and an unfinished tail is folded into the bin before it. A merged
   bin's counts sit at its last grid time with counts, so the release is the
   pooled table of the same rows with each series' times rounded up to its
   merged bin ends: the estimators run unchanged on it, and a log-rank test
   compares groups on those times.

**Attrition counts** (per group and line slot): lines are top-coded. The
first line slot where, for any group, the number of patients reaching it or
the number who stopped after the line before is 1..min_cell-1 is merged with
every later slot into the slot before it ("k+"), in the counts and in the A3
table. A group whose first line is already that small is suppressed. Other
small cells (an end state, deaths within six months) are withheld with
complementary suppression, so that no withheld cell can be recovered from
the total over groups.

Not covered here: Cox sums (floats: their protection is the site's Cox
limits and the iteration cap) and site-stratified log-rank parts.

Rules apply with the strictest thresholds of the contributing sites: the
coordinator learns each site's policy thresholds (public) and releases
nothing a site's policy would not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from her2fed.attrition import AttritionCounts
from her2fed.counts import EventTable

IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class ReleaseRule:
    """Thresholds of the release; ``min_cell = 0`` turns small-cell rules off (research use)."""

    min_cell: int = 5
    min_at_risk: int = 10

    @classmethod
    def strictest(cls, rules: list[ReleaseRule]) -> ReleaseRule:
        if not rules:
            return cls()
        return cls(max(r.min_cell for r in rules), max(r.min_at_risk for r in rules))

    @property
    def active(self) -> bool:
        return self.min_cell > 1 or self.min_at_risk > 0


@dataclass(frozen=True)
class Release:
    """What disclosure control did to one analysis's pooled summary (public facts only)."""

    min_cell: int
    min_at_risk: int
    truncated_series: int = 0
    suppressed_series: tuple[int, ...] = ()
    merged_bins: int = 0
    released_bins: int = 0
    top_slot: int | None = None
    """Attrition: the last released line slot (0-based), the ones after it merged into it."""
    suppressed_groups: tuple[int, ...] = ()
    withheld_cells: int = 0
    blocks: Mapping[int, Blocks] = field(default_factory=dict)
    """Per series, the merged bins released (for leave-one-out rounds; not in results.json)."""

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "min_cell": self.min_cell,
            "min_at_risk": self.min_at_risk,
            "series_truncated": self.truncated_series,
            "series_suppressed": list(self.suppressed_series),
            "bins_merged": self.merged_bins,
            "bins_released": self.released_bins,
        }
        if self.top_slot is not None:
            out["top_line"] = self.top_slot + 1
            out["groups_suppressed"] = list(self.suppressed_groups)
            out["cells_withheld"] = self.withheld_cells
        return out


def _small(x: IntArray, min_cell: int) -> NDArray[np.bool_]:
    out: NDArray[np.bool_] = (x > 0) & (x < min_cell)
    return out


def _truncate(
    events: IntArray, censored: IntArray, min_at_risk: int
) -> tuple[IntArray, IntArray, int]:
    """Cut each series before its first bin with fewer than ``min_at_risk`` at risk."""
    leaving = events.sum(axis=2) + censored  # [s, g, b]
    at_risk = np.flip(np.cumsum(np.flip(leaving, axis=-1), axis=-1), axis=-1)
    n_bins = leaving.shape[-1]
    low = (at_risk < min_at_risk) & (at_risk > 0)
    first = np.where(low.any(axis=-1), low.argmax(axis=-1), n_bins)  # [s, g]
    truncated = 0
    for s, g in zip(*np.nonzero(first < n_bins), strict=True):
        cut = int(first[s, g])
        truncated += 1
        if cut == 0:  # fewer than min_at_risk in the whole series: nothing is released
            events[s, g] = 0
            censored[s, g] = 0
            continue
        censored[s, g, cut - 1] += int(at_risk[s, g, cut])
        events[s, g, :, cut:] = 0
        censored[s, g, cut:] = 0
    return events, censored, truncated


def _blocks(cells: IntArray, min_cell: int) -> list[tuple[int, int]]:
    """Greedy partition of bins into [start, end] blocks whose cell sums are 0 or >= min_cell.

    ``cells`` is [cells, bins]. The caller guarantees that the whole range
    passes (each row's total is 0 or >= min_cell), so folding an unfinished
    tail backwards always ends in a passing block.
    """
    n_bins = cells.shape[1]
    blocks: list[tuple[int, int]] = []
    start, acc = 0, np.zeros(cells.shape[0], dtype=np.int64)
    for b in range(n_bins):
        acc += cells[:, b]
        if not _small(acc, min_cell).any():
            blocks.append((start, b))
            start, acc = b + 1, np.zeros_like(acc)
    if start < n_bins:  # an unfinished tail: fold into earlier blocks until it passes
        while blocks and _small(acc, min_cell).any():
            s0, _ = blocks.pop()
            acc += cells[:, s0:start].sum(axis=1)
            start = s0
        # the block ends at its last bin with counts, not at the horizon
        filled = np.flatnonzero(cells[:, start:].any(axis=0))
        end = start + int(filled[-1]) if filled.size else n_bins - 1
        blocks.append((start, end))
    return blocks


def _merge(x: IntArray, blocks: list[tuple[int, int]]) -> IntArray:
    """Each block's counts moved to its last bin (the grid time where the block ends)."""
    out = np.zeros_like(x)
    for start, end in blocks:
        out[..., end] = x[..., start : end + 1].sum(axis=-1)
    return out


Blocks = tuple[tuple[int, int], ...]
"""A series' merged bins as (first bin, last bin); empty: the series is suppressed."""


def coarsen(blocks: Blocks, refused: set[int]) -> Blocks:
    """One leave-one-out round: each refused merged bin joins its next neighbour (the previous
    one for the last bin); a series down to one refused bin is suppressed (empty).

    Merging two passing bins gives a passing bin, and every round removes at
    least one bin from a refused series, so the rounds end.
    """
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(blocks):
        start, end = blocks[i]
        if end not in refused:
            out.append((start, end))
            i += 1
        elif i + 1 < len(blocks):
            out.append((start, blocks[i + 1][1]))
            i += 2
        elif out:
            out[-1] = (out[-1][0], end)
            i += 1
        else:
            return ()
    return tuple(out)


def release_table(
    table: EventTable, rule: ReleaseRule, blocks: Mapping[int, Blocks] | None = None
) -> tuple[EventTable, Release]:
    """The released version of a pooled event table (see the module docstring).

    ``blocks`` fixes the merged bins of some series (stratum * n_groups +
    group), as leave-one-out rounds coarsen them; other series get the
    greedy merge. ``Release.blocks`` holds every series' merged bins.
    """
    given = blocks or {}
    events = table.events.astype(np.int64, copy=True)
    censored = table.censored.astype(np.int64, copy=True)
    events, censored, truncated = _truncate(events, censored, rule.min_at_risk)
    suppressed: list[int] = []
    used: dict[int, Blocks] = {}
    merged = released = 0
    n_s, n_g = censored.shape[:2]
    for s in range(n_s):
        for g in range(n_g):
            series = s * n_g + g
            # released cells per bin: events of each cause, and everyone leaving (the
            # drop in the number at risk), which also covers the censorings
            cells = np.vstack([events[s, g], events[s, g].sum(axis=0) + censored[s, g]])
            if series in given:
                chosen = given[series]
            elif _small(cells.sum(axis=1), rule.min_cell).any():
                chosen = ()  # too few at any resolution
            else:
                greedy = _blocks(cells, rule.min_cell)
                chosen = tuple((a, b) for a, b in greedy if cells[:, a : b + 1].any())
            used[series] = chosen
            if not chosen:
                if cells.any():
                    suppressed.append(series)
                events[s, g] = 0
                censored[s, g] = 0
                continue
            events[s, g] = _merge(events[s, g], list(chosen))
            censored[s, g] = _merge(censored[s, g], list(chosen))
            merged += sum(b - a for a, b in chosen)
            released += len(chosen)
    out = EventTable(events=events, censored=censored, dropped=table.dropped)
    return out, Release(
        rule.min_cell,
        rule.min_at_risk,
        truncated_series=truncated,
        suppressed_series=tuple(suppressed),
        merged_bins=merged,
        released_bins=released,
        blocks=used,
    )


def conform(own: EventTable, released: EventTable) -> EventTable:
    """A site's own table put on the released table's merged bins (the site's side of
    leave-one-out): per series, rows move to the end of their merged bin, rows after the
    last released bin count as censored there, and a suppressed series is empty."""
    events = np.zeros_like(own.events)
    censored = np.zeros_like(own.censored)
    n_s, n_g = own.censored.shape[:2]
    for s in range(n_s):
        for g in range(n_g):
            ends = np.flatnonzero(released.events[s, g].sum(axis=0) + released.censored[s, g])
            if ends.size == 0:
                continue
            last = int(ends[-1])
            for b in np.flatnonzero(own.events[s, g].sum(axis=0) + own.censored[s, g]):
                if b > last:  # truncated: still at risk at the last released bin
                    censored[s, g, last] += own.events[s, g, :, b].sum() + own.censored[s, g, b]
                    continue
                e = int(ends[np.searchsorted(ends, b)])
                events[s, g, :, e] += own.events[s, g, :, b]
                censored[s, g, e] += own.censored[s, g, b]
    return EventTable(events=events, censored=censored, dropped=own.dropped)


def sole_series(released: EventTable, own: EventTable) -> list[int]:
    """Series of the release that come from this site alone (a per-site release in disguise,
    e.g. a curve "by country" where the country is this one hospital)."""
    mine = conform(own, released)
    shown = (released.events.sum(axis=(2, 3)) + released.censored.sum(axis=2)) > 0
    same = (released.events == mine.events).all(axis=(2, 3)) & (
        released.censored == mine.censored
    ).all(axis=2)
    n_g = released.censored.shape[1]
    return [int(s) * n_g + int(g) for s, g in zip(*np.nonzero(shown & same), strict=True)]


def leave_one_out(released: EventTable, own: EventTable, rule: ReleaseRule) -> dict[int, list[int]]:
    """The merged-bin ends, per series, where the release minus this site's rows fails.

    What every other site together contributed to a released bin must also be
    0 or at least ``min_cell``, or this site would learn a small count of other
    hospitals' patients. Returns {} when the release passes.
    """
    mine = conform(own, released)
    others_events = released.events - mine.events
    others_leaving = others_events.sum(axis=2) + released.censored - mine.censored
    n_g = released.censored.shape[1]
    bad = _small(others_events, rule.min_cell).any(axis=2) | _small(
        others_leaving, rule.min_cell
    )
    failing: dict[int, list[int]] = {}
    for s, g, b in zip(*np.nonzero(bad), strict=True):
        failing.setdefault(int(s) * n_g + int(g), []).append(int(b))
    return failing


# ---------------------------------------------------------------- attrition


COUNT_FIELDS = (
    "reached",
    "started",
    "started_anti_her2",
    "finished",
    "no_next",
    "no_next_finished",
    "no_next_death",
    "end_state",
)
"""The [group, line slot(, state)] counts of ``AttritionCounts`` that are released."""


def _line_counts_fail(reached: IntArray, min_cell: int) -> int:
    """First slot whose patient count, or the number who stopped before it, is small."""
    stops = np.concatenate([[0], reached[:-1] - reached[1:]])
    bad = _small(reached, min_cell) | _small(stops, min_cell)
    return int(bad.argmax()) if bad.any() else len(reached)


def _top_code(x: IntArray, top: int, axis: int) -> IntArray:
    """Slots after ``top`` added into ``top`` and zeroed, along ``axis``."""
    out = np.moveaxis(x.copy(), axis, 0)
    out[top] += out[top + 1 :].sum(axis=0)
    out[top + 1 :] = 0
    return np.moveaxis(out, 0, axis)


def _suppress(cells: IntArray, min_cell: int) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Primary and complementary suppression of [group, ...] cells and of their total.

    A small cell is withheld; if it is the only one withheld among the groups
    of its margin, the smallest other non-zero cell is withheld too (else the
    total minus the others would give it back); and the total itself is
    withheld when the withheld cells add up to a small number.
    """
    mask = _small(cells, min_cell)
    if cells.shape[0] > 1:
        lonely = mask.sum(axis=0) == 1
        never = np.iinfo(np.int64).max
        for idx in zip(*np.nonzero(lonely), strict=True):
            column = cells[(slice(None), *idx)]
            others = np.where(mask[(slice(None), *idx)] | (column == 0), never, column)
            if (others < never).any():
                mask[(int(others.argmin()), *idx)] = True
    hidden = np.where(mask, cells, 0).sum(axis=0)
    total_mask: NDArray[np.bool_] = _small(cells.sum(axis=0), min_cell) | _small(hidden, min_cell)
    if cells.shape[0] == 1:  # one group: its total is the same cell
        total_mask |= mask[0]
    return mask, total_mask


@dataclass(frozen=True)
class AttritionRelease:
    """Top-coded counts plus the cells withheld from the release (masks, no values)."""

    counts: AttritionCounts
    table: EventTable
    release: Release
    withheld: dict[str, NDArray[np.bool_]]
    """Per count field, [group, slot(, state)] cells not released."""
    withheld_total: dict[str, NDArray[np.bool_]]
    """Per count field, [slot(, state)] totals over groups not released."""


def top_code_strata(table: EventTable, top: int) -> EventTable:
    """The A3 table with line slots (its strata) after ``top`` merged into ``top``."""
    return EventTable(
        events=_top_code(table.events.astype(np.int64), top, axis=0),
        censored=_top_code(table.censored.astype(np.int64), top, axis=0),
        dropped=table.dropped,
    )


def release_attrition(
    counts: AttritionCounts,
    table: EventTable,
    rule: ReleaseRule,
    blocks: Mapping[int, Blocks] | None = None,
) -> AttritionRelease:
    """Top-code late lines (counts and the A3 table, whose strata are line slots), then
    withhold the remaining small cells with complementary suppression."""
    k = counts.k
    arrays = {name: np.asarray(v, dtype=np.int64).copy() for name, v in counts.arrays().items()}
    reached = arrays["reached"]
    firsts = [_line_counts_fail(reached[g], rule.min_cell) for g in range(counts.n_groups)]
    suppressed = tuple(g for g, j in enumerate(firsts) if j == 0)
    for g in suppressed:  # the group's first line is already small: not released at all
        for name, value in arrays.items():
            if name != "dropped":
                value[g] = 0
    top = min([j for j in firsts if j > 0], default=k) - 1
    if top < k - 1:
        arrays["reached"][:, top + 1 :] = 0
        for name in COUNT_FIELDS[1:]:
            arrays[name] = _top_code(arrays[name], top, axis=1)
    events = table.events.astype(np.int64, copy=True)
    censored = table.censored.astype(np.int64, copy=True)
    if top < k - 1:
        events = _top_code(events, top, axis=0)
        censored = _top_code(censored, top, axis=0)
    events[:, list(suppressed)] = 0
    censored[:, list(suppressed)] = 0
    a3_table, a3 = release_table(
        EventTable(events=events, censored=censored, dropped=table.dropped), rule, blocks
    )
    withheld, withheld_total = {}, {}
    for name in COUNT_FIELDS:
        withheld[name], withheld_total[name] = _suppress(arrays[name], rule.min_cell)
    return AttritionRelease(
        AttritionCounts(**arrays),
        a3_table,
        replace(
            a3,  # what the A3 table's release did, plus the line-level rules
            top_slot=top,
            suppressed_groups=suppressed,
            withheld_cells=int(sum(m.sum() for m in withheld.values())),
        ),
        withheld,
        withheld_total,
    )
