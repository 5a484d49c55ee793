"""How every number in the report is written.

One place decides the format of each kind of number, so the tests can format
a value from ``results.json`` the same way and find it in the page, and so a
reader sees the same precision everywhere. ``results.json`` writes a number
that cannot be estimated as ``null``; the report writes it as ``NA``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from typing import Any

DAYS_PER_MONTH = 30.4375  # 365.25 / 12: the month oncology papers use
NA = "NA"
SUPPRESSED = "suppressed"
DASH = "\u2013"  # en dash between the ends of an interval


def esc(value: object) -> str:
    """Text from results.json is data, never markup (a study name may hold '<')."""
    return html.escape(str(value), quote=True)


def is_num(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def fnum(value: object) -> float | None:
    """A finite float, or None for null / non-numeric / non-finite values."""
    return float(value) if is_num(value) else None  # type: ignore[arg-type]


def num(value: object, spec: str) -> str:
    if not is_num(value):
        return NA
    text = format(float(value), spec)  # type: ignore[arg-type]
    # "-0.00" reads as a sign that is not there
    if text.startswith("-") and float(text) == 0.0:
        text = text[1:]
    return text


def months(days: object, digits: int = 1) -> str:
    d = fnum(days)
    return NA if d is None else num(d / DAYS_PER_MONTH, f".{digits}f")


def prob(value: object) -> str:
    return num(value, ".3f")


def pct(value: object, digits: int = 1) -> str:
    v = fnum(value)
    return NA if v is None else num(100.0 * v, f".{digits}f")


def pval(value: object) -> str:
    """Three significant digits; below double precision the value means nothing."""
    p = fnum(value)
    if p is None:
        return NA
    if p < 1e-16:
        return "<1e-16"
    return num(p, ".3g")


def hr(value: object) -> str:
    return num(value, ".3f")


def coef(value: object) -> str:
    return num(value, ".4g")


def stat(value: object) -> str:
    return num(value, ".2f")


def expected(value: object) -> str:
    return num(value, ".1f")


def integer(value: object) -> str:
    v = fnum(value)
    return NA if v is None else str(round(v))


def count(value: object, min_cell: int) -> str:
    """A released count; a non-zero count below the policy's minimum is never shown."""
    v = fnum(value)
    if v is None:
        return NA
    if v == 0:
        return "0"
    if abs(v) < min_cell:
        return f"<{min_cell}"
    return str(round(v)) if float(v).is_integer() else num(v, ".1f")


def is_small(value: object, min_cell: int) -> bool:
    v = fnum(value)
    return v is not None and v != 0 and abs(v) < min_cell


def interval(lo: object, hi: object, f: Callable[[object], str]) -> str:
    return f"{f(lo)}{DASH}{f(hi)}"


def est_ci(est: object, lo: object, hi: object, f: Callable[[Any], str]) -> str:
    """'est (lo–hi)', the way a paper writes an estimate with its interval."""
    if not is_num(est) and not is_num(lo) and not is_num(hi):
        return NA
    return f"{f(est)} ({interval(lo, hi, f)})"
