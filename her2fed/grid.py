"""The public time grid every site bins its times onto.

The study fixes ``grid_days`` and ``horizon_days`` before any data are read, so
the length of every summary vector is known in advance and reveals nothing
about a site. Times are rounded *up* to the grid (an event on day 31 of a
30-day grid counts at day 60), which keeps the risk set at a grid time equal to
"still under observation at that time" as in the unbinned analysis; on a
1-day grid with integer days the binned analysis is the unbinned one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from her2fed.errors import SpecError

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class TimeGrid:
    """Bins ``0, g, 2g, ..., ceil(h/g)*g`` days; bin ``j`` holds times in ((j-1)g, jg]."""

    grid_days: int
    horizon_days: int

    def __post_init__(self) -> None:
        if not isinstance(self.grid_days, int) or self.grid_days < 1:
            raise SpecError(
                "study.grid_days",
                f"must be a whole number >= 1, got {self.grid_days!r}",
                "set grid_days = 30 (or the resolution your policy allows)",
            )
        if not isinstance(self.horizon_days, int) or self.horizon_days < self.grid_days:
            raise SpecError(
                "study.horizon_days",
                f"must be a whole number >= grid_days, got {self.horizon_days!r}",
                "set horizon_days to the longest follow-up of interest, e.g. 3650",
            )

    @property
    def n_bins(self) -> int:
        return -(-self.horizon_days // self.grid_days) + 1

    @property
    def times(self) -> FloatArray:
        """The grid time of each bin, in days."""
        return np.arange(self.n_bins, dtype=np.float64) * self.grid_days

    def bin(self, time: FloatArray, event: IntArray) -> tuple[IntArray, IntArray]:
        """Bin indices and events after administrative censoring at the horizon.

        A subject still followed past the horizon is censored *at* the horizon;
        an event after the horizon is not an event of this analysis.
        """
        time = np.asarray(time, dtype=np.float64)
        event = np.asarray(event, dtype=np.int64)
        beyond = time > self.horizon_days
        capped = np.minimum(time, float(self.horizon_days))
        if self.grid_days != 1:
            capped = np.ceil(capped / self.grid_days)
        bins = np.ceil(capped).astype(np.int64)
        return bins, (np.where(beyond, 0, event) if beyond.any() else event)
