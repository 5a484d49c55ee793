"""Writing registry cohorts into a PostgreSQL OMOP CDM schema (``her2fed synth --to``).

A consortium rehearses on a real database before any hospital connects one:
the synthetic cohorts are loaded as OMOP CDM v5.4 tables (the columns her2fed
reads plus the ones the CDM declares NOT NULL) together with a small
vocabulary *generated here* from her2fed's own concept sets and drug
vocabulary - nothing is downloaded, and every concept_id minted for the test
vocabulary is above 2,000,000,000, the range OMOP reserves for local concepts,
so it can never be mistaken for an Athena concept. Codes (SNOMED, LOINC, ATC)
are the ones the default concept sets name, so reading the schema back
exercises exactly the resolution a real site's vocabulary goes through.

This is the only place her2fed writes to a database, and only into the schema
it is told to (re)create.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from her2fed import drugs
from site_agent.omop import (
    DEFAULT_CONCEPT_SETS,
    DRUG_EXPOSURE_FIELD,
    MET_SITE_SETS,
    MET_SITES_WINDOW_DAYS,
)

LOCAL_ID0 = 2_000_000_001
TYPE_EHR = 32817
TREATMENT_REGIMEN = 32531
EXTRA_ANTINEOPLASTIC = ("sacituzumab govitecan", "L01FX17")
"""An antineoplastic ingredient her2fed's vocabulary lacks: tests use it as an unmapped drug."""
MET_OTHER = ("her2fed", "met_other", "Secondary malignant neoplasm of other site (synthetic)")

DDL: dict[str, str] = {
    "concept": "concept_id integer PRIMARY KEY, concept_name varchar(255) NOT NULL, "
    "domain_id varchar(20) NOT NULL, vocabulary_id varchar(20) NOT NULL, "
    "concept_class_id varchar(20) NOT NULL, standard_concept varchar(1), "
    "concept_code varchar(50) NOT NULL, valid_start_date date NOT NULL, "
    "valid_end_date date NOT NULL, invalid_reason varchar(1)",
    "concept_ancestor": "ancestor_concept_id integer NOT NULL, "
    "descendant_concept_id integer NOT NULL, min_levels_of_separation integer NOT NULL, "
    "max_levels_of_separation integer NOT NULL",
    "person": "person_id integer PRIMARY KEY, gender_concept_id integer NOT NULL, "
    "year_of_birth integer NOT NULL, race_concept_id integer NOT NULL, "
    "ethnicity_concept_id integer NOT NULL, person_source_value varchar(50), "
    "gender_source_value varchar(50)",
    "observation_period": "observation_period_id integer PRIMARY KEY, "
    "person_id integer NOT NULL, observation_period_start_date date NOT NULL, "
    "observation_period_end_date date NOT NULL, period_type_concept_id integer NOT NULL",
    "death": "person_id integer NOT NULL, death_date date NOT NULL, death_type_concept_id integer",
    "condition_occurrence": "condition_occurrence_id integer PRIMARY KEY, "
    "person_id integer NOT NULL, condition_concept_id integer NOT NULL, "
    "condition_start_date date NOT NULL, condition_type_concept_id integer NOT NULL, "
    "condition_source_value varchar(50)",
    "measurement": "measurement_id integer PRIMARY KEY, person_id integer NOT NULL, "
    "measurement_concept_id integer NOT NULL, measurement_date date NOT NULL, "
    "measurement_type_concept_id integer NOT NULL, value_as_number numeric, "
    "value_as_concept_id integer, measurement_source_value varchar(50)",
    "observation": "observation_id integer PRIMARY KEY, person_id integer NOT NULL, "
    "observation_concept_id integer NOT NULL, observation_date date NOT NULL, "
    "observation_type_concept_id integer NOT NULL, value_as_string varchar(60)",
    "drug_exposure": "drug_exposure_id integer PRIMARY KEY, person_id integer NOT NULL, "
    "drug_concept_id integer NOT NULL, drug_exposure_start_date date NOT NULL, "
    "drug_exposure_end_date date NOT NULL, verbatim_end_date date, "
    "drug_type_concept_id integer NOT NULL, stop_reason varchar(20), days_supply integer, "
    "route_concept_id integer, drug_source_value varchar(50), route_source_value varchar(50)",
    "episode": "episode_id bigint PRIMARY KEY, person_id bigint NOT NULL, "
    "episode_concept_id integer NOT NULL, episode_start_date date NOT NULL, "
    "episode_end_date date, episode_parent_id bigint, episode_number integer, "
    "episode_object_concept_id integer NOT NULL, episode_type_concept_id integer NOT NULL",
    "episode_event": "episode_id bigint NOT NULL, event_id bigint NOT NULL, "
    "episode_event_field_concept_id integer NOT NULL",
}
INDEXES = (
    "CREATE INDEX ON {s}.condition_occurrence (condition_concept_id)",
    "CREATE INDEX ON {s}.drug_exposure (person_id)",
    "CREATE INDEX ON {s}.concept_ancestor (descendant_concept_id)",
    "CREATE INDEX ON {s}.concept_ancestor (ancestor_concept_id)",
    "CREATE INDEX ON {s}.episode_event (event_id)",
)

# names of the codes the default concept sets use (for a readable CONCEPT table)
CODE_NAMES: dict[str, tuple[str, str, str]] = {
    # code: (name, domain, class)
    "SNOMED:254837009": ("Malignant neoplasm of breast", "Condition", "Clinical Finding"),
    "SNOMED:128462008": ("Secondary malignant neoplastic disease", "Condition", "Clinical Finding"),
    "SNOMED:94222008": ("Secondary malignant neoplasm of bone", "Condition", "Clinical Finding"),
    "SNOMED:94391008": ("Secondary malignant neoplasm of lung", "Condition", "Clinical Finding"),
    "SNOMED:94381002": ("Secondary malignant neoplasm of liver", "Condition", "Clinical Finding"),
    "SNOMED:94225005": ("Secondary malignant neoplasm of brain", "Condition", "Clinical Finding"),
    "SNOMED:94411004": (
        "Secondary malignant neoplasm of lymph node",
        "Condition",
        "Clinical Finding",
    ),
    "SNOMED:94579000": ("Secondary malignant neoplasm of skin", "Condition", "Clinical Finding"),
    "LOINC:85319-2": (
        "HER2 [Presence] in Breast cancer specimen by Immune stain",
        "Measurement",
        "Lab Test",
    ),
    "LOINC:85318-4": (
        "HER2 [Presence] in Breast cancer specimen by FISH",
        "Measurement",
        "Lab Test",
    ),
    "LOINC:18474-7": ("HER2 Ag [Presence] in Tissue by Immune stain", "Measurement", "Lab Test"),
    "LOINC:48676-1": ("HER2 [Interpretation] in Tissue", "Measurement", "Lab Test"),
    "LOINC:85337-4": (
        "Estrogen receptor Ag [Presence] in Breast cancer specimen by Immune stain",
        "Measurement",
        "Lab Test",
    ),
    "LOINC:16112-5": ("Estrogen receptor [Interpretation] in Tissue", "Measurement", "Lab Test"),
    "LOINC:85339-0": (
        "Progesterone receptor Ag [Presence] in Breast cancer specimen by Immune stain",
        "Measurement",
        "Lab Test",
    ),
    "LOINC:16113-3": (
        "Progesterone receptor [Interpretation] in Tissue",
        "Measurement",
        "Lab Test",
    ),
    "LOINC:89247-1": ("ECOG Performance Status score", "Measurement", "Survey"),
    "LOINC:LA6576-8": ("Positive", "Meas Value", "Answer"),
    "LOINC:LA6577-6": ("Negative", "Meas Value", "Answer"),
    "Gender:F": ("FEMALE", "Gender", "Gender"),
    "Gender:M": ("MALE", "Gender", "Gender"),
    "SNOMED:47625008": ("Intravenous route", "Route", "Qualifier Value"),
    "SNOMED:26643006": ("Oral route", "Route", "Qualifier Value"),
    "SNOMED:34206005": ("Subcutaneous route", "Route", "Qualifier Value"),
    "SNOMED:78421000": ("Intramuscular route", "Route", "Qualifier Value"),
    "SNOMED:444391001": ("Malignant tumor progression", "Observation", "Clinical Finding"),
    "SNOMED:103735009": ("Palliative care", "Procedure", "Procedure"),
    "SNOMED:385763009": ("Hospice care", "Procedure", "Procedure"),
    "SNOMED:399307001": ("Lost to follow-up", "Observation", "Clinical Finding"),
    "ATC:L01": ("ANTINEOPLASTIC AGENTS", "Drug", "ATC 2nd"),
    "ATC:L02": ("ENDOCRINE THERAPY", "Drug", "ATC 2nd"),
}


@dataclass
class Vocabulary:
    """The generated vocabulary subset: CONCEPT and CONCEPT_ANCESTOR rows plus lookups."""

    concept: pd.DataFrame
    ancestor: pd.DataFrame
    by_code: dict[str, int]
    product: dict[str, int]
    """her2fed ingredient value (``;``-joined for combinations) -> drug product concept_id."""


def vocabulary() -> Vocabulary:
    """CONCEPT / CONCEPT_ANCESTOR rows for every default concept set and drug ingredient."""
    rows: list[tuple[Any, ...]] = []
    anc: list[tuple[int, int, int]] = []
    by_code: dict[str, int] = {}
    next_id = [LOCAL_ID0]

    def add(code: str, name: str, domain: str, klass: str, cid: int | None = None) -> int:
        if code in by_code:
            return by_code[code]
        if cid is None:
            cid = next_id[0]
            next_id[0] += 1
        vocab, c = code.split(":", 1)
        rows.append((cid, name[:255], domain, vocab, klass, "S", c))
        by_code[code] = cid
        anc.append((cid, cid, 0))
        return cid

    for code, (name, domain, klass) in CODE_NAMES.items():
        add(code, name, domain, klass)
    add("Episode:32531", "Treatment Regimen", "Episode", "Episode", TREATMENT_REGIMEN)
    add("Type Concept:32817", "EHR", "Type Concept", "Type Concept", TYPE_EHR)
    met = by_code["SNOMED:128462008"]
    for set_name in MET_SITE_SETS.values():
        for entry in DEFAULT_CONCEPT_SETS[set_name].entries:
            anc.append((met, by_code[str(entry)], 1))
    other = add(f"{MET_OTHER[0]}:{MET_OTHER[1]}", MET_OTHER[2], "Condition", "Clinical Finding")
    anc.append((met, other, 1))

    def atc_parent(code: str) -> int:
        return by_code["ATC:L02"] if code.startswith("L02") else by_code["ATC:L01"]

    ingredient_id: dict[str, int] = {}
    extras = [(EXTRA_ANTINEOPLASTIC[0], (EXTRA_ANTINEOPLASTIC[1],), True)]
    items = [(i.name, i.atc, i.drug_class != drugs.SUPPORTIVE) for i in drugs.INGREDIENTS]
    for name, atcs, anticancer in [*items, *extras]:
        ing = add(f"RxNorm:her2fed-{drugs.normalise(name)}", name, "Drug", "Ingredient")
        ingredient_id[name] = ing
        for code in atcs[:1]:  # the current ATC code
            level5 = add(f"ATC:{code}", name.upper(), "Drug", "ATC 5th")
            anc.append((level5, ing, 1))
            if code.startswith(("L01", "L02")):
                anc.append((atc_parent(code), level5, 1))
                anc.append((atc_parent(code), ing, 2))
        if not atcs and anticancer and name in ("pyrotinib", "zanidatamab"):
            anc.append((by_code["ATC:L01"], ing, 2))
    product: dict[str, int] = {}
    values = {v for v in drugs.LOOKUP.values()} | {EXTRA_ANTINEOPLASTIC[0]}
    for value in sorted(values):
        parts = drugs.split_ingredients(value)
        label = " / ".join(parts) + " product (synthetic)"
        pid = add(
            f"RxNorm:her2fed-product-{drugs.normalise(value)}", label, "Drug", "Clinical Drug Form"
        )
        product[value] = pid
        for part in parts:
            ing = ingredient_id[part]
            anc.append((ing, pid, 1))
            for a, d, lvl in list(anc):
                if d == ing and a != ing:
                    anc.append((a, pid, lvl + 1))
    concept = pd.DataFrame(
        rows,
        columns=[
            "concept_id",
            "concept_name",
            "domain_id",
            "vocabulary_id",
            "concept_class_id",
            "standard_concept",
            "concept_code",
        ],
    )
    concept["valid_start_date"] = "1970-01-01"
    concept["valid_end_date"] = "2099-12-31"
    concept["invalid_reason"] = None
    ancestor = pd.DataFrame(anc, columns=["ancestor_concept_id", "descendant_concept_id", "lvl"])
    ancestor = ancestor.drop_duplicates(["ancestor_concept_id", "descendant_concept_id"])
    ancestor = ancestor.assign(
        min_levels_of_separation=ancestor["lvl"], max_levels_of_separation=ancestor["lvl"]
    ).drop(columns="lvl")
    return Vocabulary(concept, ancestor.reset_index(drop=True), by_code, product)


def _first(code: str, vocab: Vocabulary) -> int:
    return vocab.by_code[code]


def to_omop(frames: Mapping[str, pd.DataFrame], vocab: Vocabulary) -> dict[str, pd.DataFrame]:
    """A registry extract (docs/registry_schema.md) as OMOP CDM rows, one person per patient.

    Row order is kept in the ids (person_id, drug_exposure_id, observation_id),
    so reading the schema back yields the rows in the order of the files.
    """
    c = vocab.by_code
    pat = frames["patients"].reset_index(drop=True)
    n = len(pat)
    person_id = np.arange(1, n + 1, dtype=np.int64)
    pid_of = dict(zip(pat["patient_id"].astype(str), person_id, strict=True))
    met = pd.to_datetime(pat["met_dx_date"])
    initial = pd.to_datetime(pat["initial_dx_date"])
    sex = pat["sex"].astype(str).str.upper()
    person = pd.DataFrame(
        {
            "person_id": person_id,
            "gender_concept_id": np.where(
                sex == "F", c["Gender:F"], np.where(sex == "M", c["Gender:M"], 0)
            ),
            "year_of_birth": pat["birth_year"].astype(np.int64),
            "race_concept_id": 0,
            "ethnicity_concept_id": 0,
            "person_source_value": pat["patient_id"].astype(str),
            "gender_source_value": pat["sex"],
        }
    )
    start = pd.concat([met, initial], axis=1).min(axis=1)
    period = pd.DataFrame(
        {
            "observation_period_id": person_id,
            "person_id": person_id,
            "observation_period_start_date": start,
            "observation_period_end_date": pd.to_datetime(pat["last_contact_date"]),
            "period_type_concept_id": TYPE_EHR,
        }
    )
    dead = pat["death_date"].notna().to_numpy()
    death = pd.DataFrame(
        {
            "person_id": person_id[dead],
            "death_date": pd.to_datetime(pat["death_date"])[dead].to_numpy(),
            "death_type_concept_id": TYPE_EHR,
        }
    )
    cond: list[pd.DataFrame] = []

    def conditions(mask: Any, concept: int, day: pd.Series) -> None:
        m = np.asarray(mask, dtype=bool)
        cond.append(
            pd.DataFrame(
                {
                    "person_id": person_id[m],
                    "condition_concept_id": concept,
                    "condition_start_date": day[m].to_numpy(),
                }
            )
        )

    de_novo = pat["de_novo"].astype(str).str.lower() == "true"
    breast_day = initial.where(initial.notna(), met.where(de_novo))
    conditions(breast_day.notna(), c["SNOMED:254837009"], breast_day)
    conditions(met.notna(), c["SNOMED:128462008"], met)
    sites = pat["met_sites"].fillna("").astype(str).str.lower()
    for label, set_name in [*MET_SITE_SETS.items(), ("other", "")]:
        concept = (
            c[f"{MET_OTHER[0]}:{MET_OTHER[1]}"]
            if label == "other"
            else c[str(DEFAULT_CONCEPT_SETS[set_name].entries[0])]
        )
        has = sites.str.split(";").map(lambda parts, lb=label: lb in parts)
        conditions(has & met.notna(), concept, met)
    brain_later = (pat["brain_mets"].astype(str).str.lower() == "true") & ~sites.str.split(";").map(
        lambda parts: "brain" in parts
    )
    later = met + pd.Timedelta(days=MET_SITES_WINDOW_DAYS + 1)
    conditions(brain_later & met.notna(), c["SNOMED:94225005"], later)
    condition = pd.concat(cond, ignore_index=True)
    condition.insert(0, "condition_occurrence_id", np.arange(1, len(condition) + 1))
    condition["condition_type_concept_id"] = TYPE_EHR
    condition["condition_source_value"] = None

    meas: list[pd.DataFrame] = []

    def measure(mask: Any, concept: int, number: Any, value: Any) -> None:
        m = np.asarray(mask, dtype=bool) & met.notna().to_numpy()
        meas.append(
            pd.DataFrame(
                {
                    "person_id": person_id[m],
                    "measurement_concept_id": concept,
                    "measurement_date": met[m].to_numpy(),
                    "value_as_number": np.broadcast_to(np.asarray(number, dtype=object), n)[m],
                    "value_as_concept_id": np.broadcast_to(np.asarray(value, dtype=object), n)[m],
                }
            )
        )

    pos, neg = c["LOINC:LA6576-8"], c["LOINC:LA6577-6"]
    her2 = pat["her2_status"].astype(str).str.upper()
    ihc = c["LOINC:85319-2"]
    measure(her2 == "POS", ihc, 3, pos)
    measure(her2 == "NEG", ihc, 1, neg)
    measure(her2 == "UNKNOWN", ihc, 2, None)  # equivocal IHC 2+, no ISH: unknown
    for col, code in (("er_status", "LOINC:85337-4"), ("pr_status", "LOINC:85339-0")):
        status = pat[col].astype(str).str.upper()
        measure(status == "POS", c[code], None, pos)
        measure(status == "NEG", c[code], None, neg)
    ecog = pd.to_numeric(pat["ecog"], errors="coerce")
    measure(ecog.notna(), c["LOINC:89247-1"], ecog.to_numpy(dtype=object), None)
    measurement = pd.concat(meas, ignore_index=True)
    measurement.insert(0, "measurement_id", np.arange(1, len(measurement) + 1))
    measurement["measurement_type_concept_id"] = TYPE_EHR
    measurement["measurement_source_value"] = None

    obs: list[pd.DataFrame] = []
    prog = frames["progressions"]
    keep = prog["patient_id"].astype(str).isin(pid_of)
    obs.append(
        pd.DataFrame(
            {
                "person_id": prog["patient_id"][keep].astype(str).map(pid_of).to_numpy(),
                "observation_concept_id": c["SNOMED:444391001"],
                "observation_date": pd.to_datetime(prog["progression_date"][keep]).to_numpy(),
                "value_as_string": prog["evidence"][keep].to_numpy()
                if "evidence" in prog
                else None,
            }
        )
    )
    care = frames.get("care_events")
    care_codes = {
        "palliative_care": "SNOMED:103735009",
        "hospice": "SNOMED:385763009",
        "transfer_out": "SNOMED:399307001",
    }
    if care is not None and len(care):
        ev = care["event"].astype(str).str.lower()
        keep = care["patient_id"].astype(str).isin(pid_of) & ev.isin(care_codes)
        obs.append(
            pd.DataFrame(
                {
                    "person_id": care["patient_id"][keep].astype(str).map(pid_of).to_numpy(),
                    "observation_concept_id": ev[keep].map(lambda e: c[care_codes[e]]).to_numpy(),
                    "observation_date": pd.to_datetime(care["event_date"][keep]).to_numpy(),
                    "value_as_string": None,
                }
            )
        )
    # patient-level dates are care events too (her2fed takes the latest of both)
    for col, code in (
        ("palliative_care_date", "SNOMED:103735009"),
        ("transfer_out_date", "SNOMED:399307001"),
    ):
        if col in pat:
            day = pd.to_datetime(pat[col])
            present = day.notna().to_numpy()
            obs.append(
                pd.DataFrame(
                    {
                        "person_id": person_id[present],
                        "observation_concept_id": c[code],
                        "observation_date": day[present].to_numpy(),
                        "value_as_string": None,
                    }
                )
            )
    observation = pd.concat(obs, ignore_index=True)
    observation.insert(0, "observation_id", np.arange(1, len(observation) + 1))
    observation["observation_type_concept_id"] = TYPE_EHR

    t = frames["treatments"]
    t = t[t["patient_id"].astype(str).isin(pid_of)].reset_index(drop=True)
    mapped, _ = drugs.map_drugs(t["drug"], t.get("atc"))
    concept_ids = np.array([vocab.product.get(m, 0) if m else 0 for m in mapped], dtype=np.int64)
    t_start = pd.to_datetime(t["start_date"])
    supply = pd.to_numeric(t["days_supply"], errors="coerce") if "days_supply" in t else None
    end = pd.to_datetime(t["end_date"]) if "end_date" in t else pd.Series(pd.NaT, index=t.index)
    derived_end = t_start.copy()
    if supply is not None:
        has = supply.notna()
        derived_end[has] = t_start[has] + pd.to_timedelta(np.ceil(supply[has]) - 1, unit="D")
    route_codes = {
        "iv": "SNOMED:47625008",
        "oral": "SNOMED:26643006",
        "sc": "SNOMED:34206005",
        "im": "SNOMED:78421000",
    }
    route = t["route"].astype(str).str.lower() if "route" in t else pd.Series("", index=t.index)
    drug = pd.DataFrame(
        {
            "drug_exposure_id": np.arange(1, len(t) + 1, dtype=np.int64),
            "person_id": t["patient_id"].astype(str).map(pid_of).to_numpy(),
            "drug_concept_id": concept_ids,
            "drug_exposure_start_date": t_start,
            "drug_exposure_end_date": end.where(end.notna(), derived_end),
            "verbatim_end_date": end,
            "drug_type_concept_id": TYPE_EHR,
            "stop_reason": t.get("stop_reason"),
            "days_supply": supply.astype("Int64") if supply is not None else None,
            "route_concept_id": route.map(lambda r: c[route_codes[r]] if r in route_codes else 0),
            "drug_source_value": t["drug"].astype(str).str.slice(0, 50),
            "route_source_value": t.get("route"),
        }
    )
    episode = pd.DataFrame(columns=["episode_id"])
    event = pd.DataFrame(columns=["episode_id"])
    if "line_number" in t and t["line_number"].notna().any():
        lines = pd.DataFrame(
            {
                "person_id": drug["person_id"],
                "line": pd.to_numeric(t["line_number"]),
                "start": t_start,
                "end": drug["drug_exposure_end_date"],
                "event_id": drug["drug_exposure_id"],
            }
        ).dropna(subset=["line"])
        lines["line"] = lines["line"].astype(np.int64)
        ep = (
            lines.groupby(["person_id", "line"], sort=True)
            .agg(episode_start_date=("start", "min"), episode_end_date=("end", "max"))
            .reset_index()
        )
        ep.insert(0, "episode_id", np.arange(1, len(ep) + 1, dtype=np.int64))
        episode = pd.DataFrame(
            {
                "episode_id": ep["episode_id"],
                "person_id": ep["person_id"],
                "episode_concept_id": TREATMENT_REGIMEN,
                "episode_start_date": ep["episode_start_date"],
                "episode_end_date": ep["episode_end_date"],
                "episode_parent_id": None,
                "episode_number": ep["line"],
                "episode_object_concept_id": 0,
                "episode_type_concept_id": TYPE_EHR,
            }
        )
        key = lines.merge(ep[["episode_id", "person_id", "line"]], on=["person_id", "line"])
        event = pd.DataFrame(
            {
                "episode_id": key["episode_id"],
                "event_id": key["event_id"],
                "episode_event_field_concept_id": DRUG_EXPOSURE_FIELD,
            }
        )
    return {
        "person": person,
        "observation_period": period,
        "death": death,
        "condition_occurrence": condition,
        "measurement": measurement,
        "observation": observation,
        "drug_exposure": drug,
        "episode": episode,
        "episode_event": event,
    }


def _copy(cur: Any, schema: str, table: str, frame: pd.DataFrame) -> None:
    from psycopg import sql

    if frame.empty:
        return
    cols = sql.SQL(", ").join(sql.Identifier(str(col)) for col in frame.columns)
    stmt = sql.SQL("COPY {}.{} ({}) FROM STDIN WITH (FORMAT csv)").format(
        sql.Identifier(schema), sql.Identifier(table), cols
    )
    buf = io.StringIO()
    frame.to_csv(buf, index=False, header=False, date_format="%Y-%m-%d")
    with cur.copy(stmt) as copy:
        copy.write(buf.getvalue())


def load_omop(
    url: str,
    schema: str,
    frames: Mapping[str, pd.DataFrame],
    *,
    password_env: str = "HER2FED_DB_PASSWORD",
    vocab: Vocabulary | None = None,
    reader: str | None = None,
) -> dict[str, int]:
    """(Re)create ``schema`` with the OMOP tables and the generated vocabulary; rows per table.

    ``reader`` (an existing role) is granted USAGE and SELECT only, so a rehearsal
    reads the way a hospital should: as a role that cannot write.
    """
    import psycopg
    from psycopg import sql

    vocab = vocab or vocabulary()
    tables = to_omop(frames, vocab)
    tables["concept"] = vocab.concept
    tables["concept_ancestor"] = vocab.ancestor
    counts: dict[str, int] = {}
    with psycopg.connect(url, password=os.environ.get(password_env) or None) as db:
        with db.cursor() as cur:
            ident = sql.Identifier(schema)
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
            for table, ddl in DDL.items():
                cur.execute(
                    sql.SQL("CREATE TABLE {}.{} (" + ddl + ")").format(ident, sql.Identifier(table))
                )
                frame = tables[table]
                _copy(cur, schema, table, frame)
                counts[table] = len(frame)
            for stmt in INDEXES:
                cur.execute(sql.SQL(stmt.replace("{s}", "{}")).format(ident))
            if reader is not None:
                role = sql.Identifier(reader)
                cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ident, role))
                cur.execute(
                    sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(ident, role)
                )
            cur.execute(sql.SQL("ANALYZE"))
        db.commit()
    return counts
