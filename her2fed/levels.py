"""Declared levels and the canonical text form that makes them comparable.

A study declares group, stratum and categorical-covariate levels before any
data are read (``levels = [2, 3]`` or ``["POS", "NEG"]``). Sites store values
as integers, floats or text depending on the file format, so both sides are
reduced to one canonical string: ``2``, ``2.0`` and ``"2"`` are the same level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def canon_level(value: Any) -> str | None:
    """Canonical text of a level value; ``None`` for a missing value."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if hasattr(value, "item"):  # numpy scalar
        return canon_level(value.item())
    text = str(value).strip()
    return text if text else None


@dataclass(frozen=True)
class Levels:
    """A column whose values must be one of the declared levels, in this order."""

    column: str
    levels: tuple[str, ...]

    def index(self, level: str) -> int:
        return self.levels.index(level)


@dataclass(frozen=True)
class Covariate:
    """A Cox covariate: numeric (``levels`` empty) or categorical with a reference."""

    column: str
    levels: tuple[str, ...] = ()
    reference: str | None = None

    @property
    def categorical(self) -> bool:
        return bool(self.levels)

    def names(self) -> tuple[str, ...]:
        """Coefficient names: the column, or ``column[level]`` per non-reference level."""
        if not self.categorical:
            return (self.column,)
        return tuple(f"{self.column}[{lv}]" for lv in self.levels if lv != self.reference)
