"""Lines of therapy: one hand-built history per rule, labels, agreement, errors, and the
vectorised derivation against a plain per-patient reference implementation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from her2fed import drugs
from her2fed.errors import DataError, SpecError
from her2fed.lot import REGIMENS, LinesResult, RuleSet, derive_lines, regimen_label

D0 = pd.Timestamp("2020-01-01")
Adm = tuple[str, int] | tuple[str, int, int]  # (drug, start day[, last exposure day])


def day(n: int) -> pd.Timestamp:
    return D0 + pd.Timedelta(days=n)


def frames(
    history: dict[str, Sequence[Adm]], met: dict[str, int] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = list(history)
    patients = pd.DataFrame(
        {
            "patient_id": ids,
            "met_dx_date": [day((met or {}).get(p, 0)) for p in ids],
        }
    )
    rows = [(p, *a) for p in ids for a in history[p]]
    treatments = pd.DataFrame(
        {
            "patient_id": [r[0] for r in rows],
            "drug": [r[1] for r in rows],
            "start_date": pd.to_datetime([day(r[2]) for r in rows]),
            "end_date": pd.Series(
                [day(r[3]) if len(r) > 3 else pd.NaT for r in rows], dtype="datetime64[ns]"
            ),
        }
    )
    return patients, treatments


def derive(
    history: Sequence[Adm], rules: RuleSet | None = None, met: int = 0
) -> tuple[list[tuple[int, int, int, str]], LinesResult]:
    """(line, start day, end day, regimen) of one patient's history."""
    patients, treatments = frames({"p": history}, {"p": met})
    mapped, _ = drugs.map_drugs(treatments["drug"])
    treatments["ingredient"] = mapped
    res = derive_lines(patients, treatments, rules)
    lines = res.lines
    starts = (lines.start - D0).dt.days.tolist()
    ends = (lines.end - D0).dt.days.tolist()
    out = [
        (int(k), int(s), int(e), str(r))
        for k, s, e, r in zip(lines.line, starts, ends, lines.regimen, strict=True)
    ]
    return out, res


def q3w(drug: str, first: int, n: int) -> list[Adm]:
    return [(drug, first + 21 * i) for i in range(n)]


# ------------------------------------------------------------------ window (28 days)


def test_drug_started_on_day_28_joins_the_regimen_day_29_starts_a_line() -> None:
    lines, res = derive([("trastuzumab", 0), ("pertuzumab", 0), ("docetaxel", 28)])
    assert lines == [(1, 0, 28, "THP")]
    assert res.lines.ingredients[0] == "docetaxel;pertuzumab;trastuzumab"
    lines, _ = derive([("trastuzumab", 0), ("pertuzumab", 0), ("docetaxel", 29)])
    assert lines == [(1, 0, 0, "HP"), (2, 29, 29, "chemo alone")]


def test_window_parameter_is_honoured() -> None:
    lines, _ = derive([("trastuzumab", 0), ("docetaxel", 35)], RuleSet(window_days=42))
    assert lines == [(1, 0, 35, "TH")]


# ------------------------------------------------------------------ new drug after the window


def test_new_drug_after_window_starts_a_new_line() -> None:
    hist = [
        *q3w("docetaxel", 0, 6),
        *q3w("Phesgo", 0, 10),
        *q3w("Enhertu", 250, 5),
        *q3w("Tukysa", 400, 3),
        *q3w("Herceptin", 400, 3),
        *q3w("Xeloda", 401, 3),
    ]
    lines, res = derive(hist)
    assert lines == [(1, 0, 189, "THP"), (2, 250, 334, "T-DXd"), (3, 400, 443, "TTC")]
    assert res.lines.anti_her2.tolist() == [True, True, True]
    assert list(res.lines.patient_id) == ["p", "p", "p"]


# ------------------------------------------------------------------ gap > 120 days


def test_gap_of_more_than_120_days_restarts_with_the_same_drugs() -> None:
    # one-day exposures: day 0 then day 120 = gap 120 (same line); day 121 = gap 121 (new line)
    lines, _ = derive([("Kadcyla", 0), ("Kadcyla", 120)])
    assert lines == [(1, 0, 120, "T-DM1")]
    lines, _ = derive([("Kadcyla", 0), ("Kadcyla", 121)])
    assert lines == [(1, 0, 0, "T-DM1"), (2, 121, 121, "T-DM1")]


def test_gap_is_measured_from_the_end_of_exposure() -> None:
    # 90 days of capecitabine dispensed on day 0: exposure ends day 89; restart day 200 = gap 111
    patients, treatments = frames({"p": [("Xeloda", 0), ("Xeloda", 200)]})
    treatments["days_supply"] = [90, 30]
    treatments = treatments.drop(columns="end_date")
    res = derive_lines(patients, treatments)
    assert res.lines.line.tolist() == [1]
    assert (res.lines.end[0] - D0).days == 229
    treatments["days_supply"] = [60, 30]  # exposure ends day 59: gap 141
    assert derive_lines(patients, treatments).lines.line.tolist() == [1, 2]


def test_gap_counts_exposure_of_every_earlier_drug() -> None:
    # trastuzumab ends day 100 (end_date), letrozole restarts on day 200: gap 100, same line
    hist: list[Adm] = [("trastuzumab", 0, 100), ("letrozole", 0), ("letrozole", 200)]
    lines, _ = derive(hist)
    assert lines == [(1, 0, 200, "H+ET")]


def test_gap_parameter_is_honoured() -> None:
    lines, _ = derive([("Kadcyla", 0), ("Kadcyla", 100)], RuleSet(gap_days=90))
    assert [x[0] for x in lines] == [1, 2]


# ------------------------------------------------------------------ drops and maintenance


def test_dropping_drugs_never_starts_a_line_hp_maintenance_stays() -> None:
    hist = [*q3w("Taxotere", 0, 6), *q3w("Herceptin", 0, 30), *q3w("Perjeta", 0, 30)]
    lines, res = derive(hist)
    assert lines == [(1, 0, 609, "THP")]
    assert res.lines.added[0] == ""


def test_endocrine_added_after_chemo_while_anti_her2_continues_is_maintenance() -> None:
    hist = [
        *q3w("docetaxel", 0, 6),  # last chemo day 105
        *q3w("Phesgo", 0, 20),  # anti-HER2 continues to day 399
        ("letrozole", 130, 400),  # added after chemo stopped
        ("letrozole", 500, 560),  # continues after HP stopped: still the same line
    ]
    lines, res = derive(hist)
    assert lines == [(1, 0, 560, "THP")]
    assert res.lines.added[0] == "letrozole"
    assert res.lines.ingredients[0] == "docetaxel;pertuzumab;trastuzumab"


def test_aromatase_inhibitor_switch_in_maintenance_is_a_substitution() -> None:
    hist = [*q3w("paclitaxel", 0, 4), *q3w("trastuzumab", 0, 20), ("letrozole", 100, 200)]
    hist.append(("anastrozole", 300, 400))
    lines, _ = derive(hist)
    assert lines == [(1, 0, 400, "TH")]


def test_endocrine_added_while_chemo_still_runs_starts_a_line() -> None:
    hist: list[Adm] = [("docetaxel", 0, 200), *q3w("trastuzumab", 0, 12), ("letrozole", 100)]
    lines, _ = derive(hist)
    assert [x[0] for x in lines] == [1, 2]
    assert lines[1][1] == 100


def test_endocrine_after_anti_her2_stopped_is_a_new_line() -> None:
    # last trastuzumab day 84, letrozole day 130: 46 days > continuing_days (42)
    hist = [*q3w("trastuzumab", 0, 5), *q3w("docetaxel", 0, 3), ("letrozole", 130)]
    lines, _ = derive(hist)
    assert lines == [(1, 0, 84, "TH"), (2, 130, 130, "ET alone")]
    # ... but within 42 days it is maintenance
    lines, _ = derive([*hist[:-1], ("letrozole", 126)])
    assert lines == [(1, 0, 126, "TH")]


def test_maintenance_only_for_endocrine_classes() -> None:
    hist = [*q3w("docetaxel", 0, 3), *q3w("trastuzumab", 0, 10), ("palbociclib", 100)]
    lines, _ = derive(hist)
    assert [x[0] for x in lines] == [1, 2]
    rules = RuleSet(maintenance_addable_classes=("aromatase_inhibitor", "cdk46i"))
    lines, _ = derive(hist, rules)
    assert [x[0] for x in lines] == [1]


# ------------------------------------------------------------------ substitutions


@pytest.mark.parametrize(
    "first,second,label",
    [
        ("paclitaxel", "docetaxel", "TH"),  # taxanes (with trastuzumab throughout)
        ("Taxol", "Abraxane", "TH"),
        ("Xeloda", "5-FU", "H+chemo"),  # capecitabine / 5-FU
        ("letrozole", "exemestane", "H+ET"),  # aromatase inhibitors
    ],
)
def test_within_class_substitution_keeps_the_line(first: str, second: str, label: str) -> None:
    hist = [*q3w("trastuzumab", 0, 10), *q3w(first, 0, 3), *q3w(second, 63, 3)]
    lines, res = derive(hist)
    assert lines == [(1, 0, 189, label)]
    assert res.n_used == len(hist)


def test_trastuzumab_formulations_and_biosimilars_are_one_ingredient() -> None:
    hist = [
        ("Herceptin", 0),
        ("Perjeta", 0),
        ("docetaxel", 0),
        ("Herceptin SC", 63),
        ("Kanjinti", 126),
        ("Ogivri", 189),
        ("Ontruzant", 252),
        ("Trazimera", 315),
        ("Herzuma", 378),
        ("Zercepac", 441),
    ]
    lines, _ = derive(hist)
    assert lines == [(1, 0, 441, "THP")]


def test_biosimilar_brands_give_the_regimen_label() -> None:
    lines, _ = derive([("Ogivri", 0), ("Perjeta", 0), ("Taxotere", 1)])
    assert lines == [(1, 0, 1, "THP")]


def test_substitution_classes_can_be_switched_off() -> None:
    hist = [*q3w("trastuzumab", 0, 10), *q3w("paclitaxel", 0, 3), *q3w("docetaxel", 63, 3)]
    lines, _ = derive(hist, RuleSet(substitution_classes=("trastuzumab",)))
    assert [x[0] for x in lines] == [1, 2]


def test_anti_her2_switch_is_not_a_substitution() -> None:
    lines, _ = derive([*q3w("trastuzumab", 0, 4), ("Kadcyla", 84)])
    assert lines == [(1, 0, 63, "OTHER"), (2, 84, 84, "T-DM1")]


# ------------------------------------------------------------------ supportive care, OFS


def test_supportive_care_and_ovarian_suppression_never_define_a_line() -> None:
    lines, res = derive([("Zometa", 0), ("ondansetron", 5), ("Zoladex", 10)])
    assert lines == []
    assert (res.n_non_defining, res.n_used, res.n_patients_with_lines) == (3, 0, 0)
    # added after the window they neither start a line nor appear in the regimen
    hist: list[Adm] = [("letrozole", 0, 300), ("Zoladex", 60), ("denosumab", 90), ("Lupron", 120)]
    lines, res = derive(hist)
    assert lines == [(1, 0, 300, "ET alone")]
    assert res.lines.ingredients[0] == "letrozole"
    assert res.row_line.tolist() == [1, 0, 0, 0]


def test_supportive_care_does_not_bridge_a_gap() -> None:
    hist = [("Kadcyla", 0), ("Zoladex", 60), ("Zoladex", 120), ("Kadcyla", 150)]
    lines, _ = derive(hist)
    assert [x[0] for x in lines] == [1, 2]


# ------------------------------------------------------------------ pre-metastatic exposure


def test_neoadjuvant_and_adjuvant_exposure_is_excluded_and_counted() -> None:
    hist: list[Adm] = [
        ("docetaxel", -400),
        ("Herceptin", -400, -40),  # adjuvant
        ("Herceptin", -10, 30),  # started before met dx: excluded although it runs past it
        ("Kadcyla", 5),
        ("Kadcyla", 26),
    ]
    lines, res = derive(hist)
    assert lines == [(1, 5, 26, "T-DM1")]
    assert res.n_pre_metastatic == 3
    assert res.row_line.tolist() == [0, 0, 0, 1, 1]


# ------------------------------------------------------------------ fixed-dose combination


def test_phesgo_counts_as_pertuzumab_and_trastuzumab() -> None:
    lines, res = derive([("Phesgo", 0), ("Phesgo", 21)])
    assert lines == [(1, 0, 21, "HP")]
    assert res.lines.ingredients[0] == "pertuzumab;trastuzumab"
    assert res.n_used == 2  # counted per administration row, not per ingredient
    lines, _ = derive([("Phesgo", 0), ("docetaxel", 0)])
    assert lines == [(1, 0, 0, "THP")]


def test_phesgo_after_trastuzumab_adds_pertuzumab_as_a_new_drug() -> None:
    lines, _ = derive([*q3w("trastuzumab", 0, 3), ("Phesgo", 63)])
    assert lines == [(1, 0, 42, "OTHER"), (2, 63, 63, "HP")]


# ------------------------------------------------------------------ day-level decisions


def test_all_administrations_of_a_breaking_day_belong_to_the_new_line() -> None:
    hist = [*q3w("Phesgo", 0, 8), ("capecitabine", 168), ("trastuzumab", 168)]
    lines, res = derive(hist)
    assert lines == [(1, 0, 147, "HP"), (2, 168, 168, "H+chemo")]
    assert res.row_line.tolist() == [1] * 8 + [2, 2]


def test_line_end_is_capped_before_the_next_line() -> None:
    hist: list[Adm] = [("lapatinib", 0, 300), ("capecitabine", 0, 14), ("Enhertu", 100)]
    lines, _ = derive(hist)
    assert lines == [(1, 0, 99, "LapCap"), (2, 100, 100, "T-DXd")]


def test_row_order_does_not_matter() -> None:
    hist = [
        *q3w("docetaxel", 0, 4),
        *q3w("Phesgo", 0, 12),
        ("letrozole", 120, 500),
        ("Enhertu", 300),
        ("trastuzumab", 300),
    ]
    patients, treatments = frames({"p": hist, "q": hist[::-1]})
    res = derive_lines(patients, treatments)
    shuffled = treatments.sample(frac=1.0, random_state=3)
    res2 = derive_lines(patients, shuffled)
    pd.testing.assert_frame_equal(res.lines, res2.lines)
    np.testing.assert_array_equal(res.row_line[shuffled.index.to_numpy()], res2.row_line)


# ------------------------------------------------------------------ unmapped drugs


def test_unmapped_drugs_are_reported_and_do_not_define_lines() -> None:
    patients, treatments = frames({"p": [("Kadcyla", 0), ("mystery-mab", 10), ("mystery-mab", 50)]})
    res = derive_lines(patients, treatments)  # maps `drug` itself
    assert res.lines.line.tolist() == [1]
    assert res.n_unmapped == 2
    assert res.unmapped.names == (("mystery-mab", 2),)
    assert res.n_rows == res.n_unmapped + res.n_pre_metastatic + res.n_non_defining + res.n_used
    mapped, _ = drugs.map_drugs(treatments["drug"])
    res2 = derive_lines(patients, treatments.assign(ingredient=mapped))
    assert res2.unmapped == res.unmapped


# ------------------------------------------------------------------ regimen labels


@pytest.mark.parametrize(
    "ingredients,label",
    [
        (["docetaxel", "trastuzumab", "pertuzumab"], "THP"),
        (["paclitaxel", "trastuzumab"], "TH"),
        (["trastuzumab", "pertuzumab"], "HP"),
        (["trastuzumab", "pertuzumab", "letrozole"], "HP+ET"),
        (["trastuzumab", "fulvestrant"], "H+ET"),
        (["trastuzumab emtansine"], "T-DM1"),
        (["trastuzumab emtansine", "pertuzumab"], "T-DM1"),
        (["trastuzumab deruxtecan"], "T-DXd"),
        (["trastuzumab deruxtecan", "pertuzumab"], "T-DXd"),
        (["tucatinib", "trastuzumab", "capecitabine"], "TTC"),
        (["lapatinib", "capecitabine"], "LapCap"),
        (["lapatinib", "trastuzumab"], "LapH"),
        (["neratinib", "capecitabine"], "NerCap"),
        (["pyrotinib", "capecitabine"], "PyrCap"),
        (["trastuzumab", "vinorelbine"], "H+chemo"),
        (["trastuzumab", "pertuzumab", "docetaxel", "carboplatin"], "H+chemo"),
        (["margetuximab", "eribulin"], "Marg+chemo"),
        (["palbociclib", "letrozole"], "CDK4/6i+ET"),
        (["abemaciclib", "fulvestrant", "trastuzumab", "pertuzumab"], "CDK4/6i+ET"),
        (["anastrozole"], "ET alone"),
        (["letrozole", "tamoxifen"], "ET alone"),
        (["capecitabine"], "chemo alone"),
        (["eribulin", "gemcitabine"], "chemo alone"),
        (["trastuzumab"], "OTHER"),
        (["trastuzumab deruxtecan", "capecitabine"], "OTHER"),
        (["zanidatamab", "docetaxel"], "OTHER"),
        (["everolimus", "exemestane"], "OTHER"),
        (["tucatinib", "trastuzumab", "capecitabine", "docetaxel"], "OTHER"),
    ],
)
def test_regimen_labels(ingredients: list[str], label: str) -> None:
    assert regimen_label(ingredients) == label
    assert label in REGIMENS


def test_regimens_is_a_fixed_ordered_tuple() -> None:
    assert isinstance(REGIMENS, tuple)
    assert REGIMENS[-1] == "OTHER"
    assert len(set(REGIMENS)) == 18


# ------------------------------------------------------------------ clinician agreement


def test_agreement_with_clinician_lines() -> None:
    hist = [("Phesgo", 0), ("docetaxel", 0), ("Phesgo", 21), ("Kadcyla", 200), ("Zometa", 3)]
    patients, treatments = frames({"p": hist})
    treatments["line_number"] = [1, 1, 2, 2, np.nan]  # the clinician moved day 21 to line 2
    res = derive_lines(patients, treatments, agreement_top=3)
    ag = res.agreement
    assert ag is not None
    assert (ag.n_documented, ag.n_compared, ag.n_agree) == (4, 4, 3)
    assert ag.share == pytest.approx(0.75)
    expected = np.zeros((3, 4), dtype=np.int64)
    expected[0, 1] = 2
    expected[1, 1] = 1
    expected[1, 2] = 1
    np.testing.assert_array_equal(ag.confusion, expected)
    assert derive_lines(patients, treatments.drop(columns="line_number")).agreement is None


def test_agreement_rejects_nonsense_line_numbers() -> None:
    patients, treatments = frames({"p": [("Kadcyla", 0)]})
    treatments["line_number"] = [0]
    with pytest.raises(DataError, match="line_number"):
        derive_lines(patients, treatments)


# ------------------------------------------------------------------ rules and errors


def test_ruleset_provenance_is_json_and_validated() -> None:
    rules = RuleSet()
    d = rules.as_dict()
    json.dumps(d)
    assert d["version"] == rules.version
    assert (d["window_days"], d["gap_days"], d["continuing_days"]) == (28, 120, 42)
    assert d["vocabulary_version"] == drugs.VOCABULARY_VERSION
    assert "supportive" in d["non_defining_classes"]
    with pytest.raises(SpecError, match="gap_days"):
        RuleSet(window_days=150)
    with pytest.raises(SpecError, match="unknown class"):
        RuleSet(non_defining_classes=("vitamins",))
    with pytest.raises(SpecError, match="vocabulary"):
        RuleSet(vocabulary_version="old")


def test_errors_name_rows_never_patient_values() -> None:
    patients, treatments = frames({"secret-id-1": [("Kadcyla", 0), ("Kadcyla", 21)]})
    bad = treatments.copy()
    bad.loc[1, "patient_id"] = "secret-id-2"
    with pytest.raises(DataError, match="data row 2") as err:
        derive_lines(patients, bad)
    assert "secret" not in str(err.value)
    bad = treatments.copy()
    bad.loc[1, "end_date"] = day(-5)
    with pytest.raises(DataError, match=r"end_date.*data row 2"):
        derive_lines(patients, bad)
    with pytest.raises(DataError, match="datetime64"):
        derive_lines(patients, treatments.assign(start_date=["2020-01-01", "2020-01-22"]))
    with pytest.raises(DataError, match="missing column"):
        derive_lines(patients, treatments.drop(columns="start_date"))
    with pytest.raises(DataError, match="not a vocabulary ingredient"):
        derive_lines(patients, treatments.assign(ingredient=["Kadcyla", "T-DM1"]))
    with pytest.raises(DataError, match="repeat"):
        derive_lines(pd.concat([patients, patients]), treatments)


def test_no_treatments_gives_an_empty_lines_frame() -> None:
    patients, treatments = frames({"p": []})
    res = derive_lines(patients, treatments)
    assert len(res.lines) == 0
    assert list(res.lines.columns) == [
        "patient_id",
        "line",
        "start",
        "end",
        "ingredients",
        "added",
        "regimen",
        "anti_her2",
    ]


# ------------------------------------------------------------------ reference implementation


@dataclass
class _Line:
    start: int
    keys: set[str] = field(default_factory=set)
    her2_end: int = -(10**9)
    chemo_end: int = -(10**9)


def _key(ing: str, rules: RuleSet) -> str:
    sub = drugs.BY_NAME[ing].substitution_class
    return sub if sub in rules.substitution_classes else ing


def reference_row_lines(rows: list[tuple[int, int, str]], rules: RuleSet) -> list[int]:
    """Plain per-day implementation of the rules for one patient's defining rows."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][2]))
    out = [0] * len(rows)
    line_no = 0
    cur: _Line | None = None
    last_end = -(10**9)
    days = sorted({rows[i][0] for i in order})
    for d in days:
        today = [i for i in order if rows[i][0] == d]
        brk = cur is None or d - last_end > rules.gap_days
        if cur is not None and not brk and d > cur.start + rules.window_days:
            her2_end = max(
                [cur.her2_end]
                + [
                    rows[i][1]
                    for i in today
                    if drugs.drug_class(rows[i][2]) in rules.anti_her2_classes
                ]
            )
            chemo_end = max(
                [cur.chemo_end]
                + [rows[i][1] for i in today if drugs.drug_class(rows[i][2]) in rules.chemo_classes]
            )
            accepted: set[str] = set()
            for i in today:
                k = _key(rows[i][2], rules)
                if k in cur.keys or k in accepted:
                    continue
                cls = drugs.drug_class(rows[i][2])
                if (
                    cls in rules.maintenance_addable_classes
                    and her2_end >= d - rules.continuing_days
                    and chemo_end < d
                ):
                    accepted.add(k)
                else:
                    brk = True
            if not brk:
                cur.keys |= accepted
        if brk:
            line_no += 1
            cur = _Line(d)
        assert cur is not None
        for i in today:
            if d <= cur.start + rules.window_days:
                cur.keys.add(_key(rows[i][2], rules))
            cls = drugs.drug_class(rows[i][2])
            if cls in rules.anti_her2_classes:
                cur.her2_end = max(cur.her2_end, rows[i][1])
            if cls in rules.chemo_classes:
                cur.chemo_end = max(cur.chemo_end, rows[i][1])
            out[i] = line_no
        last_end = max([last_end] + [rows[i][1] for i in today])
    return out


_POOL = [
    "trastuzumab",
    "pertuzumab",
    "docetaxel",
    "paclitaxel",
    "capecitabine",
    "fluorouracil",
    "letrozole",
    "anastrozole",
    "fulvestrant",
    "trastuzumab deruxtecan",
    "tucatinib",
    "palbociclib",
    "goserelin",
    "zoledronic acid",
    "pertuzumab;trastuzumab",
]

_adm = st.tuples(
    st.sampled_from(_POOL),
    st.integers(-60, 700),
    st.one_of(st.none(), st.integers(0, 90)),
)


@settings(max_examples=150, deadline=None)
@given(
    histories=st.lists(st.lists(_adm, max_size=14), min_size=1, max_size=4),
    window=st.integers(0, 40),
    extra_gap=st.integers(1, 150),
    continuing=st.integers(0, 80),
    subst=st.sets(st.sampled_from(drugs.SUBSTITUTION_CLASSES)),
)
def test_vectorised_lines_equal_the_reference(
    histories: list[list[tuple[str, int, int | None]]],
    window: int,
    extra_gap: int,
    continuing: int,
    subst: set[str],
) -> None:
    rules = RuleSet(
        window_days=window,
        gap_days=window + extra_gap,
        continuing_days=continuing,
        substitution_classes=tuple(sorted(subst)),
    )
    ids = [f"p{i}" for i in range(len(histories))]
    rows: list[dict[str, Any]] = []
    for pid, hist in zip(ids, histories, strict=True):
        for ing, start, dur in hist:
            rows.append(
                {
                    "patient_id": pid,
                    "ingredient": ing,
                    "start_date": day(start),
                    "end_date": day(start + dur) if dur is not None else pd.NaT,
                }
            )
    patients = pd.DataFrame({"patient_id": ids, "met_dx_date": [D0] * len(ids)})
    treatments = pd.DataFrame(
        rows, columns=["patient_id", "ingredient", "start_date", "end_date"]
    ).astype({"start_date": "datetime64[ns]", "end_date": "datetime64[ns]"})
    res = derive_lines(patients, treatments, rules)
    expected = np.zeros(len(rows), dtype=np.int64)
    non_defining = set(rules.non_defining_classes)
    for pid in ids:
        pos = [i for i, r in enumerate(rows) if r["patient_id"] == pid]
        use = [
            i
            for i in pos
            if rows[i]["start_date"] >= D0
            and drugs.drug_class(drugs.split_ingredients(rows[i]["ingredient"])[0])
            not in non_defining
        ]
        ref_rows, owner = [], []
        for i in use:
            start = (rows[i]["start_date"] - D0).days
            end = start if pd.isna(rows[i]["end_date"]) else (rows[i]["end_date"] - D0).days
            for ing in drugs.split_ingredients(rows[i]["ingredient"]):  # Phesgo -> both
                ref_rows.append((start, end, ing))
                owner.append(i)
        for i, k in zip(owner, reference_row_lines(ref_rows, rules), strict=True):
            expected[i] = k
    np.testing.assert_array_equal(res.row_line, expected)
    # every line starts at its first administration and numbers are 1..n per patient
    for _, g in res.lines.groupby("patient_id"):
        assert g.line.tolist() == list(range(1, len(g) + 1))
        assert (g.end >= g.start).all()
        assert (g.start.diff().dropna() > pd.Timedelta(0)).all()
        assert set(g.regimen) <= set(REGIMENS)
    assert res.n_rows == res.n_unmapped + res.n_pre_metastatic + res.n_non_defining + res.n_used
