"""The registry loader: one test per validation rule of docs/registry_schema.md.

Broken extracts raise one ``DataError`` naming file, data row, column, rule and
fix; implausible rows are excluded and counted under their rule. Every message
and every report line is checked for the sentinel patient's id and for the
dates of the test data: a hospital's output must never show patient values.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from her2fed.errors import DataError
from site_agent.registry import Registry, load_registry

SENTINEL = "SENTINEL-4242"
Tables = dict[str, list[dict[str, str]]]


def base() -> Tables:
    """Three valid patients: the sentinel (dead), one alive, one lost to follow-up."""
    return {
        "patients": [
            {
                "patient_id": SENTINEL,
                "birth_year": "1961",
                "sex": "F",
                "initial_dx_date": "2015-03-02",
                "met_dx_date": "2019-05-06",
                "de_novo": "false",
                "her2_status": "POS",
                "er_status": "POS",
                "pr_status": "NEG",
                "ecog": "1",
                "brain_mets": "false",
                "met_sites": "bone;liver",
                "death_date": "2021-07-08",
                "last_contact_date": "2021-07-08",
                "palliative_care_date": "2021-05-17",
                "transfer_out_date": "",
            },
            {
                "patient_id": "p2",
                "birth_year": "1970",
                "sex": "F",
                "initial_dx_date": "2018-01-09",
                "met_dx_date": "2018-01-09",
                "de_novo": "true",
                "her2_status": "POS",
                "er_status": "NEG",
                "pr_status": "NEG",
                "ecog": "",
                "brain_mets": "true",
                "met_sites": "brain",
                "death_date": "",
                "last_contact_date": "2022-11-14",
                "palliative_care_date": "",
                "transfer_out_date": "",
            },
            {
                "patient_id": "p3",
                "birth_year": "1950",
                "sex": "M",
                "initial_dx_date": "",
                "met_dx_date": "2020-02-11",
                "de_novo": "false",
                "her2_status": "POS",
                "er_status": "UNKNOWN",
                "pr_status": "UNKNOWN",
                "ecog": "2",
                "brain_mets": "false",
                "met_sites": "",
                "death_date": "",
                "last_contact_date": "2021-03-19",
                "palliative_care_date": "",
                "transfer_out_date": "2021-03-19",
            },
        ],
        "treatments": [
            _rx(SENTINEL, "Herceptin", "2016-01-04", "iv"),  # adjuvant, before met_dx
            _rx(SENTINEL, "trastuzumab", "2019-06-03", "iv", line="1"),
            _rx(SENTINEL, "PERJETA", "2019-06-03", "iv", line="1", stop="progression"),
            _rx(SENTINEL, "L01FD04", "2020-08-10", "iv", line="2", stop="death"),
            _rx("p2", "capecitabine", "2018-02-01", "oral", supply="14"),
            _rx("p2", "Tukysa", "2018-02-01", "oral", supply="21", end="2018-02-21"),
            _rx("p3", "letrozole", "2020-03-01", "oral", supply="30"),
        ],
        "progressions": [
            {"patient_id": SENTINEL, "progression_date": "2020-07-27", "evidence": "imaging"},
            {"patient_id": "p2", "progression_date": "2019-04-04", "evidence": ""},
        ],
        "care_events": [
            {"patient_id": SENTINEL, "event": "palliative_care", "event_date": "2021-05-17"},
            {"patient_id": "p3", "event": "transfer_out", "event_date": "2021-03-19"},
        ],
    }


def _rx(
    pid: str,
    drug: str,
    start: str,
    route: str,
    *,
    line: str = "",
    stop: str = "",
    supply: str = "",
    end: str = "",
) -> dict[str, str]:
    return {
        "patient_id": pid,
        "drug": drug,
        "atc": "",
        "route": route,
        "start_date": start,
        "end_date": end,
        "days_supply": supply,
        "line_number": line,
        "stop_reason": stop,
    }


DATES = {v for t in base().values() for r in t for v in r.values() if re.fullmatch(r"\d{4}-.*", v)}


def write(directory: Path, tables: Tables, fmt: str = "csv") -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, rows in tables.items():
        path = directory / f"{name}.{fmt}"
        frame = pd.DataFrame(rows, dtype=str)
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.replace("", None).to_parquet(path, index=False)
        paths[name] = path
    return paths


def edit(tables: Tables, table: str, row: int, column: str, value: str) -> Tables:
    """Change one cell, ``row`` being the 1-based data row."""
    tables[table][row - 1][column] = value
    return tables


def assert_private(text: str) -> None:
    assert SENTINEL not in text
    for date in DATES:
        assert date not in text, f"patient date {date} printed"


def load(tmp_path: Path, tables: Tables, fmt: str = "csv") -> Registry:
    registry = load_registry(write(tmp_path, tables, fmt))
    for line in registry.report.lines():
        assert_private(line)
    return registry


def fatal(tmp_path: Path, tables: Tables, *, paths: dict[str, Path] | None = None) -> DataError:
    with pytest.raises(DataError) as info:
        load_registry(paths if paths is not None else write(tmp_path, tables))
    err = info.value
    assert err.fix, "every error names its fix"
    assert f"Fix: {err.fix}" in str(err)
    assert_private(str(err))
    return err


# ---------------------------------------------------------------------------
# a clean extract


def test_clean_extract_loads_typed_and_complete(tmp_path: Path) -> None:
    reg = load(tmp_path, base())
    assert reg.report.total_excluded == 0
    assert len(reg.patients) == 3 and len(reg.treatments) == 7
    assert len(reg.progressions) == 2 and len(reg.care_events) == 2
    for frame, col in [
        (reg.patients, "met_dx_date"),
        (reg.patients, "death_date"),
        (reg.treatments, "start_date"),
        (reg.progressions, "progression_date"),
        (reg.care_events, "event_date"),
    ]:
        assert str(frame[col].dtype) == "datetime64[ns]"
    assert reg.patients["de_novo"].dtype == bool
    assert reg.patients["birth_year"].dtype == "int64"
    assert list(reg.treatments.index) == list(range(1, 8)), "index = data row numbers"
    report = reg.report
    assert report.her2_status == {"POS": 3, "NEG": 0, "UNKNOWN": 0}
    assert report.hr_status == {"POS": 1, "NEG": 1, "UNKNOWN": 1}
    assert report.treatments_before_met_dx == 1
    assert report.tables["patients"].missing["ecog"] == 1
    assert report.tables["patients"].date_ranges["met_dx_date"] == ("2018-01", "2020-02")
    text = "\n".join(report.lines())
    assert "HER2 status: POS 3" in text and "neo/adjuvant" in text


# ---------------------------------------------------------------------------
# fatal: the extract cannot be used


def test_missing_file(tmp_path: Path) -> None:
    paths = write(tmp_path, base())
    paths["patients"].unlink()
    err = fatal(tmp_path, base(), paths=paths)
    assert "patients.csv" in err.where
    assert "file not found" in err.problem and "file_exists" in err.problem
    assert "[data.registry]" in err.fix


def test_required_table_not_declared(tmp_path: Path) -> None:
    paths = write(tmp_path, base())
    del paths["treatments"]
    err = fatal(tmp_path, base(), paths=paths)
    assert "'treatments' is not declared" in err.problem
    assert 'treatments = "treatments.csv"' in err.fix


def test_unsupported_file_type(tmp_path: Path) -> None:
    paths = write(tmp_path, base())
    paths["patients"] = paths["patients"].rename(tmp_path / "patients.xlsx")
    err = fatal(tmp_path, base(), paths=paths)
    assert "patients.xlsx" in err.where and ".parquet" in err.fix


def test_missing_required_column(tmp_path: Path) -> None:
    tables = base()
    for row in tables["patients"]:
        del row["met_dx_date"]
    err = fatal(tmp_path, tables)
    assert "patients.csv" in err.where
    assert "met_dx_date" in err.problem and "rule required_column" in err.problem
    assert "add them with exactly these names" in err.fix


def test_missing_column_hints_at_case_and_separator(tmp_path: Path) -> None:
    tables = base()
    for row in tables["progressions"]:
        row["Progression_Date"] = row.pop("progression_date")
    err = fatal(tmp_path, tables)
    assert "case-sensitive" in err.fix and "'Progression_Date'" in err.fix
    paths = write(tmp_path, base())
    paths["treatments"].write_text("patient_id;drug;start_date\np2;x;2019-01-01\n")
    err = fatal(tmp_path, base(), paths=paths)
    assert "separator" in err.fix


def test_file_without_header_row_does_not_leak_its_first_row(tmp_path: Path) -> None:
    paths = write(tmp_path, base())
    text = paths["patients"].read_text().splitlines()
    paths["patients"].write_text("\n".join(text[1:]) + "\n")
    err = fatal(tmp_path, base(), paths=paths)
    assert "rule required_column" in err.problem and "header row" in err.fix
    assert "1961" not in str(err) and "bone;liver" not in str(err)


def test_duplicate_patient_ids(tmp_path: Path) -> None:
    tables = base()
    tables["patients"][2]["patient_id"] = SENTINEL
    err = fatal(tmp_path, tables)
    assert "patients.csv" in err.where and "data row 3" in err.where
    assert "'patient_id'" in err.where
    assert "rule unique_patient_id" in err.problem and "data row 1" in err.problem
    assert "exactly one row" in err.fix


def test_unparseable_required_date(tmp_path: Path) -> None:
    err = fatal(tmp_path, edit(base(), "patients", 2, "met_dx_date", "09/01/2018"))
    assert "patients.csv" in err.where and "data row 2" in err.where
    assert "'met_dx_date'" in err.where and "rule date_format" in err.problem
    assert "09/01/2018" not in str(err)
    assert "ISO YYYY-MM-DD" in err.fix


def test_impossible_required_date(tmp_path: Path) -> None:
    err = fatal(tmp_path, edit(base(), "treatments", 5, "start_date", "2023-02-30"))
    assert "treatments.csv" in err.where and "data row 5" in err.where
    assert "'start_date'" in err.where and "rule valid_date" in err.problem
    assert "2023-02-30" not in str(err)
    assert "day exists in that month" in err.fix


def test_required_date_of_optional_table(tmp_path: Path) -> None:
    err = fatal(tmp_path, edit(base(), "care_events", 2, "event_date", "2021-3-19x"))
    assert "care_events.csv" in err.where and "data row 2" in err.where
    assert "'event_date'" in err.where


def test_no_usable_patient(tmp_path: Path) -> None:
    tables = base()
    for row in tables["patients"]:
        row["sex"] = "female"
    err = fatal(tmp_path, tables)
    assert "no patient row is usable" in err.problem
    assert "bad_enum" in err.problem and "'sex'" in err.problem


def test_unreadable_csv(tmp_path: Path) -> None:
    paths = write(tmp_path, base())
    paths["progressions"].write_bytes(b"patient_id,progression_date\n\xff\xfe,2020-01-01\n")
    err = fatal(tmp_path, base(), paths=paths)
    assert "UTF-8" in err.problem and "progressions.csv" in err.where


# ---------------------------------------------------------------------------
# row level: excluded, counted, never silent

ROW_RULES: list[tuple[str, Callable[[Tables], Tables], str, str, int]] = [
    # (name, change, table, "rule (column)", first data row)
    ("bad enum", lambda t: edit(t, "patients", 2, "her2_status", "3+"), "patients",
     "bad_enum (her2_status)", 2),
    ("bad boolean", lambda t: edit(t, "patients", 3, "de_novo", "yes"), "patients",
     "bad_enum (de_novo)", 3),
    ("bad met site", lambda t: edit(t, "patients", 1, "met_sites", "bone;nodes"), "patients",
     "bad_enum (met_sites)", 1),
    ("bad stop reason", lambda t: edit(t, "treatments", 3, "stop_reason", "PD"), "treatments",
     "bad_enum (stop_reason)", 3),
    ("bad care event", lambda t: edit(t, "care_events", 1, "event", "icu"), "care_events",
     "bad_enum (event)", 1),
    ("missing required value", lambda t: edit(t, "patients", 2, "sex", " "), "patients",
     "missing_value (sex)", 2),
    ("missing drug", lambda t: edit(t, "treatments", 4, "drug", ""), "treatments",
     "missing_value (drug)", 4),
    ("bad optional date", lambda t: edit(t, "patients", 2, "death_date", "2022-13-01"),
     "patients", "bad_date (death_date)", 2),
    ("bad integer", lambda t: edit(t, "treatments", 5, "days_supply", "two weeks"),
     "treatments", "bad_integer (days_supply)", 5),
    ("days supply below 1", lambda t: edit(t, "treatments", 5, "days_supply", "0"),
     "treatments", "out_of_range (days_supply)", 5),
    ("ecog out of range", lambda t: edit(t, "patients", 3, "ecog", "5"), "patients",
     "out_of_range (ecog)", 3),
    ("birth year before 1900", lambda t: edit(t, "patients", 2, "birth_year", "1899"),
     "patients", "birth_year_out_of_range (birth_year)", 2),
    ("birth year after met_dx", lambda t: edit(t, "patients", 3, "birth_year", "2021"),
     "patients", "birth_year_out_of_range (birth_year)", 3),
    ("initial dx after met dx", lambda t: edit(t, "patients", 1, "initial_dx_date", "2019-05-07"),
     "patients", "initial_dx_after_met_dx (initial_dx_date)", 1),
    ("death before met dx", lambda t: edit(t, "patients", 1, "death_date", "2019-05-05"),
     "patients", "death_before_met_dx (death_date)", 1),
    ("last contact before met dx",
     lambda t: edit(t, "patients", 2, "last_contact_date", "2017-12-31"),
     "patients", "last_contact_before_met_dx (last_contact_date)", 2),
    ("last contact after death",
     lambda t: edit(t, "patients", 1, "last_contact_date", "2021-07-09"),
     "patients", "last_contact_after_death (last_contact_date)", 1),
    ("end before start", lambda t: edit(t, "treatments", 6, "end_date", "2018-01-31"),
     "treatments", "end_before_start (end_date)", 6),
    ("treatment after death", lambda t: edit(t, "treatments", 4, "start_date", "2021-07-09"),
     "treatments", "after_death (start_date)", 4),
    ("treatment after last contact",
     lambda t: edit(t, "treatments", 7, "start_date", "2021-03-20"),
     "treatments", "after_last_contact (start_date)", 7),
    ("progression after death",
     lambda t: edit(t, "progressions", 1, "progression_date", "2021-08-01"),
     "progressions", "after_death (progression_date)", 1),
    ("progression after last contact",
     lambda t: edit(t, "progressions", 2, "progression_date", "2022-11-15"),
     "progressions", "after_last_contact (progression_date)", 2),
    ("progression before met dx",
     lambda t: edit(t, "progressions", 2, "progression_date", "2017-01-01"),
     "progressions", "before_met_dx (progression_date)", 2),
    ("unknown patient in treatments", lambda t: edit(t, "treatments", 2, "patient_id", "zz"),
     "treatments", "unknown_patient (patient_id)", 2),
    ("unknown patient in progressions",
     lambda t: edit(t, "progressions", 2, "patient_id", "zz"),
     "progressions", "unknown_patient (patient_id)", 2),
    ("unknown patient in care events",
     lambda t: edit(t, "care_events", 2, "patient_id", "zz"),
     "care_events", "unknown_patient (patient_id)", 2),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "table", "reason", "row"),
    [pytest.param(*case[1:], id=case[0]) for case in ROW_RULES],
)
def test_row_rule_excludes_and_counts(
    tmp_path: Path, change: Callable[[Tables], Tables], table: str, reason: str, row: int
) -> None:
    reg = load(tmp_path, change(base()))
    report = reg.report.tables[table]
    assert report.excluded == {reason: 1}
    assert report.exclusions[0].first_row == row
    assert report.rows_kept == report.rows_read - 1
    assert row not in getattr(reg, table).index
    for name, other in reg.report.tables.items():
        if name != table and not (table == "patients" and name != "patients"):
            assert other.rows_excluded == 0
    rule, column = reason.split(" (")
    lines = "\n".join(reg.report.lines())
    assert f"rule {rule}, column {column[:-1]} (first at data row {row})" in lines


def test_rows_of_an_excluded_patient_are_counted_as_such(tmp_path: Path) -> None:
    reg = load(tmp_path, edit(base(), "patients", 1, "death_date", "2019-05-05"))
    assert reg.report.tables["treatments"].excluded == {"patient_excluded (patient_id)": 4}
    assert reg.report.tables["progressions"].excluded == {"patient_excluded (patient_id)": 1}
    assert reg.report.tables["care_events"].excluded == {"patient_excluded (patient_id)": 1}
    assert SENTINEL not in set(reg.treatments["patient_id"])


def test_each_excluded_row_counts_once_under_its_first_rule(tmp_path: Path) -> None:
    tables = edit(base(), "treatments", 4, "start_date", "2021-07-09")
    tables = edit(tables, "treatments", 4, "end_date", "2021-07-01")  # also ends before start
    tables = edit(tables, "treatments", 2, "patient_id", "zz")
    reg = load(tmp_path, tables)
    t = reg.report.tables["treatments"]
    assert t.excluded == {"end_before_start (end_date)": 1, "unknown_patient (patient_id)": 1}
    assert t.rows_read == t.rows_kept + sum(t.excluded.values())


# ---------------------------------------------------------------------------
# formats and tolerances


def test_bom_whitespace_and_case_insensitive_enums(tmp_path: Path) -> None:
    tables = base()
    tables["patients"][0].update(sex=" f ", her2_status="pos", er_status=" Pos", de_novo="FALSE")
    tables["patients"][1].update(brain_mets="True ", met_sites=" Brain ; lymph")
    tables["care_events"][0]["event"] = " Palliative_Care"
    tables["treatments"][2]["stop_reason"] = "Progression"
    paths = write(tmp_path, tables)
    paths["patients"].write_bytes(b"\xef\xbb\xbf" + paths["patients"].read_bytes())
    reg = load_registry(paths)
    assert reg.report.total_excluded == 0
    p = reg.patients
    assert list(p["sex"]) == ["F", "F", "M"] and p["her2_status"].iloc[0] == "POS"
    assert p["de_novo"].tolist() == [False, True, False]
    assert p["met_sites"].iloc[1] == "brain;lymph"
    assert reg.care_events["event"].iloc[0] == "palliative_care"
    assert reg.treatments["stop_reason"].iloc[2] == "progression"


def test_parquet_with_typed_columns_equals_csv(tmp_path: Path) -> None:
    from_csv = load(tmp_path / "csv", base())
    paths = write(tmp_path / "pq", base(), "parquet")
    patients = pd.read_parquet(paths["patients"])
    patients["birth_year"] = patients["birth_year"].astype("int64")
    patients["ecog"] = pd.to_numeric(patients["ecog"]).astype("Int64")
    patients["de_novo"] = patients["de_novo"] == "true"
    patients["met_dx_date"] = pd.to_datetime(patients["met_dx_date"]).dt.date  # Parquet date32
    patients["death_date"] = pd.to_datetime(patients["death_date"])  # Parquet timestamp
    patients.to_parquet(paths["patients"], index=False)
    from_parquet = load_registry(paths)
    assert from_parquet.report.total_excluded == 0
    for name in ("patients", "treatments", "progressions", "care_events"):
        pd.testing.assert_frame_equal(
            getattr(from_parquet, name), getattr(from_csv, name), check_dtype=True
        )


def test_empty_and_undeclared_optional_tables(tmp_path: Path) -> None:
    tables = base()
    tables["progressions"] = []
    paths = write(tmp_path, tables)
    paths["progressions"].write_text("patient_id,progression_date\n")  # header only
    paths["care_events"].write_text("")  # a zero-byte export
    reg = load_registry(paths)
    assert reg.progressions.empty and reg.care_events.empty
    assert list(reg.care_events.columns) == ["patient_id", "event", "event_date"]
    assert reg.report.tables["progressions"].absent_columns == ("evidence",)
    del paths["care_events"]
    assert load_registry(paths).care_events.empty


def test_zero_byte_required_table_is_an_error(tmp_path: Path) -> None:
    paths = write(tmp_path, base())
    paths["treatments"].write_text("")
    err = fatal(tmp_path, base(), paths=paths)
    assert "header" in err.problem and "treatments.csv" in err.where


def test_extra_and_absent_columns_are_reported(tmp_path: Path) -> None:
    tables = base()
    for row in tables["treatments"]:
        row["dose_mg"] = "440"
        del row["atc"]
    reg = load(tmp_path, tables)
    t = reg.report.tables["treatments"]
    assert t.extra_columns == ("dose_mg",) and t.absent_columns == ("atc",)
    assert "dose_mg" not in reg.treatments.columns and reg.treatments["atc"].isna().all()
    text = "\n".join(reg.report.lines())
    assert "extra columns ignored: dose_mg" in text
    assert "optional columns absent: atc" in text


def test_dates_with_a_midnight_time_part_are_accepted(tmp_path: Path) -> None:
    tables = edit(base(), "progressions", 1, "progression_date", "2020-07-27 00:00:00")
    reg = load(tmp_path, tables)
    assert reg.progressions["progression_date"].iloc[0] == pd.Timestamp("2020-07-27")
