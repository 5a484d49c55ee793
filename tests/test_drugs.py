"""The drug vocabulary: every spelling a site may use reaches one ingredient, or is reported."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from her2fed import drugs
from her2fed.drugs import map_drugs
from her2fed.errors import SpecError

# cohorts.md, "Regimen vocabulary": ingredient -> (ATC, class)
COHORTS = {
    "trastuzumab": ("L01FD01", drugs.ANTI_HER2_MAB),
    "pertuzumab": ("L01FD02", drugs.ANTI_HER2_MAB),
    "trastuzumab emtansine": ("L01FD03", drugs.ANTI_HER2_ADC),
    "trastuzumab deruxtecan": ("L01FD04", drugs.ANTI_HER2_ADC),
    "margetuximab": ("L01FD06", drugs.ANTI_HER2_MAB),
    "lapatinib": ("L01EH01", drugs.HER2_TKI),
    "neratinib": ("L01EH02", drugs.HER2_TKI),
    "tucatinib": ("L01EH03", drugs.HER2_TKI),
    "pyrotinib": (None, drugs.HER2_TKI),
    "zanidatamab": (None, drugs.ANTI_HER2_MAB),
    "docetaxel": ("L01CD02", drugs.TAXANE),
    "paclitaxel": ("L01CD01", drugs.TAXANE),
    "capecitabine": ("L01BC06", drugs.FLUOROPYRIMIDINE),
    "vinorelbine": ("L01CA04", drugs.VINCA),
    "eribulin": ("L01XX41", drugs.ERIBULIN),
    "gemcitabine": ("L01BC05", drugs.GEMCITABINE),
    "letrozole": ("L02BG04", drugs.AROMATASE_INHIBITOR),
    "anastrozole": ("L02BG03", drugs.AROMATASE_INHIBITOR),
    "exemestane": ("L02BG06", drugs.AROMATASE_INHIBITOR),
    "fulvestrant": ("L02BA03", drugs.SERD),
    "tamoxifen": ("L02BA01", drugs.SERM),
    "palbociclib": ("L01EF01", drugs.CDK46I),
    "ribociclib": ("L01EF02", drugs.CDK46I),
    "abemaciclib": ("L01EF03", drugs.CDK46I),
    "goserelin": ("L02AE03", drugs.OVARIAN_SUPPRESSION),
    "leuprorelin": ("L02AE02", drugs.OVARIAN_SUPPRESSION),
}

BRANDS = {
    "Herceptin": "trastuzumab",
    "Herceptin SC": "trastuzumab",
    "Kanjinti": "trastuzumab",
    "Ogivri": "trastuzumab",
    "Ontruzant": "trastuzumab",
    "Trazimera": "trastuzumab",
    "Herzuma": "trastuzumab",
    "Zercepac": "trastuzumab",
    "trastuzumab-dkst": "trastuzumab",
    "Perjeta": "pertuzumab",
    "Phesgo": "pertuzumab;trastuzumab",
    "Kadcyla": "trastuzumab emtansine",
    "T-DM1": "trastuzumab emtansine",
    "Enhertu": "trastuzumab deruxtecan",
    "T-DXd": "trastuzumab deruxtecan",
    "Tukysa": "tucatinib",
    "Tykerb": "lapatinib",
    "Tyverb": "lapatinib",
    "Nerlynx": "neratinib",
    "Xeloda": "capecitabine",
    "5-FU": "fluorouracil",
    "Taxotere": "docetaxel",
    "Taxol": "paclitaxel",
    "Abraxane": "paclitaxel",
    "nab-paclitaxel": "paclitaxel",
    "Navelbine": "vinorelbine",
    "Halaven": "eribulin",
    "Gemzar": "gemcitabine",
    "Femara": "letrozole",
    "Arimidex": "anastrozole",
    "Aromasin": "exemestane",
    "Faslodex": "fulvestrant",
    "Nolvadex": "tamoxifen",
    "Ibrance": "palbociclib",
    "Kisqali": "ribociclib",
    "Verzenio": "abemaciclib",
    "Zoladex": "goserelin",
    "Lupron": "leuprorelin",
}


def test_cohorts_vocabulary_atc_and_classes() -> None:
    for name, (atc, cls) in COHORTS.items():
        ing = drugs.BY_NAME[name]
        assert ing.drug_class == cls, name
        if atc is None:
            assert ing.atc == (), name
        else:
            assert ing.atc[0] == atc, name
            assert map_drugs([atc])[0][0] == name


@pytest.mark.parametrize("brand,expected", sorted(BRANDS.items()))
def test_brand_and_biosimilar_names(brand: str, expected: str) -> None:
    out, report = map_drugs([brand])
    assert out.tolist() == [expected]
    assert not report


def test_case_whitespace_and_punctuation_do_not_matter() -> None:
    out, _ = map_drugs(["  HERCEPTIN   sc ", "kadcyla", "t dxd", "TDM1", "Zoledronic  Acid"])
    assert out.tolist() == [
        "trastuzumab",
        "trastuzumab emtansine",
        "trastuzumab deruxtecan",
        "trastuzumab emtansine",
        "zoledronic acid",
    ]


def test_fixed_dose_combination_maps_to_both_ingredients() -> None:
    out, _ = map_drugs(["Phesgo", "L01FY01", "pertuzumab/trastuzumab", "docetaxel + Herceptin"])
    assert out.tolist() == [
        "pertuzumab;trastuzumab",
        "pertuzumab;trastuzumab",
        "pertuzumab;trastuzumab",
        "docetaxel;trastuzumab",
    ]
    assert drugs.split_ingredients(out[0]) == ("pertuzumab", "trastuzumab")


def test_retired_atc_codes_still_map() -> None:
    out, _ = map_drugs(["L01XC03", "L01XC14", "L01XE07", "L01XE33"])
    assert out.tolist() == ["trastuzumab", "trastuzumab emtansine", "lapatinib", "palbociclib"]


def test_atc_column_is_the_fallback_only() -> None:
    names = ["Herceptin", "local name 1", "local name 2", "Taxotere"]
    atc = [None, "L01FD04", "X99", "L01FD01"]  # the name wins over a conflicting ATC
    out, report = map_drugs(names, atc)
    assert out.tolist() == ["trastuzumab", "trastuzumab deruxtecan", None, "docetaxel"]
    assert report.n_rows == 1
    assert report.names == (("local name 2", 1),)


def test_unmapped_names_are_reported_with_counts_never_dropped() -> None:
    names = pd.Series(["foo", "Herceptin", "bar", "foo", None, np.nan, " foo "])
    out, report = map_drugs(names)
    assert out.tolist() == [None, "trastuzumab", None, None, None, None, None]
    assert report.n_rows == 6
    assert report.names == (("foo", 3), ("<missing>", 2), ("bar", 1))
    assert sum(c for _, c in report.names) == report.n_rows


def test_supportive_and_ovarian_suppression_are_recognised() -> None:
    supportive = ["denosumab", "Zometa", "ondansetron", "dexamethasone", "filgrastim", "Xgeva"]
    out, report = map_drugs(supportive)
    assert not report
    assert {drugs.drug_class(i) for i in out} == {drugs.SUPPORTIVE}
    out, _ = map_drugs(["Zoladex", "Lupron", "triptorelin"])
    assert {drugs.drug_class(i) for i in out} == {drugs.OVARIAN_SUPPRESSION}


def test_substitution_classes() -> None:
    by_class: dict[str, set[str]] = {}
    for ing in drugs.INGREDIENTS:
        if ing.substitution_class:
            by_class.setdefault(ing.substitution_class, set()).add(ing.name)
    assert by_class == {
        "taxane": {"docetaxel", "paclitaxel"},
        "trastuzumab": {"trastuzumab"},
        "fluoropyrimidine": {"capecitabine", "fluorouracil"},
        "aromatase_inhibitor": {"letrozole", "anastrozole", "exemestane"},
    }


def test_extra_site_synonyms() -> None:
    out, report = map_drugs(["Tras-Local", "foo"], extra={"Tras-Local": "Herceptin"})
    assert out.tolist() == ["trastuzumab", None]
    assert report.names == (("foo", 1),)
    with pytest.raises(SpecError, match="not a vocabulary ingredient"):
        map_drugs(["x"], extra={"x": "aspirin"})


def test_vocabulary_is_versioned_and_consistent() -> None:
    assert drugs.VOCABULARY_VERSION.startswith("her2fed-drugs-")
    for ing in drugs.INGREDIENTS:
        assert ing.drug_class in drugs.CLASSES
        assert ing.substitution_class in (None, *drugs.SUBSTITUTION_CLASSES)
    assert len(set(drugs.INGREDIENT_NAMES)) == len(drugs.INGREDIENTS)


def test_length_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="atc has"):
        map_drugs(["foo", "bar"], ["L01FD01"])
