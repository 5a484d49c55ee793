"""The exception tree, written out once.

Every error a user can trigger derives from ``Her2fedError`` and carries a
message that names the problem *and* the fix, so command-line front ends can
print it without a traceback.
"""

from __future__ import annotations


class Her2fedError(Exception):
    """Base of every error her2fed raises on purpose."""


class SpecError(Her2fedError):
    """A study or site file asks for something invalid.

    ``where`` names the file and field (e.g. ``study.toml: analysis[2].kind``)
    so a user can go straight to the line that needs changing.
    """

    def __init__(self, where: str, problem: str, fix: str) -> None:
        self.where = where
        self.problem = problem
        self.fix = fix
        super().__init__(f"{where}: {problem}. Fix: {fix}")

    def located(self, prefix: str) -> SpecError:
        """The same error with a file name (or other context) put in front."""
        where = f"{prefix}: {self.where}" if self.where else prefix
        return type(self)(where, self.problem, self.fix)


class DataError(SpecError):
    """Site data do not fit what an analysis needs (column, type, code, level)."""


class EstimationError(Her2fedError):
    """The merged data do not allow the estimate (e.g. a singular Cox information)."""


class ProtocolError(Her2fedError):
    """A query that the approved study does not allow (unknown analysis, wrong step or shape).

    Sites refuse such queries instead of computing something: a query is data
    to be checked, never an instruction to be trusted.
    """
