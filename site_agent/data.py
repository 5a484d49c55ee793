"""Loading a site's tables and turning rows into validated analysis arrays.

Errors name the file, the column, the first offending data row (1-based,
header not counted) and the fix. They never print patient values other than
category labels the study itself declares or should declare.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from her2fed.errors import DataError
from her2fed.levels import Levels, canon_level
from her2fed.protocol import Prepared
from her2fed.study import Analysis


def load_table(path: Path, declared_in: str = "the site config") -> pd.DataFrame:
    """Read a CSV or Parquet table; unreadable files raise ``DataError``."""
    if not path.exists():
        raise DataError(
            str(path),
            "file not found",
            f"check the path given in {declared_in} (it is relative to the config file)",
        )
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, low_memory=False)
    except Exception as err:  # the parsers raise many unrelated types
        raise DataError(
            str(path),
            f"cannot be read as {path.suffix[1:].upper()} "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]})",
            "export the table again as UTF-8 CSV with a header row, or as Parquet",
        ) from None


def _first_row(mask: np.ndarray) -> int:
    return int(np.argmax(mask)) + 1


def _numeric(df: pd.DataFrame, column: str, where: str, fix: str) -> np.ndarray:
    raw = df[column]
    if pd.api.types.is_numeric_dtype(raw.dtype):
        # a numeric column (CSV numbers, Parquet, a database) cannot hold text: the only
        # thing to do is read it, with missing values as NaN
        return raw.to_numpy(dtype=np.float64, na_value=np.nan)
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values) & raw.notna().to_numpy()
    if bad.any():
        raise DataError(
            f"{where}: column {column!r}",
            f"{int(bad.sum())} non-numeric value(s), first at data row {_first_row(bad)}",
            fix,
        )
    return values


def level_codes(df: pd.DataFrame, spec: Levels, where: str) -> np.ndarray:
    """Index of each row's level (-1 where missing); undeclared levels are errors.

    Distinct values are canonicalised once each (``pd.factorize``), not once per
    row: a text column of 200,000 rows costs a hash pass, not 200,000 lookups.
    """
    codes, uniques = pd.factorize(df[spec.column])
    lookup = np.full(len(uniques) + 1, -1, dtype=np.int64)  # the last slot: missing (-1)
    undeclared: list[str] = []
    for i, value in enumerate(uniques):
        key = canon_level(value)
        if key is None:
            continue
        if key in spec.levels:
            lookup[i] = spec.levels.index(key)
        else:
            undeclared.append(key)
    if undeclared:
        shown = ", ".join(repr(u) for u in sorted(set(undeclared))[:5])
        raise DataError(
            f"{where}: column {spec.column!r}",
            f"value(s) {shown} are not among the declared levels {list(spec.levels)}",
            "declare every level in the study's `levels`, or recode the site's data",
        )
    out: np.ndarray = lookup[codes]
    return out


def _design(df: pd.DataFrame, analysis: Analysis, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Covariate matrix and a row mask of missing covariates."""
    blocks: list[np.ndarray] = []
    missing = np.zeros(len(df), dtype=bool)
    for cov in analysis.covariates:
        if not cov.categorical:
            v = _numeric(
                df,
                cov.column,
                where,
                "make the covariate numeric, or declare it categorical with its levels",
            )
            missing |= np.isnan(v)
            blocks.append(v[:, None])
            continue
        codes = level_codes(df, Levels(cov.column, cov.levels), where)
        missing |= codes < 0
        for i, lv in enumerate(cov.levels):
            if lv != cov.reference:
                blocks.append((codes == i).astype(np.float64)[:, None])
    x = np.hstack(blocks) if blocks else np.zeros((len(df), 0))
    return x, missing


def prepare(df: pd.DataFrame, analysis: Analysis, where: str) -> Prepared:
    """Validate a table for one analysis and keep the complete cases as arrays."""
    absent = [c for c in analysis.columns() if c not in df.columns]
    if absent:
        raise DataError(
            f"{where}: analysis {analysis.id!r}",
            f"missing column(s) {absent}",
            f"add them to the table or change the study; the table has {list(df.columns)}",
        )
    time = _numeric(df, analysis.time, where, "give follow-up time as a number of days")
    neg = time < 0
    if neg.any():
        raise DataError(
            f"{where}: column {analysis.time!r}",
            f"{int(neg.sum())} negative time(s), first at data row {_first_row(neg)}",
            "follow-up time must be >= 0 days; check the dates it was computed from",
        )
    codes = (0, *analysis.causes) if analysis.kind == "cif" else (0, 1)
    ev_raw = _numeric(df, analysis.event, where, f"code the event as one of {list(codes)}")
    undeclared = ~np.isnan(ev_raw) & ~np.isin(ev_raw, codes)
    if undeclared.any():
        found = sorted({canon_level(v) or "" for v in ev_raw[undeclared]})[:5]
        fix = (
            "declare the cause in `causes`"
            if analysis.kind == "cif"
            else 'recode to 0 = censored, 1 = event (competing causes need kind = "cif")'
        )
        raise DataError(
            f"{where}: column {analysis.event!r}",
            f"event code(s) {found} are not declared (allowed: {list(codes)}), "
            f"first at data row {_first_row(undeclared)}",
            fix,
        )
    missing = np.isnan(time) | np.isnan(ev_raw)
    if codes == tuple(range(len(codes))):  # 0/1, or causes 1..K: every code is its index
        event = np.where(missing, 0.0, ev_raw).astype(np.int64)
    else:
        event = np.zeros(len(df), dtype=np.int64)
        for index, code in enumerate(codes):
            event[ev_raw == code] = index
    group = np.zeros(len(df), dtype=np.int64)
    if analysis.by is not None:
        group = level_codes(df, analysis.by, where)
        missing |= group < 0
    stratum = np.zeros(len(df), dtype=np.int64)
    for spec in analysis.strata:
        codes_s = level_codes(df, spec, where)
        missing |= codes_s < 0
        stratum = stratum * len(spec.levels) + codes_s
    x, miss_x = _design(df, analysis, where)
    missing |= miss_x
    if not missing.any():  # the usual case: no copies
        time.flags.writeable = False  # it may be a view of the site's table
        return Prepared(time, event, group, stratum, x, 0, np.arange(len(df), dtype=np.int64))
    keep = ~missing
    return Prepared(
        time[keep],
        event[keep],
        group[keep],
        stratum[keep],
        x[keep],
        int(missing.sum()),
        np.flatnonzero(keep).astype(np.int64),
    )


def describe(df: pd.DataFrame, columns: Sequence[str]) -> list[tuple[str, int, int]]:
    """(column, non-missing count, missing count) for a data-quality summary."""
    return [(c, int(df[c].notna().sum()), int(df[c].isna().sum())) for c in columns if c in df]
