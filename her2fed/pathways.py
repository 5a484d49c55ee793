"""Treatment pathways: regimen sequences across lines, for a Sankey diagram.

A site counts, per declared group level, the regimen of line 1 and every
transition from the regimen of line k to the regimen of line k+1 - or, when
there is no line k+1, to the end state after line k - for k = 1..K-1. The
shape is fixed by ``REGIMENS``, ``TERMINAL_STATES`` and K, so the counts add
across sites under secure aggregation.

Rare regimens are grouped into OTHER only *after* pooling (``group_rare``):
whether a label is rare depends on everyone's data, and merging rows and
columns of a pooled count table is itself a sum, so the grouped table equals
the grouped table of the pooled rows exactly. Grouping at the site would make
sites disagree about what OTHER means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from her2fed.attrition import DEFAULT_K, _codes
from her2fed.endpoints import END_STATES
from her2fed.lot import OTHER, REGIMENS
from her2fed.summary import Additive

TERMINAL_STATES: tuple[str, ...] = tuple(s for s in END_STATES if s != "next_line")


@dataclass(frozen=True)
class PathwayCounts(Additive):
    """``first[g, r]`` line-1 regimens; ``transitions[g, k, r, t]`` line k+1 -> k+2 (0-based k).

    ``t`` indexes ``REGIMENS`` then ``TERMINAL_STATES``; ``dropped[0]`` counts
    patients without a group level.
    """

    first: NDArray[np.int64]
    transitions: NDArray[np.int64]
    dropped: NDArray[np.int64]


def pathway_counts(
    line_rows: pd.DataFrame,
    group_codes: Any,
    n_groups: int,
    K: int = DEFAULT_K,
) -> PathwayCounts:
    """A site's pathway counts from ``EndpointTables.lines`` (``patient_id``, ``line``,
    ``regimen``, ``end_state``); ``group_codes`` per row as in ``attrition_counts``."""
    if K < 2 or n_groups < 1:
        raise ValueError("pathways need K >= 2 and n_groups >= 1")
    n = len(line_rows)
    g_all = _codes(group_codes, n, n_groups, "group_codes")
    n_reg, n_to = len(REGIMENS), len(REGIMENS) + len(TERMINAL_STATES)
    reg = pd.Categorical(line_rows["regimen"], categories=list(REGIMENS)).codes.astype(np.int64)
    if (reg < 0).any():
        raise ValueError(f"regimen values must be one of {list(REGIMENS)}")
    state = pd.Categorical(line_rows["end_state"], categories=list(END_STATES)).codes
    if (state < 0).any():
        raise ValueError(f"end_state values must be one of {list(END_STATES)}")
    pid_codes = pd.factorize(line_rows["patient_id"])[0].astype(np.int64)
    line = line_rows["line"].to_numpy(np.int64)
    order = np.lexsort((line, pid_codes))
    pid, line, reg, g = pid_codes[order], line[order], reg[order], g_all[order]
    st = np.asarray(state, dtype=np.int64)[order]
    same_next = np.zeros(n, dtype=bool)
    same_next[:-1] = (pid[1:] == pid[:-1]) & (line[1:] == line[:-1] + 1)
    next_reg = np.append(reg[1:], 0)
    is_next = st == END_STATES.index("next_line")
    if (is_next != same_next).any():
        raise ValueError("end_state 'next_line' must match the presence of line k+1")
    # column of each end state among the targets (next_line is never a terminal target)
    state_to = np.array(
        [n_reg + TERMINAL_STATES.index(x) if x in TERMINAL_STATES else -1 for x in END_STATES],
        dtype=np.int64,
    )
    terminal = state_to[st]
    to = np.where(is_next, next_reg, terminal)
    keep = g >= 0
    firsts = keep & (line == 1)
    first = np.bincount(g[firsts] * n_reg + reg[firsts], minlength=n_groups * n_reg)
    steps = keep & (line <= K - 1)
    k = line[steps] - 1
    cell = ((g[steps] * (K - 1) + k) * n_reg + reg[steps]) * n_to + to[steps]
    trans = np.bincount(cell, minlength=n_groups * (K - 1) * n_reg * n_to)
    dropped_patients = int(((~keep) & (line == 1)).sum())
    return PathwayCounts(
        first=first.astype(np.int64).reshape(n_groups, n_reg),
        transitions=trans.astype(np.int64).reshape(n_groups, K - 1, n_reg, n_to),
        dropped=np.array([dropped_patients], dtype=np.int64),
    )


@dataclass(frozen=True)
class SankeyTable:
    """Pooled pathways with rare regimens merged into OTHER.

    ``labels`` are the kept regimens (``REGIMENS`` order, OTHER last);
    ``first[g, r]`` and ``transitions[g, k, r, t]`` index them, ``t`` then
    running on into ``TERMINAL_STATES``; ``merged`` lists the regimens that were
    folded into OTHER (regimens that never occur are left out silently) and
    ``min_count`` the rule that folded them.
    """

    labels: tuple[str, ...]
    terminal_states: tuple[str, ...]
    first: NDArray[np.int64]
    transitions: NDArray[np.int64]
    merged: tuple[str, ...]
    min_count: int

    def links(self, group: int | None = None) -> list[Mapping[str, Any]]:
        """Non-zero links for a Sankey: ``L1 THP -> L2 T-DXd``, terminal nodes ``after L1``.

        ``group=None`` adds all groups.
        """
        trans = self.transitions.sum(axis=0) if group is None else self.transitions[group]
        targets = [*self.labels, *self.terminal_states]
        out: list[Mapping[str, Any]] = []
        for k in range(trans.shape[0]):
            for r, t in zip(*np.nonzero(trans[k]), strict=True):
                src = f"L{k + 1} {self.labels[r]}"
                if t < len(self.labels):
                    dst = f"L{k + 2} {targets[t]}"
                else:
                    dst = f"{targets[t]} after L{k + 1}"
                out.append({"source": src, "target": dst, "count": int(trans[k, r, t])})
        return out


def group_rare(counts: PathwayCounts, min_count: int = 5) -> SankeyTable:
    """Merge into OTHER every regimen with fewer than ``min_count`` line starts pooled.

    A regimen's count is the number of lines in slots 1..K with that regimen
    over all groups (line 1 from ``first``, lines 2..K from the transitions
    into them). Apply this to the *merged* counts only.
    """
    if min_count < 0:
        raise ValueError("min_count must be >= 0")
    n_reg = len(REGIMENS)
    into = counts.transitions[..., :n_reg].sum(axis=(0, 1, 2))
    total = counts.first.sum(axis=0) + into
    other = REGIMENS.index(OTHER)
    rare = [r for r in range(n_reg) if r != other and total[r] < min_count]
    kept = [r for r in range(n_reg) if r not in rare and r != other] + [other]
    new_index = {r: i for i, r in enumerate(kept)}
    merge = np.zeros((n_reg, len(kept)), dtype=np.int64)
    for r in range(n_reg):
        merge[r, new_index.get(r, len(kept) - 1)] = 1
    n_term = len(TERMINAL_STATES)
    to_merge = np.zeros((n_reg + n_term, len(kept) + n_term), dtype=np.int64)
    to_merge[:n_reg, : len(kept)] = merge
    to_merge[n_reg:, len(kept) :] = np.eye(n_term, dtype=np.int64)
    first = counts.first @ merge
    trans = np.einsum("gkrt,rs,tu->gksu", counts.transitions, merge, to_merge)
    return SankeyTable(
        labels=tuple(REGIMENS[r] for r in kept),
        terminal_states=TERMINAL_STATES,
        first=first.astype(np.int64),
        transitions=trans.astype(np.int64),
        merged=tuple(REGIMENS[r] for r in rare if total[r] > 0),
        min_count=min_count,
    )
