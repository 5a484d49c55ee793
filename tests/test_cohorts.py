"""Differencing by one patient: a site refuses a cohort 1-4 patients away from one it answered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from her2fed.protocol import Query
from her2fed.study import Analysis
from site_agent.cohorts import INDEX, RULE, CohortMemory, fingerprint_key, fingerprints
from site_agent.config import Policy, SiteConfig
from site_agent.handlers import SiteAgent
from site_agent.policy import PolicyRefusal
from tests.fedrun import DATASET, analysis, load, study_of

KEY = fingerprint_key(b"\x01" * 32)
POLICY = Policy(min_grid_days=1)


def rossi_with_arm(missing: int) -> pd.DataFrame:
    """Rossi's rows with an ``arm`` column that is missing for the first ``missing`` rows."""
    df = load("rossi")
    df["arm"] = "A"
    df.loc[: missing - 1, "arm"] = np.nan
    return df


def ask(site: Path, study_hash: str, a: Analysis, df: pd.DataFrame) -> None:
    config = SiteConfig(site / "site.toml", "s1", "GR", policy=POLICY)
    agent = SiteAgent(
        config,
        study_of(a, horizon_days=60),
        tables={DATASET: df},
        cohorts=CohortMemory(site, study_hash, KEY),
    )
    agent.answer([Query(a.id, "table")])


EVERYONE = analysis(id="km_all", kind="km", time="week", event="arrest")
ARM_A = analysis(
    id="km_arm",
    kind="km",
    time="week",
    event="arrest",
    by={"column": "arm", "levels": ["A"]},
)


def test_a_cohort_one_patient_away_from_an_answered_one_is_refused(tmp_path: Path) -> None:
    """KM of everyone, then KM of 'arm A', which is everyone but the one patient whose arm
    is missing: together they would give that patient's week of arrest. Refused, naming
    the rule, the earlier study and the fix; nothing about the patient."""
    df = rossi_with_arm(missing=1)
    ask(tmp_path, "sha256:" + "a" * 64, EVERYONE, df)
    with pytest.raises(PolicyRefusal) as err:
        ask(tmp_path, "sha256:" + "b" * 64, ARM_A, df)
    text = str(err.value)
    assert err.value.rule == RULE and err.value.threshold == 5
    assert "km_all" in text and "sha256:aaaaaaaaaaa" in text and "Fix:" in text
    index = (tmp_path / "cohorts" / INDEX).read_text().splitlines()
    assert len(index) == 1  # the refused cohort is not remembered


def test_five_patients_away_is_a_different_cohort(tmp_path: Path) -> None:
    df = rossi_with_arm(missing=5)
    ask(tmp_path, "sha256:" + "a" * 64, EVERYONE, df)
    ask(tmp_path, "sha256:" + "b" * 64, ARM_A, df)
    assert len((tmp_path / "cohorts" / INDEX).read_text().splitlines()) == 2


def test_the_same_query_again_is_answered_and_remembered_once(tmp_path: Path) -> None:
    """Repeated (and reordered) queries of one study see the same cohort: no refusal, and a
    repeat adds nothing to the memory."""
    df = rossi_with_arm(missing=1)
    for _ in range(3):
        ask(tmp_path, "sha256:" + "a" * 64, EVERYONE, df)
    assert len((tmp_path / "cohorts" / INDEX).read_text().splitlines()) == 1


def test_other_families_are_not_compared(tmp_path: Path) -> None:
    """A Cox model on complete cases next to a KM of everyone is not a subtraction."""
    df = rossi_with_arm(missing=1)
    ask(tmp_path, "sha256:" + "a" * 64, EVERYONE, df)
    cox = analysis(
        id="cox_arm",
        kind="cox",
        time="week",
        event="arrest",
        covariates=["age"],
        strata=[{"column": "arm", "levels": ["A"]}],
    )
    config = SiteConfig(tmp_path / "site.toml", "s1", "GR", policy=POLICY)
    agent = SiteAgent(
        config,
        study_of(cox, horizon_days=60),
        tables={DATASET: df},
        cohorts=CohortMemory(tmp_path, "sha256:" + "c" * 64, KEY),
    )
    agent.rows("cox_arm")  # no refusal
    entries = [json.loads(x) for x in (tmp_path / "cohorts" / INDEX).read_text().splitlines()]
    assert [e["family"] for e in entries] == ["curves", "cox"]


def test_fingerprints_are_keyed_and_count_identical_rows_twice() -> None:
    df = pd.DataFrame({"a": [1, 1, 2], "b": ["x", "x", "y"]})
    rows = np.arange(3, dtype=np.int64)
    mine = fingerprints(df, rows, (), KEY)
    assert len(np.unique(mine)) == 3  # two identical rows are two patients
    other = fingerprints(df, rows, (), fingerprint_key(b"\x02" * 32))
    assert not set(mine.tolist()) & set(other.tolist())  # another site's key: unrelated
