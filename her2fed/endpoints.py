"""Per-patient and per-line endpoints, the derived data every registry analysis reads.

Endpoints are derived at the site from the registry tables and the lines of
``lot.derive_lines``; only summaries of them ever leave. They follow
``docs/registry_schema.md`` ("Derived data"): times in whole days, columns
``<endpoint>_time`` and ``<endpoint>_event``; ``next_line_vs_death`` codes
0 = censored, 1 = next line, 2 = death without a next line.

Choices where the schema is silent, and why:

- Follow-up ends at death, else at last contact. A line whose exposure runs
  past the end of follow-up (a 90-day dispensing just before death) is cut at
  that day: the exposure cannot outlast the patient or the observation.
- A progression "after the start of line k" is strictly after the start day:
  the progression documented on the day line k starts is the one that ended
  line k-1. A progression on the day line k+1 starts counts for line k.
- ``pfs_line``: event at the first progression after the start (if on or
  before the next line), else censored at the next line start, else death is
  the event, else censored at last contact.
- ``tot_line`` runs from line start to line end (0 for a one-day line). It is
  censored at last contact when the line may still be running: alive, no next
  line, no end-of-life palliative care, last exposure within ``gap_days`` of
  last contact. Such a line is *running*; this includes lines of patients who
  transferred out with recent exposure (their end state is lost to follow-up,
  but when their line ended is unknown).
- ``next_line_vs_death`` runs from the line end (so it is never negative and
  the next line is at least one day later).

End state after each line, first match wins (``END_STATES`` order is the
coding order, not the precedence):

1. ``next_line``: a next line exists.
2. ``palliative``: end-of-life palliative care started on or after the line
   start. It precedes death because it is the reason there was no further
   line (EU-5 reports them apart); most such patients later die.
3. ``death``: the patient died.
4. ``lost_to_follow_up``: transfer out on or after the line start.
5. ``other``: palliative care or transfer out dated *before* the line start, no
   death: the record contradicts itself, and no state can be asserted.
6. ``on_treatment``: last exposure within ``gap_days`` of last contact.
7. ``off_treatment_follow_up``: alive, followed more than ``gap_days`` after
   the last exposure, no next line.

Errors raised on impossible inputs name the table and data row (1-based) of
the offending row, never a patient value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from her2fed.errors import DataError
from her2fed.lot import (
    BoolArray,
    IntArray,
    LinesResult,
    RuleSet,
    _days,
    _fail_rows,
    _require,
    patient_index,
    patient_positions,
)

END_STATES: tuple[str, ...] = (
    "next_line",
    "death",
    "palliative",
    "lost_to_follow_up",
    "on_treatment",
    "off_treatment_follow_up",
    "other",
)
AGE_GROUPS: tuple[str, ...] = ("<50", "50-69", ">=70")
HR_STATUSES: tuple[str, ...] = ("POS", "NEG", "UNKNOWN")
NEXT_LINE, DEATH = 1, 2

PATIENT_COLUMNS: tuple[str, ...] = (
    "hr_status",
    "de_novo",
    "brain_mets",
    "age_at_met_dx",
    "age_group",
    "ecog",
    "met_dx_year",
)
ENDPOINTS_PATIENT: tuple[str, ...] = ("os_from_met_dx",)
ENDPOINTS_LINE: tuple[str, ...] = (
    "os_from_line_start",
    "pfs_line",
    "ttnt_line",
    "tot_line",
    "next_line_vs_death",
)


@dataclass(frozen=True)
class EndpointTables:
    """Derived rows of one site (never released).

    ``patients``: ``patient_id``, ``os_from_met_dx_time``/``_event``,
    ``n_lines`` and the ``PATIENT_COLUMNS``. ``lines``: ``patient_id``,
    ``line``, ``regimen``, ``anti_her2``, ``<endpoint>_time``/``_event`` for
    each of ``ENDPOINTS_LINE``, ``end_state`` (one of ``END_STATES``),
    ``running`` (the line may still be running at last contact) and the
    ``PATIENT_COLUMNS``. Booleans that may be missing (``de_novo``,
    ``brain_mets``) are objects holding True/False/None, and ``ecog`` is a
    float with NaN, so that missing values stay missing for level matching.
    """

    patients: pd.DataFrame
    lines: pd.DataFrame
    rules: RuleSet


def _bool_column(col: pd.Series[Any]) -> pd.Series[Any]:
    def conv(v: Any) -> bool | None:
        if isinstance(v, bool | np.bool_):
            return bool(v)
        if isinstance(v, str):
            text = v.strip().lower()
            return True if text == "true" else False if text == "false" else None
        if isinstance(v, int | np.integer) and v in (0, 1):
            return bool(v)
        return None

    return pd.Series([conv(v) for v in col.tolist()], dtype=object)


def _hr_status(er: pd.Series[Any], pr: pd.Series[Any]) -> pd.Series[Any]:
    e = er.astype("string").str.strip().str.upper().fillna("")
    p = pr.astype("string").str.strip().str.upper().fillna("")
    pos = (e == "POS") | (p == "POS")
    neg = (e == "NEG") & (p == "NEG")
    out = np.where(pos.to_numpy(bool), "POS", np.where(neg.to_numpy(bool), "NEG", "UNKNOWN"))
    return pd.Series(out, dtype=object)


def _optional_days(df: pd.DataFrame, column: str, where: str) -> tuple[IntArray, BoolArray]:
    if column not in df.columns:
        return np.zeros(len(df), dtype=np.int64), np.ones(len(df), dtype=bool)
    return _days(df[column], where, column)


def _latest_care_events(
    care_events: pd.DataFrame | None, index: pd.Index[Any], kinds: tuple[str, ...]
) -> tuple[IntArray, BoolArray]:
    n = len(index)
    latest = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    if care_events is None or len(care_events) == 0:
        return np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool)
    _require(care_events, ["patient_id", "event", "event_date"], "care_events")
    pos = patient_positions(index, care_events["patient_id"], "care_events")
    day, missing = _days(care_events["event_date"], "care_events", "event_date")
    kind = care_events["event"].astype("string").str.strip().str.lower().fillna("")
    pick = kind.isin(list(kinds)).to_numpy(bool) & ~missing
    np.maximum.at(latest, pos[pick], day[pick])
    absent = latest == np.iinfo(np.int64).min
    return np.where(absent, 0, latest), absent


def _combine_latest(
    a: tuple[IntArray, BoolArray], b: tuple[IntArray, BoolArray]
) -> tuple[IntArray, BoolArray]:
    (da, ma), (db, mb) = a, b
    value = np.where(ma, db, np.where(mb, da, np.maximum(da, db)))
    return value.astype(np.int64), ma & mb


def _patient_frame(
    patients: pd.DataFrame, met: IntArray, end: IntArray, died: BoolArray
) -> pd.DataFrame:
    year = patients["met_dx_date"].dt.year.to_numpy(np.int64)
    birth = pd.to_numeric(patients["birth_year"], errors="coerce").to_numpy(np.float64)
    _fail_rows(
        np.isnan(birth), "patients", "birth_year", "are missing or not numbers", "give the year"
    )
    age = year - birth.astype(np.int64)
    _fail_rows(age < 0, "patients", "birth_year", "are after met_dx_date", "check the year")
    age_group = np.where(age < 50, AGE_GROUPS[0], np.where(age < 70, AGE_GROUPS[1], AGE_GROUPS[2]))
    ecog = (
        pd.to_numeric(patients["ecog"], errors="coerce").to_numpy(np.float64)
        if "ecog" in patients.columns
        else np.full(len(patients), np.nan)
    )
    return pd.DataFrame(
        {
            "patient_id": patients["patient_id"].to_numpy(),
            "os_from_met_dx_time": end - met,
            "os_from_met_dx_event": died.astype(np.int64),
            "hr_status": _hr_status(patients["er_status"], patients["pr_status"]).to_numpy(),
            "de_novo": _bool_column(patients["de_novo"]).to_numpy(),
            "brain_mets": _bool_column(patients["brain_mets"]).to_numpy(),
            "age_at_met_dx": age,
            "age_group": age_group.astype(object),
            "ecog": ecog,
            "met_dx_year": year,
        }
    )


def _check_nonnegative(times: dict[str, IntArray], patient_row: IntArray, what: str) -> None:
    for name, t in times.items():
        bad = t < 0
        if bad.any():
            first = int(patient_row[int(np.argmax(bad))]) + 1
            raise DataError(
                f"patients: data row {first}",
                f"{name} would be negative for {int(bad.sum())} {what}(s) (dates out of order)",
                "check met_dx_date, death_date, last_contact_date and the treatment and "
                "progression dates of that patient",
            )


def derive_endpoints(
    patients: pd.DataFrame,
    lines: LinesResult | pd.DataFrame,
    progressions: pd.DataFrame,
    rules: RuleSet | None = None,
    *,
    care_events: pd.DataFrame | None = None,
) -> EndpointTables:
    """Endpoints per patient and per patient x line.

    ``patients`` (registry schema, dates as datetime64): ``patient_id``,
    ``birth_year``, ``met_dx_date``, ``de_novo``, ``er_status``, ``pr_status``,
    ``brain_mets``, ``last_contact_date``; optional ``ecog``, ``death_date``,
    ``palliative_care_date``, ``transfer_out_date``. ``lines``: the result of
    ``derive_lines`` or its ``lines`` frame (``patient_id``, ``line``,
    ``start``, ``end``, ``regimen``, ``anti_her2``). ``progressions``:
    ``patient_id``, ``progression_date`` (may have no rows). ``care_events``
    (optional): ``palliative_care``/``hospice`` and ``transfer_out`` events;
    the latest of each kind joins the patients' own dates (latest wins).
    """
    rules = rules or RuleSet()
    line_df = lines.lines if isinstance(lines, LinesResult) else lines
    _require(
        patients,
        [
            "patient_id",
            "birth_year",
            "met_dx_date",
            "de_novo",
            "er_status",
            "pr_status",
            "brain_mets",
            "last_contact_date",
        ],
        "patients",
    )
    _require(line_df, ["patient_id", "line", "start", "end", "regimen", "anti_her2"], "lines")
    _require(progressions, ["patient_id", "progression_date"], "progressions")
    index = patient_index(patients)
    n_pat = len(index)
    met, m_miss = _days(patients["met_dx_date"], "patients", "met_dx_date")
    _fail_rows(m_miss, "patients", "met_dx_date", "are missing", "give every patient one")
    contact, c_miss = _days(patients["last_contact_date"], "patients", "last_contact_date")
    _fail_rows(c_miss, "patients", "last_contact_date", "are missing", "give every patient one")
    death, alive = _optional_days(patients, "death_date", "patients")
    died = ~alive
    _fail_rows(
        died & (contact > death),
        "patients",
        "last_contact_date",
        "are after death_date",
        "last contact must be on or before death",
    )
    f_end = np.where(died, death, contact)
    pal = _combine_latest(
        _optional_days(patients, "palliative_care_date", "patients"),
        _latest_care_events(care_events, index, ("palliative_care", "hospice")),
    )
    trans = _combine_latest(
        _optional_days(patients, "transfer_out_date", "patients"),
        _latest_care_events(care_events, index, ("transfer_out",)),
    )
    patient_row = np.arange(n_pat, dtype=np.int64)
    _check_nonnegative({"os_from_met_dx": f_end - met}, patient_row, "patient")
    per_patient = _patient_frame(patients, met, f_end, died)

    # Lines in (patient, line) order, numbered 1, 2, ... per patient.
    lpos = patient_positions(index, line_df["patient_id"], "lines")
    lno = pd.to_numeric(line_df["line"], errors="coerce").to_numpy(np.float64)
    _fail_rows(~(lno >= 1), "lines", "line", "are not line numbers >= 1", "use derive_lines")
    order = np.lexsort((lno, lpos))
    p = lpos[order]
    k = lno[order].astype(np.int64)
    start, s_miss = _days(line_df["start"], "lines", "start")
    end, e_miss = _days(line_df["end"], "lines", "end")
    _fail_rows(s_miss | e_miss, "lines", "start/end", "are missing", "use derive_lines")
    s, e = start[order], end[order]
    first = np.ones(p.size, dtype=bool)
    first[1:] = p[1:] != p[:-1]
    expected = np.where(first, 1, np.append(0, k[:-1]) + 1)
    bad = k != expected
    if bad.any():
        raise DataError(
            f"patients: data row {int(p[int(np.argmax(bad))]) + 1}",
            "the lines of this patient are not numbered 1, 2, ... without gaps or repeats",
            "pass the lines of derive_lines unchanged",
        )
    has_next = np.zeros(p.size, dtype=bool)
    has_next[:-1] = ~first[1:]
    nxt = np.append(s[1:], 0)
    f = f_end[p]
    _check_nonnegative(
        {"line start": s - met[p], "os_from_line_start": f - s, "tot_line": e - s},
        p,
        "line",
    )
    e_eff = np.minimum(e, f)

    prog_first, has_prog = _first_progression_after(progressions, index, met, f_end, p, s)
    prog_counts = has_prog & (~has_next | (prog_first <= nxt))
    dead = died[p]
    c = contact[p]

    pfs_t = np.where(prog_counts, prog_first, np.where(has_next, nxt, f)) - s
    pfs_e = prog_counts | (~has_next & dead)
    ttnt_t = np.where(has_next, nxt, f) - s
    ttnt_e = has_next | dead
    pal_day, pal_absent = pal[0][p], pal[1][p]
    tr_day, tr_absent = trans[0][p], trans[1][p]
    pal_after = ~pal_absent & (pal_day >= s)
    recent = (c - e_eff) <= rules.gap_days
    running = ~has_next & ~dead & ~pal_after & recent
    tot_t = np.where(running, c, e_eff) - s
    nld_t = np.where(has_next, nxt, f) - e_eff
    nld_e = np.where(has_next, NEXT_LINE, np.where(dead, DEATH, 0))
    contradictory = (~pal_absent & (pal_day < s)) | (~tr_absent & (tr_day < s))
    state = _end_states(
        has_next, pal_after, dead, ~tr_absent & (tr_day >= s), contradictory, recent
    )
    times = {
        "os_from_line_start": f - s,
        "pfs_line": pfs_t,
        "ttnt_line": ttnt_t,
        "tot_line": tot_t,
        "next_line_vs_death": nld_t,
    }
    _check_nonnegative(times, p, "line")
    out: dict[str, Any] = {
        "patient_id": index.take(p).to_numpy(),
        "line": k,
        "regimen": line_df["regimen"].to_numpy(dtype=object)[order],
        "anti_her2": line_df["anti_her2"].to_numpy(dtype=bool)[order],
        "os_from_line_start_time": times["os_from_line_start"],
        "os_from_line_start_event": dead.astype(np.int64),
        "pfs_line_time": pfs_t,
        "pfs_line_event": pfs_e.astype(np.int64),
        "ttnt_line_time": ttnt_t,
        "ttnt_line_event": ttnt_e.astype(np.int64),
        "tot_line_time": tot_t,
        "tot_line_event": (~running).astype(np.int64),
        "next_line_vs_death_time": nld_t,
        "next_line_vs_death_event": nld_e.astype(np.int64),
        "end_state": state,
        "running": running,
    }
    for col in PATIENT_COLUMNS:
        out[col] = per_patient[col].to_numpy()[p]
    per_line = pd.DataFrame(out)
    per_patient["n_lines"] = np.bincount(p, minlength=n_pat).astype(np.int64)
    return EndpointTables(per_patient, per_line, rules)


def _end_states(
    has_next: BoolArray,
    pal_after: BoolArray,
    dead: BoolArray,
    transfer_after: BoolArray,
    contradictory: BoolArray,
    recent: BoolArray,
) -> Any:
    """End state by the precedence of the module docstring (first true condition wins)."""
    conditions = [has_next, pal_after, dead, transfer_after, contradictory, recent]
    choices = ["next_line", "palliative", "death", "lost_to_follow_up", "other", "on_treatment"]
    return np.select(conditions, choices, default="off_treatment_follow_up").astype(object)


def _first_progression_after(
    progressions: pd.DataFrame,
    index: pd.Index[Any],
    met: IntArray,
    f_end: IntArray,
    line_pat: IntArray,
    line_start: IntArray,
) -> tuple[IntArray, BoolArray]:
    """Day of the first progression strictly after each line start, and whether there is one."""
    if len(progressions) == 0:
        return np.zeros(line_pat.size, dtype=np.int64), np.zeros(line_pat.size, dtype=bool)
    ppos = patient_positions(index, progressions["patient_id"], "progressions")
    day, miss = _days(progressions["progression_date"], "progressions", "progression_date")
    _fail_rows(miss, "progressions", "progression_date", "are missing", "give the date")
    _fail_rows(
        day < met[ppos],
        "progressions",
        "progression_date",
        "are before met_dx_date",
        "progressions of metastatic disease are on or after the metastatic diagnosis",
    )
    _fail_rows(
        day > f_end[ppos],
        "progressions",
        "progression_date",
        "are after death or last contact",
        "a progression is a contact: last_contact_date must be on or after it",
    )
    offset = 10**6  # makes days positive so (patient, day) packs into one sortable key
    keys = np.sort(ppos * (2 * offset) + (day + offset))
    probe = line_pat * (2 * offset) + (line_start + offset)
    at = np.searchsorted(keys, probe, side="right")
    found = at < keys.size
    hit = np.where(found, keys[np.minimum(at, keys.size - 1)], -1)
    same = found & (hit // (2 * offset) == line_pat)
    return np.where(same, hit % (2 * offset) - offset, 0).astype(np.int64), same
