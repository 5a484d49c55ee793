"""Endpoints and end states on hand-built patients, every value computed by hand."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest

from her2fed.endpoints import END_STATES, ENDPOINTS_LINE, PATIENT_COLUMNS, derive_endpoints
from her2fed.errors import DataError
from her2fed.lot import RuleSet, derive_lines

D0 = pd.Timestamp("2020-01-01")


def day(n: int | None) -> Any:
    return pd.NaT if n is None else D0 + pd.Timedelta(days=n)


def patients_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    base = {
        "birth_year": 1960,
        "met_dx": 0,
        "de_novo": False,
        "er_status": "POS",
        "pr_status": "NEG",
        "brain_mets": False,
        "death": None,
        "palliative": None,
        "transfer": None,
    }
    full = [{**base, **r} for r in rows]
    return pd.DataFrame(
        {
            "patient_id": [r["id"] for r in full],
            "birth_year": [r["birth_year"] for r in full],
            "met_dx_date": pd.to_datetime([day(r["met_dx"]) for r in full]),
            "de_novo": [r["de_novo"] for r in full],
            "er_status": [r["er_status"] for r in full],
            "pr_status": [r["pr_status"] for r in full],
            "brain_mets": [r["brain_mets"] for r in full],
            "last_contact_date": pd.to_datetime([day(r["contact"]) for r in full]),
            "death_date": pd.to_datetime([day(r["death"]) for r in full]),
            "palliative_care_date": pd.to_datetime([day(r["palliative"]) for r in full]),
            "transfer_out_date": pd.to_datetime([day(r["transfer"]) for r in full]),
        }
    )


def lines_frame(rows: list[tuple[str, int, int, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": [r[0] for r in rows],
            "line": [r[1] for r in rows],
            "start": pd.to_datetime([day(r[2]) for r in rows]),
            "end": pd.to_datetime([day(r[3]) for r in rows]),
            "regimen": [r[4] for r in rows],
            "anti_her2": [r[4] != "chemo alone" for r in rows],
        }
    )


def progressions_frame(rows: list[tuple[str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": pd.Series([r[0] for r in rows], dtype=object),
            "progression_date": pd.to_datetime([day(r[1]) for r in rows]),
        }
    )


def row(frame: pd.DataFrame, pid: str, line: int) -> Mapping[Any, Any]:
    hit = frame[(frame.patient_id == pid) & (frame.line == line)]
    assert len(hit) == 1
    return hit.iloc[0].to_dict()


def ep(r: Mapping[Any, Any], name: str) -> tuple[int, int]:
    return int(r[f"{name}_time"]), int(r[f"{name}_event"])


# A: two lines, progressions on the line-1 start day (ignored), in line 1 and in line 2; dies.
# B: progression on the day line 2 starts (counts for line 1); line 2 still running.
# C: no progression before the next line; D: off treatment in follow-up.
PATIENTS = [
    {"id": "A", "contact": 480, "death": 500},
    {"id": "B", "contact": 400},
    {"id": "C", "contact": 900},
    {"id": "D", "contact": 900},
]
LINES = [
    ("A", 1, 0, 200, "THP"),
    ("A", 2, 250, 400, "T-DXd"),
    ("B", 1, 0, 100, "THP"),
    ("B", 2, 200, 380, "T-DXd"),
    ("C", 1, 10, 100, "HP"),
    ("C", 2, 300, 500, "T-DM1"),
    ("D", 1, 0, 300, "THP"),
]
PROGRESSIONS = [("A", 0), ("A", 240), ("A", 300), ("B", 200), ("C", 800)]


@pytest.fixture(scope="module")
def tables() -> Any:
    return derive_endpoints(
        patients_frame(PATIENTS), lines_frame(LINES), progressions_frame(PROGRESSIONS)
    )


def test_os_from_metastatic_diagnosis(tables: Any) -> None:
    p = tables.patients.set_index("patient_id")
    assert p.loc["A", "os_from_met_dx_time"] == 500 and p.loc["A", "os_from_met_dx_event"] == 1
    assert p.loc["B", "os_from_met_dx_time"] == 400 and p.loc["B", "os_from_met_dx_event"] == 0
    assert p.n_lines.tolist() == [2, 2, 2, 1]


def test_patient_a_every_endpoint(tables: Any) -> None:
    l1, l2 = row(tables.lines, "A", 1), row(tables.lines, "A", 2)
    assert ep(l1, "os_from_line_start") == (500, 1)
    assert ep(l1, "pfs_line") == (240, 1)  # progression on day 0 belongs to an earlier line
    assert ep(l1, "ttnt_line") == (250, 1)
    assert ep(l1, "tot_line") == (200, 1)
    assert ep(l1, "next_line_vs_death") == (50, 1)
    assert l1["end_state"] == "next_line"
    assert ep(l2, "os_from_line_start") == (250, 1)
    assert ep(l2, "pfs_line") == (50, 1)
    assert ep(l2, "ttnt_line") == (250, 1)  # death is the event
    assert ep(l2, "tot_line") == (150, 1)
    assert ep(l2, "next_line_vs_death") == (100, 2)
    assert l2["end_state"] == "death"
    assert (l2["regimen"], l2["anti_her2"]) == ("T-DXd", True)


def test_progression_on_next_line_start_counts_for_the_line(tables: Any) -> None:
    l1, l2 = row(tables.lines, "B", 1), row(tables.lines, "B", 2)
    assert ep(l1, "pfs_line") == (200, 1)
    assert ep(l2, "pfs_line") == (200, 0)  # censored at last contact (day 400)
    assert ep(l2, "ttnt_line") == (200, 0)
    assert ep(l2, "os_from_line_start") == (200, 0)
    assert l2["end_state"] == "on_treatment" and l2["running"]
    assert ep(l2, "tot_line") == (200, 0)  # censored at last contact
    assert ep(l2, "next_line_vs_death") == (20, 0)


def test_pfs_censored_at_next_line_without_progression(tables: Any) -> None:
    l1, l2 = row(tables.lines, "C", 1), row(tables.lines, "C", 2)
    assert ep(l1, "pfs_line") == (290, 0)
    assert ep(l2, "pfs_line") == (500, 1)  # progression on day 800
    assert l2["end_state"] == "off_treatment_follow_up"
    assert ep(l2, "tot_line") == (200, 1)
    assert ep(l2, "next_line_vs_death") == (400, 0)


def test_off_treatment_in_follow_up(tables: Any) -> None:
    l1 = row(tables.lines, "D", 1)
    assert l1["end_state"] == "off_treatment_follow_up" and not l1["running"]
    assert ep(l1, "pfs_line") == (900, 0)
    assert ep(l1, "ttnt_line") == (900, 0)


def test_columns_and_types(tables: Any) -> None:
    cols = set(tables.lines.columns)
    for name in ENDPOINTS_LINE:
        assert {f"{name}_time", f"{name}_event"} <= cols
        assert tables.lines[f"{name}_time"].dtype == np.int64
        assert (tables.lines[f"{name}_time"] >= 0).all()
    assert set(PATIENT_COLUMNS) <= cols
    assert set(PATIENT_COLUMNS) <= set(tables.patients.columns)
    assert set(tables.lines.end_state) <= set(END_STATES)
    assert tables.lines.next_line_vs_death_event.isin([0, 1, 2]).all()


def _one(
    patient: dict[str, Any],
    lines: list[tuple[str, int, int, int, str]],
    rules: RuleSet | None = None,
) -> pd.DataFrame:
    return derive_endpoints(
        patients_frame([patient]), lines_frame(lines), progressions_frame([]), rules
    ).lines


@pytest.mark.parametrize(
    "patient,state",
    [
        ({"contact": 300}, "on_treatment"),  # last exposure day 200, 100 days before contact
        ({"contact": 321}, "off_treatment_follow_up"),  # 121 days
        ({"contact": 250, "death": 260}, "death"),
        ({"contact": 250, "palliative": 220}, "palliative"),
        ({"contact": 250, "palliative": 220, "death": 260}, "palliative"),  # precedes death
        ({"contact": 250, "transfer": 240}, "lost_to_follow_up"),
        ({"contact": 250, "transfer": 240, "death": 400}, "death"),  # death is known
        ({"contact": 250, "transfer": 50}, "other"),  # left follow-up before the line began
        ({"contact": 250, "palliative": 50}, "other"),
        ({"contact": 250, "palliative": 50, "death": 260}, "death"),
    ],
)
def test_end_states(patient: dict[str, Any], state: str) -> None:
    out = _one({"id": "p", **patient}, [("p", 1, 100, 200, "HP")])
    assert out.end_state.tolist() == [state]


def test_end_state_on_treatment_threshold_is_the_gap_rule() -> None:
    out = _one({"id": "p", "contact": 321}, [("p", 1, 100, 200, "HP")], RuleSet(gap_days=121))
    assert out.end_state.tolist() == ["on_treatment"]


def test_transfer_while_on_treatment_censors_time_on_treatment() -> None:
    out = _one({"id": "p", "contact": 250, "transfer": 240}, [("p", 1, 100, 200, "HP")])
    assert out.end_state.tolist() == ["lost_to_follow_up"]
    assert ep(out.iloc[0].to_dict(), "tot_line") == (150, 0)


def test_palliative_care_ends_the_line() -> None:
    out = _one({"id": "p", "contact": 250, "palliative": 220}, [("p", 1, 100, 200, "HP")])
    assert ep(out.iloc[0].to_dict(), "tot_line") == (100, 1)


def test_exposure_past_death_is_cut_at_death() -> None:
    out = _one({"id": "p", "contact": 150, "death": 160}, [("p", 1, 100, 190, "HP")])
    r = out.iloc[0].to_dict()
    assert ep(r, "tot_line") == (60, 1)
    assert ep(r, "next_line_vs_death") == (0, 2)
    assert r["end_state"] == "death"


def test_care_events_table_is_folded_in() -> None:
    care = pd.DataFrame(
        {
            "patient_id": ["p", "p"],
            "event": ["hospice", "other"],
            "event_date": pd.to_datetime([day(230), day(240)]),
        }
    )
    out = derive_endpoints(
        patients_frame([{"id": "p", "contact": 250}]),
        lines_frame([("p", 1, 100, 200, "HP")]),
        progressions_frame([]),
        care_events=care,
    ).lines
    assert out.end_state.tolist() == ["palliative"]


def test_patient_covariates() -> None:
    rows = [
        {"id": "a", "birth_year": 1971, "er_status": "POS", "pr_status": "NEG", "contact": 1},
        {"id": "b", "birth_year": 1970, "er_status": "NEG", "pr_status": "NEG", "contact": 1},
        {"id": "c", "birth_year": 1951, "er_status": "NEG", "pr_status": "UNKNOWN", "contact": 1},
        {"id": "d", "birth_year": 1950, "er_status": None, "pr_status": "pos", "contact": 1},
        {"id": "e", "birth_year": 1930, "de_novo": "true", "brain_mets": "false", "contact": 1},
        {"id": "f", "birth_year": 1930, "de_novo": None, "contact": 1},
    ]
    pats = patients_frame(rows)
    pats["ecog"] = [0, 1, None, 2, 3, 4]
    t = derive_endpoints(pats, lines_frame([]), progressions_frame([])).patients
    assert t.age_at_met_dx.tolist() == [49, 50, 69, 70, 90, 90]
    assert t.age_group.tolist() == ["<50", "50-69", "50-69", ">=70", ">=70", ">=70"]
    assert t.hr_status.tolist() == ["POS", "NEG", "UNKNOWN", "POS", "POS", "POS"]
    assert t.de_novo.tolist() == [False, False, False, False, True, None]
    assert t.brain_mets.tolist()[4] is False
    assert t.met_dx_year.tolist() == [2020] * 6
    assert np.isnan(t.ecog[2]) and t.ecog[3] == 2.0
    assert (t.n_lines == 0).all()


def test_line_start_after_last_contact_raises_naming_the_row_only() -> None:
    pats = patients_frame([{"id": "secret-1", "contact": 100}, {"id": "secret-2", "contact": 50}])
    lines = lines_frame([("secret-1", 1, 0, 20, "HP"), ("secret-2", 1, 60, 70, "HP")])
    with pytest.raises(DataError, match="data row 2") as err:
        derive_endpoints(pats, lines, progressions_frame([]))
    assert "secret" not in str(err.value)
    assert "negative" in str(err.value)


def test_impossible_dates_raise() -> None:
    pats = patients_frame([{"id": "x", "contact": 100, "death": 90}])
    with pytest.raises(DataError, match="after death_date"):
        derive_endpoints(pats, lines_frame([]), progressions_frame([]))
    pats = patients_frame([{"id": "x", "met_dx": 10, "contact": 5}])
    with pytest.raises(DataError, match=r"data row 1.*negative"):
        derive_endpoints(pats, lines_frame([]), progressions_frame([]))
    pats = patients_frame([{"id": "x", "contact": 100}])
    with pytest.raises(DataError, match=r"progression_date.*after death or last contact"):
        derive_endpoints(pats, lines_frame([]), progressions_frame([("x", 150)]))
    with pytest.raises(DataError, match="not numbered"):
        derive_endpoints(
            pats,
            lines_frame([("x", 1, 0, 1, "HP"), ("x", 3, 50, 60, "HP")]),
            progressions_frame([]),
        )


def test_from_administrations_to_endpoints() -> None:
    pats = patients_frame([{"id": "p", "contact": 700, "death": 720}])
    treatments = pd.DataFrame(
        {
            "patient_id": ["p"] * 5,
            "drug": ["Phesgo", "Taxotere", "Phesgo", "Enhertu", "Enhertu"],
            "start_date": pd.to_datetime([day(0), day(0), day(21), day(300), day(321)]),
        }
    )
    res = derive_lines(pats, treatments)
    out = derive_endpoints(pats, res, progressions_frame([("p", 290)])).lines
    assert out.regimen.tolist() == ["THP", "T-DXd"]
    assert out.end_state.tolist() == ["next_line", "death"]
    assert out.pfs_line_time.tolist() == [290, 420]
    assert out.tot_line_time.tolist() == [21, 21]
