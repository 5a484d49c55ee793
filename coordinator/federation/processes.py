"""Moved to ``site_agent.federation.processes`` (sites start processes too); names kept here."""

from site_agent.federation.processes import (
    MARK,
    ProcessSet,
    marked_pids,
    signal_guard,
)

__all__ = ["MARK", "ProcessSet", "marked_pids", "signal_guard"]
