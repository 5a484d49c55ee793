"""Event tables: the one count summary behind KM, Nelson-Aalen, log-rank and CIF.

Per stratum, group, cause and grid bin a site counts events; per stratum,
group and bin it counts censorings. The number at risk is derived from these
(everyone whose bin is at or after a time), so it need not be sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from her2fed.grid import IntArray, TimeGrid
from her2fed.summary import Additive


@dataclass(frozen=True)
class EventTable(Additive):
    """``events[s, g, k, b]`` (cause k+1) and ``censored[s, g, b]``, plus rows dropped."""

    events: NDArray[np.int64]
    censored: NDArray[np.int64]
    dropped: NDArray[np.int64]

    @property
    def n_strata(self) -> int:
        return int(self.events.shape[0])

    @property
    def n_groups(self) -> int:
        return int(self.events.shape[1])

    @property
    def n_causes(self) -> int:
        return int(self.events.shape[2])

    def any_event(self) -> NDArray[np.int64]:
        """Events of any cause, ``[s, g, b]``."""
        total: NDArray[np.int64] = self.events.sum(axis=2)
        return total

    def at_risk(self) -> NDArray[np.int64]:
        """Number at risk ``[s, g, b]``: subjects whose exit bin is >= b."""
        leaving = self.any_event() + self.censored
        out: NDArray[np.int64] = np.flip(np.cumsum(np.flip(leaving, axis=-1), axis=-1), axis=-1)
        return out


def event_table(
    grid: TimeGrid,
    time: NDArray[np.float64],
    event: IntArray,
    group: IntArray,
    stratum: IntArray,
    *,
    n_groups: int,
    n_causes: int,
    n_strata: int,
    dropped: int = 0,
) -> EventTable:
    """Count a site's rows on the grid.

    ``event`` is 0 for censored or the cause number 1..n_causes; ``group`` and
    ``stratum`` are level indices already validated against the declared
    levels. ``dropped`` is the number of rows excluded upstream (missing
    values), carried so the pooled report can state it.
    """
    bins, ev = grid.bin(time, event)
    nb = grid.n_bins
    # one pass: slot 0 of the cause axis counts censorings, slots 1..K the causes
    slot = ((stratum * n_groups + group) * (n_causes + 1) + ev) * nb + bins
    counts = np.bincount(slot, minlength=n_strata * n_groups * (n_causes + 1) * nb)
    counts = counts.astype(np.int64).reshape(n_strata, n_groups, n_causes + 1, nb)
    return EventTable(
        events=np.ascontiguousarray(counts[:, :, 1:]),
        censored=np.ascontiguousarray(counts[:, :, 0]),
        dropped=np.array([dropped], dtype=np.int64),
    )
