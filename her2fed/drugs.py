"""The drug vocabulary: every way a site may write a drug, reduced to one ingredient.

Sites record administrations by generic name, brand, biosimilar, US suffix name
(``trastuzumab-dkst``) or ATC code, in any case and spacing. Lines of therapy can
only be derived the same way everywhere if all of these become the same
ingredient, so the vocabulary is versioned and reported in every result's
provenance: changing a mapping changes lines, and a reader must be able to tell.

Matching ignores case, whitespace and punctuation (``T-DM1`` = ``tdm1`` =
``T DM1``) because registries disagree on all three; it never guesses beyond
that. A name that is not in the vocabulary is *reported* with its count and
maps to ``None`` - it cannot define a line, but the site sees what was left out
instead of losing it silently. Fixed-dose combinations (Phesgo) map to all of
their ingredients, written ``"pertuzumab;trastuzumab"`` (sorted, ``;``-joined),
and names written as ``a + b`` or ``a / b`` map part by part when every part is
known.

Besides the ingredients of ``cohorts.md`` the vocabulary holds the common
breast-cancer chemotherapies that regimen labels need to classify (anthracyclines,
platinum, cyclophosphamide, methotrexate), everolimus and alpelisib, a third GnRH
agonist (triptorelin) and frequent supportive drugs, so that they are not
reported as unmapped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from her2fed.errors import SpecError

VOCABULARY_VERSION = "her2fed-drugs-1.0.0"

# Drug classes; ``lot.RuleSet`` names them, so they are part of the public vocabulary.
ANTI_HER2_MAB = "anti_her2_mab"
ANTI_HER2_ADC = "anti_her2_adc"
HER2_TKI = "her2_tki"
TAXANE = "taxane"
FLUOROPYRIMIDINE = "fluoropyrimidine"
VINCA = "vinca"
ERIBULIN = "eribulin"
GEMCITABINE = "gemcitabine"
ANTHRACYCLINE = "anthracycline"
PLATINUM = "platinum"
ALKYLATING = "alkylating"
ANTIMETABOLITE = "antimetabolite"
AROMATASE_INHIBITOR = "aromatase_inhibitor"
SERD = "serd"
SERM = "serm"
CDK46I = "cdk46i"
MTOR_INHIBITOR = "mtor_inhibitor"
PI3K_INHIBITOR = "pi3k_inhibitor"
OVARIAN_SUPPRESSION = "ovarian_suppression"
SUPPORTIVE = "supportive"

CLASSES: tuple[str, ...] = (
    ANTI_HER2_MAB,
    ANTI_HER2_ADC,
    HER2_TKI,
    TAXANE,
    FLUOROPYRIMIDINE,
    VINCA,
    ERIBULIN,
    GEMCITABINE,
    ANTHRACYCLINE,
    PLATINUM,
    ALKYLATING,
    ANTIMETABOLITE,
    AROMATASE_INHIBITOR,
    SERD,
    SERM,
    CDK46I,
    MTOR_INHIBITOR,
    PI3K_INHIBITOR,
    OVARIAN_SUPPRESSION,
    SUPPORTIVE,
)
ANTI_HER2_CLASSES: tuple[str, ...] = (ANTI_HER2_MAB, ANTI_HER2_ADC, HER2_TKI)
CHEMO_CLASSES: tuple[str, ...] = (
    TAXANE,
    FLUOROPYRIMIDINE,
    VINCA,
    ERIBULIN,
    GEMCITABINE,
    ANTHRACYCLINE,
    PLATINUM,
    ALKYLATING,
    ANTIMETABOLITE,
)
ENDOCRINE_CLASSES: tuple[str, ...] = (AROMATASE_INHIBITOR, SERD, SERM)

# Substitution classes: ingredients of one class replace each other without a new line.
SUBSTITUTION_CLASSES: tuple[str, ...] = (
    "taxane",
    "trastuzumab",
    "fluoropyrimidine",
    "aromatase_inhibitor",
)

COMBINATION_SEP = ";"


@dataclass(frozen=True)
class Ingredient:
    """One active ingredient; ``atc`` holds the current code first, then retired ones."""

    name: str
    atc: tuple[str, ...]
    drug_class: str
    substitution_class: str | None
    synonyms: tuple[str, ...] = ()


def _i(
    name: str,
    atc: str | tuple[str, ...],
    drug_class: str,
    synonyms: tuple[str, ...] = (),
    substitution_class: str | None = None,
) -> Ingredient:
    codes = (atc,) if isinstance(atc, str) else atc
    return Ingredient(name, tuple(c for c in codes if c), drug_class, substitution_class, synonyms)


# Retired ATC codes (before the 2022 L01 restructuring) are listed after the current one
# because registries from 2012-2021 still carry them.
INGREDIENTS: tuple[Ingredient, ...] = (
    # anti-HER2 antibodies; biosimilars and the SC formulation are the same ingredient
    _i(
        "trastuzumab",
        ("L01FD01", "L01XC03"),
        ANTI_HER2_MAB,
        (
            "herceptin",
            "herceptin sc",
            "herceptin iv",
            "herceptin hylecta",
            "trastuzumab sc",
            "trastuzumab iv",
            "trastuzumab subcutaneous",
            "trastuzumab and hyaluronidase",
            "trastuzumab hyaluronidase",
            "trastuzumab hyaluronidase-oysk",
            "kanjinti",
            "trastuzumab-anns",
            "ogivri",
            "trastuzumab-dkst",
            "ontruzant",
            "trastuzumab-dttb",
            "trazimera",
            "trastuzumab-qyyp",
            "herzuma",
            "trastuzumab-pkrb",
            "zercepac",
            "hercessi",
            "trastuzumab-strf",
            "hertraz",
            "tuznue",
        ),
        "trastuzumab",
    ),
    _i("pertuzumab", ("L01FD02", "L01XC13"), ANTI_HER2_MAB, ("perjeta",)),
    _i("margetuximab", "L01FD06", ANTI_HER2_MAB, ("margenza", "margetuximab-cmkb")),
    _i("zanidatamab", (), ANTI_HER2_MAB, ("ziihera", "zanidatamab-hrii", "zw25")),
    _i(
        "trastuzumab emtansine",
        ("L01FD03", "L01XC14"),
        ANTI_HER2_ADC,
        ("kadcyla", "t-dm1", "tdm1", "ado-trastuzumab emtansine", "trastuzumab-emtansine"),
    ),
    _i(
        "trastuzumab deruxtecan",
        "L01FD04",
        ANTI_HER2_ADC,
        (
            "enhertu",
            "t-dxd",
            "tdxd",
            "t-dx-d",
            "ds-8201",
            "ds-8201a",
            "fam-trastuzumab deruxtecan",
            "fam-trastuzumab deruxtecan-nxki",
            "trastuzumab-deruxtecan",
        ),
    ),
    # HER2 tyrosine-kinase inhibitors
    _i("lapatinib", ("L01EH01", "L01XE07"), HER2_TKI, ("tykerb", "tyverb")),
    _i("neratinib", ("L01EH02", "L01XE45"), HER2_TKI, ("nerlynx",)),
    _i("tucatinib", "L01EH03", HER2_TKI, ("tukysa",)),
    _i("pyrotinib", (), HER2_TKI, ("irene", "pyrotinib maleate")),
    # chemotherapy
    _i("docetaxel", "L01CD02", TAXANE, ("taxotere", "docefrez"), "taxane"),
    _i(
        "paclitaxel",
        "L01CD01",
        TAXANE,
        (
            "taxol",
            "onxol",
            "abraxane",
            "nab-paclitaxel",
            "nanoparticle albumin-bound paclitaxel",
            "paclitaxel albumin",
            "paclitaxel protein-bound",
            "albumin-bound paclitaxel",
        ),
        "taxane",
    ),
    _i(
        "capecitabine",
        "L01BC06",
        FLUOROPYRIMIDINE,
        ("xeloda", "ecansya"),
        "fluoropyrimidine",
    ),
    _i(
        "fluorouracil",
        "L01BC02",
        FLUOROPYRIMIDINE,
        ("5-fu", "5fu", "5-fluorouracil", "adrucil"),
        "fluoropyrimidine",
    ),
    _i("vinorelbine", "L01CA04", VINCA, ("navelbine",)),
    _i("eribulin", "L01XX41", ERIBULIN, ("halaven", "eribulin mesylate")),
    _i("gemcitabine", "L01BC05", GEMCITABINE, ("gemzar",)),
    _i(
        "doxorubicin",
        "L01DB01",
        ANTHRACYCLINE,
        (
            "adriamycin",
            "caelyx",
            "doxil",
            "myocet",
            "liposomal doxorubicin",
            "pegylated liposomal doxorubicin",
        ),
    ),
    _i("epirubicin", "L01DB03", ANTHRACYCLINE, ("ellence", "pharmorubicin", "farmorubicin")),
    _i("cyclophosphamide", "L01AA01", ALKYLATING, ("endoxan", "cytoxan")),
    _i("carboplatin", "L01XA02", PLATINUM, ("paraplatin",)),
    _i("cisplatin", "L01XA01", PLATINUM, ("platinol",)),
    _i("methotrexate", "L01BA01", ANTIMETABOLITE, ()),
    # endocrine therapy
    _i("letrozole", "L02BG04", AROMATASE_INHIBITOR, ("femara",), "aromatase_inhibitor"),
    _i("anastrozole", "L02BG03", AROMATASE_INHIBITOR, ("arimidex",), "aromatase_inhibitor"),
    _i("exemestane", "L02BG06", AROMATASE_INHIBITOR, ("aromasin",), "aromatase_inhibitor"),
    _i("fulvestrant", "L02BA03", SERD, ("faslodex",)),
    _i("elacestrant", "L02BA04", SERD, ("orserdu",)),
    _i("tamoxifen", "L02BA01", SERM, ("nolvadex", "tamoxifen citrate")),
    _i("toremifene", "L02BA02", SERM, ("fareston",)),
    # other targeted therapy
    _i("palbociclib", ("L01EF01", "L01XE33"), CDK46I, ("ibrance",)),
    _i("ribociclib", ("L01EF02", "L01XE42"), CDK46I, ("kisqali",)),
    _i("abemaciclib", ("L01EF03", "L01XE50"), CDK46I, ("verzenio", "verzenios")),
    _i("everolimus", ("L01EG02", "L01XE10"), MTOR_INHIBITOR, ("afinitor",)),
    _i("alpelisib", "L01EM03", PI3K_INHIBITOR, ("piqray",)),
    # ovarian suppression: never defines a line
    _i("goserelin", "L02AE03", OVARIAN_SUPPRESSION, ("zoladex",)),
    _i(
        "leuprorelin",
        "L02AE02",
        OVARIAN_SUPPRESSION,
        ("leuprolide", "lupron", "lupron depot", "eligard", "lucrin", "enantone", "prostap"),
    ),
    _i("triptorelin", "L02AE04", OVARIAN_SUPPRESSION, ("decapeptyl", "trelstar", "gonapeptyl")),
    # supportive care: never defines a line
    _i("denosumab", "M05BX04", SUPPORTIVE, ("xgeva", "prolia")),
    _i("zoledronic acid", "M05BA08", SUPPORTIVE, ("zoledronate", "zometa", "aclasta")),
    _i("pamidronic acid", "M05BA03", SUPPORTIVE, ("pamidronate", "aredia")),
    _i("ibandronic acid", "M05BA06", SUPPORTIVE, ("ibandronate", "bondronat", "bonviva")),
    _i("ondansetron", "A04AA01", SUPPORTIVE, ("zofran",)),
    _i("granisetron", "A04AA02", SUPPORTIVE, ("kytril",)),
    _i("palonosetron", "A04AA05", SUPPORTIVE, ("aloxi",)),
    _i("aprepitant", "A04AD12", SUPPORTIVE, ("emend",)),
    _i("metoclopramide", "A03FA01", SUPPORTIVE, ("primperan", "reglan")),
    _i("dexamethasone", "H02AB02", SUPPORTIVE, ("decadron", "fortecortin")),
    _i("filgrastim", "L03AA02", SUPPORTIVE, ("neupogen", "zarzio", "nivestim", "tevagrastim")),
    _i("pegfilgrastim", "L03AA13", SUPPORTIVE, ("neulasta", "fulphila", "udenyca", "ziextenzo")),
    _i("lipegfilgrastim", "L03AA14", SUPPORTIVE, ("lonquex",)),
)

# Fixed-dose combinations and co-packs: one name, several ingredients.
COMBINATIONS: Mapping[str, tuple[str, ...]] = {
    "phesgo": ("pertuzumab", "trastuzumab"),
    "L01FY01": ("pertuzumab", "trastuzumab"),
    "pertuzumab and trastuzumab": ("pertuzumab", "trastuzumab"),
    "pertuzumab, trastuzumab, and hyaluronidase": ("pertuzumab", "trastuzumab"),
    "pertuzumab trastuzumab hyaluronidase-zzxf": ("pertuzumab", "trastuzumab"),
    "kisqali femara co-pack": ("letrozole", "ribociclib"),
}

BY_NAME: Mapping[str, Ingredient] = {ing.name: ing for ing in INGREDIENTS}
INGREDIENT_NAMES: tuple[str, ...] = tuple(ing.name for ing in INGREDIENTS)

_STRIP = re.compile(r"[^0-9a-z]+")


def normalise(name: str) -> str:
    """The matching key of a name: lower case with everything but letters and digits removed."""
    return _STRIP.sub("", name.lower())


def _build_lookup() -> dict[str, str]:
    lookup: dict[str, str] = {}

    def put(key_text: str, value: str) -> None:
        key = normalise(key_text)
        if not key:
            raise ValueError(f"empty synonym for {value!r}")
        if lookup.get(key, value) != value:
            raise ValueError(f"synonym {key_text!r} maps to both {lookup[key]!r} and {value!r}")
        lookup[key] = value

    for ing in INGREDIENTS:
        put(ing.name, ing.name)
        for code in ing.atc:
            put(code, ing.name)
        for syn in ing.synonyms:
            put(syn, ing.name)
    for text, parts in COMBINATIONS.items():
        put(text, COMBINATION_SEP.join(sorted(parts)))
    return lookup


LOOKUP: Mapping[str, str] = _build_lookup()
_PARTS = re.compile(r"\s*[+/]\s*|\s+and\s+|\s+with\s+")


def ingredient_of(name: str, extra: Mapping[str, str] | None = None) -> str | None:
    """The canonical ingredient (or ``;``-joined ingredients) of one name, else ``None``."""
    key = normalise(name)
    if not key:
        return None
    if extra is not None and key in extra:
        return extra[key]
    hit = LOOKUP.get(key)
    if hit is not None:
        return hit
    parts = [p for p in _PARTS.split(name.lower()) if p.strip()]
    if len(parts) < 2:
        return None
    found: set[str] = set()
    for part in parts:
        sub = ingredient_of(part, extra)
        if sub is None:
            return None
        found.update(sub.split(COMBINATION_SEP))
    return COMBINATION_SEP.join(sorted(found))


def split_ingredients(value: str) -> tuple[str, ...]:
    """The ingredients of a mapped value (one, or several for a fixed-dose combination)."""
    return tuple(value.split(COMBINATION_SEP))


@dataclass(frozen=True)
class UnmappedReport:
    """Names that matched no ingredient, with how many rows carried each (most frequent first).

    ``names`` are shown as written (stripped); a site reads them to extend its
    extract or to ask for a vocabulary addition. They are drug names, not patient
    values.
    """

    n_rows: int
    names: tuple[tuple[str, int], ...]

    def __bool__(self) -> bool:
        return self.n_rows > 0


def _validated_extra(extra: Mapping[str, str] | None) -> dict[str, str] | None:
    if extra is None:
        return None
    out: dict[str, str] = {}
    for name, target in extra.items():
        parts = [p.strip() for p in str(target).split(COMBINATION_SEP)]
        canon: list[str] = []
        for p in parts:
            hit = LOOKUP.get(normalise(p))
            if hit is None or COMBINATION_SEP in hit:
                raise SpecError(
                    f"extra drug synonym {name!r}",
                    f"target {target!r} is not a vocabulary ingredient",
                    f"map it to one of {list(INGREDIENT_NAMES)} (';' joins several)",
                )
            canon.append(hit)
        out[normalise(str(name))] = COMBINATION_SEP.join(sorted(set(canon)))
    return out


def map_drugs(
    names: Iterable[Any] | pd.Series[Any] | NDArray[Any],
    atc: Iterable[Any] | pd.Series[Any] | NDArray[Any] | None = None,
    *,
    extra: Mapping[str, str] | None = None,
) -> tuple[NDArray[np.object_], UnmappedReport]:
    """Map drug names to ingredients; ``atc`` is the fallback for names not recognised.

    Returns an object array (one entry per name: the ingredient, ``;``-joined
    ingredients for a combination, or ``None``) and the report of unmapped
    names. ``extra`` adds site-local synonyms (name -> ingredient) without
    changing the shared vocabulary. Only distinct values are looked up, so
    millions of rows cost as much as their few hundred distinct names.
    """
    extra_map = _validated_extra(extra)
    name_s = _series(names)
    codes, uniques = pd.factorize(name_s, use_na_sentinel=True)
    looked = [ingredient_of(u, extra_map) if isinstance(u, str) else None for u in uniques]
    mapped_u = np.array([*looked, None], dtype=object)  # code -1 (missing) picks the None
    missing_u = np.array([v is None for v in mapped_u], dtype=bool)
    out: NDArray[np.object_] = mapped_u[codes]
    missing: NDArray[np.bool_] = missing_u[codes]
    if atc is not None:
        atc_s = _series(atc)
        if len(atc_s) != len(name_s):
            raise ValueError(f"atc has {len(atc_s)} entries but names has {len(name_s)}")
        if missing.any():
            acodes, auniques = pd.factorize(atc_s, use_na_sentinel=True)
            alooked = [LOOKUP.get(normalise(u)) if isinstance(u, str) else None for u in auniques]
            amapped = np.array([*alooked, None], dtype=object)
            afound = np.array([v is not None for v in amapped], dtype=bool)
            fill = missing & afound[acodes]
            out[fill] = amapped[acodes[fill]]
            missing = missing & ~fill
    return out, _report(name_s, missing)


def _series(values: Iterable[Any] | pd.Series[Any] | NDArray[Any]) -> pd.Series[Any]:
    if isinstance(values, pd.Series):
        return values.reset_index(drop=True)
    return pd.Series(list(values) if not isinstance(values, np.ndarray) else values, dtype=object)


def _report(names: pd.Series[Any], missing: NDArray[np.bool_]) -> UnmappedReport:
    if not missing.any():
        return UnmappedReport(0, ())
    shown = names[missing].map(lambda v: str(v).strip() if isinstance(v, str) else "<missing>")
    counts = shown.value_counts(sort=False)
    items = sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda kv: (-kv[1], kv[0]))
    return UnmappedReport(int(missing.sum()), tuple(items))


def drug_class(ingredient: str) -> str:
    """The class of a canonical ingredient name."""
    return BY_NAME[ingredient].drug_class
