"""Loading and validating a site's HER2+ mBC registry extract (docs/registry_schema.md).

Extracts fail in two ways, so there are two severities. A broken export (a file
or column missing, patient ids not unique, dates written in another format)
makes every number computed from it suspect: it raises ``DataError`` and nothing
runs until the export is fixed. A few implausible rows (a treatment after
death, a progression of a patient not in the extract) are normal in real
registries: such a row is excluded, counted under the rule it broke and shown
by ``her2fed site check``, so the site stays usable and nothing is dropped
silently.

Messages name files, data rows (1-based, header not counted), columns and rule
names, never a patient value: they are printed at a hospital and get pasted
into e-mails and issue trackers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from her2fed.errors import DataError

Kind = Literal["id", "text", "upper", "lower", "enum", "bool", "int", "date", "sites"]
BoolArray = npt.NDArray[np.bool_]

STATUS = ("POS", "NEG", "UNKNOWN")
MET_SITES = ("bone", "lung", "liver", "brain", "lymph", "skin", "other")
STOP_REASONS = ("progression", "toxicity", "completed", "death", "other")
CARE_EVENTS = ("palliative_care", "transfer_out", "hospice")
REQUIRED_TABLES = ("patients", "treatments", "progressions")
OPTIONAL_TABLES = ("care_events",)
TABLES = REQUIRED_TABLES + OPTIONAL_TABLES
SCHEMA_DOC = "docs/registry_schema.md"
DATE_FIX = (
    "write dates as ISO YYYY-MM-DD (e.g. 2021-03-04), check that the day exists in that "
    "month, and export the table again"
)


@dataclass(frozen=True)
class Column:
    """One column of the schema: how to parse it and what it must satisfy."""

    name: str
    kind: Kind
    required: bool = False
    values: tuple[str, ...] = ()
    lo: int | None = None


SCHEMA: dict[str, tuple[Column, ...]] = {
    "patients": (
        Column("patient_id", "id", True),
        Column("birth_year", "int", True),
        Column("sex", "enum", True, ("F", "M")),
        Column("initial_dx_date", "date"),
        Column("met_dx_date", "date", True),
        Column("de_novo", "bool", True),
        Column("her2_status", "enum", True, STATUS),
        Column("er_status", "enum", True, STATUS),
        Column("pr_status", "enum", True, STATUS),
        Column("ecog", "int", values=("0", "1", "2", "3", "4"), lo=0),
        Column("brain_mets", "bool", True),
        Column("met_sites", "sites", values=MET_SITES),
        Column("death_date", "date"),
        Column("last_contact_date", "date", True),
        Column("palliative_care_date", "date"),
        Column("transfer_out_date", "date"),
    ),
    "treatments": (
        Column("patient_id", "id", True),
        Column("drug", "text", True),
        Column("atc", "upper"),
        Column("route", "lower"),
        Column("start_date", "date", True),
        Column("end_date", "date"),
        Column("days_supply", "int", lo=1),
        Column("line_number", "int", lo=1),
        Column("stop_reason", "enum", values=STOP_REASONS),
    ),
    "progressions": (
        Column("patient_id", "id", True),
        Column("progression_date", "date", True),
        Column("evidence", "lower"),
    ),
    "care_events": (
        Column("patient_id", "id", True),
        Column("event", "enum", True, CARE_EVENTS),
        Column("event_date", "date", True),
    ),
}


# ---------------------------------------------------------------------------
# report


@dataclass(frozen=True)
class Exclusion:
    """Rows of one table excluded by one rule (each row counts under its first failed rule)."""

    rule: str
    column: str
    count: int
    first_row: int

    @property
    def reason(self) -> str:
        return f"{self.rule} ({self.column})" if self.column else self.rule


@dataclass(frozen=True)
class TableReport:
    """Aggregate facts about one table; nothing in it identifies a patient."""

    table: str
    file: str
    rows_read: int
    rows_kept: int
    exclusions: tuple[Exclusion, ...]
    missing: dict[str, int]
    date_ranges: dict[str, tuple[str, str]]
    extra_columns: tuple[str, ...]
    absent_columns: tuple[str, ...]

    @property
    def rows_excluded(self) -> int:
        return self.rows_read - self.rows_kept

    @property
    def excluded(self) -> dict[str, int]:
        """Excluded row count by reason, ``"rule (column)"``."""
        return {e.reason: e.count for e in self.exclusions}


@dataclass(frozen=True)
class QualityReport:
    """What ``her2fed site check`` prints about a registry extract: aggregates only.

    ``missing`` and ``date_ranges`` describe the kept rows (what analyses see);
    date ranges are year-month only. ``treatments_before_met_dx`` counts kept
    administrations before metastatic diagnosis: neo/adjuvant exposure, which
    is kept in the table but never used to build lines.
    """

    tables: dict[str, TableReport]
    her2_status: dict[str, int]
    hr_status: dict[str, int]
    treatments_before_met_dx: int

    @property
    def excluded(self) -> dict[str, dict[str, int]]:
        return {name: t.excluded for name, t in self.tables.items()}

    @property
    def total_excluded(self) -> int:
        return sum(t.rows_excluded for t in self.tables.values())

    def lines(self) -> list[str]:
        out: list[str] = []
        for t in self.tables.values():
            out.append(
                f"registry {t.table}: {t.file}, {t.rows_read} rows read, {t.rows_kept} kept, "
                f"{t.rows_excluded} excluded"
            )
            for e in t.exclusions:
                out.append(
                    f"    excluded {e.count} row(s): rule {e.rule}"
                    + (f", column {e.column}" if e.column else "")
                    + f" (first at data row {e.first_row})"
                )
            if t.date_ranges:
                ranges = ", ".join(f"{c} {lo}..{hi}" for c, (lo, hi) in t.date_ranges.items())
                out.append(f"    dates (year-month): {ranges}")
            gaps = {c: n for c, n in t.missing.items() if n and c not in t.absent_columns}
            if gaps:
                out.append("    missing values: " + ", ".join(f"{c} {n}" for c, n in gaps.items()))
            if t.absent_columns:
                out.append(f"    optional columns absent: {', '.join(t.absent_columns)}")
            if t.extra_columns:
                out.append(f"    extra columns ignored: {', '.join(t.extra_columns)}")
        out.append("HER2 status: " + ", ".join(f"{k} {v}" for k, v in self.her2_status.items()))
        out.append("HR status: " + ", ".join(f"{k} {v}" for k, v in self.hr_status.items()))
        out.append(
            f"treatments before met_dx_date (neo/adjuvant, not used for lines): "
            f"{self.treatments_before_met_dx}"
        )
        return out


@dataclass(frozen=True)
class Registry:
    """A validated extract: only kept rows, dates as datetime64, plus its quality report.

    Every frame's index is the row's data row number in its file (1-based,
    header not counted), so later steps can point hospital IT at a row without
    printing it. Columns are exactly the schema's, in schema order; optional
    columns absent from the file are present and all missing.
    """

    patients: pd.DataFrame
    treatments: pd.DataFrame
    progressions: pd.DataFrame
    care_events: pd.DataFrame
    report: QualityReport


# ---------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class Origin:
    """Where a table came from when it is not a file (a database query): what messages name.

    Behaves like the ``Path`` of a file where validation uses one: ``str()`` is the full
    location for messages, ``name`` the short one for the quality report.
    """

    where: str
    name: str

    def __str__(self) -> str:
        return self.where


Location = Path | Origin


def _read(table: str, path: Path, declared_in: str) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise DataError(
            str(path),
            f"unsupported file type {path.suffix!r} for registry table {table!r}",
            "export the table as .csv (UTF-8, header row) or .parquet",
        )
    if not path.exists():
        raise DataError(
            str(path),
            f"file not found (registry table {table!r}, rule file_exists)",
            f"export the table, or correct its path under [data.registry] in {declared_in} "
            "(paths are relative to the config file)",
        )
    if path.stat().st_size == 0:
        if table in ("progressions", "care_events"):
            return pd.DataFrame({c.name: pd.Series(dtype=object) for c in SCHEMA[table]})
        raise DataError(
            str(path),
            f"file is empty, not even a header row (registry table {table!r})",
            "export the table again with a header row naming the columns",
        )
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                encoding="utf-8-sig",
            )
    except UnicodeDecodeError:
        raise DataError(
            str(path), "is not UTF-8 text", "export the table again as UTF-8 CSV"
        ) from None
    except pd.errors.ParserError as err:  # tokenizer messages give line numbers, no values
        raise DataError(
            str(path),
            f"cannot be read as CSV ({str(err).splitlines()[0][:200]})",
            "check quoting and the number of fields per line, or export as Parquet",
        ) from None
    except Exception as err:  # the Parquet reader raises many types; their text may hold values
        raise DataError(
            str(path),
            f"cannot be read as {suffix[1:].upper()} ({type(err).__name__})",
            "export the table again as UTF-8 CSV with a header row, or as Parquet",
        ) from None
    frame.columns = pd.Index([str(c).strip() for c in frame.columns])
    return frame


def _check_columns(table: str, path: Location, frame: pd.DataFrame) -> None:
    have = list(frame.columns)
    missing = [c.name for c in SCHEMA[table] if c.required and c.name not in have]
    if not missing:
        return
    hints: list[str] = []
    lower = {h.lower(): h for h in have}
    near = [f"{lower[m.lower()]!r} -> {m!r}" for m in missing if m.lower() in lower]
    if near:
        hints.append(f"names are case-sensitive: rename {', '.join(near)}")
    separated = len(have) == 1 and (";" in have[0] or "\t" in have[0])
    if separated:
        hints.append("the header looks ';'- or tab-separated: export with ',' as separator")
    # The header is listed only as far as it names schema columns: a file exported without a
    # header row has a patient's values where the column names should be.
    known = {c.name for cols in SCHEMA.values() for c in cols}
    found = [h for h in have if h in known]
    others = len(have) - len(found)
    if not found and not separated:
        hints.append("the first line is not a header: export with a header row")
    raise DataError(
        str(path),
        f"missing required column(s) {missing} (rule required_column)",
        "; ".join(
            [
                *hints,
                f"add them with exactly these names (see {SCHEMA_DOC}); the file has "
                f"{found} and {others} other column(s)",
            ]
        ),
    )


# ---------------------------------------------------------------------------
# parsing one column


def _text(raw: pd.Series) -> pd.Series:
    """Stripped strings (object dtype), NaN where missing or blank.

    Parquet brings typed columns; reducing everything to text first gives CSV
    and Parquet one validation path, so both formats accept the same values.
    """
    if pd.api.types.is_bool_dtype(raw.dtype):
        s = raw.map({True: "true", False: "false"}).astype(object)
    elif pd.api.types.is_datetime64_any_dtype(raw.dtype):
        s = raw.dt.strftime("%Y-%m-%d").astype(object)
    elif pd.api.types.is_float_dtype(raw.dtype):
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = np.isfinite(values)
        integral = finite & (np.floor(values) == values)
        text = np.full(len(values), np.nan, dtype=object)
        text[integral] = values[integral].astype(np.int64).astype(str)
        text[finite & ~integral] = values[finite & ~integral].astype(str)
        s = pd.Series(text, index=raw.index, dtype=object)
    else:
        s = raw.astype(object)
    present = s.notna().to_numpy()
    out = pd.Series(np.full(len(s), np.nan, dtype=object), index=raw.index)
    if present.any():
        out[present] = s[present].astype(str).str.strip().to_numpy()
    return out.where(out != "", np.nan)


@dataclass(frozen=True)
class _Parsed:
    values: pd.Series
    missing: BoolArray
    bad: BoolArray  # present but not of the column's type or vocabulary
    not_iso: BoolArray  # dates only: text not of the form YYYY-MM-DD
    out_of_range: BoolArray  # integers only: below the minimum or not an allowed value


def _parse(raw: pd.Series, col: Column) -> _Parsed:
    """Parse a column once per distinct value: extracts repeat drugs, dates and ids a lot."""
    if col.kind == "date" and pd.api.types.is_datetime64_any_dtype(raw.dtype):
        no = np.zeros(len(raw), dtype=bool)
        d = pd.to_datetime(raw)
        if getattr(d.dt, "tz", None) is not None:
            d = d.dt.tz_localize(None)
        d = d.dt.floor("D").astype("datetime64[ns]")
        return _Parsed(d, d.isna().to_numpy(), no, no, no)
    codes, uniques = pd.factorize(raw, use_na_sentinel=True)
    if len(uniques) == 0:
        return _parse_values(raw, col)
    u = _parse_values(pd.Series(uniques), col)
    present = codes >= 0
    take = np.where(present, codes, 0)
    values = u.values.take(take).where(present).set_axis(raw.index)
    return _Parsed(
        values,
        ~present | u.missing[take],
        present & u.bad[take],
        present & u.not_iso[take],
        present & u.out_of_range[take],
    )


def _parse_values(raw: pd.Series, col: Column) -> _Parsed:
    n = len(raw)
    no = np.zeros(n, dtype=bool)
    text = _text(raw)
    missing = text.isna().to_numpy()
    present = ~missing
    if col.kind == "date":
        iso = text.str.fullmatch(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?")
        iso_ok = iso.to_numpy(dtype=bool, na_value=False)
        day = text.str.slice(0, 10).where(iso_ok, np.nan)
        parsed = pd.to_datetime(day, format="%Y-%m-%d", errors="coerce").astype("datetime64[ns]")
        bad = present & parsed.isna().to_numpy()
        return _Parsed(parsed, missing, bad, present & ~iso_ok, no)
    if col.kind == "int":
        num = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        ok = np.isfinite(num) & (np.floor(num) == num)
        low = present & ok & (num < col.lo) if col.lo is not None else no
        if col.values:
            low = low | (present & ok & ~np.isin(num, [float(v) for v in col.values]))
        values = pd.Series(np.where(ok, num, np.nan), index=raw.index).astype("Int64")
        return _Parsed(values, missing, present & ~ok, no, low)
    if col.kind == "bool":
        low = text.str.lower()
        values = low.map({"true": True, "false": False})
        return _Parsed(values, missing, present & values.isna().to_numpy(), no, no)
    if col.kind == "enum":
        canon = {v.lower(): v for v in col.values}
        values = text.str.lower().map(canon).astype(object)
        return _Parsed(values, missing, present & values.isna().to_numpy(), no, no)
    if col.kind == "sites":
        allowed = set(col.values)
        tidy: dict[str, str] = {}
        for value in text.dropna().unique():
            parts = [p.strip().lower() for p in str(value).split(";")]
            parts = [p for p in parts if p]
            if parts and all(p in allowed for p in parts):
                tidy[str(value)] = ";".join(dict.fromkeys(parts))
        values = text.map(tidy).astype(object)
        return _Parsed(values, missing, present & values.isna().to_numpy(), no, no)
    if col.kind == "upper":
        text = text.str.upper()
    elif col.kind == "lower":
        text = text.str.lower()
    return _Parsed(text.astype(object), missing, no, no, no)


def _first(mask: BoolArray) -> int:
    return int(np.argmax(mask)) + 1


class _Verdicts:
    """Gives each row its first failed rule, so every excluded row is counted exactly once."""

    def __init__(self, n: int) -> None:
        self.code = np.zeros(n, dtype=np.int32)
        self.rules: list[tuple[str, str]] = []

    def fail(self, mask: BoolArray, rule: str, column: str) -> None:
        hit: BoolArray = np.asarray(mask, dtype=bool) & (self.code == 0)
        if hit.any():
            self.rules.append((rule, column))
            self.code[hit] = len(self.rules)

    @property
    def keep(self) -> BoolArray:
        kept: BoolArray = self.code == 0
        return kept

    def exclusions(self) -> tuple[Exclusion, ...]:
        return tuple(
            Exclusion(rule, column, int((self.code == i).sum()), _first(self.code == i))
            for i, (rule, column) in enumerate(self.rules, start=1)
        )


def _parse_table(
    table: str, path: Location, frame: pd.DataFrame
) -> tuple[pd.DataFrame, _Verdicts, tuple[str, ...]]:
    """Typed columns plus the per-column verdicts; unusable date columns raise."""
    n = len(frame)
    index = pd.RangeIndex(1, n + 1, name="row")
    frame = frame.set_axis(index, axis=0)
    verdicts = _Verdicts(n)
    out: dict[str, pd.Series] = {}
    absent: list[str] = []
    for col in SCHEMA[table]:
        if col.name not in frame.columns:
            absent.append(col.name)
            raw = pd.Series(np.full(n, np.nan, dtype=object), index=index)
        else:
            raw = frame[col.name]
        parsed = _parse(raw, col)
        if col.kind == "date" and col.required and parsed.bad.any():
            impossible = parsed.bad & ~parsed.not_iso
            first = _first(parsed.bad)
            what = (
                "an impossible calendar date (rule valid_date)"
                if impossible[first - 1]
                else "not an ISO YYYY-MM-DD date (rule date_format)"
            )
            raise DataError(
                f"{path}: data row {first}, column {col.name!r}",
                f"{int(parsed.bad.sum())} value(s) in this required date column cannot be read; "
                f"data row {first} is {what}",
                DATE_FIX,
            )
        if col.required:
            verdicts.fail(parsed.missing, "missing_value", col.name)
        rule = {"date": "bad_date", "int": "bad_integer"}.get(col.kind, "bad_enum")
        verdicts.fail(parsed.bad, rule, col.name)
        verdicts.fail(parsed.out_of_range, "out_of_range", col.name)
        out[col.name] = parsed.values
    return pd.DataFrame(out, index=index), verdicts, tuple(absent)


def _check_unique_ids(path: Location, patients: pd.DataFrame) -> None:
    ids = patients["patient_id"]
    dup = ids.duplicated(keep="first").to_numpy() & ids.notna().to_numpy()
    if not dup.any():
        return
    row = _first(dup)
    first = _first((ids == ids.iat[row - 1]).to_numpy())
    raise DataError(
        f"{path}: data row {row}, column 'patient_id'",
        f"{int(dup.sum())} duplicate patient id(s); data row {row} repeats the id of data row "
        f"{first} (rule unique_patient_id)",
        "give each patient exactly one row in the patients table: merge or remove the "
        "duplicates, or fix the pseudonymisation so different patients get different ids",
    )


def _report(
    table: str,
    path: Location,
    raw: pd.DataFrame,
    kept: pd.DataFrame,
    verdicts: _Verdicts,
    absent: tuple[str, ...],
) -> TableReport:
    names = {c.name for c in SCHEMA[table]}
    ranges: dict[str, tuple[str, str]] = {}
    for col in SCHEMA[table]:
        if col.kind == "date" and kept[col.name].notna().any():
            lo, hi = kept[col.name].min(), kept[col.name].max()
            ranges[col.name] = (lo.strftime("%Y-%m"), hi.strftime("%Y-%m"))
    return TableReport(
        table=table,
        file=path.name,
        rows_read=len(raw),
        rows_kept=len(kept),
        exclusions=verdicts.exclusions(),
        missing={c.name: int(kept[c.name].isna().sum()) for c in SCHEMA[table]},
        date_ranges=ranges,
        extra_columns=tuple(str(c) for c in raw.columns if c not in names),
        absent_columns=absent,
    )


def _finish(table: str, frame: pd.DataFrame, keep: BoolArray) -> pd.DataFrame:
    kept = frame.loc[keep].copy()
    for col in SCHEMA[table]:
        if col.kind == "bool" and col.required:
            kept[col.name] = kept[col.name].astype(bool)
        elif col.kind == "int" and col.required:
            kept[col.name] = kept[col.name].astype(np.int64)
    return kept


def _child(
    table: str,
    frame: pd.DataFrame,
    verdicts: _Verdicts,
    patients: pd.DataFrame,
    all_ids: pd.Index,
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Link rows to kept patients; returns each row's met_dx, death and last contact dates."""
    ids = frame["patient_id"]
    where = pd.Index(patients["patient_id"]).get_indexer(pd.Index(ids))
    linked = where >= 0
    known = all_ids.get_indexer(pd.Index(ids)) >= 0
    present = ids.notna().to_numpy()
    verdicts.fail(present & ~linked & ~known, "unknown_patient", "patient_id")
    verdicts.fail(present & ~linked & known, "patient_excluded", "patient_id")

    def pick(column: str) -> pd.Series:
        values = patients[column].to_numpy(dtype="datetime64[ns]")
        got = np.where(linked, values[np.where(linked, where, 0)], np.datetime64("NaT"))
        return pd.Series(got, index=frame.index, dtype="datetime64[ns]")

    return pick("met_dx_date"), pick("death_date"), pick("last_contact_date")


def load_registry(paths: Mapping[str, Path | str], declared_in: str = "site.toml") -> Registry:
    """Read, validate and type a site's registry tables.

    ``paths`` maps table names (patients, treatments, progressions and
    optionally care_events) to CSV or Parquet files, as in ``[data.registry]``.
    Raises ``DataError`` when the extract cannot be used at all; excludes and
    counts rows that break a row-level rule.
    """
    unknown = sorted(set(paths) - set(TABLES))
    if unknown:
        raise DataError(
            f"{declared_in}: [data.registry]",
            f"unknown table(s) {unknown}",
            f"use only {list(TABLES)}",
        )
    for table in REQUIRED_TABLES:
        if table not in paths:
            raise DataError(
                f"{declared_in}: [data.registry]",
                f"registry table {table!r} is not declared (rule file_exists)",
                f'add {table} = "{table}.csv" under [data.registry]',
            )
    files = {t: Path(paths[t]) for t in TABLES if t in paths}
    raws = {table: _read(table, path, declared_in) for table, path in files.items()}
    return validate_registry(raws, dict(files))


def validate_registry(
    frames: Mapping[str, pd.DataFrame], origins: Mapping[str, Location]
) -> Registry:
    """Check, type and filter raw registry tables, wherever they were read from.

    Files and database queries both end here, so an extract gives the same
    registry (the same kept rows, exclusions and report) whatever holds it.
    ``frames`` needs patients, treatments and progressions (care_events is
    optional); ``origins`` names each table's file or query for messages.
    """
    raws = dict(frames)
    files: dict[str, Location] = dict(origins)
    for table in raws:
        _check_columns(table, files[table], raws[table])
    if "care_events" not in raws:
        raws["care_events"] = pd.DataFrame(
            {c.name: pd.Series(dtype=object) for c in SCHEMA["care_events"]}
        )
        files["care_events"] = Path("(not declared)")

    parsed = {t: _parse_table(t, files[t], raws[t]) for t in TABLES}

    # patients
    p, pv, _ = parsed["patients"]
    _check_unique_ids(files["patients"], p)
    met = p["met_dx_date"]
    met_year = met.dt.year.to_numpy(dtype=np.float64, na_value=np.nan)
    birth = p["birth_year"].to_numpy(dtype=np.float64, na_value=np.nan)
    pv.fail((birth < 1900) | (birth > met_year), "birth_year_out_of_range", "birth_year")
    pv.fail((p["initial_dx_date"] > met).to_numpy(), "initial_dx_after_met_dx", "initial_dx_date")
    pv.fail((p["death_date"] < met).to_numpy(), "death_before_met_dx", "death_date")
    last = p["last_contact_date"]
    pv.fail((last < met).to_numpy(), "last_contact_before_met_dx", "last_contact_date")
    pv.fail((last > p["death_date"]).to_numpy(), "last_contact_after_death", "last_contact_date")
    patients = _finish("patients", p, pv.keep)
    if len(raws["patients"]) == 0 or len(patients) == 0:
        reasons = pv.exclusions()
        top = max(reasons, key=lambda e: e.count) if reasons else None
        raise DataError(
            str(files["patients"]),
            "no patient row is usable"
            + (
                f"; most rows break rule {top.rule} in column {top.column!r} "
                f"(first at data row {top.first_row})"
                if top
                else " (the table has no data rows)"
            ),
            f"export the patients of the HER2+ mBC cohort with the columns of {SCHEMA_DOC}",
        )
    all_ids = pd.Index(p["patient_id"].dropna())

    # treatments
    t, tv, _ = parsed["treatments"]
    tv.fail((t["end_date"] < t["start_date"]).to_numpy(), "end_before_start", "end_date")
    _, death, last_t = _child("treatments", t, tv, patients, all_ids)
    tv.fail((t["start_date"] > death).to_numpy(), "after_death", "start_date")
    tv.fail((t["start_date"] > last_t).to_numpy(), "after_last_contact", "start_date")
    treatments = _finish("treatments", t, tv.keep)

    # progressions
    g, gv, _ = parsed["progressions"]
    met_g, death_g, last_g = _child("progressions", g, gv, patients, all_ids)
    date = g["progression_date"]
    gv.fail((date < met_g).to_numpy(), "before_met_dx", "progression_date")
    gv.fail((date > death_g).to_numpy(), "after_death", "progression_date")
    gv.fail((date > last_g).to_numpy(), "after_last_contact", "progression_date")
    progressions = _finish("progressions", g, gv.keep)

    # care events
    c, cv, _ = parsed["care_events"]
    _child("care_events", c, cv, patients, all_ids)
    care = _finish("care_events", c, cv.keep)

    kept = {
        "patients": patients,
        "treatments": treatments,
        "progressions": progressions,
        "care_events": care,
    }
    tables = {
        name: _report(name, files[name], raws[name], kept[name], parsed[name][1], parsed[name][2])
        for name in TABLES
    }
    met_by_row = pd.Series(
        patients["met_dx_date"].to_numpy(), index=pd.Index(patients["patient_id"])
    )
    before = treatments["start_date"].to_numpy() < met_by_row.reindex(
        treatments["patient_id"]
    ).to_numpy(dtype="datetime64[ns]")
    report = QualityReport(
        tables=tables,
        her2_status={s: int((patients["her2_status"] == s).sum()) for s in STATUS},
        hr_status=_hr_counts(patients),
        treatments_before_met_dx=int(before.sum()),
    )
    return Registry(patients, treatments, progressions, care, report)


def hr_status(patients: pd.DataFrame) -> pd.Series:
    """HR status per the schema: POS if ER or PR is POS, NEG if both NEG, else UNKNOWN."""
    er, pr = patients["er_status"], patients["pr_status"]
    pos = (er == "POS") | (pr == "POS")
    neg = (er == "NEG") & (pr == "NEG")
    return pd.Series(
        np.where(pos, "POS", np.where(neg, "NEG", "UNKNOWN")), index=patients.index, dtype=object
    )


def _hr_counts(patients: pd.DataFrame) -> dict[str, int]:
    hr = hr_status(patients)
    return {s: int((hr == s).sum()) for s in STATUS}
