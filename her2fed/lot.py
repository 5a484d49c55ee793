"""Lines of therapy from drug administrations, by one versioned rule set.

Sites hold administrations, not lines, and every published real-world study
derives lines with slightly different rules; pooled attrition is only
meaningful if every site applies the same rules. So the rules are a frozen
``RuleSet`` fixed by the study, with every parameter explicit and reported in
the results' provenance (``RuleSet.as_dict``).

The rules (``RuleSet`` defaults in brackets), applied per patient to the
administrations of *line-defining* ingredients in date order:

1. Administrations that start before ``met_dx_date`` are neo/adjuvant exposure:
   excluded and counted. An exposure that starts before and runs past the
   metastatic diagnosis is excluded too (the start decides).
2. Supportive care and ovarian suppression (``non_defining_classes``) and
   unmapped drugs never define, extend, bridge or label a line; they are
   counted and otherwise ignored. (Otherwise monthly goserelin or denosumab
   would keep a line "running" for years.)
3. A line starts at the first remaining administration. Its *regimen* is
   every ingredient started within ``window_days`` [28] of the line start,
   inclusive (day 28 is in, day 29 is not).
4. After the window, an ingredient starts a new line unless it is in the
   line already - the same ingredient, a within-class substitution of one
   (``substitution_classes``: taxanes, trastuzumab formulations/biosimilars,
   capecitabine/5-FU, aromatase inhibitors), or an ingredient accepted into
   the line earlier by rule 6.
5. A gap of more than ``gap_days`` [120] between the end of all exposure so
   far (the latest exposure end of any earlier administration) and the next
   start starts a new line, even with the same drugs. The gap is the date
   difference: a one-day exposure on day 0 followed by a start on day 120 is
   the same line, on day 121 a new one.
6. Maintenance. Dropping drugs never starts a line, so anti-HER2 therapy that
   continues after chemotherapy stops stays in the line. An ingredient of a
   ``maintenance_addable_classes`` class [aromatase inhibitor, SERD, SERM]
   added after the window also stays in the line (and is then part of it) when
   at its start (a) an anti-HER2 drug of the line is continuing - its latest
   exposure ended at most ``continuing_days`` [42, two 3-weekly cycles]
   before - and (b) no chemotherapy exposure of the line covers that day
   (chemotherapy has stopped; a line without chemotherapy satisfies (b)).
7. Decisions are made per day, not per row: when a line breaks on a day, every
   administration of that day belongs to the new line, so the order of rows
   given on the same day (or the halves of a fixed-dose combination) never
   matters.
8. A line's ``end`` is the last day of exposure of its administrations
   (``end_date``; else ``start_date + days_supply - 1``; else the start day),
   capped at the day before the next line starts.

Regimen labels come from the regimen (rule 3) only, so THP followed by
trastuzumab+pertuzumab+letrozole maintenance stays "THP"; ingredients that
joined later are listed separately (``added``). ``anti_her2`` is true when any
ingredient of the line is anti-HER2.

The derivation is vectorised over all patients: line k of every patient is
found in one pass over the remaining administrations, so the number of passes
is the largest number of lines of any patient.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from her2fed import drugs
from her2fed.errors import DataError, SpecError

LOT_RULES_VERSION = "her2fed-lot-1.0.0"

REGIMENS: tuple[str, ...] = (
    "THP",
    "TH",
    "HP",
    "HP+ET",
    "H+ET",
    "T-DM1",
    "T-DXd",
    "TTC",
    "LapCap",
    "LapH",
    "NerCap",
    "PyrCap",
    "H+chemo",
    "Marg+chemo",
    "CDK4/6i+ET",
    "ET alone",
    "chemo alone",
    "OTHER",
)
OTHER = "OTHER"

IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

_NONE = -(10**6)  # "no exposure yet" on the day axis (days since 1970, far before any date)
_BIG = 10**7  # > any day range: separates patients in segmented running maxima


@dataclass(frozen=True)
class RuleSet:
    """Every parameter of line derivation; study-fixed so all sites apply the same rules."""

    version: str = LOT_RULES_VERSION
    window_days: int = 28
    gap_days: int = 120
    substitution_classes: tuple[str, ...] = drugs.SUBSTITUTION_CLASSES
    non_defining_classes: tuple[str, ...] = (drugs.SUPPORTIVE, drugs.OVARIAN_SUPPRESSION)
    anti_her2_classes: tuple[str, ...] = drugs.ANTI_HER2_CLASSES
    chemo_classes: tuple[str, ...] = drugs.CHEMO_CLASSES
    maintenance_addable_classes: tuple[str, ...] = drugs.ENDOCRINE_CLASSES
    continuing_days: int = 42
    vocabulary_version: str = drugs.VOCABULARY_VERSION
    fixed_rules: tuple[str, ...] = (
        "administrations starting before met_dx_date are excluded (neo/adjuvant)",
        "unmapped drugs never define a line",
        "dropping drugs never starts a line",
        "all administrations of a breaking day belong to the new line",
        "exposure = start..end_date, else start..start+days_supply-1, else the start day",
        "line end = last exposure day, capped at the day before the next line",
    )

    def __post_init__(self) -> None:
        for name in ("window_days", "gap_days", "continuing_days"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SpecError(
                    f"rules.{name}",
                    f"must be a whole number >= 0, got {value!r}",
                    "give days as a whole number (defaults: window 28, gap 120, continuing 42)",
                )
        if self.gap_days <= self.window_days:
            raise SpecError(
                "rules.gap_days",
                f"must exceed window_days ({self.window_days}), got {self.gap_days}",
                "use the defaults (window 28, gap 120) unless the protocol says otherwise",
            )
        known_subst = set(drugs.SUBSTITUTION_CLASSES)
        for name in (
            "non_defining_classes",
            "anti_her2_classes",
            "chemo_classes",
            "maintenance_addable_classes",
            "substitution_classes",
        ):
            allowed = known_subst if name == "substitution_classes" else set(drugs.CLASSES)
            unknown = sorted(set(getattr(self, name)) - allowed)
            if unknown:
                raise SpecError(
                    f"rules.{name}", f"unknown class(es) {unknown}", f"use {sorted(allowed)}"
                )
        if self.vocabulary_version != drugs.VOCABULARY_VERSION:
            raise SpecError(
                "rules.vocabulary_version",
                f"{self.vocabulary_version!r} is not the installed vocabulary "
                f"{drugs.VOCABULARY_VERSION!r}",
                "install the her2fed version the study was written for",
            )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready parameters for the provenance of every result."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


@dataclass(frozen=True)
class LineAgreement:
    """Agreement of derived lines with clinician-documented ``line_number``.

    ``share`` is over administrations with a documented line that fall in a
    derived line. ``confusion[d-1, k]`` counts administrations documented as
    line d (top-coded: the last row is ``top``+) and derived as line k
    (column 0 = in no derived line: pre-metastatic, non-defining or unmapped;
    the last column is ``top``+).
    """

    n_documented: int
    n_compared: int
    n_agree: int
    share: float
    top: int
    confusion: IntArray


@dataclass(frozen=True)
class LinesResult:
    """Derived lines and what the derivation left out.

    ``lines`` columns: ``patient_id``, ``line`` (1-based), ``start`` and ``end``
    (datetime64; ``end`` = last exposure day), ``ingredients`` (the regimen,
    sorted and ``;``-joined), ``added`` (ingredients that joined later by
    substitution or maintenance), ``regimen`` (one of ``REGIMENS``),
    ``anti_her2`` (bool). ``row_line`` gives each input treatment row its
    derived line (0 = none). Row counts are disjoint and sum to ``n_rows``:
    unmapped, then pre-metastatic, then non-defining, then used.
    """

    lines: pd.DataFrame
    row_line: IntArray
    n_rows: int
    n_unmapped: int
    n_pre_metastatic: int
    n_non_defining: int
    n_used: int
    n_patients: int
    n_patients_with_lines: int
    unmapped: drugs.UnmappedReport
    agreement: LineAgreement | None
    rules: RuleSet


# --------------------------------------------------------------------------- labels

_H, _P, _TAX, _CAP, _CHEMO, _ET, _CDK = "H", "P", "TAX", "CAP", "CHEMO", "ET", "CDK"
_TOKEN_BY_NAME = {
    "trastuzumab": _H,
    "pertuzumab": _P,
    "margetuximab": "MARG",
    "trastuzumab emtansine": "TDM1",
    "trastuzumab deruxtecan": "TDXD",
    "tucatinib": "TUC",
    "lapatinib": "LAP",
    "neratinib": "NER",
    "pyrotinib": "PYR",
}
_TOKEN_BY_CLASS = {
    drugs.TAXANE: _TAX,
    drugs.FLUOROPYRIMIDINE: _CAP,
    drugs.CDK46I: _CDK,
    **{c: _ET for c in drugs.ENDOCRINE_CLASSES},
    **{c: _CHEMO for c in drugs.CHEMO_CLASSES if c not in (drugs.TAXANE, drugs.FLUOROPYRIMIDINE)},
}
_CHEMO_TOKENS = frozenset({_TAX, _CAP, _CHEMO})
_EXACT: dict[frozenset[str], str] = {
    frozenset({_TAX, _H, _P}): "THP",
    frozenset({_TAX, _H}): "TH",
    frozenset({_H, _P}): "HP",
    frozenset({_H, _P, _ET}): "HP+ET",
    frozenset({_H, _ET}): "H+ET",
    frozenset({"TUC", _H, _CAP}): "TTC",
    frozenset({"LAP", _CAP}): "LapCap",
    frozenset({"LAP", _H}): "LapH",
    frozenset({"NER", _CAP}): "NerCap",
    frozenset({"PYR", _CAP}): "PyrCap",
    frozenset({_ET}): "ET alone",
}


def _token(ingredient: str) -> str:
    if ingredient in _TOKEN_BY_NAME:
        return _TOKEN_BY_NAME[ingredient]
    return _TOKEN_BY_CLASS.get(drugs.drug_class(ingredient), ingredient.upper())


def regimen_label(ingredients: Iterable[str]) -> str:
    """The ``REGIMENS`` label of a regimen's ingredient set.

    Exact set matches, so THP with carboplatin is not THP but "H+chemo";
    T-DM1/T-DXd alone or with trastuzumab/pertuzumab; "CDK4/6i+ET" with or
    without trastuzumab/pertuzumab; "H+chemo" = trastuzumab (± pertuzumab)
    with any chemotherapy that is not exactly THP/TH/TTC; "chemo alone" = any
    chemotherapy only. Supportive and ovarian-suppression drugs are never in a
    regimen. Everything else (including ADC + chemo, zanidatamab, everolimus
    combinations) is "OTHER".
    """
    z = frozenset(_token(i) for i in ingredients)
    if not z:
        return OTHER
    if z in _EXACT:
        return _EXACT[z]
    rest = z - {_H, _P}
    if rest == {"TDM1"}:
        return "T-DM1"
    if rest == {"TDXD"}:
        return "T-DXd"
    if rest == {_CDK, _ET}:
        return "CDK4/6i+ET"
    if _H in z and rest and rest <= _CHEMO_TOKENS:
        return "H+chemo"
    if "MARG" in z and z - {"MARG"} and z - {"MARG"} <= _CHEMO_TOKENS:
        return "Marg+chemo"
    if z <= _CHEMO_TOKENS:
        return "chemo alone"
    return OTHER


# --------------------------------------------------------------------------- inputs


def _days(col: pd.Series[Any], where: str, name: str) -> tuple[IntArray, BoolArray]:
    """Whole days since 1970 and a missing mask; dates must already be datetime64."""
    if not pd.api.types.is_datetime64_any_dtype(col.dtype):
        raise DataError(
            f"{where}: column {name!r}",
            f"must hold parsed dates (datetime64), got dtype {col.dtype}",
            "parse ISO dates with pandas.to_datetime before deriving lines",
        )
    missing = col.isna().to_numpy()
    values = col.to_numpy(dtype="datetime64[ns]").astype("datetime64[D]").astype(np.int64)
    return np.where(missing, 0, values).astype(np.int64), missing


def _first_row(mask: BoolArray) -> int:
    return int(np.argmax(mask)) + 1


def _require(df: pd.DataFrame, columns: Iterable[str], where: str) -> None:
    absent = [c for c in columns if c not in df.columns]
    if absent:
        raise DataError(
            where,
            f"missing column(s) {absent}",
            f"give the columns of docs/registry_schema.md; the table has {list(df.columns)}",
        )


def _fail_rows(mask: BoolArray, where: str, column: str, problem: str, fix: str) -> None:
    if mask.any():
        raise DataError(
            f"{where}: column {column!r}",
            f"{int(mask.sum())} row(s) {problem}, first at data row {_first_row(mask)}",
            fix,
        )


def patient_index(patients: pd.DataFrame, where: str = "patients") -> pd.Index[Any]:
    """The patients' ids as an index; duplicates and missing ids are errors."""
    _require(patients, ["patient_id"], where)
    ids = patients["patient_id"]
    _fail_rows(ids.isna().to_numpy(), where, "patient_id", "have no id", "give every row an id")
    dup = ids.duplicated().to_numpy()
    _fail_rows(dup, where, "patient_id", "repeat an earlier id", "give one row per patient")
    out: pd.Index[Any] = pd.Index(ids)
    return out


def patient_positions(
    index: pd.Index[Any], ids: pd.Series[Any], where: str, what: str = "patient_id"
) -> IntArray:
    """Position of each id in the patients table; unknown ids are errors."""
    pos = np.asarray(index.get_indexer(pd.Index(ids)), dtype=np.int64)
    _fail_rows(
        pos < 0, where, what, "name no patient in patients", "add the patient or remove those rows"
    )
    return pos


_ING_INDEX = {name: i for i, name in enumerate(drugs.INGREDIENT_NAMES)}
_N_ING = len(drugs.INGREDIENT_NAMES)
if _N_ING > 62:  # ingredient sets are int64 bit masks
    raise RuntimeError("vocabulary too large for int64 ingredient masks")


def _ingredients(treatments: pd.DataFrame) -> tuple[pd.Series[Any], drugs.UnmappedReport]:
    if "ingredient" in treatments.columns:
        ing = treatments["ingredient"].reset_index(drop=True)
        miss = ing.isna().to_numpy()
        if "drug" in treatments.columns:
            names = treatments["drug"].reset_index(drop=True)
            shown = names[miss].map(lambda v: str(v).strip() if isinstance(v, str) else "<missing>")
        else:
            shown = pd.Series(["<unmapped>"] * int(miss.sum()), dtype=object)
        counts = shown.value_counts(sort=False)
        items = sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda t: (-t[1], t[0]))
        return ing, drugs.UnmappedReport(int(miss.sum()), tuple(items))
    atc = treatments["atc"] if "atc" in treatments.columns else None
    mapped, report = drugs.map_drugs(treatments["drug"], atc)
    return pd.Series(mapped, dtype=object), report


def _explode(ing: pd.Series[Any], where: str) -> tuple[IntArray, IntArray]:
    """(input row, ingredient index) pairs: one per ingredient, combinations split."""
    codes, uniques = pd.factorize(ing, use_na_sentinel=True)
    parts: list[list[int]] = []
    for u in uniques:
        names = drugs.split_ingredients(str(u))
        unknown = [n for n in names if n not in _ING_INDEX]
        if unknown:
            raise DataError(
                f"{where}: column 'ingredient'",
                f"value {u!r} is not a vocabulary ingredient",
                "map drug names with her2fed.drugs.map_drugs (unmapped drugs are None)",
            )
        parts.append([_ING_INDEX[n] for n in names])
    width = max((len(p) for p in parts), default=1)
    table = np.full((len(parts) + 1, width), -1, dtype=np.int64)
    for i, p in enumerate(parts):
        table[i, : len(p)] = p
    codes = np.where(codes < 0, len(parts), codes)
    rows_out: list[IntArray] = []
    ings_out: list[IntArray] = []
    for j in range(width):
        ing_j = table[codes, j]
        keep = np.nonzero(ing_j >= 0)[0]
        rows_out.append(keep.astype(np.int64))
        ings_out.append(ing_j[keep])
    return np.concatenate(rows_out), np.concatenate(ings_out)


def exposure_end(treatments: pd.DataFrame, start: IntArray, where: str) -> IntArray:
    """Last exposure day per row: ``end_date``, else start + ``days_supply`` - 1, else start."""
    end = start.copy()
    if "days_supply" in treatments.columns:
        supply = pd.to_numeric(treatments["days_supply"], errors="coerce").to_numpy(np.float64)
        raw_present = treatments["days_supply"].notna().to_numpy()
        bad = raw_present & ~(supply >= 1)
        _fail_rows(bad, where, "days_supply", "are not a number >= 1", "give whole days >= 1")
        has = ~np.isnan(supply)
        end[has] = start[has] + np.ceil(supply[has]).astype(np.int64) - 1
    if "end_date" in treatments.columns:
        e, e_missing = _days(treatments["end_date"], where, "end_date")
        end = np.where(e_missing, end, e)
        bad = ~e_missing & (e < start)
        _fail_rows(bad, where, "end_date", "end before start_date", "end_date >= start_date")
    return end


# --------------------------------------------------------------------------- derivation


def _segmented_cummax(values: IntArray, seg: IntArray) -> IntArray:
    """Running maximum that restarts at every segment (``seg`` non-decreasing)."""
    shifted = values + seg * _BIG
    out: IntArray = np.maximum.accumulate(shifted) - seg * _BIG
    return out


def _ranges(lo: IntArray, hi: IntArray) -> tuple[IntArray, IntArray, IntArray]:
    """Concatenated ``range(lo[i], hi[i])``: (global index, segment id, segment offset)."""
    lens = hi - lo
    seg = np.repeat(np.arange(lo.size, dtype=np.int64), lens)
    offsets = np.cumsum(lens) - lens
    local = np.arange(int(lens.sum()), dtype=np.int64) - offsets[seg]
    return lo[seg] + local, seg, local


def _class_mask(rules_classes: Iterable[str]) -> BoolArray:
    wanted = set(rules_classes)
    return np.array([ing.drug_class in wanted for ing in drugs.INGREDIENTS], dtype=bool)


def _assign_lines(
    pat: IntArray,
    start: IntArray,
    end: IntArray,
    ing: IntArray,
    rules: RuleSet,
) -> IntArray:
    """Line number of each administration; rows sorted by (patient, start, ingredient)."""
    n = pat.size
    line_of = np.zeros(n, dtype=np.int64)
    if n == 0:
        return line_of
    subst_names = list(rules.substitution_classes)
    key_of_ing = np.array(
        [
            _N_ING + subst_names.index(i.substitution_class)
            if i.substitution_class in subst_names
            else k
            for k, i in enumerate(drugs.INGREDIENTS)
        ],
        dtype=np.int64,
    )
    n_keys = _N_ING + len(subst_names)
    is_her2 = _class_mask(rules.anti_her2_classes)[ing]
    is_chemo = _class_mask(rules.chemo_classes)[ing]
    is_maint = _class_mask(rules.maintenance_addable_classes)[ing]
    key = key_of_ing[ing]

    new_pat = np.ones(n, dtype=bool)
    new_pat[1:] = pat[1:] != pat[:-1]
    new_day = new_pat.copy()
    new_day[1:] |= start[1:] != start[:-1]
    pos = np.arange(n, dtype=np.int64)
    day_first = np.maximum.accumulate(np.where(new_day, pos, 0))
    last_of_day = np.ones(n, dtype=bool)
    last_of_day[:-1] = new_day[1:]
    day_last = np.flip(np.minimum.accumulate(np.flip(np.where(last_of_day, pos, n))))

    # Rule 5: gap since the end of all earlier exposure of the patient.
    pseg = np.cumsum(new_pat) - 1
    run_end = _segmented_cummax(end, pseg)
    prev_end = np.empty(n, dtype=np.int64)
    prev_end[0] = _NONE
    prev_end[1:] = run_end[:-1]
    gap_break = ~new_pat & (start - prev_end > rules.gap_days)

    seg_lo = np.nonzero(new_pat)[0].astype(np.int64)
    seg_hi = np.append(seg_lo[1:], n).astype(np.int64)
    cur = seg_lo.copy()
    active = np.arange(seg_lo.size, dtype=np.int64)
    line_no = 0
    while active.size:
        line_no += 1
        lo, hi = cur[active], seg_hi[active]
        idx, seg, local = _ranges(lo, hi)
        s = start[idx]
        line_start = start[lo][seg]
        in_win = s <= line_start + rules.window_days
        comb = seg * n_keys + key[idx]
        in_line = np.zeros(lo.size * n_keys, dtype=bool)
        in_line[comb[in_win]] = True
        outside = np.nonzero(~in_line[comb])[0]
        brk_local = np.full(lo.size, np.iinfo(np.int64).max, dtype=np.int64)
        if outside.size:
            # Only the first administration of each new key since the line start decides.
            _, first = np.unique(comb[outside], return_index=True)
            cand = outside[first]
            at_day = cand + (day_last[idx[cand]] - idx[cand])  # last row of that day, local
            her2_end = _segmented_cummax(np.where(is_her2[idx], end[idx], _NONE), seg)
            chemo_end = _segmented_cummax(np.where(is_chemo[idx], end[idx], _NONE), seg)
            sc = s[cand]
            maintenance = (
                is_maint[idx[cand]]
                & (her2_end[at_day] >= sc - rules.continuing_days)
                & (chemo_end[at_day] < sc)
            )
            breaking = cand[~maintenance]
            np.minimum.at(brk_local, seg[breaking], local[breaking])
        gaps = np.nonzero(gap_break[idx] & (local > 0))[0]
        np.minimum.at(brk_local, seg[gaps], local[gaps])
        has_break = brk_local < (hi - lo)
        stop = hi.copy()
        stop[has_break] = day_first[lo[has_break] + brk_local[has_break]]
        line_of[idx[idx < stop[seg]]] = line_no
        cur[active] = stop
        active = active[has_break]
    return line_of


def _mask_names(mask: int) -> tuple[str, ...]:
    return tuple(sorted(drugs.INGREDIENT_NAMES[i] for i in range(_N_ING) if mask >> i & 1))


def derive_lines(
    patients: pd.DataFrame,
    treatments: pd.DataFrame,
    rules: RuleSet | None = None,
    *,
    agreement_top: int = 5,
) -> LinesResult:
    """Lines of therapy of every patient of one site.

    ``patients`` needs ``patient_id`` (unique) and ``met_dx_date``;
    ``treatments`` needs ``patient_id``, ``start_date`` and ``ingredient`` (from
    ``drugs.map_drugs``: an ingredient, ``;``-joined ingredients, or missing
    when unmapped) - or, instead of ``ingredient``, ``drug`` (and optionally
    ``atc``), which is then mapped here. Optional: ``end_date``,
    ``days_supply``, ``line_number`` (clinician line; agreement is reported).
    Dates must be datetime64. Errors name the table, column and first data row,
    never a patient value.
    """
    rules = rules or RuleSet()
    _require(patients, ["patient_id", "met_dx_date"], "patients")
    _require(treatments, ["patient_id", "start_date"], "treatments")
    if "ingredient" not in treatments.columns and "drug" not in treatments.columns:
        _require(treatments, ["ingredient"], "treatments")
    index = patient_index(patients)
    met, met_missing = _days(patients["met_dx_date"], "patients", "met_dx_date")
    _fail_rows(met_missing, "patients", "met_dx_date", "are missing", "give every patient one")
    tpat = patient_positions(index, treatments["patient_id"], "treatments")
    start, s_missing = _days(treatments["start_date"], "treatments", "start_date")
    _fail_rows(s_missing, "treatments", "start_date", "are missing", "give every row a start")
    end = exposure_end(treatments, start, "treatments")
    ing_s, report = _ingredients(treatments)

    rows, ing = _explode(ing_s, "treatments")
    n_rows = len(treatments)
    mapped = np.zeros(n_rows, dtype=bool)
    mapped[rows] = True
    pre = mapped & (start < met[tpat])
    defining_ing = ~_class_mask(rules.non_defining_classes)
    row_defining = np.zeros(n_rows, dtype=bool)
    row_defining[rows[defining_ing[ing]]] = True
    used_row = mapped & ~pre & row_defining
    keep = used_row[rows] & defining_ing[ing]
    rows, ing = rows[keep], ing[keep]

    r_pat, r_start, r_end = tpat[rows], start[rows], end[rows]
    order = np.lexsort((ing, r_start, r_pat))
    rows, ing, r_pat, r_start, r_end = (a[order] for a in (rows, ing, r_pat, r_start, r_end))
    line_of = _assign_lines(r_pat, r_start, r_end, ing, rules)

    lines = _line_table(index, r_pat, r_start, r_end, ing, line_of, rules)
    row_line = np.zeros(n_rows, dtype=np.int64)
    row_line[rows] = line_of
    agreement = None
    if "line_number" in treatments.columns:
        agreement = _agreement(treatments["line_number"], row_line, agreement_top)
    n_unmapped = int((~mapped).sum())
    n_pre = int(pre.sum())
    n_used = int(used_row.sum())
    return LinesResult(
        lines=lines,
        row_line=row_line,
        n_rows=n_rows,
        n_unmapped=n_unmapped,
        n_pre_metastatic=n_pre,
        n_non_defining=n_rows - n_unmapped - n_pre - n_used,
        n_used=n_used,
        n_patients=len(index),
        n_patients_with_lines=int(np.unique(r_pat).size),
        unmapped=report,
        agreement=agreement,
        rules=rules,
    )


def _line_table(
    index: pd.Index[Any],
    pat: IntArray,
    start: IntArray,
    end: IntArray,
    ing: IntArray,
    line_of: IntArray,
    rules: RuleSet,
) -> pd.DataFrame:
    n = pat.size
    if n == 0:
        empty = np.zeros(0, dtype="datetime64[ns]")
        return pd.DataFrame(
            {
                "patient_id": pd.Series([], dtype=index.dtype),
                "line": np.zeros(0, np.int64),
                "start": empty,
                "end": empty,
                "ingredients": pd.Series([], dtype=object),
                "added": pd.Series([], dtype=object),
                "regimen": pd.Series([], dtype=object),
                "anti_her2": np.zeros(0, bool),
            }
        )
    new = np.ones(n, dtype=bool)
    new[1:] = (pat[1:] != pat[:-1]) | (line_of[1:] != line_of[:-1])
    first = np.nonzero(new)[0]
    l_pat, l_line, l_start = pat[first], line_of[first], start[first]
    l_end = np.maximum.reduceat(end, first)
    bit = np.left_shift(np.int64(1), ing)
    lid = np.cumsum(new) - 1
    in_win = start <= l_start[lid] + rules.window_days
    reg_mask = np.bitwise_or.reduceat(np.where(in_win, bit, 0), first)
    all_mask = np.bitwise_or.reduceat(bit, first)
    same_next = np.zeros(first.size, dtype=bool)
    same_next[:-1] = l_pat[1:] == l_pat[:-1]
    nxt = np.append(l_start[1:], 0)
    l_end = np.where(same_next, np.minimum(l_end, nxt - 1), l_end)

    her2_bits = 0
    for i, ingredient in enumerate(drugs.INGREDIENTS):
        if ingredient.drug_class in rules.anti_her2_classes:
            her2_bits |= 1 << i
    names: dict[int, str] = {}
    labels: dict[int, str] = {}
    for m in np.unique(np.concatenate([reg_mask, all_mask & ~reg_mask])).tolist():
        members = _mask_names(int(m))
        names[int(m)] = drugs.COMBINATION_SEP.join(members)
        labels[int(m)] = regimen_label(members)
    reg_list = reg_mask.tolist()
    return pd.DataFrame(
        {
            "patient_id": index.take(l_pat).to_numpy(),
            "line": l_line,
            "start": l_start.astype("datetime64[D]").astype("datetime64[ns]"),
            "end": l_end.astype("datetime64[D]").astype("datetime64[ns]"),
            "ingredients": [names[m] for m in reg_list],
            "added": [names[m] for m in (all_mask & ~reg_mask).tolist()],
            "regimen": [labels[m] for m in reg_list],
            "anti_her2": (all_mask & her2_bits) != 0,
        }
    )


def _agreement(documented: pd.Series[Any], row_line: IntArray, top: int) -> LineAgreement:
    if top < 1:
        raise ValueError("agreement_top must be >= 1")
    doc = pd.to_numeric(documented, errors="coerce").to_numpy(np.float64)
    present = documented.notna().to_numpy()
    bad = present & ~((doc >= 1) & (doc == np.floor(doc)))
    _fail_rows(bad, "treatments", "line_number", "are not whole numbers >= 1", "use 1, 2, ...")
    d = np.minimum(doc[present].astype(np.int64), top) - 1
    k = np.minimum(row_line[present], top)
    confusion = np.zeros((top, top + 1), dtype=np.int64)
    np.add.at(confusion, (d, k), 1)
    compared = k > 0
    n_compared = int(compared.sum())
    n_agree = int((doc[present][compared].astype(np.int64) == row_line[present][compared]).sum())
    return LineAgreement(
        n_documented=int(present.sum()),
        n_compared=n_compared,
        n_agree=n_agree,
        share=n_agree / n_compared if n_compared else float("nan"),
        top=top,
        confusion=confusion,
    )
