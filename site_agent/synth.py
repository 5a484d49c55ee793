"""Synthetic multi-country HER2+ mBC registry extracts, calibrated to published cohorts.

Why synthetic sites at all: the federation, the line-of-therapy rules and the
attrition definitions must be rehearsed and tested on data that look like a
hospital's extract (drug names as pharmacies write them, dispensings, supportive
care, neo/adjuvant exposure, deaths and transfers) while the truth is known.
Each country's profile reproduces the figures of ``shared/cohorts.md`` within
sampling error, so pooled answers can be checked against the literature and
country differences exist for heterogeneity analyses to find.

The generator simulates patients line by line, vectorised over patients (one
``numpy.random.Generator`` seeded by the caller, never the global RNG), and
keeps the line assignment it intended: ``synthesize_cohort`` returns it beside
the frames, and the treatments frame carries it as the hidden ``_true_line``
column, which ``write_site`` drops like every column starting with ``_``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from site_agent.config import Policy

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

DAYS_PER_MONTH = 30.4375
MAX_LINES = 8
ET_ONLY, CHEMO_ONLY, NO_THERAPY, ANTI_HER2 = 1, 2, 3, 0
TABLE_NAMES = ("patients", "treatments", "progressions", "care_events")

# ---------------------------------------------------------------------------
# vocabulary: what a hospital writes in the drug column


@dataclass(frozen=True)
class Product:
    """A dispensable product; ``brand`` is what a pharmacy system would print."""

    ingredient: str
    atc: str
    route: str
    brand: str
    role: Literal["anticancer", "ofs", "supportive"] = "anticancer"


PRODUCTS: tuple[Product, ...] = (
    Product("trastuzumab", "L01FD01", "iv", "Herceptin"),
    Product("trastuzumab", "L01FD01", "sc", "Herceptin SC"),
    Product("trastuzumab", "L01FD01", "iv", "Kanjinti"),
    Product("trastuzumab", "L01FD01", "iv", "Ogivri"),
    Product("trastuzumab", "L01FD01", "iv", "Herzuma"),
    Product("trastuzumab", "L01FD01", "iv", "Ontruzant"),
    Product("trastuzumab", "L01FD01", "iv", "Trazimera"),
    Product("trastuzumab", "L01FD01", "iv", "Zercepac"),
    Product("pertuzumab", "L01FD02", "iv", "Perjeta"),
    Product("pertuzumab/trastuzumab", "L01FY01", "sc", "Phesgo"),
    Product("trastuzumab emtansine", "L01FD03", "iv", "Kadcyla"),
    Product("trastuzumab deruxtecan", "L01FD04", "iv", "Enhertu"),
    Product("margetuximab", "L01FD06", "iv", "Margenza"),
    Product("lapatinib", "L01EH01", "oral", "Tyverb"),
    Product("neratinib", "L01EH02", "oral", "Nerlynx"),
    Product("tucatinib", "L01EH03", "oral", "Tukysa"),
    Product("docetaxel", "L01CD02", "iv", "Taxotere"),
    Product("paclitaxel", "L01CD01", "iv", "Taxol"),
    Product("nab-paclitaxel", "L01CD01", "iv", "Abraxane"),
    Product("capecitabine", "L01BC06", "oral", "Xeloda"),
    Product("vinorelbine", "L01CA04", "iv", "Navelbine"),
    Product("eribulin", "L01XX41", "iv", "Halaven"),
    Product("gemcitabine", "L01BC05", "iv", "Gemzar"),
    Product("letrozole", "L02BG04", "oral", "Femara"),
    Product("anastrozole", "L02BG03", "oral", "Arimidex"),
    Product("exemestane", "L02BG06", "oral", "Aromasin"),
    Product("fulvestrant", "L02BA03", "im", "Faslodex"),
    Product("tamoxifen", "L02BA01", "oral", "Nolvadex"),
    Product("palbociclib", "L01EF01", "oral", "Ibrance"),
    Product("ribociclib", "L01EF02", "oral", "Kisqali"),
    Product("abemaciclib", "L01EF03", "oral", "Verzenios"),
    Product("goserelin", "L02AE03", "sc", "Zoladex", "ofs"),
    Product("leuprorelin", "L02AE02", "sc", "Eligard", "ofs"),
    Product("denosumab", "M05BX04", "sc", "Xgeva", "supportive"),
    Product("zoledronic acid", "M05BA08", "iv", "Zometa", "supportive"),
    Product("ondansetron", "A04AA01", "oral", "Zofran", "supportive"),
)
_P = {p.brand: i for i, p in enumerate(PRODUCTS)}
BIOSIMILARS = ("Kanjinti", "Ogivri", "Herzuma", "Ontruzant", "Trazimera", "Zercepac")
US_SUFFIX = {"Kanjinti": "anns", "Ogivri": "dkst", "Herzuma": "pkrb", "Ontruzant": "dttb"}
US_SUFFIX |= {"Trazimera": "qyyp", "Zercepac": "strf"}
STOP_CODES = ("", "progression", "toxicity", "completed", "death", "other")
_STOP = {s: i for i, s in enumerate(STOP_CODES)}

# ---------------------------------------------------------------------------
# regimens: parts and the classes the line-of-therapy rules compare

_CLASSES = [
    "trastuzumab",
    "pertuzumab",
    "taxane",
    "fluoropyrimidine",
    "ai",
    "tamoxifen",
    "fulvestrant",
    "tdm1",
    "tdxd",
    "tucatinib",
    "lapatinib",
    "neratinib",
    "vinorelbine",
    "eribulin",
    "gemcitabine",
    "cdk46",
    "margetuximab",
]
BIT = {c: 1 << i for i, c in enumerate(_CLASSES)}
ET_BITS = BIT["ai"] | BIT["tamoxifen"] | BIT["fulvestrant"]
HER2_BITS = (
    sum(
        BIT[c]
        for c in (
            "trastuzumab",
            "pertuzumab",
            "tdm1",
            "tdxd",
            "tucatinib",
            "lapatinib",
            "neratinib",
        )
    )
    | BIT["margetuximab"]
)
PART_CLASS = {
    "H": "trastuzumab",
    "P": "pertuzumab",
    "TAX": "taxane",
    "CAP": "fluoropyrimidine",
    "TDM1": "tdm1",
    "TDXD": "tdxd",
    "TUC": "tucatinib",
    "LAP": "lapatinib",
    "NER": "neratinib",
    "VIN": "vinorelbine",
    "ERI": "eribulin",
    "GEM": "gemcitabine",
    "CDK": "cdk46",
    "MARG": "margetuximab",
}
ONCE = {"TDM1", "TDXD", "TUC", "LAP", "NER", "VIN", "ERI", "GEM", "CDK", "MARG"}


@dataclass(frozen=True)
class Regimen:
    key: str
    label: str  # the label of cohorts.md's regimen vocabulary
    parts: tuple[str, ...]
    pfs: float  # relative PFS (line medians are calibrated, this shapes the mix)

    @property
    def anti_her2(self) -> bool:
        return bool({"H", "TDM1", "TDXD", "TUC", "LAP", "NER", "MARG"} & set(self.parts))


REGIMENS: tuple[Regimen, ...] = (
    Regimen("THP", "THP", ("H", "P", "TAX"), 1.15),
    Regimen("TH", "TH", ("H", "TAX"), 0.9),
    Regimen("HP", "HP", ("H", "P"), 0.9),
    Regimen("HP+ET", "HP+ET", ("H", "P", "ET"), 1.0),
    Regimen("H+ET", "H+ET", ("H", "ET"), 0.8),
    Regimen("T-DM1", "T-DM1", ("TDM1",), 1.0),
    Regimen("T-DXd", "T-DXd", ("TDXD",), 1.7),
    Regimen("TTC", "TTC", ("TUC", "H", "CAP"), 1.0),
    Regimen("LapCap", "LapCap", ("LAP", "CAP"), 0.85),
    Regimen("LapH", "LapH", ("LAP", "H"), 0.8),
    Regimen("NerCap", "NerCap", ("NER", "CAP"), 0.9),
    Regimen("H+vin", "H+chemo", ("H", "VIN"), 0.9),
    Regimen("H+cap", "H+chemo", ("H", "CAP"), 0.9),
    Regimen("H+eri", "H+chemo", ("H", "ERI"), 0.85),
    Regimen("H+gem", "H+chemo", ("H", "GEM"), 0.8),
    Regimen("Marg+cap", "Marg+chemo", ("MARG", "CAP"), 0.85),
    Regimen("CDK+ET", "CDK4/6i+ET", ("CDK", "ET"), 0.9),
    Regimen("ET", "ET alone", ("ET",), 0.7),
    Regimen("cap", "chemo alone", ("CAP",), 0.65),
    Regimen("eri", "chemo alone", ("ERI",), 0.6),
    Regimen("vin", "chemo alone", ("VIN",), 0.6),
)
R = {r.key: i for i, r in enumerate(REGIMENS)}
_CORE = np.array(
    [sum(BIT[PART_CLASS[p]] for p in r.parts if p != "ET") for r in REGIMENS], dtype=np.int64
)
_ONCE = np.array(
    [sum(BIT[PART_CLASS[p]] for p in r.parts if p in ONCE) for r in REGIMENS], dtype=np.int64
)
_HAS_ET = np.array(["ET" in r.parts for r in REGIMENS])
_PFS = np.array([r.pfs for r in REGIMENS])

# Later-line mixes by era: T-DXd and tucatinib reached European practice in 2021
# (3L+) and 2022 (T-DXd in 2L); before that T-DM1 was the 2L standard.
LATER: dict[str, dict[int, dict[str, float]]] = {
    "pre": {
        2: {
            "T-DM1": 0.55,
            "LapCap": 0.10,
            "LapH": 0.02,
            "H+vin": 0.08,
            "H+cap": 0.07,
            "H+eri": 0.03,
            "NerCap": 0.01,
            "H+ET": 0.05,
            "CDK+ET": 0.02,
            "TH": 0.02,
            "cap": 0.03,
            "ET": 0.02,
        },
        3: {
            "LapCap": 0.22,
            "T-DM1": 0.20,
            "H+vin": 0.12,
            "H+cap": 0.08,
            "H+eri": 0.08,
            "H+gem": 0.04,
            "LapH": 0.05,
            "NerCap": 0.03,
            "CDK+ET": 0.04,
            "H+ET": 0.04,
            "cap": 0.04,
            "eri": 0.03,
            "vin": 0.03,
        },
    },
    "post": {
        2: {
            "T-DXd": 0.65,
            "T-DM1": 0.08,
            "TTC": 0.10,
            "H+vin": 0.03,
            "H+cap": 0.03,
            "LapCap": 0.02,
            "H+ET": 0.03,
            "CDK+ET": 0.02,
            "cap": 0.02,
            "ET": 0.02,
        },
        3: {
            "TTC": 0.28,
            "T-DM1": 0.22,
            "T-DXd": 0.30,
            "LapCap": 0.05,
            "H+vin": 0.05,
            "H+eri": 0.04,
            "H+cap": 0.03,
            "NerCap": 0.02,
            "CDK+ET": 0.03,
            "H+ET": 0.02,
            "cap": 0.02,
            "eri": 0.02,
            "vin": 0.02,
        },
    },
}
NON_HER2_FIRST = {
    ET_ONLY: {"ET": 0.85, "CDK+ET": 0.15},
    CHEMO_ONLY: {"cap": 0.6, "vin": 0.25, "eri": 0.15},
}
NON_HER2_LATER = {"cap": 0.4, "vin": 0.2, "eri": 0.2, "ET": 0.2}


# ---------------------------------------------------------------------------
# country profiles


@dataclass(frozen=True)
class Profile:
    """One country's cohort: who is diagnosed, how they are treated, how lines end.

    ``pfs_months`` are the medians a site's records should show per line
    (Kaplan-Meier on progression or death); ``pfs_knob``, ``p_next``,
    ``attrition``, ``death_first`` and ``survival_scale`` are the generator's
    knobs, tuned by simulation so that the observed figures match
    ``targets`` (quoting ``shared/cohorts.md``; where it is silent, ``source``
    says which values are merely plausible).
    """

    country: str
    source: str
    dx_years: tuple[int, int]
    follow_up_years: int
    age_median: float  # of the anti-HER2-treated patients
    age_untreated: float  # median age of patients who never receive anti-HER2 therapy
    p_untreated: float
    p_de_novo: float
    p_hr_pos: float
    p_brain: float
    first_line: Mapping[str, float]
    first_line_hr_neg: Mapping[str, float] | None
    pfs_months: tuple[float, ...]
    pfs_knob: tuple[float, ...]
    p_next: tuple[float, ...]
    attrition: Mapping[str, float]  # after a progression without a next line
    targets: Mapping[str, float]
    next_odds_hr_neg: float = 1.0
    later_bias: Mapping[str, float] = field(default_factory=dict)
    p_holiday: float = 0.2  # first-line anti-HER2 therapy stopped in remission
    death_first: float = 0.10  # share of 1L PFS events that are deaths (+3 points per line)
    survival_scale: float = 1.0  # stretches survival after the last progression
    documents_lines: bool = False
    nordic_supply: bool = False  # 90-day endocrine prescriptions
    us_names: bool = False


EU_ATTRITION = {"death": 0.01, "palliative": 0.286, "lost": 0.277, "other": 0.428}
EU5_FIRST = {
    "THP": 0.55,
    "TH": 0.10,
    "HP+ET": 0.12,
    "H+ET": 0.10,
    "HP": 0.05,
    "H+vin": 0.04,
    "H+cap": 0.02,
    "T-DM1": 0.02,
}


def _eu5(country: str, **changes: Any) -> Profile:
    base = Profile(
        country=country,
        source="EU-5 EMR study (Breast Cancer Res Treat 2025): de novo 60.9%, no 2L 29.6% "
        "of treated, reasons death/other/palliative/lost 37.4/29.9/15.0/14.0%; 1L PFS 18.9 mo",
        dx_years=(2017, 2021),
        follow_up_years=3,
        age_median=57.0,
        age_untreated=70.0,
        p_untreated=0.08,
        p_de_novo=0.609,
        p_hr_pos=0.60,
        p_brain=0.27,
        first_line=EU5_FIRST,
        first_line_hr_neg=None,
        pfs_months=(18.9, 8.0, 6.0, 5.0, 4.5),
        pfs_knob=(19.72, 8.1, 6.62, 5.42, 4.88),
        p_next=(0.865, 0.75, 0.70, 0.65),
        attrition=EU_ATTRITION,
        targets={
            "age_median": 58.0,
            "de_novo": 0.609,
            "hr_pos": 0.60,
            "no_2l": 0.296,
            "tot_1l": 8.0,
            "pfs_1": 18.9,
            "r_death": 0.374 / 0.963,
            "r_pal": 0.150 / 0.963,
            "r_lost": 0.140 / 0.963,
            "r_other": 0.299 / 0.963,
        },
        p_holiday=0.79,
        death_first=0.044,
    )
    return replace(base, **changes)


PROFILES: dict[str, Profile] = {
    "GR": Profile(
        country="GR",
        source="togetHER (BMC Cancer 2025): median age 57, recurrent 68%, HR+ 63%, brain ~30%, "
        "PFS 7.7/6.4/5.6 mo (2L/3L/4L), OS ~25 mo from 2L start",
        dx_years=(2013, 2018),
        follow_up_years=3,
        age_median=56.5,
        age_untreated=68.0,
        p_untreated=0.05,
        p_de_novo=0.32,
        p_hr_pos=0.63,
        p_brain=0.30,
        first_line={
            "THP": 0.72,
            "TH": 0.10,
            "HP+ET": 0.05,
            "H+ET": 0.04,
            "HP": 0.02,
            "H+vin": 0.03,
            "H+cap": 0.02,
            "T-DM1": 0.02,
        },
        first_line_hr_neg=None,
        pfs_months=(15.0, 7.7, 6.4, 5.6, 5.0),
        pfs_knob=(15.05, 8.79, 7.94, 6.77, 6.04),
        p_next=(0.82, 0.78, 0.72, 0.65),
        attrition=EU_ATTRITION,
        targets={
            "age_median": 57.0,
            "de_novo": 0.32,
            "hr_pos": 0.63,
            "brain": 0.30,
            "pfs_2": 7.7,
            "pfs_3": 6.4,
            "pfs_4": 5.6,
            "os_from_2l": 25.0,
        },
        documents_lines=True,
        survival_scale=0.419,
    ),
    "NO": Profile(
        country="NO",
        source="Norwegian registries (Int J Cancer 2026): median age 60, relapsed 66%, HR+ 62%, "
        "2L 43% / 3L 25% / 4L 11% of all, 1L P+H 55% / H without P 41%, 28% no anti-HER2 "
        "(median age 74 vs 55), T-DM1 41% of 2L",
        dx_years=(2012, 2021),
        follow_up_years=2,
        age_median=55.0,
        age_untreated=74.0,
        p_untreated=0.28,
        p_de_novo=0.34,
        p_hr_pos=0.62,
        p_brain=0.28,
        first_line={
            "THP": 0.50,
            "HP+ET": 0.04,
            "HP": 0.01,
            "TH": 0.25,
            "H+ET": 0.08,
            "H+vin": 0.06,
            "H+cap": 0.02,
            "T-DM1": 0.02,
            "LapCap": 0.02,
        },
        first_line_hr_neg=None,
        pfs_months=(10.0, 7.0, 5.5, 5.0, 4.5),
        pfs_knob=(11.25, 8.11, 6.43, 5.83, 5.25),
        p_next=(0.599, 0.757, 0.474, 0.55),
        attrition=EU_ATTRITION,
        targets={
            "age_median": 60.0,
            "de_novo": 0.34,
            "hr_pos": 0.62,
            "reach_2": 0.43,
            "reach_3": 0.25,
            "reach_4": 0.11,
            "no_anti_her2": 0.28,
            "first_line_p": 0.55,
            "first_line_h_only": 0.41,
            "tot_1l": 7.2,
        },
        p_holiday=0.522,
        later_bias={"T-DM1": 0.7},
        nordic_supply=True,
        survival_scale=1.5,
    ),
    "DE": Profile(
        country="DE",
        source="PRAEGNANT (2012-2022): 1L P+H 57.8%, P(2L within 5 y) = 0.67, attrition 31.3%; "
        "age, de novo and PFS plausible values",
        dx_years=(2013, 2020),
        follow_up_years=3,
        age_median=55.0,
        age_untreated=68.0,
        p_untreated=0.08,
        p_de_novo=0.45,
        p_hr_pos=0.62,
        p_brain=0.27,
        first_line={
            "THP": 0.48,
            "HP+ET": 0.10,
            "TH": 0.15,
            "H+ET": 0.12,
            "H+vin": 0.08,
            "H+cap": 0.04,
            "T-DM1": 0.03,
        },
        first_line_hr_neg=None,
        pfs_months=(16.0, 8.0, 6.0, 5.0, 4.5),
        pfs_knob=(16.77, 8.83, 7.05, 5.82, 5.24),
        p_next=(0.771, 0.72, 0.68, 0.62),
        attrition=EU_ATTRITION,
        targets={"age_median": 56.0, "de_novo": 0.45, "hr_pos": 0.62, "cif_2l_5y": 0.67},
    ),
    "FR": _eu5("FR"),
    "ES": _eu5("ES"),
    "UK": _eu5("UK"),
    "IT": _eu5(
        "IT",
        pfs_knob=(20.62, 8.17, 6.6, 5.42, 4.88),
        p_next=(0.895, 0.75, 0.7, 0.65),
        death_first=0.074,
        source="EU-5 EMR study (as FR/ES/UK) and the Italian ambispective study: THP 38.4% "
        "of 1L, attrition (no 2L and death within 6 months of 1L end) 7.1%",
        age_median=59.0,
        first_line={
            "THP": 0.42,
            "TH": 0.18,
            "HP+ET": 0.10,
            "H+ET": 0.12,
            "HP": 0.04,
            "H+vin": 0.06,
            "H+cap": 0.05,
            "T-DM1": 0.03,
        },
        targets={"age_median": 60.0, "de_novo": 0.609, "hr_pos": 0.60, "no_2l": 0.296, "a4": 0.071},
        documents_lines=True,
    ),
    "NL": Profile(
        country="NL",
        source="SONABRE (2013-2018): 1L THP in 29% of HR+ and 73% of HR-; continuation to 2L "
        "61-80% by HR status; other figures plausible values",
        dx_years=(2013, 2018),
        follow_up_years=3,
        age_median=58.0,
        age_untreated=72.0,
        p_untreated=0.10,
        p_de_novo=0.45,
        p_hr_pos=0.62,
        p_brain=0.25,
        first_line={
            "THP": 0.32,
            "TH": 0.12,
            "HP+ET": 0.25,
            "H+ET": 0.20,
            "HP": 0.04,
            "H+vin": 0.04,
            "T-DM1": 0.03,
        },
        first_line_hr_neg={"THP": 0.79, "TH": 0.10, "HP": 0.03, "H+vin": 0.05, "T-DM1": 0.03},
        pfs_months=(15.0, 7.5, 6.0, 5.0, 4.5),
        pfs_knob=(16.13, 8.68, 7.31, 6.03, 5.43),
        p_next=(0.926, 0.75, 0.70, 0.62),
        next_odds_hr_neg=0.16,
        attrition=EU_ATTRITION,
        targets={
            "age_median": 59.0,
            "hr_pos": 0.62,
            "thp_hr_pos": 0.29,
            "thp_hr_neg": 0.73,
            "continue_hr_pos": 0.80,
            "continue_hr_neg": 0.61,
        },
        death_first=0.06,
    ),
    "DK": Profile(
        country="DK",
        source="Danish Breast Cancer Group (2014-2019): median OS 42.3 mo, PFS 13.4/6.6/5.8 mo "
        "(1L/2L/3L); other figures plausible values",
        dx_years=(2014, 2019),
        follow_up_years=3,
        age_median=59.0,
        age_untreated=72.0,
        p_untreated=0.10,
        p_de_novo=0.40,
        p_hr_pos=0.61,
        p_brain=0.27,
        first_line={
            "THP": 0.70,
            "TH": 0.10,
            "HP+ET": 0.06,
            "H+ET": 0.06,
            "H+vin": 0.05,
            "T-DM1": 0.03,
        },
        first_line_hr_neg=None,
        pfs_months=(13.4, 6.6, 5.8, 5.0, 4.5),
        pfs_knob=(13.67, 7.61, 7.07, 5.99, 5.39),
        p_next=(0.8, 0.75, 0.7, 0.62),
        attrition=EU_ATTRITION,
        targets={
            "age_median": 60.0,
            "hr_pos": 0.61,
            "os": 42.3,
            "pfs_1": 13.4,
            "pfs_2": 6.6,
            "pfs_3": 5.8,
        },
        documents_lines=True,
        nordic_supply=True,
        survival_scale=2.501,
    ),
    "US": Profile(
        country="US",
        source="US EHR database (1L 2013-2021): trastuzumab-based 1L 77.5% (THP 38.9%), "
        "rwPFS 11.5 mo, OS 40.3 mo from 1L start",
        dx_years=(2013, 2021),
        follow_up_years=2,
        age_median=56.0,
        age_untreated=66.0,
        p_untreated=0.20,
        p_de_novo=0.40,
        p_hr_pos=0.62,
        p_brain=0.25,
        first_line={
            "THP": 0.49,
            "TH": 0.18,
            "HP+ET": 0.09,
            "H+ET": 0.09,
            "HP": 0.05,
            "H+cap": 0.03,
            "H+vin": 0.03,
            "T-DM1": 0.04,
        },
        first_line_hr_neg=None,
        pfs_months=(11.5, 7.0, 6.0, 5.0, 4.5),
        pfs_knob=(12.58, 7.86, 6.97, 5.79, 5.21),
        p_next=(0.82, 0.75, 0.7, 0.62),
        attrition=EU_ATTRITION,
        targets={"age_median": 58.0, "hr_pos": 0.62, "pfs_1": 11.5, "os_from_1l": 40.3},
        later_bias={"Marg+cap": 1.0},
        us_names=True,
        survival_scale=2.148,
    ),
}
PROFILES["GB"] = PROFILES["UK"]
# One site per published cohort of cohorts.md, at its published size (the EU-5
# study's 496 patients split over its French, Spanish and British sites).
DEFAULT_SITES = (
    "athens:GR:122,oslo:NO:715,paris:FR:166,madrid:ES:165,london:UK:165,munich:DE:879,"
    "boston:US:2074,amsterdam:NL:330,copenhagen:DK:631,milan:IT:622"
)


def profile(country: str) -> Profile:
    """The profile of a country code; unknown codes are an error naming the known ones."""
    key = country.strip().upper()
    if key not in PROFILES:
        raise ValueError(f"unknown country {country!r}; known: {', '.join(sorted(PROFILES))}")
    return PROFILES[key]


# ---------------------------------------------------------------------------
# site style: how this hospital's extract looks


@dataclass(frozen=True)
class Style:
    """How one hospital's systems write an extract.

    Sites differ in more than their patients: naming (brands, ingredients,
    ATC codes, letter case), which optional columns exist, whether supportive
    care is recorded, where palliative care and transfers are kept. Drawing
    these per site exercises every path of the loader and the line rules.
    """

    brand_share: float
    case: str
    atc_rows: float
    atc_column: bool
    route_column: bool
    iv_end_date: bool
    oral_end_date: bool
    stop_reasons: bool
    supportive: bool
    care_mode: str  # columns | table | both
    ecog_missing: float
    met_sites_missing: float
    initial_dx_missing: float
    documents_lines: bool
    biosimilars: tuple[str, ...]


def _style(rng: np.random.Generator, prof: Profile) -> Style:
    return Style(
        brand_share=float(rng.uniform(0.1, 0.7)),
        case=str(rng.choice(["lower", "title", "upper"], p=[0.5, 0.3, 0.2])),
        atc_rows=float(rng.choice([0.0, 0.02, 0.05])),
        atc_column=bool(rng.random() < 0.5),
        route_column=bool(rng.random() < 0.7),
        iv_end_date=bool(rng.random() < 0.5),
        oral_end_date=bool(rng.random() < 0.3),
        stop_reasons=bool(rng.random() < 0.6),
        supportive=bool(rng.random() < 0.8),
        care_mode=str(rng.choice(["columns", "table", "both"], p=[0.4, 0.2, 0.4])),
        ecog_missing=float(rng.uniform(0.05, 0.4)),
        met_sites_missing=float(rng.uniform(0.0, 0.15)),
        initial_dx_missing=float(rng.uniform(0.0, 0.1)),
        documents_lines=prof.documents_lines,
        biosimilars=tuple(str(b) for b in rng.choice(BIOSIMILARS, size=2, replace=False)),
    )


# ---------------------------------------------------------------------------
# the cohort


@dataclass(frozen=True)
class SynthCohort:
    """The four schema frames plus the truth they were generated from.

    ``lines`` has one row per patient x line: intended regimen, start, the day
    administrations stopped, progression, observed PFS (what a site's records
    show: progression or death, censored at a switch without progression or at
    the data cut) and how the line ended. The patients frame carries hidden
    ``_`` columns: exact age, treatment group, number of lines, and what
    happened after the last line.
    """

    frames: dict[str, pd.DataFrame]
    lines: pd.DataFrame
    profile: Profile
    style: Style
    cut: pd.Timestamp


def _day(values: npt.ArrayLike) -> pd.Series:
    """Day numbers (days since 1970-01-01; NaN or inf = missing) as datetime64[ns]."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    out = np.full(v.shape, np.datetime64("NaT"), dtype="datetime64[D]")
    out[ok] = v[ok].astype(np.int64).astype("datetime64[D]")
    return pd.Series(out.astype("datetime64[ns]"))


def _daynum(text: str) -> int:
    return int(np.datetime64(text, "D").astype(np.int64))


def _loglogistic(rng: np.random.Generator, n: int, shape: float) -> FloatArray:
    """Median-1 log-logistic draws: symmetric on the log scale, so frailty keeps medians."""
    u = rng.uniform(1e-9, 1 - 1e-9, n)
    out: FloatArray = (u / (1 - u)) ** (1 / shape)
    return out


def _pick(rng: np.random.Generator, weights: FloatArray) -> IntArray:
    """One column per row, proportional to the row's weights; -1 where all weights are 0."""
    cum = np.cumsum(weights, axis=1)
    total = cum[:, -1]
    u = rng.random(len(weights)) * total
    idx = np.minimum((cum <= u[:, None]).sum(axis=1), weights.shape[1] - 1)
    out: IntArray = np.where(total > 0, idx, -1).astype(np.int64)
    return out


def _vector(weights: Mapping[str, float], bias: Mapping[str, float] | None = None) -> FloatArray:
    v = np.zeros(len(REGIMENS))
    for key, w in weights.items():
        v[R[key]] = w * (bias or {}).get(key, 1.0)
    return v


def _expit(x: FloatArray) -> FloatArray:
    out: FloatArray = 1 / (1 + np.exp(-x))
    return out


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def _groups(counts: IntArray) -> tuple[IntArray, IntArray]:
    """For ragged groups of the given sizes: each element's group and index within it."""
    counts = np.maximum(counts, 0)
    group = np.repeat(np.arange(counts.size), counts)
    offsets = np.cumsum(counts) - counts
    within = np.arange(group.size) - np.repeat(offsets, counts)
    return group.astype(np.int64), within.astype(np.int64)


@dataclass
class _Baseline:
    n: int
    met: IntArray
    cut: int
    age: FloatArray
    male: BoolArray
    hr_pos: BoolArray
    hr_unknown: BoolArray
    de_novo: BoolArray
    brain: BoolArray
    bone: BoolArray
    ecog: IntArray
    group: IntArray
    frailty: FloatArray


def _baseline(rng: np.random.Generator, prof: Profile, n: int) -> _Baseline:
    first = _daynum(f"{prof.dx_years[0]}-01-01")
    last = _daynum(f"{prof.dx_years[1]}-12-31")
    cut = _daynum(f"{prof.dx_years[1] + prof.follow_up_years}-12-31")
    met = rng.integers(first, last + 1, n).astype(np.int64)
    untreated = rng.random(n) < prof.p_untreated
    age = np.where(
        untreated, rng.normal(prof.age_untreated, 9.0, n), rng.normal(prof.age_median, 11.0, n)
    )
    age = np.clip(age, 24.0, 94.0)
    male = rng.random(n) < 0.01
    u_hr = rng.random(n)
    hr_unknown = u_hr > 0.985
    hr_pos = u_hr < prof.p_hr_pos
    de_novo = rng.random(n) < prof.p_de_novo
    brain = rng.random(n) < prof.p_brain
    bone = rng.random(n) < 0.57
    shift = np.clip((age - 60.0) / 50.0, -0.3, 0.6)
    cum = np.cumsum([0.42, 0.38, 0.13, 0.05, 0.02])
    ecog = np.minimum(4, np.searchsorted(cum, np.clip(rng.random(n) + 0.25 * shift, 0, 0.999)))
    u_grp = rng.random(n)
    group = np.where(
        ~untreated,
        ANTI_HER2,
        np.where(
            hr_pos,
            np.where(u_grp < 0.55, ET_ONLY, np.where(u_grp < 0.7, CHEMO_ONLY, NO_THERAPY)),
            np.where(u_grp < 0.45, CHEMO_ONLY, NO_THERAPY),
        ),
    ).astype(np.int64)
    frailty = (
        rng.normal(0.0, 0.25, n) - 0.25 * (ecog >= 2) - 0.15 * brain - 0.10 * (age >= 70)
    ) + 0.05 * hr_pos
    return _Baseline(
        n,
        met,
        cut,
        age,
        male,
        hr_pos,
        hr_unknown,
        de_novo,
        brain,
        bone,
        ecog.astype(np.int64),
        group,
        frailty,
    )


@dataclass
class _Outcome:
    death: FloatArray
    palliative: FloatArray
    transfer: FloatArray
    state: npt.NDArray[np.object_]  # what happened after the last line
    n_lines: IntArray


def _first_line_weights(prof: Profile, b: _Baseline, idx: IntArray) -> FloatArray:
    pos_v = _vector(prof.first_line)
    neg_mix = prof.first_line_hr_neg or {
        k: v for k, v in prof.first_line.items() if not _HAS_ET[R[k]]
    }
    neg_v = _vector(neg_mix)
    g = b.group[idx]
    w = np.where(b.hr_pos[idx][:, None], pos_v, neg_v)
    for grp, mix in NON_HER2_FIRST.items():
        w[g == grp] = _vector(mix)
    return w


def _later_weights(
    prof: Profile, b: _Baseline, idx: IntArray, k: int, year: FloatArray
) -> FloatArray:
    tier = min(k, 3)
    pre_v = _vector(LATER["pre"][tier], prof.later_bias)
    post_v = _vector(LATER["post"][tier], prof.later_bias)
    is_post = (year >= 2022) | ((year >= 2021) & (k >= 3))
    w = np.where(is_post[:, None], post_v, pre_v)
    w[b.group[idx] != ANTI_HER2] = _vector(NON_HER2_LATER)
    w[:, R["Marg+cap"]] *= year >= 2021
    return w


def _simulate(
    rng: np.random.Generator, prof: Profile, b: _Baseline
) -> tuple[dict[str, npt.NDArray[np.generic]], _Outcome]:
    """Lines of therapy, vectorised over patients one line number at a time."""
    n, cut = b.n, b.cut
    death = np.full(n, np.inf)
    palliative = np.full(n, np.inf)
    transfer = np.full(n, np.inf)
    state = np.full(n, "", dtype=object)
    n_lines = np.zeros(n, dtype=np.int64)
    cols: dict[str, list[npt.NDArray[np.generic]]] = {}
    start = np.where(b.group == NO_THERAPY, np.inf, b.met + 7 + np.round(rng.gamma(2.0, 12.0, n)))
    prev = np.zeros(n, dtype=np.int64)  # classes of the previous line
    used = np.zeros(n, dtype=np.int64)  # drugs given once per patient
    premeno = ~b.male & (b.age < 50)
    p_next = prof.p_next + (prof.p_next[-1],) * MAX_LINES
    pfs_m = prof.pfs_knob + (prof.pfs_knob[-1],) * MAX_LINES
    et_bits = np.array([BIT["ai"], BIT["tamoxifen"], BIT["fulvestrant"]])
    for k in range(1, MAX_LINES + 1):
        idx = np.flatnonzero(np.isfinite(start) & (start <= cut))
        if idx.size == 0:
            break
        s = start[idx]
        year = 1970 + s / 365.2425
        w = _first_line_weights(prof, b, idx) if k == 1 else _later_weights(prof, b, idx, k, year)
        w[:, _HAS_ET] *= b.hr_pos[idx][:, None]
        w[:, R["T-DXd"]] *= year >= 2021
        w[:, R["TTC"]] *= year >= 2021
        w *= (_ONCE[None, :] & used[idx][:, None]) == 0
        if k > 1:
            # A next line needs a drug class the previous line did not have. A new endocrine
            # drug alone does not do: started while trastuzumab continues it is maintenance of
            # the same line (the study's rule set says so, and so would most clinicians).
            new_core = (_CORE[None, :] & ~prev[idx][:, None]) != 0
            no_her2 = (prev[idx] & HER2_BITS) == 0
            new_et = _HAS_ET[None, :] & (((ET_BITS & ~prev[idx]) != 0) & no_her2)[:, None]
            w *= new_core | new_et
        reg = _pick(rng, w)
        stuck = idx[reg < 0]  # no regimen left that would be a new line
        state[stuck] = "other"
        death[stuck] = start[stuck] + rng.lognormal(np.log(8 * DAYS_PER_MONTH), 0.7, stuck.size)
        start[stuck] = np.inf
        keep = reg >= 0
        idx, s, reg, year = idx[keep], s[keep], reg[keep], year[keep]
        m = idx.size
        if m == 0:
            break
        n_lines[idx] = k
        age, ecog, her2 = b.age[idx], b.ecog[idx], b.group[idx] == ANTI_HER2
        # endocrine partner, or endocrine maintenance after the taxane
        maint = np.isin(reg, [R["THP"], R["TH"]]) & b.hr_pos[idx] & (rng.random(m) < 0.45)
        pm, ml = premeno[idx], b.male[idx]
        et_w = np.column_stack(
            [
                np.where(pm, 0.6, np.where(ml, 0.2, 0.7)),
                np.where(pm, 0.4, np.where(ml, 0.7, 0.15)),
                np.where(pm, 0.0, np.where(ml, 0.1, 0.15)),
            ]
        )
        in_prev = (prev[idx][:, None] & et_bits[None, :]) != 0
        core_new = (_CORE[reg] & ~prev[idx]) != 0
        et_w = np.where(in_prev, np.where(core_new[:, None], 0.1 * et_w, 0.0), et_w)
        et_w[et_w.sum(axis=1) == 0] = 1.0
        et_cls = np.where(_HAS_ET[reg] | maint, _pick(rng, et_w), -1)
        et_bit = np.where(et_cls >= 0, et_bits[np.maximum(et_cls, 0)], 0)
        prev[idx] = _CORE[reg] | et_bit
        used[idx] |= _ONCE[reg]
        # how the line goes
        scale = pfs_m[k - 1] * DAYS_PER_MONTH
        t = scale * _PFS[reg] * np.exp(b.frailty[idx]) * _loglogistic(rng, m, 2.3)
        t = np.maximum(np.round(t), 28.0)  # first restaging scan after four weeks at the earliest
        d0 = min(prof.death_first + 0.03 * (k - 1), 0.4)
        p_death = _expit(_logit(d0) + 0.04 * (age - 60) + 0.6 * (ecog >= 2))
        dies = rng.random(m) < p_death
        # early stops: toxicity, or (first line) a treatment holiday in remission
        tox = rng.random(m) < 0.10
        early = np.where(tox, np.maximum(np.round(t * rng.uniform(0.3, 0.9, m)), 1.0), np.inf)
        holiday = her2 & (k == 1) & (rng.random(m) < prof.p_holiday)
        rest = np.where(holiday, np.round(rng.uniform(90.0, 400.0, m)), np.inf)
        tot = np.minimum(t, np.minimum(early, rest))
        why = np.where(tot < t, np.where(early <= rest, "toxicity", "completed"), "")
        gap_switch = 14 + rng.integers(0, 29, m)
        # a switch for toxicity starts the next line after the 28-day regimen window
        switch = (why == "toxicity") & ~dies & (rng.random(m) < 0.35)
        switch &= (tot + gap_switch < t) & (tot + gap_switch > 35)
        event = s + t
        stop = s + tot  # administrations are strictly before this day
        seen = event <= cut
        prog = np.where(~dies & ~switch & seen, event, np.inf)
        died = dies & seen
        death[idx[died]] = event[died]
        # after a progression: next line or not
        q_logit = (
            _logit(p_next[k - 1])
            - 0.035 * (age - 58)
            - 0.5 * (ecog >= 2)
            + np.log(prof.next_odds_hr_neg) * ~b.hr_pos[idx]
        )
        q = np.where(her2, _expit(q_logit), 0.3 if k == 1 else 0.0)
        if k == MAX_LINES:
            q[:] = 0.0
        progressed = np.isfinite(prog)
        goes_on = progressed & (rng.random(m) < q)
        gap = np.round(7 + rng.gamma(2.0, 9.0, m))
        nxt = np.full(m, np.inf)
        nxt[goes_on] = prog[goes_on] + gap[goes_on]
        nxt[switch] = stop[switch] + gap_switch[switch]
        start[:] = np.inf
        start[idx] = nxt
        end_reason = np.select(
            [stop > cut, why != "", died, progressed],
            [np.full(m, "on_treatment"), why, np.full(m, "death"), np.full(m, "progression")],
            "on_treatment",
        ).astype(object)
        state[idx] = np.where(
            np.isfinite(nxt) & (nxt > cut),
            "censored",
            np.where(
                died,
                "death",
                np.where(end_reason == "on_treatment", "on_treatment", "off_treatment"),
            ),
        )
        # attrition: progression and no next line
        stops = progressed & ~goes_on
        who, p_day = idx[stops], prog[stops]
        keys = ("death", "palliative", "lost", "other")
        weights = np.array([prof.attrition[key] for key in keys])
        choice = np.searchsorted(np.cumsum(weights / weights.sum()), rng.random(who.size))
        choice = np.minimum(choice, 3)
        state[who] = np.array(keys, dtype=object)[choice]
        stretch = prof.survival_scale
        d_death = p_day + 1 + np.round(rng.exponential(70.0 * stretch, who.size))
        pal_day = p_day + rng.integers(0, 61, who.size)
        d_pal = pal_day + 1 + np.round(rng.lognormal(np.log(40.0 * stretch), 0.7, who.size))
        pps = 18 * stretch * DAYS_PER_MONTH * np.exp(b.frailty[who])
        d_other = p_day + 1 + np.round(rng.lognormal(np.log(pps), 0.8))
        lost_day = p_day + 7 + rng.integers(0, 114, who.size)
        death[who] = np.select(
            [choice == 0, choice == 1, choice == 3], [d_death, d_pal, d_other], np.inf
        )
        palliative[who] = np.where(choice == 1, pal_day, np.inf)
        transfer[who] = np.where(choice == 2, lost_day, np.inf)
        pfs_end = np.minimum(np.minimum(event, cut), np.where(switch, nxt, np.inf))
        for name, values in (
            ("patient", idx),
            ("line", np.full(m, k)),
            ("regimen", reg),
            ("start", s),
            ("stop", np.minimum(stop, cut + 1)),
            ("progression", prog),
            ("pfs_days", pfs_end - s),
            ("pfs_event", ~switch & seen),
            ("end_reason", end_reason),
            ("next_start", nxt),
            ("et_cls", et_cls),
            ("maint", maint),
        ):
            cols.setdefault(name, []).append(np.asarray(values))
    none = b.group == NO_THERAPY
    t0 = rng.lognormal(np.log(9.0 * DAYS_PER_MONTH), 0.8, b.n) * np.exp(b.frailty)
    death[none] = b.met[none] + np.maximum(np.round(t0[none]), 7.0)
    pall = none & (rng.random(b.n) < 0.4)
    palliative[pall] = np.maximum(b.met[pall], death[pall] - rng.integers(10, 120, b.n)[pall])
    state[none] = "no_therapy"
    names = "patient line regimen start stop progression pfs_days pfs_event end_reason"
    names += " next_start et_cls maint"
    lines = {
        name: np.concatenate(cols[name]) if name in cols else np.zeros(0) for name in names.split()
    }
    return lines, _Outcome(death, palliative, transfer, state, n_lines)


# ---------------------------------------------------------------------------
# administrations and dispensings


class _Segments:
    """Runs of administrations, expanded into rows in one vectorised pass at the end."""

    FIELDS = ("patient", "line", "product", "first", "end", "interval", "count", "supply", "stop")

    def __init__(self) -> None:
        self.parts: dict[str, list[IntArray]] = {f: [] for f in self.FIELDS}

    def add(self, **fields: npt.ArrayLike) -> None:
        sizes = [np.size(v) for v in fields.values() if np.ndim(v) > 0]
        size = max(sizes) if sizes else 1
        for name in self.FIELDS:
            value = np.asarray(fields[name], dtype=np.float64)
            value = np.broadcast_to(value, (size,)) if value.ndim == 0 else value
            self.parts[name].append(np.round(value).astype(np.int64))

    def rows(self, rng: np.random.Generator) -> dict[str, IntArray]:
        seg = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in self.parts.items()}
        span = np.maximum(seg["end"] - seg["first"], 0)
        count = np.minimum(seg["count"], -(-span // np.maximum(seg["interval"], 1)))
        which, k = _groups(count)
        jitter = np.where(k > 0, rng.choice([0, 0, 0, 0, 1, 2, 3], size=k.size), 0)
        day = seg["first"][which] + k * seg["interval"][which] + jitter
        ok = day < seg["end"][which]
        out = {name: seg[name][which][ok] for name in ("patient", "line", "product", "supply")}
        out["day"] = day[ok]
        out["segment"] = which[ok] + 0
        out["stop"] = seg["stop"][which][ok]
        return out


def _visits(
    rng: np.random.Generator, start: FloatArray, stop: FloatArray
) -> tuple[IntArray, IntArray, IntArray]:
    """q21 clinic visits of each line with realistic delays: (first visit row, count, days)."""
    span = np.maximum(stop - start, 0)
    n_max = np.ceil(span / 21).astype(np.int64)
    line, k = _groups(n_max)
    delay = np.where(k == 0, 0, 21 + rng.choice([0] * 16 + [1, 2, 3, 5, 7], size=k.size))
    cs = np.cumsum(delay)
    first = np.cumsum(n_max) - n_max
    base = np.repeat(cs[np.minimum(first, max(cs.size - 1, 0))] if cs.size else cs, n_max)
    day = start[line].astype(np.int64) + cs - base
    inside = day < stop[line]
    n_vis = np.bincount(line[inside], minlength=start.size).astype(np.int64)
    return first.astype(np.int64), n_vis, day.astype(np.int64)


def _administrations(
    rng: np.random.Generator,
    prof: Profile,
    style: Style,
    b: _Baseline,
    lines: dict[str, npt.NDArray[np.generic]],
    initial: FloatArray,
) -> dict[str, IntArray]:
    """Every administration and dispensing of every line, as a hospital's systems record them."""
    segs = _Segments()
    n_l = lines["patient"].size
    pat = np.asarray(lines["patient"], dtype=np.int64)
    lno = np.asarray(lines["line"], dtype=np.int64)
    reg = np.asarray(lines["regimen"], dtype=np.int64)
    start = np.asarray(lines["start"], dtype=np.float64)
    stop = np.asarray(lines["stop"], dtype=np.float64)
    year = 1970 + start / 365.2425
    reason = np.asarray(lines["end_reason"], dtype=object)
    line_stop = np.array(
        [_STOP.get(r, 0) for r in reason],
        dtype=np.int64,
    )
    first_vis, n_vis, vis_day = _visits(rng, start, stop)
    parts = {p: np.array([p in r.parts for r in REGIMENS]) for p in PART_CLASS | {"ET": ""}}
    has = {p: v[reg] for p, v in parts.items()}

    def on_visits(
        mask: BoolArray,
        product: IntArray | int,
        k_from: IntArray | int = 0,
        k_to: IntArray | int = 10_000,
        supply: int = 0,
        stop_code: IntArray | int | None = None,
        offset: int = 0,
    ) -> None:
        sel = np.flatnonzero(mask)
        if sel.size == 0:
            return
        lo = np.broadcast_to(np.asarray(k_from), (n_l,))[sel]
        hi = np.minimum(np.broadcast_to(np.asarray(k_to), (n_l,))[sel], n_vis[sel])
        count = np.maximum(hi - lo, 0)
        which, k = _groups(count)
        li = sel[which]
        pos = first_vis[li] + lo[which] + k
        day = vis_day[pos] + offset
        prod = np.broadcast_to(np.asarray(product), (n_l,))[li]
        code = line_stop if stop_code is None else np.broadcast_to(np.asarray(stop_code), (n_l,))
        # one segment per row keeps the visit days exact; the last row carries the stop code
        last = k == count[which] - 1
        segs.add(
            patient=pat[li],
            line=lno[li],
            product=prod,
            first=day,
            end=np.where(offset > 0, stop[li], day + 1),
            interval=21,
            count=1,
            supply=supply,
            stop=np.where(last, code[li], 0),
        )

    def periodic(
        mask: BoolArray,
        product: IntArray | int,
        first: FloatArray,
        interval: IntArray | int,
        supply: IntArray | int = 0,
        count: IntArray | int = 10_000,
        role_line: bool = True,
        stop_code: IntArray | int | None = None,
    ) -> None:
        sel = np.flatnonzero(mask)
        if sel.size == 0:
            return
        code = line_stop if stop_code is None else np.broadcast_to(np.asarray(stop_code), (n_l,))
        segs.add(
            patient=pat[sel],
            line=lno[sel] if role_line else -1,
            product=np.broadcast_to(np.asarray(product), (n_l,))[sel],
            first=first[sel],
            end=stop[sel],
            interval=np.broadcast_to(np.asarray(interval), (n_l,))[sel],
            count=np.broadcast_to(np.asarray(count), (n_l,))[sel],
            supply=np.broadcast_to(np.asarray(supply), (n_l,))[sel],
            stop=code[sel] if role_line else 0,
        )

    u = rng.random((n_l, 18))  # one column per independent choice
    big = 10_000
    # trastuzumab product: originator IV, SC, or one of the site's biosimilars
    bios = np.array([_P[x] for x in style.biosimilars])
    p_bio = np.where(year >= 2019, 0.6, np.where(year >= 2018, 0.2, 0.0))
    h_prod = np.where(
        u[:, 0] < p_bio,
        bios[(u[:, 1] < 0.5).astype(np.int64)],
        np.where((u[:, 1] < 0.2) & (year >= 2014), _P["Herceptin SC"], _P["Herceptin"]),
    )
    switch_bio = (h_prod == _P["Herceptin"]) & (year >= 2017.5) & (year < 2020) & (u[:, 2] < 0.25)
    switch_at = np.where(switch_bio, 3 + (u[:, 3] * 8).astype(np.int64), big)
    # taxane: docetaxel q3w, weekly paclitaxel, or nab-paclitaxel; some switch for toxicity
    n_tax = np.array([4, 5, 6, 6, 6, 6, 6, 8, 8, 6])[(u[:, 4] * 10).astype(np.int64)]
    tax_kind = np.where(u[:, 5] < 0.68, 0, np.where(u[:, 5] < 0.95, 1, 2))
    tax_switch = (tax_kind == 0) & (u[:, 6] < 0.06)
    # pertuzumab: Phesgo from the start or at maintenance (2021+), or dropped for diarrhoea
    has_p = has["P"]
    chemo_end = np.where(has["TAX"], n_tax, 0)
    phesgo_at = np.where(
        has_p & (year >= 2021) & (u[:, 7] < 0.12),
        0,
        np.where(has_p & (year >= 2021) & (u[:, 7] < 0.40), np.maximum(chemo_end, 3), big),
    )
    p_drop = np.where(has_p & (phesgo_at == big) & (u[:, 8] < 0.05), 4 + (u[:, 9] * 6), big)
    p_drop = p_drop.astype(np.int64)

    # anti-HER2 antibodies
    h_end = np.minimum(phesgo_at, big)
    on_visits(
        has["H"],
        h_prod,
        0,
        np.minimum(h_end, switch_at),
        stop_code=np.where(switch_at < h_end, 0, np.where(phesgo_at < big, 0, line_stop)),
    )
    on_visits(
        has["H"] & (switch_at < h_end),
        bios[0],
        switch_at,
        h_end,
        stop_code=np.where(phesgo_at < big, 0, line_stop),
    )
    on_visits(
        has_p,
        _P["Perjeta"],
        0,
        np.minimum(phesgo_at, p_drop),
        stop_code=np.where(
            p_drop < big, _STOP["toxicity"], np.where(phesgo_at < big, 0, line_stop)
        ),
    )
    on_visits(has_p & (phesgo_at < big), _P["Phesgo"], phesgo_at, big)
    for part, name in (("TDM1", "Kadcyla"), ("TDXD", "Enhertu"), ("MARG", "Margenza")):
        on_visits(has[part], _P[name])
    # oral anti-HER2 drugs and capecitabine, dispensed at the cycle visits
    on_visits(has["TUC"], _P["Tukysa"], supply=21)
    on_visits(has["LAP"], _P["Tyverb"], supply=21)
    on_visits(has["NER"], _P["Nerlynx"], supply=21)
    on_visits(has["CAP"], _P["Xeloda"], supply=14)
    # taxanes
    completed = np.where(n_vis > n_tax, _STOP["completed"], line_stop)
    doce = has["TAX"] & (tax_kind == 0)
    sw_k = np.where(tax_switch, 2 + (u[:, 10] < 0.5), n_tax)
    on_visits(
        doce, _P["Taxotere"], 0, sw_k, stop_code=np.where(tax_switch, _STOP["toxicity"], completed)
    )
    weekly = has["TAX"] & ((tax_kind > 0) | tax_switch)
    w_first = np.where(tax_switch, start + 21 * sw_k, start)
    w_count = np.where(tax_switch, 3 * (n_tax - sw_k), 3 * n_tax)
    w_prod = np.where(tax_kind == 2, _P["Abraxane"], _P["Taxol"])
    periodic(
        weekly,
        w_prod,
        w_first,
        7,
        count=w_count,
        stop_code=np.where(start + 21 * n_tax < stop, _STOP["completed"], line_stop),
    )
    # other chemotherapy, days 1 and 8 of each cycle
    for part, name in (("VIN", "Navelbine"), ("ERI", "Halaven"), ("GEM", "Gemzar")):
        on_visits(has[part], _P[name], stop_code=0)
        on_visits(has[part], _P[name], offset=7)
    # endocrine therapy, CDK4/6 inhibitors and ovarian suppression
    et_cls = np.asarray(lines["et_cls"], dtype=np.int64)
    maint = np.asarray(lines["maint"], dtype=bool)
    ai = np.array([_P["Femara"], _P["Arimidex"], _P["Aromasin"]])
    et_prod = np.where(
        et_cls == 0,
        ai[np.searchsorted([0.5, 0.8], u[:, 11])],
        np.where(et_cls == 1, _P["Nolvadex"], _P["Faslodex"]),
    )
    # maintenance starts after the last taxane infusion (cycles can be delayed)
    last_tax = vis_day[first_vis + np.clip(np.minimum(n_tax, n_vis) - 1, 0, None)]
    after_tax = np.maximum(start + 21 * n_tax, last_tax + 21)
    et_first = np.where(maint, after_tax + (u[:, 12] * 21), start + (u[:, 13] * 8))
    et = et_cls >= 0
    supply = np.where(prof.nordic_supply & (u[:, 14] < 0.5), 90, 30)
    fulv = et & (et_cls == 2)
    periodic(et & ~fulv, et_prod, et_first, supply, supply=supply)
    periodic(fulv, _P["Faslodex"], et_first, 28)
    periodic(fulv, _P["Faslodex"], et_first + 14, 28, count=1, stop_code=0)
    cdk = np.array([_P["Ibrance"], _P["Kisqali"], _P["Verzenios"]])
    cdk_prod = cdk[np.searchsorted([0.55, 0.85], u[:, 15])]
    periodic(has["CDK"], cdk_prod, start, 28, supply=np.where(cdk_prod == cdk[2], 28, 21))
    premeno = ~b.male[pat] & (b.age[pat] < 50)
    ofs = et & premeno & ((et_cls != 1) | (u[:, 16] < 0.3))
    ofs_prod = np.where(u[:, 17] < 0.85, _P["Zoladex"], _P["Eligard"])
    periodic(ofs, ofs_prod, et_first, 28, role_line=False)
    # supportive care recorded by most sites: antiemetics with emetogenic infusions
    if style.supportive:
        emet = rng.random(n_l) < 0.6
        on_visits(
            emet & has["TAX"] & (tax_kind == 0), _P["Zofran"], 0, n_tax, supply=3, stop_code=0
        )
        on_visits(
            emet & (has["TDXD"] | has["ERI"] | has["GEM"]), _P["Zofran"], supply=3, stop_code=0
        )
    rows = segs.rows(rng)
    extra = _patient_level(rng, prof, b, lines, initial, style.biosimilars[0])
    out = {k: np.concatenate([rows[k], extra[k]]) for k in rows}
    # supportive care and ovarian suppression given during a line are not part of it
    not_line = np.array([x.role != "anticancer" for x in PRODUCTS])[out["product"]]
    out["line"] = np.where(not_line, -1, out["line"])
    return out


def _patient_level(
    rng: np.random.Generator,
    prof: Profile,
    b: _Baseline,
    lines: dict[str, npt.NDArray[np.generic]],
    initial: FloatArray,
    biosimilar: str,
) -> dict[str, IntArray]:
    """Bone-targeted agents across lines, and neo/adjuvant therapy before relapse."""
    segs = _Segments()
    n = b.n
    pat = np.asarray(lines["patient"], dtype=np.int64)
    first_start = np.full(n, np.inf)
    last_stop = np.full(n, -np.inf)
    np.minimum.at(first_start, pat, np.asarray(lines["start"], dtype=np.float64))
    np.maximum.at(last_stop, pat, np.asarray(lines["stop"], dtype=np.float64))
    treated = np.isfinite(first_start)
    bone = treated & b.bone & (rng.random(n) < 0.75)
    bone_prod = np.where(rng.random(n) < 0.78, _P["Xgeva"], _P["Zometa"])
    sel = np.flatnonzero(bone & (last_stop > first_start + 60))
    if sel.size:
        segs.add(
            patient=sel,
            line=-1,
            product=bone_prod[sel],
            first=first_start[sel] + rng.integers(0, 60, sel.size),
            end=np.minimum(last_stop[sel] + 90, b.cut + 1),
            interval=28,
            count=10_000,
            supply=0,
            stop=0,
        )
    # neo/adjuvant therapy of recurrent patients: chemotherapy + trastuzumab (+ pertuzumab),
    # T-DM1 for residual disease, endocrine therapy for HR+
    rec = np.flatnonzero(~b.de_novo)
    iy = 1970 + initial[rec] / 365.2425
    adj = rng.random(rec.size) < np.where(iy >= 2006, 0.8, 0.25)
    r = rec[adj]
    iy = iy[adj]
    a0 = initial[r] + rng.integers(21, 61, r.size)
    m = r.size
    if m:
        end = b.met[r].astype(np.float64)
        weekly = rng.random(m) < 0.4
        segs.add(
            patient=r,
            line=0,
            product=np.where(weekly, _P["Taxol"], _P["Taxotere"]),
            first=a0,
            end=end,
            interval=np.where(weekly, 7, 21),
            count=np.where(weekly, 12, 4),
            supply=0,
            stop=_STOP["completed"],
        )
        kat = (iy >= 2019) & (rng.random(m) < 0.15)
        h_prod = np.where((iy >= 2019) & (rng.random(m) < 0.5), _P[biosimilar], _P["Herceptin"])
        h_prod = np.where((iy >= 2014) & (rng.random(m) < 0.2), _P["Herceptin SC"], h_prod)
        segs.add(
            patient=r,
            line=0,
            product=h_prod,
            first=a0,
            end=end,
            interval=21,
            count=np.where(kat, 6, 18),
            supply=0,
            stop=_STOP["completed"],
        )
        segs.add(
            patient=r[kat],
            line=0,
            product=_P["Kadcyla"],
            first=a0[kat] + 6 * 21 + 28,
            end=end[kat],
            interval=21,
            count=14,
            supply=0,
            stop=_STOP["completed"],
        )
        per = (iy >= 2016) & (rng.random(m) < 0.4)
        segs.add(
            patient=r[per],
            line=0,
            product=_P["Perjeta"],
            first=a0[per],
            end=end[per],
            interval=21,
            count=np.where(rng.random(per.sum()) < 0.3, 18, 6),
            supply=0,
            stop=_STOP["completed"],
        )
        hr = b.hr_pos[r]
        young = b.age[r] - (b.met[r] - initial[r]) / 365.25 < 50
        et_prod = np.where(young, _P["Nolvadex"], _P["Femara"])
        et_supply = np.where(prof.nordic_supply, 90, np.where(rng.random(m) < 0.5, 90, 30))
        segs.add(
            patient=r[hr],
            line=0,
            product=et_prod[hr],
            first=a0[hr] + 150,
            end=end[hr],
            interval=et_supply[hr],
            count=(5 * 365) // et_supply[hr],
            supply=et_supply[hr],
            stop=0,
        )
        gos = hr & young & (rng.random(m) < 0.3)
        segs.add(
            patient=r[gos],
            line=-1,
            product=_P["Zoladex"],
            first=a0[gos] + 150,
            end=np.minimum(end[gos], a0[gos] + 150 + 3 * 365),
            interval=28,
            count=10_000,
            supply=0,
            stop=0,
        )
    return segs.rows(rng)


# ---------------------------------------------------------------------------
# frames as a hospital would export them


def _cased(text: str, case: str) -> str:
    if case == "upper":
        return text.upper()
    if case == "title":
        return text.title()
    return text.lower()


def _names(rng: np.random.Generator, prof: Profile, style: Style) -> tuple[list[str], list[str]]:
    """Per product: the site's usual name and the other one (a second source system)."""
    usual: list[str] = []
    other: list[str] = []
    for prod in PRODUCTS:
        ingredient = prod.ingredient
        brand = prod.brand
        if prof.us_names:
            if brand in US_SUFFIX:
                ingredient = f"trastuzumab-{US_SUFFIX[brand]}"
            brand = {"Tyverb": "Tykerb", "Verzenios": "Verzenio"}.get(brand, brand)
        generic = _cased(ingredient, style.case)
        branded = brand.upper() if style.case == "upper" else brand
        use_brand = rng.random() < style.brand_share
        usual.append(branded if use_brand else generic)
        other.append(generic if use_brand else branded)
    return usual, other


def _patient_ids(rng: np.random.Generator, site_id: str, n: int) -> npt.NDArray[np.object_]:
    prefix = "".join(ch for ch in site_id.upper() if ch.isalnum())[:3] or "PAT"
    codes = rng.choice(16**8, size=n, replace=False)
    return np.array([f"{prefix}-{c:08X}" for c in codes], dtype=object)


def _met_sites(rng: np.random.Generator, b: _Baseline, style: Style) -> npt.NDArray[np.object_]:
    names = ("bone", "lung", "liver", "brain", "lymph", "skin", "other")
    p = np.array([0.57, 0.44, 0.41, 0.0, 0.45, 0.05, 0.08])
    has = rng.random((b.n, len(names))) < p
    has[:, 0] = b.bone
    has[:, 3] = b.brain & (rng.random(b.n) < 0.55)
    empty = ~has.any(axis=1)
    has[empty, 4] = True
    out = np.array([";".join(nm for nm, h in zip(names, row, strict=True) if h) for row in has])
    result = out.astype(object)
    result[rng.random(b.n) < style.met_sites_missing] = np.nan
    return result


def synthesize_cohort(country: str, n_patients: int, seed: int, site_id: str) -> SynthCohort:
    """Generate one site's extract and keep the truth it was generated from."""
    prof = profile(country)
    if n_patients < 1:
        raise ValueError("n_patients must be >= 1")
    rng = np.random.default_rng(seed)
    style = _style(rng, prof)
    b = _baseline(rng, prof, int(n_patients))
    lines, out = _simulate(rng, prof, b)
    dfi = np.clip(np.round(rng.lognormal(np.log(3.5 * 365.25), 0.7, b.n)), 180, 20 * 365)
    initial = np.where(b.de_novo, b.met, b.met - dfi).astype(np.float64)
    rows = _administrations(rng, prof, style, b, lines, initial)
    cut = b.cut

    # what is observable at the data cut
    death = np.where(out.death <= cut, out.death, np.inf)
    transfer = np.where((out.transfer <= cut) & ~np.isfinite(death), out.transfer, np.inf)
    palliative = np.where(out.palliative <= np.minimum(cut, death), out.palliative, np.inf)
    p = rows["patient"]
    ok = (rows["day"] < death[p]) & (rows["day"] <= cut) & (rows["day"] <= transfer[p])
    rows = {k: v[ok] for k, v in rows.items()}
    order = np.lexsort((rows["product"], rows["day"], rows["patient"]))
    rows = {k: v[order] for k, v in rows.items()}
    p = rows["patient"]

    # progressions, plus a few confirmations of the same progression
    lp = np.asarray(lines["patient"], dtype=np.int64)
    prog = np.asarray(lines["progression"], dtype=np.float64)
    nxt = np.asarray(lines["next_start"], dtype=np.float64)
    has_prog = np.isfinite(prog) & (prog < death[lp]) & (prog <= transfer[lp])
    confirm = has_prog & (rng.random(lp.size) < 0.04)
    c_day = prog + 1 + rng.integers(0, 20, lp.size)
    confirm &= (c_day < nxt) & (c_day <= cut) & (c_day < death[lp]) & (c_day <= transfer[lp])
    g_pat = np.concatenate([lp[has_prog], lp[confirm]])
    g_day = np.concatenate([prog[has_prog], c_day[confirm]])

    # last contact: death, transfer, or a visit in the last months before the cut
    latest = b.met.astype(np.float64)
    np.maximum.at(latest, p, rows["day"].astype(np.float64))
    np.maximum.at(latest, g_pat, g_day)
    latest = np.maximum(latest, np.where(np.isfinite(palliative), palliative, -np.inf))
    visit = cut - rng.integers(0, 120, b.n)
    last_contact = np.where(
        np.isfinite(death),
        death,
        np.where(np.isfinite(transfer), transfer, np.maximum(visit, latest)),
    )

    ids = _patient_ids(rng, str(site_id), b.n)
    met_year = b.met.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
    er = np.where(b.hr_pos, np.where(rng.random(b.n) < 0.92, "POS", "NEG"), "NEG")
    pr = np.where(
        b.hr_pos,
        np.where(er == "NEG", "POS", np.where(rng.random(b.n) < 0.65, "POS", "NEG")),
        "NEG",
    )
    er = np.where(b.hr_unknown, "UNKNOWN", er)
    pr = np.where(b.hr_unknown, "UNKNOWN", pr)
    ecog = pd.array(b.ecog, dtype="Int64")
    ecog[rng.random(b.n) < style.ecog_missing] = pd.NA
    init = initial.copy()
    init[rng.random(b.n) < style.initial_dx_missing] = np.nan
    columns_care = style.care_mode in ("columns", "both")
    patients = pd.DataFrame(
        {
            "patient_id": ids,
            "birth_year": (met_year - np.floor(b.age + rng.random(b.n))).astype(np.int64),
            "sex": np.where(b.male, "M", "F"),
            "initial_dx_date": _day(init),
            "met_dx_date": _day(b.met),
            "de_novo": b.de_novo,
            "her2_status": "POS",
            "er_status": er,
            "pr_status": pr,
            "ecog": ecog,
            "brain_mets": b.brain,
            "met_sites": _met_sites(rng, b, style),
            "death_date": _day(death),
            "last_contact_date": _day(last_contact),
            "palliative_care_date": _day(palliative if columns_care else np.full(b.n, np.nan)),
            "transfer_out_date": _day(transfer if columns_care else np.full(b.n, np.nan)),
            "_age": b.age,
            "_group": np.array(["anti_her2", "et_only", "chemo_only", "no_therapy"])[b.group],
            "_n_lines": out.n_lines,
            "_after_last_line": out.state,
        }
    )

    # treatments
    usual, other = _names(rng, prof, style)
    names = np.array(usual, dtype=object)[rows["product"]]
    alt = rng.random(p.size)
    names = np.where(alt < 0.05, np.array(other, dtype=object)[rows["product"]], names)
    atc = np.array([x.atc for x in PRODUCTS], dtype=object)[rows["product"]]
    names = np.where(alt > 1 - style.atc_rows, atc, names)
    route = np.array([x.route for x in PRODUCTS], dtype=object)[rows["product"]]
    supply = rows["supply"]
    oral = supply > 0
    day = rows["day"].astype(np.float64)
    end = np.where(oral, np.where(style.oral_end_date, day + supply - 1, np.nan), np.nan)
    end = np.where(~oral & style.iv_end_date, day, end)
    line = rows["line"]
    true_line = pd.array(np.where(line >= 0, line, 0), dtype="Int64")
    true_line[line < 0] = pd.NA
    treat: dict[str, object] = {
        "patient_id": ids[p],
        "drug": names,
        "atc": atc,
        "route": route,
        "start_date": _day(day),
        "end_date": _day(end),
        "days_supply": pd.array(np.where(oral, supply, 0), dtype="Int64"),
    }
    days_supply = treat["days_supply"]
    assert isinstance(days_supply, pd.arrays.IntegerArray)
    days_supply[~oral] = pd.NA
    if style.documents_lines:
        documented = pd.array(np.where(line >= 1, line, 0), dtype="Int64")
        # a clinician leaves a whole line undocumented now and then
        skipped = rng.random((b.n, MAX_LINES + 1)) < 0.05
        undocumented = (line < 1) | skipped[p, np.clip(line, 0, MAX_LINES)]
        documented[undocumented] = pd.NA
        treat["line_number"] = documented
    if style.stop_reasons:
        treat["stop_reason"] = np.where(
            rows["stop"] > 0, np.array(STOP_CODES, dtype=object)[rows["stop"]], np.nan
        )
    treat["_true_line"] = true_line
    treatments = pd.DataFrame(treat)
    if not style.atc_column:
        treatments = treatments.drop(columns="atc")
    if not style.route_column:
        treatments = treatments.drop(columns="route")

    evidence = np.array(["imaging", "clinical", "marker", "pathology", ""], dtype=object)
    ev = evidence[np.searchsorted([0.8, 0.9, 0.94, 0.97], rng.random(g_pat.size))]
    ev = np.where(np.arange(g_pat.size) >= has_prog.sum(), "clinical", ev)
    g_order = np.lexsort((g_day, g_pat))
    progressions = pd.DataFrame(
        {
            "patient_id": ids[g_pat[g_order]],
            "progression_date": _day(g_day[g_order]),
            "evidence": np.where(ev[g_order] == "", np.nan, ev[g_order]),
        }
    )

    events: list[tuple[IntArray, FloatArray, str]] = []
    if style.care_mode in ("table", "both"):
        pal = np.flatnonzero(np.isfinite(palliative)).astype(np.int64)
        hos = pal[rng.random(pal.size) < 0.3]
        hos_day = palliative[hos] + rng.integers(0, 30, hos.size).astype(np.float64)
        hos_ok = (hos_day < death[hos]) & (hos_day <= cut)
        tr = np.flatnonzero(np.isfinite(transfer)).astype(np.int64)
        events = [
            (pal, palliative[pal], "palliative_care"),
            (hos[hos_ok], hos_day[hos_ok], "hospice"),
            (tr, transfer[tr], "transfer_out"),
        ]
    e_pat = np.concatenate([e[0] for e in events]) if events else np.zeros(0, np.int64)
    e_day = np.concatenate([e[1] for e in events]) if events else np.zeros(0)
    e_kind = (
        np.concatenate([np.full(e[0].size, e[2], dtype=object) for e in events])
        if events
        else np.zeros(0, dtype=object)
    )
    e_order = np.lexsort((e_day, e_pat))
    care = pd.DataFrame(
        {
            "patient_id": ids[e_pat[e_order]].astype(object),
            "event": e_kind[e_order].astype(object),
            "event_date": _day(e_day[e_order]),
        }
    )

    lines_frame = pd.DataFrame(
        {
            "patient_id": ids[lp],
            "line": np.asarray(lines["line"], dtype=np.int64),
            "regimen": np.array([r.key for r in REGIMENS], dtype=object)[
                np.asarray(lines["regimen"], dtype=np.int64)
            ],
            "label": np.array([r.label for r in REGIMENS], dtype=object)[
                np.asarray(lines["regimen"], dtype=np.int64)
            ],
            "anti_her2": np.array([r.anti_her2 for r in REGIMENS])[
                np.asarray(lines["regimen"], dtype=np.int64)
            ],
            "start_date": _day(np.asarray(lines["start"], dtype=np.float64)),
            "stop_date": _day(np.asarray(lines["stop"], dtype=np.float64) - 1),
            "progression_date": _day(np.where(has_prog, prog, np.nan)),
            "pfs_days": np.asarray(lines["pfs_days"], dtype=np.float64),
            "pfs_event": np.asarray(lines["pfs_event"], dtype=bool),
            "end_reason": np.asarray(lines["end_reason"], dtype=object),
        }
    )
    frames = {
        "patients": patients,
        "treatments": treatments.reset_index(drop=True),
        "progressions": progressions,
        "care_events": care,
    }
    return SynthCohort(frames, lines_frame, prof, style, pd.Timestamp(_day([cut]).iloc[0]))


def synthesize(country: str, n_patients: int, seed: int, site_id: str) -> dict[str, pd.DataFrame]:
    """One site's registry extract in the schema of docs/registry_schema.md.

    The treatments frame keeps the generator's intended line of each row in the
    hidden ``_true_line`` column (0 = neo/adjuvant, missing = supportive care
    and ovarian suppression), the patients frame a few hidden ``_`` columns;
    ``write_site`` drops them all.
    """
    return synthesize_cohort(country, n_patients, seed, site_id).frames


# ---------------------------------------------------------------------------
# writing a site directory


def _toml_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # JSON strings are valid TOML basic strings


def write_site(
    out_dir: Path | str,
    site_id: str,
    country: str,
    frames: Mapping[str, pd.DataFrame],
    fmt: Literal["csv", "parquet"] = "csv",
) -> Path:
    """Write the registry tables and a ``site.toml`` a hospital would keep; returns the toml.

    Columns starting with ``_`` (the generator's truth) are not written: the
    site directory is what a real hospital's extract would look like.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"format must be 'csv' or 'parquet', not {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    absent = [name for name in TABLE_NAMES[:3] if name not in frames]
    if absent:
        raise ValueError(f"frames lack the required table(s) {absent}")
    for name in TABLE_NAMES:
        if name not in frames:  # care_events is optional
            continue
        frame = frames[name]
        frame = frame[[c for c in frame.columns if not str(c).startswith("_")]]
        path = out / f"{name}.{fmt}"
        if fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            text = frame.copy()
            for col in text.columns:
                if pd.api.types.is_bool_dtype(text[col].dtype):
                    text[col] = np.where(text[col], "true", "false")
            text.to_csv(path, index=False, date_format="%Y-%m-%d")
        files[name] = path.name
    registry = [f"{name} = {_toml_str(file)}" for name, file in files.items()]
    return _write_toml(out, site_id, country, registry)


def _write_toml(out: Path, site_id: str, country: str, registry: list[str]) -> Path:
    policy = Policy()
    lines = [
        "# Synthetic site written by `her2fed synth`; no real patient is in these tables.",
        "[site]",
        f"id = {_toml_str(site_id)}",
        f"country = {_toml_str(country.upper())}",
        "",
        "[data.registry]",
        *registry,
        "",
        "[policy]",
        f"min_cell = {policy.min_cell}",
        f"min_cohort = {policy.min_cohort}",
        f"min_sites = {policy.min_sites}",
        f"min_grid_days = {policy.min_grid_days}",
        "# one synthetic site per country: a comparison of countries is one of sites",
        "per_site_release = true",
        "",
    ]
    toml = out / "site.toml"
    toml.write_text("\n".join(lines), encoding="utf-8")
    return toml


def write_db_site(
    out_dir: Path | str,
    site_id: str,
    country: str,
    frames: Mapping[str, pd.DataFrame],
    url: str,
    schema: str,
    read_as: str | None = None,
) -> Path:
    """Load one site into an OMOP schema of ``url`` and write a site.toml reading it.

    The URL must not hold a password (the site.toml gets it as written); the
    password comes from ``HER2FED_DB_PASSWORD`` both here and when the site reads.
    With ``read_as`` the site.toml names that role instead of the loading user,
    and the role is granted SELECT on the schema only.
    """
    from urllib.parse import urlsplit, urlunsplit

    from site_agent.omop_load import load_omop

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    load_omop(url, schema, frames, reader=read_as)
    if read_as is not None:
        parts = urlsplit(url)
        host = parts.netloc.rsplit("@", 1)[-1]
        url = urlunsplit(parts._replace(netloc=f"{read_as}@{host}"))
    registry = [f"url = {_toml_str(url)}", f"omop_schema = {_toml_str(schema)}"]
    return _write_toml(out, site_id, country, registry)


def schema_name(site: str) -> str:
    """A PostgreSQL schema name for a site: lower case letters, digits and underscores."""
    name = "".join(ch if ch.isalnum() else "_" for ch in site.lower())
    return name if name[:1].isalpha() else f"site_{name}"


# ---------------------------------------------------------------------------
# command line


def parse_sites(spec: str) -> list[tuple[str, str, int]]:
    """``"athens:GR:400,oslo:NO:700"`` -> [(name, country, n), ...]; errors say what to write."""
    sites: list[tuple[str, str, int]] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        bits = item.split(":")
        if len(bits) != 3 or not bits[0] or not bits[2].strip().isdigit():
            raise ValueError(f"site {item!r} must be NAME:COUNTRY:N, e.g. athens:GR:400")
        name, country, n = bits[0].strip(), bits[1].strip().upper(), int(bits[2])
        profile(country)
        if n < 1:
            raise ValueError(f"site {item!r}: N must be >= 1")
        if any(name == s[0] for s in sites):
            raise ValueError(f"site name {name!r} is given twice")
        sites.append((name, country, n))
    if not sites:
        raise ValueError("no sites given; e.g. --sites athens:GR:400,oslo:NO:700")
    return sites


def main(argv: Sequence[str] | None = None) -> int:
    """``her2fed synth``: write synthetic multi-country site directories."""
    parser = argparse.ArgumentParser(
        prog="her2fed synth",
        description="Write synthetic HER2+ mBC registry extracts, one directory with a site.toml "
        "per site, calibrated per country to published real-world cohorts.",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--sites",
        default=DEFAULT_SITES,
        metavar="NAME:COUNTRY:N,...",
        help=f"sites to write (default {DEFAULT_SITES}); countries: {', '.join(sorted(PROFILES))}",
    )
    parser.add_argument("--seed", type=int, default=2026, help="random seed (default 2026)")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    parser.add_argument(
        "--to",
        metavar="postgresql://USER@HOST/DB",
        help="load each site into an OMOP CDM schema named after it in this PostgreSQL "
        "database (the schema is DROPPED and re-created; a generated vocabulary subset is "
        "loaded with it) and write site.toml files that read "
        "it; the password comes from HER2FED_DB_PASSWORD, never from the URL",
    )
    parser.add_argument(
        "--read-as",
        metavar="ROLE",
        help="with --to: grant this existing role SELECT on the schemas and name it in the "
        "site.toml files, so sites read as a role that cannot write",
    )
    args = parser.parse_args(argv)
    try:
        sites = parse_sites(args.sites)
    except ValueError as err:
        parser.error(str(err))
    if args.to is not None:
        from urllib.parse import urlsplit

        parts = urlsplit(args.to)
        if parts.scheme not in ("postgresql", "postgres"):
            parser.error("--to must be a postgresql:// URL")
        if parts.password is not None:
            parser.error(
                "--to must not contain a password (it would be written to site.toml); "
                "export HER2FED_DB_PASSWORD instead"
            )
    seeds = np.random.SeedSequence(args.seed).spawn(len(sites))
    out = Path(args.out)
    for (name, country, n), seq in zip(sites, seeds, strict=True):
        began = time.perf_counter()
        seed = int(seq.generate_state(1, dtype=np.uint32)[0])
        frames = synthesize(country, n, seed, name)
        if args.to is not None:
            toml = write_db_site(
                out / name, name, country, frames, args.to, schema_name(name), args.read_as
            )
        else:
            toml = write_site(out / name, name, country, frames, args.format)
        rows = len(frames["treatments"])
        print(
            f"synth: {name} ({country}) {n} patients, {rows} treatment rows -> {toml} "
            f"({time.perf_counter() - began:.1f} s)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
