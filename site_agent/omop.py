"""The HER2+ mBC registry read from an OMOP CDM (v5.4) schema.

Each registry column is derived from standard OMOP tables through a named
*concept set* (docs/omop.md lists every one with its codes and the rule that
uses it). Concept sets are written as vocabulary codes (``"LOINC:85319-2"``)
and resolved to the site's concept_ids through its own CONCEPT and
CONCEPT_ANCESTOR tables, because concept_ids are only stable within one
vocabulary release while codes are what clinicians and ETL teams recognise. A
site overrides any set in ``[data.registry.concepts]`` when its ETL uses local
or other codes; the override replaces the default set entirely, so what is read
is always exactly what the config says.

The frames produced here are *raw* registry tables: they go through the same
validation (``site_agent.registry.validate_registry``) as CSV or Parquet files,
so a database and a file holding the same patients give the same registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from her2fed import drugs
from her2fed.errors import SpecError
from site_agent.sql_source import (
    CONNECTION_KEYS,
    DbConnection,
    SourceError,
    parse_connection,
    query_error,
    read_only_session,
    schema_exists,
    schemas_with,
    stream_frame,
    table_names,
)

if TYPE_CHECKING:
    import psycopg

OMOP_MAPPING_VERSION = "her2fed-omop-1.0.0"
DOC = "docs/omop.md"

MET_SITES_WINDOW_DAYS = 30
"""A metastatic site counts as present at diagnosis if recorded within this many days of it."""
DE_NOVO_WINDOW_DAYS = 90
"""De novo: the first metastasis is recorded within this many days of the first breast cancer."""
ECOG_WINDOW_DAYS = 60
"""ECOG at metastatic diagnosis: the score recorded nearest to it, within this many days."""
DRUG_EXPOSURE_FIELD = 1147094
"""EPISODE_EVENT.episode_event_field_concept_id of ``drug_exposure.drug_exposure_id``."""
INGREDIENT_VOCABULARIES = ("RxNorm", "RxNorm Extension")

REQUIRED_TABLES = (
    "person",
    "death",
    "observation_period",
    "condition_occurrence",
    "measurement",
    "observation",
    "drug_exposure",
)
VOCABULARY_TABLES = ("concept", "concept_ancestor")
EPISODE_TABLES = ("episode", "episode_event")


@dataclass(frozen=True)
class ConceptSet:
    """A named set of concepts; ``descendants`` adds every descendant in CONCEPT_ANCESTOR."""

    name: str
    entries: tuple[str | int, ...]
    descendants: bool
    used_for: str


def _cs(name: str, entries: Sequence[str | int], used_for: str, desc: bool = True) -> ConceptSet:
    return ConceptSet(name, tuple(entries), desc, used_for)


MET_SITE_SETS = {
    "bone": "met_bone",
    "lung": "met_lung",
    "liver": "met_liver",
    "brain": "met_brain",
    "lymph": "met_lymph",
    "skin": "met_skin",
}

DEFAULT_CONCEPT_SETS: dict[str, ConceptSet] = {
    s.name: s
    for s in (
        _cs("breast_cancer", ["SNOMED:254837009"], "initial_dx_date, de_novo, cohort entry"),
        _cs("metastasis", ["SNOMED:128462008"], "met_dx_date, met_sites 'other', cohort entry"),
        _cs("met_bone", ["SNOMED:94222008"], "met_sites bone"),
        _cs("met_lung", ["SNOMED:94391008"], "met_sites lung"),
        _cs("met_liver", ["SNOMED:94381002"], "met_sites liver"),
        _cs("met_brain", ["SNOMED:94225005"], "met_sites brain, brain_mets"),
        _cs("met_lymph", ["SNOMED:94411004"], "met_sites lymph"),
        _cs("met_skin", ["SNOMED:94579000"], "met_sites skin"),
        _cs(
            "her2",
            ["LOINC:85319-2", "LOINC:85318-4", "LOINC:18474-7", "LOINC:48676-1"],
            "her2_status (IHC and ISH results)",
        ),
        _cs("er", ["LOINC:85337-4", "LOINC:16112-5"], "er_status"),
        _cs("pr", ["LOINC:85339-0", "LOINC:16113-3"], "pr_status"),
        _cs("ecog", ["LOINC:89247-1"], "ecog"),
        _cs("positive", ["LOINC:LA6576-8"], "result values meaning positive", False),
        _cs("negative", ["LOINC:LA6577-6"], "result values meaning negative", False),
        _cs("female", ["Gender:F"], "sex F", False),
        _cs("male", ["Gender:M"], "sex M", False),
        _cs("route_iv", ["SNOMED:47625008"], "route iv"),
        _cs("route_oral", ["SNOMED:26643006"], "route oral"),
        _cs("route_sc", ["SNOMED:34206005"], "route sc"),
        _cs("route_im", ["SNOMED:78421000"], "route im"),
        _cs("progression", ["SNOMED:444391001"], "progressions (OBSERVATION)"),
        _cs("palliative_care", ["SNOMED:103735009"], "care_events palliative_care"),
        _cs("hospice", ["SNOMED:385763009"], "care_events hospice"),
        _cs("transfer_out", ["SNOMED:399307001"], "care_events transfer_out"),
        _cs("treatment_regimen", [32531], "line_number (EPISODE, where present)", False),
        _cs(
            "antineoplastic",
            ["ATC:L01", "ATC:L02"],
            "drugs that must map to the her2fed vocabulary (else: unmapped error)",
        ),
        _cs("ignore_drugs", [], "drug concepts acknowledged as not line-defining (not read)"),
    )
}
ROUTES = {"iv": "route_iv", "oral": "route_oral", "sc": "route_sc", "im": "route_im"}
CARE = {"palliative_care": "palliative_care", "hospice": "hospice", "transfer_out": "transfer_out"}


@dataclass(frozen=True)
class OmopSource:
    """``[data.registry]`` pointing at an OMOP CDM schema (or at SQL queries)."""

    connection: DbConnection
    schema: str | None = None
    vocabulary_schema: str | None = None
    queries: dict[str, str] = field(default_factory=dict)
    concept_sets: dict[str, ConceptSet] = field(default_factory=lambda: dict(DEFAULT_CONCEPT_SETS))
    drug_overrides: dict[str, tuple[str | int, ...]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.schema is not None:
            return f"{self.connection.shown} (OMOP schema {self.schema!r})"
        return f"{self.connection.shown} (queries)"


DB_REGISTRY_KEYS = (*CONNECTION_KEYS, "omop_schema", "vocabulary_schema", "queries", "concepts")
REGISTRY_QUERY_TABLES = ("patients", "treatments", "progressions", "care_events")


def _entries(value: Any, where: str) -> tuple[str | int, ...]:
    ok = isinstance(value, list) and all(
        (isinstance(v, int) and not isinstance(v, bool) and v > 0)
        or (isinstance(v, str) and ":" in v and v.split(":", 1)[0] and v.split(":", 1)[1])
        for v in value
    )
    if not ok:
        raise SpecError(
            where,
            f"must be a list of concept codes or ids, got {value!r}",
            'write codes as "VOCABULARY:CODE" (e.g. "LOINC:85319-2") or concept_ids as integers',
        )
    return tuple(value)


def parse_db_registry(spec: Mapping[str, Any], where: str, base: Path) -> OmopSource:
    """The database form of ``[data.registry]``; unknown keys and sets are errors."""
    bad = sorted(set(spec) - set(DB_REGISTRY_KEYS))
    if bad:
        raise SpecError(where, f"unknown key(s) {bad}", f"use {list(DB_REGISTRY_KEYS)}")
    conn = parse_connection(spec, where, base)
    schema = spec.get("omop_schema")
    queries = spec.get("queries")
    if (schema is None) == (queries is None):
        raise SpecError(
            where,
            "needs exactly one of omop_schema and [data.registry.queries]",
            'give omop_schema = "cdm" for an OMOP CDM, or SQL per registry table under '
            "[data.registry.queries] (see docs/omop.md)",
        )
    vocab = spec.get("vocabulary_schema")
    for key, value in (("omop_schema", schema), ("vocabulary_schema", vocab)):
        if value is not None and (not isinstance(value, str) or not value):
            raise SpecError(f"{where}.{key}", "must be a schema name", f'e.g. {key} = "cdm"')
    parsed_queries: dict[str, str] = {}
    if queries is not None:
        if not isinstance(queries, dict):
            raise SpecError(f"{where}.queries", "must be a table", "write [data.registry.queries]")
        unknown = sorted(set(queries) - set(REGISTRY_QUERY_TABLES))
        if unknown:
            raise SpecError(
                f"{where}.queries",
                f"unknown table(s) {unknown}",
                f"use {list(REGISTRY_QUERY_TABLES)}",
            )
        for table, sql in queries.items():
            if not isinstance(sql, str) or not sql.strip():
                raise SpecError(
                    f"{where}.queries.{table}",
                    "must be an SQL query",
                    f'e.g. {table} = "SELECT * FROM research.{table}"',
                )
            parsed_queries[table] = sql.strip().rstrip(";")
        for table in ("patients", "treatments", "progressions"):
            if table not in parsed_queries:
                raise SpecError(
                    f"{where}.queries",
                    f"registry table {table!r} has no query",
                    f'add {table} = "SELECT ... " returning the columns of docs/registry_schema.md',
                )
    sets = dict(DEFAULT_CONCEPT_SETS)
    overrides: dict[str, tuple[str | int, ...]] = {}
    raw_concepts = spec.get("concepts", {})
    if not isinstance(raw_concepts, dict):
        raise SpecError(f"{where}.concepts", "must be a table", "write [data.registry.concepts]")
    for name, value in raw_concepts.items():
        key = f"{where}.concepts.{name}"
        if name == "drugs":
            if not isinstance(value, dict):
                raise SpecError(
                    key, "must be a table", 'write drugs = { trastuzumab = ["RxNorm:224905"] }'
                )
            for ingredient, ids in value.items():
                canon = drugs.LOOKUP.get(drugs.normalise(str(ingredient)))
                if canon is None or drugs.COMBINATION_SEP in canon:
                    raise SpecError(
                        f"{key}.{ingredient}",
                        "is not an ingredient of the her2fed drug vocabulary",
                        f"use one of {list(drugs.INGREDIENT_NAMES)}",
                    )
                overrides[canon] = _entries(ids, f"{key}.{ingredient}")
            continue
        if name not in sets:
            raise SpecError(
                key,
                "is not a concept set her2fed uses",
                f"use one of {sorted([*sets, 'drugs'])} (see {DOC})",
            )
        default = sets[name]
        sets[name] = ConceptSet(name, _entries(value, key), default.descendants, default.used_for)
    return OmopSource(
        conn,
        schema if isinstance(schema, str) else None,
        vocab if isinstance(vocab, str) else None,
        parsed_queries,
        sets,
        overrides,
    )


# ---------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class OmopReport:
    """Facts about the mapping that ``site check`` prints (aggregates, no patient values)."""

    concept_counts: dict[str, int]
    """Concepts each set resolved to in this database's vocabulary."""
    drugs_not_read: int
    """Exposures of drugs outside the her2fed vocabulary and outside ``antineoplastic``."""
    episode_lines: bool
    """Whether line numbers came from EPISODE (the tables exist)."""

    def lines(self) -> list[str]:
        sets = ", ".join(f"{k} {v}" for k, v in self.concept_counts.items())
        return [
            f"OMOP mapping {OMOP_MAPPING_VERSION}; concepts per set: {sets}",
            f"drug exposures not read (not antineoplastic, not in the her2fed vocabulary): "
            f"{self.drugs_not_read}",
            "line numbers from EPISODE: " + ("yes" if self.episode_lines else "no (no EPISODE)"),
        ]


class _Reader:
    """One read of one OMOP schema inside one read-only snapshot."""

    def __init__(self, src: OmopSource, db: psycopg.Connection[Any]) -> None:
        from psycopg import sql

        assert src.schema is not None
        self.src = src
        self.db = db
        self.sql = sql
        self.cdm = sql.Identifier(src.schema)
        self.voc = sql.Identifier(src.vocabulary_schema or src.schema)
        self.ids: dict[str, list[int]] = {}
        """concept_ids of each set, descendants included where the set says so."""
        self.roots: dict[str, list[int]] = {}
        """concept_ids of each set's own entries (the ``metastasis`` root is not a site)."""

    def q(
        self,
        text: str,
        transform: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
        **params: Any,
    ) -> pd.DataFrame:
        import psycopg

        stmt = self.sql.SQL(text).format(cdm=self.cdm, voc=self.voc)
        try:
            return stream_frame(
                self.db,
                stmt.as_string(self.db),
                params,
                self.src.connection.fetch_rows,
                transform,
            )
        except psycopg.Error as err:
            raise query_error(
                self.src.connection,
                "reading the OMOP tables",
                err,
                f"check that the tables of schema {self.src.schema!r} follow OMOP CDM v5.4 "
                f"column names and that the user may SELECT them ({DOC})",
            ) from None

    # -- structure -----------------------------------------------------------

    def check_tables(self) -> bool:
        conn = self.src.connection
        schemas = {
            "OMOP": self.src.schema,
            "vocabulary": self.src.vocabulary_schema or self.src.schema,
        }
        for role, schema in schemas.items():
            assert schema is not None
            if not schema_exists(self.db, schema):
                found = schemas_with(self.db, "person" if role == "OMOP" else "concept")
                raise SourceError(
                    f"{conn.declared_in}: [data.registry] "
                    + ("omop_schema" if role == "OMOP" else "vocabulary_schema"),
                    f"schema {schema!r} does not exist in {conn.shown}",
                    (
                        f"set it to the schema holding the {role} tables; schemas with a "
                        f"{'PERSON' if role == 'OMOP' else 'CONCEPT'} table here: {found}"
                        if found
                        else f"load the {role} tables, or correct the database in the URL"
                    ),
                )
        have = table_names(self.db, schemas["OMOP"] or "")
        vocab_have = table_names(self.db, schemas["vocabulary"] or "")
        for schema, tables, names in (
            (schemas["OMOP"], REQUIRED_TABLES, have),
            (schemas["vocabulary"], VOCABULARY_TABLES, vocab_have),
        ):
            missing = [t for t in tables if t not in names]
            if missing:
                raise SourceError(
                    f"{conn.declared_in}: [data.registry]",
                    f"OMOP table(s) {[t.upper() for t in missing]} missing from schema "
                    f"{schema!r} of {conn.shown} (or not readable by this user: PostgreSQL "
                    "lists only tables a user has privileges on)",
                    "load them (empty tables are fine for DEATH and OBSERVATION), grant SELECT on "
                    f"them to the site agent's user, or correct omop_schema/vocabulary_schema "
                    f"({DOC})",
                )
        return all(t in have for t in EPISODE_TABLES)

    def resolve(self) -> dict[str, int]:
        """concept_ids of every set, from the site's vocabulary; empty key sets are errors."""
        codes: set[tuple[str, str]] = set()
        for s in self.src.concept_sets.values():
            codes |= {_split(e) for e in s.entries if isinstance(e, str)}
        for ents in self.src.drug_overrides.values():
            codes |= {_split(e) for e in ents if isinstance(e, str)}
        found = self.q(
            "SELECT concept_id, vocabulary_id, concept_code FROM {voc}.concept "
            "WHERE (vocabulary_id || ':' || concept_code) = ANY(%(codes)s)",
            codes=[f"{v}:{c}" for v, c in sorted(codes)],
        )
        by_code = {
            (str(v), str(c)): int(i)
            for i, v, c in found[["concept_id", "vocabulary_id", "concept_code"]].itertuples(
                index=False
            )
        }
        roots: dict[str, list[int]] = {}

        def ids_of(entries: Sequence[str | int]) -> list[int]:
            out: list[int] = []
            for e in entries:
                if isinstance(e, int):
                    out.append(e)
                elif _split(e) in by_code:
                    out.append(by_code[_split(e)])
            return out

        named: dict[str, tuple[Sequence[str | int], bool]] = {
            n: (s.entries, s.descendants) for n, s in self.src.concept_sets.items()
        }
        for ing, ents in self.src.drug_overrides.items():
            named[f"drugs.{ing}"] = (ents, True)
        for name, (entries, _) in named.items():
            roots[name] = ids_of(entries)
        need_desc = sorted({i for n, (_, d) in named.items() if d for i in roots[n]})
        desc = self.q(
            "SELECT ancestor_concept_id AS a, descendant_concept_id AS d "
            "FROM {voc}.concept_ancestor "
            "WHERE ancestor_concept_id = ANY(%(ids)s)",
            ids=need_desc,
        )
        children: dict[int, set[int]] = {}
        for a, d in desc.itertuples(index=False):
            children.setdefault(int(a), set()).add(int(d))
        for name, (_, with_desc) in named.items():
            ids = set(roots[name])
            if with_desc:
                for r in roots[name]:
                    ids |= children.get(r, set())
            self.ids[name] = sorted(ids)
        self.roots = roots
        self._require_concepts()
        return {n: len(v) for n, v in self.ids.items() if not n.startswith("drugs.")}

    def _require_concepts(self) -> None:
        conn = self.src.connection
        for name in ("breast_cancer", "metastasis", "her2", "er", "pr", "female"):
            if self.ids[name]:
                continue
            s = self.src.concept_sets[name]
            raise SourceError(
                f"{conn.declared_in}: [data.registry] concept set {name!r}",
                f"none of its concepts {list(s.entries)} is in the CONCEPT table of "
                f"{self.src.vocabulary_schema or self.src.schema!r} ({s.used_for} cannot be read)",
                f"load the standard vocabulary that holds them (Athena), or list the concepts your "
                f'ETL uses: [data.registry.concepts] {name} = ["VOCABULARY:CODE", concept_id, ...] '
                f"({DOC})",
            )

    # -- tables --------------------------------------------------------------

    _COHORT = (
        "WITH cohort AS (SELECT DISTINCT person_id FROM {cdm}.condition_occurrence "
        "WHERE condition_concept_id = ANY(%(entry)s)) "
    )

    def _entry(self) -> list[int]:
        return sorted({*self.ids["breast_cancer"], *self._met_ids()})

    def _met_ids(self) -> list[int]:
        ids = set(self.ids["metastasis"])
        for s in MET_SITE_SETS.values():
            ids |= set(self.ids[s])
        return sorted(ids)

    def patients(self) -> pd.DataFrame:
        person = self.q(
            self._COHORT
            + "SELECT p.person_id, p.year_of_birth, p.gender_concept_id, d.death_date, "
            "op.last_contact FROM {cdm}.person p JOIN cohort c ON c.person_id = p.person_id "
            "LEFT JOIN (SELECT person_id, MIN(death_date) AS death_date FROM {cdm}.death "
            "GROUP BY person_id) d ON d.person_id = p.person_id "
            "LEFT JOIN (SELECT person_id, MAX(observation_period_end_date) AS last_contact "
            "FROM {cdm}.observation_period GROUP BY person_id) op ON op.person_id = p.person_id "
            "ORDER BY p.person_id",
            entry=self._entry(),
        )
        cond = self.q(
            self._COHORT + "SELECT co.person_id, co.condition_concept_id AS concept, "
            "co.condition_start_date AS day FROM {cdm}.condition_occurrence co "
            "JOIN cohort c ON c.person_id = co.person_id "
            "WHERE co.condition_concept_id = ANY(%(entry)s)",
            entry=self._entry(),
        )
        meas_sets = ("her2", "er", "pr", "ecog")
        meas = self.q(
            self._COHORT
            + "SELECT m.person_id, m.measurement_concept_id AS concept, m.measurement_date AS day, "
            "m.value_as_concept_id AS value_concept, m.value_as_number AS value_number "
            "FROM {cdm}.measurement m JOIN cohort c ON c.person_id = m.person_id "
            "WHERE m.measurement_concept_id = ANY(%(ids)s)",
            entry=self._entry(),
            ids=sorted({i for s in meas_sets for i in self.ids[s]}),
        )
        pid = person["person_id"].astype(np.int64)
        out = pd.DataFrame({"patient_id": pid.astype(str)})
        out["birth_year"] = person["year_of_birth"]
        gender = person["gender_concept_id"]
        sex = pd.Series(np.full(len(person), None, dtype=object))
        sex[gender.isin(self.ids["male"]).to_numpy()] = "M"
        sex[gender.isin(self.ids["female"]).to_numpy()] = "F"
        out["sex"] = sex
        cond["day"] = pd.to_datetime(cond["day"])
        idx = pd.Index(pid)

        def first(mask: pd.Series) -> pd.Series:
            got = cond[mask].groupby("person_id")["day"].min()
            return pd.Series(got.reindex(idx).to_numpy(), index=out.index)

        breast = first(cond["concept"].isin(self.ids["breast_cancer"]))
        met = first(cond["concept"].isin(self._met_ids()))
        out["initial_dx_date"] = breast
        out["met_dx_date"] = met
        gap = (met - breast).dt.days
        out["de_novo"] = np.where(breast.notna() & (gap <= DE_NOVO_WINDOW_DAYS), "true", "false")
        out["her2_status"] = self._status(meas, "her2", idx, numeric_ihc=True)
        out["er_status"] = self._status(meas, "er", idx)
        out["pr_status"] = self._status(meas, "pr", idx)
        out["ecog"] = self._ecog(meas, idx, met)
        brain = cond[cond["concept"].isin(self.ids["met_brain"])]["person_id"].unique()
        out["brain_mets"] = np.where(pid.isin(brain), "true", "false")
        out["met_sites"] = self._sites(cond, idx, met)
        out["death_date"] = pd.to_datetime(person["death_date"])
        out["last_contact_date"] = pd.to_datetime(person["last_contact"])
        return out

    def _status(
        self, meas: pd.DataFrame, name: str, idx: pd.Index[Any], numeric_ihc: bool = False
    ) -> np.ndarray[Any, Any]:
        m = meas[meas["concept"].isin(self.ids[name])]
        pos = m["value_concept"].isin(self.ids["positive"]).to_numpy()
        neg = m["value_concept"].isin(self.ids["negative"]).to_numpy()
        if numeric_ihc:  # IHC score 0..3 without an answer concept: 3+ positive, 0/1+ negative
            num = pd.to_numeric(m["value_number"], errors="coerce").to_numpy(np.float64)
            plain = ~pos & ~neg
            pos = pos | (plain & (num >= 3))
            neg = neg | (plain & (num <= 1))
        any_pos = set(m["person_id"][pos])
        any_neg = set(m["person_id"][neg])
        ids = idx.to_numpy()
        p = np.isin(ids, list(any_pos))
        n = np.isin(ids, list(any_neg))
        return np.where(p, "POS", np.where(n, "NEG", "UNKNOWN"))

    def _ecog(self, meas: pd.DataFrame, idx: pd.Index[Any], met: pd.Series) -> pd.Series:
        m = meas[meas["concept"].isin(self.ids["ecog"])].copy()
        m["met"] = met.set_axis(idx).reindex(m["person_id"]).to_numpy()
        m["dist"] = (pd.to_datetime(m["day"]) - m["met"]).dt.days.abs()
        m = m[(m["dist"] <= ECOG_WINDOW_DAYS) & m["value_number"].notna()]
        m = m.sort_values(["person_id", "dist", "day"], kind="stable")
        best = m.drop_duplicates("person_id").set_index("person_id")["value_number"]
        got = best.reindex(idx).to_numpy(dtype=object)
        return pd.Series(got).map(lambda v: None if v is None or v != v else str(int(float(v))))

    def _sites(self, cond: pd.DataFrame, idx: pd.Index[Any], met: pd.Series) -> list[str | None]:
        c = cond[cond["concept"].isin(self._met_ids())].copy()
        c["met"] = met.set_axis(idx).reindex(c["person_id"]).to_numpy()
        c = c[(c["day"] - c["met"]).dt.days <= MET_SITES_WINDOW_DAYS]
        site = pd.Series(np.full(len(c), None, dtype=object), index=c.index)
        named: set[int] = set(self.roots["metastasis"])
        for label, set_name in MET_SITE_SETS.items():
            hit = c["concept"].isin(self.ids[set_name]).to_numpy() & site.isna().to_numpy()
            site[hit] = label
            named |= set(self.ids[set_name])
        site[~c["concept"].isin(sorted(named)).to_numpy() & site.isna().to_numpy()] = "other"
        c["site"] = site
        c = c[c["site"].notna()]
        order = {s: i for i, s in enumerate([*MET_SITE_SETS, "other"])}
        joined: dict[int, str] = {}
        for person, sites in c.groupby("person_id")["site"]:
            joined[int(str(person))] = ";".join(sorted(set(sites), key=order.__getitem__))
        return [joined.get(int(p)) for p in idx]

    def observations(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        care_ids = {k: self.ids[v] for k, v in CARE.items()}
        prog = self.ids["progression"]
        obs = self.q(
            self._COHORT
            + "SELECT o.person_id, o.observation_concept_id AS concept, o.observation_date AS day, "
            "o.value_as_string AS text FROM {cdm}.observation o "
            "JOIN cohort c ON c.person_id = o.person_id "
            "WHERE o.observation_concept_id = ANY(%(ids)s) ORDER BY o.observation_id",
            entry=self._entry(),
            ids=sorted({*prog, *(i for v in care_ids.values() for i in v)}),
        )
        pid = obs["person_id"].astype(np.int64).astype(str)
        day = pd.to_datetime(obs["day"])
        is_prog = obs["concept"].isin(prog).to_numpy()
        progressions = pd.DataFrame(
            {
                "patient_id": pid[is_prog].to_numpy(),
                "progression_date": day[is_prog].to_numpy(),
                "evidence": obs["text"][is_prog].to_numpy(),
            }
        )
        event = pd.Series(np.full(len(obs), None, dtype=object))
        for label, ids in care_ids.items():
            event[obs["concept"].isin(ids).to_numpy() & event.isna().to_numpy()] = label
        keep = event.notna().to_numpy() & ~is_prog
        care = pd.DataFrame(
            {
                "patient_id": pid[keep].to_numpy(),
                "event": event[keep].to_numpy(),
                "event_date": day[keep].to_numpy(),
            }
        )
        return progressions, care

    def drug_map(self) -> tuple[dict[int, str], int]:
        """drug_concept_id -> her2fed drug text; unmapped antineoplastic drugs raise."""
        counts = self.q(
            self._COHORT
            + "SELECT de.drug_concept_id AS concept, COUNT(*) AS n FROM {cdm}.drug_exposure de "
            "JOIN cohort c ON c.person_id = de.person_id GROUP BY de.drug_concept_id",
            entry=self._entry(),
        )
        concepts = sorted(int(c) for c in counts["concept"] if int(c) != 0)
        anc = self.q(
            "SELECT ca.descendant_concept_id AS drug, c.concept_id AS ing, c.concept_name AS name "
            "FROM {voc}.concept_ancestor ca JOIN {voc}.concept c "
            "ON c.concept_id = ca.ancestor_concept_id "
            "WHERE ca.descendant_concept_id = ANY(%(ids)s) "
            "AND c.concept_class_id = 'Ingredient' AND c.vocabulary_id = ANY(%(vocabs)s)",
            ids=concepts,
            vocabs=list(INGREDIENT_VOCABULARIES),
        )
        override: dict[int, str] = {}
        for ing in sorted(self.src.drug_overrides):
            for cid in self.ids[f"drugs.{ing}"]:
                override.setdefault(cid, ing)
        ingredients: dict[int, set[str | None]] = {}
        ing_ids: dict[int, set[int]] = {}
        for drug, ing, name in anc.itertuples(index=False):
            mapped = override.get(int(ing)) or drugs.ingredient_of(str(name))
            ingredients.setdefault(int(drug), set()).add(mapped)
            ing_ids.setdefault(int(drug), set()).add(int(ing))
        antineo = set(self.ids["antineoplastic"])
        ignore = set(self.ids["ignore_drugs"])
        names = dict.fromkeys(concepts, "")
        text: dict[int, str] = {}
        unmapped: list[int] = []
        for cid in concepts:
            if cid in ignore:
                continue
            if cid in override:
                text[cid] = override[cid]
                continue
            ings = ingredients.get(cid, set())
            if ings and None not in ings:
                parts = sorted({p for i in ings if i for p in drugs.split_ingredients(i)})
                text[cid] = " + ".join(parts)
            elif cid in antineo or ing_ids.get(cid, set()) & antineo:
                unmapped.append(cid)
        n_by = dict(zip(counts["concept"].astype(int), counts["n"].astype(int), strict=True))
        if unmapped:
            named = self.q(
                "SELECT concept_id, concept_name FROM {voc}.concept "
                "WHERE concept_id = ANY(%(ids)s)",
                ids=unmapped,
            )
            names.update(
                dict(zip(named["concept_id"].astype(int), named["concept_name"], strict=True))
            )
            listed = ", ".join(
                f"{c} {names.get(c) or '(no CONCEPT row)'!r}: {n_by[c]} exposure(s)"
                for c in sorted(unmapped, key=lambda c: -n_by[c])[:10]
            )
            conn = self.src.connection
            raise SourceError(
                f"{conn.declared_in}: [data.registry] DRUG_EXPOSURE",
                f"{len(unmapped)} antineoplastic drug concept(s) do not map to the her2fed drug "
                f"vocabulary, so lines of therapy would silently miss them: {listed}",
                "map each to its her2fed ingredient in [data.registry.concepts], e.g. "
                f"drugs = {{ trastuzumab = [{unmapped[0]}] }}, or, if it is not part of any "
                f"line (e.g. a trial drug you exclude on purpose), list it in "
                f"ignore_drugs = [{unmapped[0]}] ({DOC})",
            )
        not_read = sum(n for c, n in n_by.items() if c != 0 and c not in text)
        return text, not_read

    def treatments(self, drug_text: dict[int, str], episodes: bool) -> pd.DataFrame:
        ep_join = ""
        if episodes:
            ep_join = (
                "LEFT JOIN (SELECT ee.event_id, MIN(e.episode_number) AS line "
                "FROM {cdm}.episode_event ee "
                "JOIN {cdm}.episode e ON e.episode_id = ee.episode_id "
                "WHERE e.episode_concept_id = ANY(%(regimen)s) "
                f"AND ee.episode_event_field_concept_id = {DRUG_EXPOSURE_FIELD} "
                "GROUP BY ee.event_id) ep ON ep.event_id = de.drug_exposure_id "
            )

        def shape(t: pd.DataFrame) -> pd.DataFrame:
            concept = t["concept"].astype(np.int64)
            drug = concept.map(drug_text).astype(object)
            drug = drug.where(concept != 0, t["source"])
            route = pd.Series(np.full(len(t), None, dtype=object))
            for label, set_name in ROUTES.items():
                route[t["route_concept"].isin(self.ids[set_name]).to_numpy()] = label
            route = route.where(route.notna(), t["route_source"])
            return pd.DataFrame(
                {
                    "patient_id": t["person_id"].astype(np.int64).astype(str),
                    "drug": drug,
                    "route": route,
                    "start_date": pd.to_datetime(t["start_date"]),
                    "end_date": pd.to_datetime(t["end_date"]),
                    "days_supply": t["days_supply"],
                    "line_number": t["line"],
                    "stop_reason": t["stop_reason"],
                }
            )

        return self.q(
            self._COHORT
            + "SELECT de.person_id, de.drug_concept_id AS concept, de.drug_source_value AS source, "
            "de.route_concept_id AS route_concept, de.route_source_value AS route_source, "
            "de.drug_exposure_start_date AS start_date, de.drug_exposure_end_date AS end_date, "
            "de.days_supply, de.stop_reason, "
            + ("ep.line" if episodes else "NULL::integer AS line")
            + " FROM {cdm}.drug_exposure de JOIN cohort c ON c.person_id = de.person_id "
            + ep_join
            + "WHERE de.drug_concept_id = ANY(%(drugs)s) OR de.drug_concept_id = 0 "
            "ORDER BY de.drug_exposure_id",
            shape,
            entry=self._entry(),
            drugs=sorted(drug_text),
            **({"regimen": self.ids["treatment_regimen"]} if episodes else {}),
        )


def _split(entry: str) -> tuple[str, str]:
    vocab, code = entry.split(":", 1)
    return vocab, code


def read_omop(src: OmopSource) -> tuple[dict[str, pd.DataFrame], OmopReport]:
    """The raw registry tables of an OMOP schema, read in one read-only snapshot."""
    with read_only_session(src.connection) as db:
        reader = _Reader(src, db)
        episodes = reader.check_tables()
        counts = reader.resolve()
        patients = reader.patients()
        progressions, care = reader.observations()
        drug_text, not_read = reader.drug_map()
        treatments = reader.treatments(drug_text, episodes)
    frames = {
        "patients": patients,
        "treatments": treatments,
        "progressions": progressions,
        "care_events": care,
    }
    return frames, OmopReport(counts, not_read, episodes)


def read_queries(src: OmopSource) -> dict[str, pd.DataFrame]:
    """The raw registry tables from site-written SQL (views onto a local schema)."""
    import psycopg

    conn = src.connection
    frames: dict[str, pd.DataFrame] = {}
    with read_only_session(conn) as db:
        for table, sql in src.queries.items():
            try:
                frames[table] = stream_frame(db, sql, None, conn.fetch_rows)
            except psycopg.Error as err:
                raise query_error(
                    conn,
                    f"the query for registry table {table!r}",
                    err,
                    f"run [data.registry.queries] {table} in psql as the same user and fix it; it "
                    "must only SELECT the columns of docs/registry_schema.md",
                ) from None
    return frames
