"""Site data read from a real PostgreSQL server: OMOP CDM, SQL queries, errors, read-only.

One throwaway server serves the module (tests/pgserver.py). The central check
is end to end: the same synthetic cohorts, once as files and once loaded into
OMOP schemas by ``her2fed synth --to``, must give the same results.json.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pytest

from coordinator.cli import main as her2fed
from her2fed.errors import SpecError
from site_agent.config import load_site
from site_agent.omop_load import EXTRA_ANTINEOPLASTIC, load_omop, vocabulary
from site_agent.registry import Registry, load_registry
from site_agent.sources import load_site_registry, load_site_table
from site_agent.sql_source import DbConnection, SourceError, read_only_session
from site_agent.synth import synthesize
from tests.pgserver import (
    ADMIN,
    ADMIN_PASSWORD,
    READER,
    READER_PASSWORD,
    PgServer,
    postgres_server,
)
from tests.rehearsal import approve

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "examples" / "her2" / "study.toml"
SITES = "athens:GR:160,oslo:NO:160,munich:DE:160"
ENV = "HER2FED_DB_PASSWORD"


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(autouse=True)
def reader_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, READER_PASSWORD)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = her2fed(list(argv))
    return code, out.getvalue(), err.getvalue()


def admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, ADMIN_PASSWORD)


@pytest.fixture(scope="module")
def synth_sites(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same cohorts as CSV site directories and as OMOP schemas (synth --to)."""
    base = tmp_path_factory.mktemp("synth")
    old = os.environ.get(ENV)
    os.environ[ENV] = ADMIN_PASSWORD  # synth writes as the admin; sites read as the reader
    try:
        assert run("synth", "--out", str(base / "files"), "--sites", SITES)[0] == 0
        code, _, err = run(
            "synth",
            "--out",
            str(base / "db"),
            "--sites",
            SITES,
            "--to",
            pg.url(ADMIN),
            "--read-as",
            "her2fed_reader",
        )
        assert code == 0, err
    finally:
        os.environ.pop(ENV)
        if old is not None:
            os.environ[ENV] = old
    for name in ("athens", "oslo", "munich"):  # sites read as the SELECT-only role
        text = (base / "db" / name / "site.toml").read_text()
        assert "her2fed_reader@" in text and ADMIN not in text and ADMIN_PASSWORD not in text
    return {"files": base / "files", "db": base / "db"}


def _site_args(root: Path) -> list[str]:
    return [
        a for s in ("athens", "oslo", "munich") for a in ("--site", f"{s}={root / s / 'site.toml'}")
    ]


def test_study_results_from_database_equal_those_from_files(
    synth_sites: dict[str, Path], tmp_path: Path
) -> None:
    results: dict[str, Any] = {}
    for kind, root in synth_sites.items():
        approve(STUDY, [root / s / "site.toml" for s in ("athens", "oslo", "munich")])
        code, _, err = run(
            "local",
            str(STUDY),
            *_site_args(root),
            "--out",
            str(tmp_path / kind),
            "--transport",
            "inprocess",
        )
        assert code == 0, err
        assert READER_PASSWORD not in err
        results[kind] = json.loads((tmp_path / kind / "results.json").read_text())
    files, db = results["files"]["analyses"], results["db"]["analyses"]
    assert set(files) == set(db) and len(files) >= 8
    assert files == db  # every number, exactly: same rows in the same order
    km = db["os_km_hr"]["pooled"]["groups"]["POS"]
    assert sum(km["n_event"]) > 50  # a real study, not an empty one


def _frames(site: Path) -> Registry:
    return load_site_registry(load_site(site / "site.toml"))


def test_omop_registry_equals_the_file_registry(synth_sites: dict[str, Path]) -> None:
    """Column by column; the differences are the documented ones of docs/omop.md."""
    files = load_registry(
        {
            t: synth_sites["files"] / "oslo" / f"{t}.csv"
            for t in ("patients", "treatments", "progressions", "care_events")
        }
    )
    db = _frames(synth_sites["db"] / "oslo")
    for table in ("patients", "treatments", "progressions"):
        a = getattr(db, table).reset_index(drop=True)
        b = getattr(files, table).reset_index(drop=True)
        assert a.shape == b.shape, table
        for col in b.columns:
            if (table, col) in {
                ("patients", "palliative_care_date"),
                ("patients", "transfer_out_date"),
            }:
                assert a[col].isna().all()  # read as care events (see below)
                continue
            if col == "patient_id":  # OMOP person_id, not the source pseudonym
                assert (
                    a[col].map(pd.unique(a[col]).tolist().index)
                    == b[col].map(pd.unique(b[col]).tolist().index)
                ).all()
                continue
            if (table, col) in {("treatments", "drug"), ("treatments", "atc")}:
                continue  # standard ingredient instead of the pharmacy's text
            same = a[col].astype(str) == b[col].astype(str)
            if (table, col) == ("treatments", "end_date"):  # CDM requires an end date
                assert (same | b[col].isna()).all()
            elif (table, col) == ("patients", "initial_dx_date"):  # de novo, date unknown
                assert (same | (b[col].isna() & (a[col] == a["met_dx_date"]))).all()
            else:
                assert same.all(), (table, col)
    # OMOP has one place for care events: patient-level dates become events
    p = files.patients
    ids = dict(zip(p["patient_id"], db.patients["patient_id"], strict=True))
    expected = [files.care_events.assign(patient_id=files.care_events["patient_id"].map(ids))]
    for col, event in (
        ("palliative_care_date", "palliative_care"),
        ("transfer_out_date", "transfer_out"),
    ):
        has = p[col].notna()
        expected.append(
            pd.DataFrame(
                {
                    "patient_id": p["patient_id"][has].map(ids),
                    "event": event,
                    "event_date": p[col][has],
                }
            )
        )
    want = pd.concat(expected).astype(str).sort_values(["patient_id", "event", "event_date"])
    got = db.care_events.astype(str).sort_values(["patient_id", "event", "event_date"])
    assert want.to_numpy().tolist() == got.to_numpy().tolist()
    assert db.report.her2_status == files.report.her2_status
    assert db.report.hr_status == files.report.hr_status


def test_site_check_reads_the_database(synth_sites: dict[str, Path]) -> None:
    code, out, err = run(
        "site", "check", str(synth_sites["db"] / "athens" / "site.toml"), "--study", str(STUDY)
    )
    assert code == 0, out + err
    assert "OMOP mapping her2fed-omop-1.0.0" in out
    assert "lines of therapy" in out and "check passed" in out
    assert READER_PASSWORD not in out + err


def test_a_write_through_the_source_fails_even_for_a_writing_role(
    pg: PgServer, synth_sites: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    admin_env(monkeypatch)  # the admin could write; the session must not let it
    conn = DbConnection(pg.url(ADMIN))
    with read_only_session(conn) as db, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        db.execute("DELETE FROM athens.person")
    with read_only_session(conn) as db:
        row = db.execute("SELECT count(*) FROM athens.person").fetchone()
        assert row is not None and row[0] == 160


# ---------------------------------------------------------------------------
# errors: exit 2, the table or concept named, the fix given, no password shown


def _db_site(tmp_path: Path, url: str, schema: str, extra: str = "") -> Path:
    toml = tmp_path / "site.toml"
    toml.write_text(
        f'[site]\nid = "t"\ncountry = "GR"\n\n[data.registry]\nurl = "{url}"\n'
        f'omop_schema = "{schema}"\n{extra}'
    )
    return toml


def _fails(toml: Path, *needles: str) -> str:
    code, out, err = run("site", "check", str(toml))
    assert code == 2, out + err
    for needle in needles:
        assert needle in err, (needle, err)
    assert READER_PASSWORD not in out + err and ADMIN_PASSWORD not in out + err
    assert "Fix:" in err
    return err


def test_unreachable_server(pg: PgServer, tmp_path: Path) -> None:
    url = f"postgresql://her2fed_reader@127.0.0.1:{pg.port + 1}/her2fed"
    _fails(_db_site(tmp_path, url, "athens"), "cannot connect", "check host, port")


def test_bad_credentials(pg: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "wrong-" + READER_PASSWORD)
    err = _fails(
        _db_site(tmp_path, pg.url(), "athens"),
        "password authentication failed",
        "$HER2FED_DB_PASSWORD",
    )
    assert "wrong-" not in err


def test_wrong_schema_names_the_schemas_that_exist(
    pg: PgServer, synth_sites: dict[str, Path], tmp_path: Path
) -> None:
    _fails(
        _db_site(tmp_path, pg.url(), "athen"),
        "schema 'athen' does not exist",
        "'athens'",
        "omop_schema",
    )


@pytest.fixture(scope="module")
def broken(pg: PgServer) -> Iterator[None]:
    """Schemas with a table missing and with an unmapped antineoplastic drug."""
    frames = synthesize("GR", 40, 3, "t")
    os.environ[ENV] = ADMIN_PASSWORD
    try:
        vocab = vocabulary()
        load_omop(pg.url(ADMIN), "no_measurement", frames, vocab=vocab, reader=READER)
        load_omop(pg.url(ADMIN), "unmapped", frames, vocab=vocab, reader=READER)
    finally:
        os.environ.pop(ENV)
    product = vocab.product[EXTRA_ANTINEOPLASTIC[0]]
    with psycopg.connect(pg.url(ADMIN), password=ADMIN_PASSWORD, autocommit=True) as db:
        db.execute("DROP TABLE no_measurement.measurement")
        db.execute(
            "INSERT INTO unmapped.drug_exposure (drug_exposure_id, person_id, drug_concept_id, "
            "drug_exposure_start_date, drug_exposure_end_date, drug_type_concept_id) "
            "SELECT 1000000 + person_id, person_id, %s, DATE '2020-01-01', DATE '2020-01-01', "
            "32817 "
            "FROM unmapped.person WHERE person_id <= 3",
            (product,),
        )
    yield


def test_missing_table(pg: PgServer, broken: None, tmp_path: Path) -> None:
    _fails(
        _db_site(tmp_path, pg.url(), "no_measurement"), "['MEASUREMENT'] missing", "grant SELECT"
    )


def test_unmapped_drug_concept_is_counted_and_the_override_fixes_it(
    pg: PgServer, broken: None, tmp_path: Path
) -> None:
    product = vocabulary().product[EXTRA_ANTINEOPLASTIC[0]]
    err = _fails(
        _db_site(tmp_path, pg.url(), "unmapped"),
        "DRUG_EXPOSURE",
        f"{product} ",
        "3 exposure(s)",
        "[data.registry.concepts]",
        "ignore_drugs",
    )
    assert "sacituzumab govitecan" in err
    ok = _db_site(
        tmp_path, pg.url(), "unmapped", f"\n[data.registry.concepts]\nignore_drugs = [{product}]\n"
    )
    code, out, err = run("site", "check", str(ok))
    assert code == 0, out + err
    assert "drug exposures not read" in out


def test_missing_her2_concepts(pg: PgServer, synth_sites: dict[str, Path], tmp_path: Path) -> None:
    toml = _db_site(
        tmp_path, pg.url(), "athens", '\n[data.registry.concepts]\nher2 = ["LOINC:00000-0"]\n'
    )
    _fails(toml, "concept set 'her2'", "LOINC:00000-0", "her2_status", "[data.registry.concepts]")


# ---------------------------------------------------------------------------
# credentials


def test_password_in_url_is_refused_without_echoing_it(pg: PgServer, tmp_path: Path) -> None:
    url = f"postgresql://her2fed_reader:{READER_PASSWORD}@127.0.0.1:{pg.port}/her2fed"
    with pytest.raises(SpecError) as info:
        load_site(_db_site(tmp_path, url, "athens"))
    assert "contains a password" in str(info.value)
    assert READER_PASSWORD not in str(info.value)


def test_password_file_must_be_private(
    pg: PgServer, synth_sites: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV)
    secret = tmp_path / "db_password"
    secret.write_text(READER_PASSWORD + "\n")
    secret.chmod(0o644)
    toml = _db_site(tmp_path, pg.url(), "athens", 'password_file = "db_password"\n')
    _fails(toml, "readable by others (mode 0644)", f"chmod 600 {secret}")
    secret.chmod(0o600)
    registry = load_site_registry(load_site(toml))
    assert len(registry.patients) == 160


# ---------------------------------------------------------------------------
# SQL queries instead of OMOP, and generic tables


def test_registry_and_generic_table_from_queries(
    pg: PgServer, synth_sites: dict[str, Path], tmp_path: Path
) -> None:
    site = synth_sites["files"] / "munich"
    with psycopg.connect(pg.url(ADMIN), password=ADMIN_PASSWORD, autocommit=True) as db:
        db.execute("DROP SCHEMA IF EXISTS flat CASCADE")
        db.execute("CREATE SCHEMA flat")
        for table in ("patients", "treatments", "progressions", "care_events"):
            frame = pd.read_csv(site / f"{table}.csv", dtype=str, keep_default_na=False)
            cols = ", ".join(f'"{c}" text' for c in frame.columns)
            db.execute(f"CREATE TABLE flat.{table} ({cols})")
            with db.cursor().copy(f"COPY flat.{table} FROM STDIN WITH (FORMAT csv)") as copy:
                copy.write(frame.to_csv(index=False, header=False))
            db.execute(
                f"CREATE VIEW flat.v_{table} AS SELECT *, row_number() OVER () AS k "
                f"FROM flat.{table}"
            )
        db.execute("GRANT USAGE ON SCHEMA flat TO her2fed_reader")
        db.execute("GRANT SELECT ON ALL TABLES IN SCHEMA flat TO her2fed_reader")
    queries = "\n".join(
        f'{t} = "SELECT * FROM flat.v_{t} ORDER BY k"'
        for t in ("patients", "treatments", "progressions", "care_events")
    )
    toml = tmp_path / "site.toml"
    toml.write_text(
        f'[site]\nid = "m"\ncountry = "DE"\n\n[data.registry]\nurl = "{pg.url()}"\n\n'
        f"[data.registry.queries]\n{queries}\n\n"
        f'[data.counts]\nurl = "{pg.url()}"\n'
        'query = "SELECT count(*) AS n FROM flat.patients"\n'
    )
    cfg = load_site(toml)
    db_reg = load_site_registry(cfg)
    file_reg = load_registry(
        {t: site / f"{t}.csv" for t in ("patients", "treatments", "progressions", "care_events")}
    )
    for table in ("patients", "treatments", "progressions", "care_events"):
        a = getattr(db_reg, table).reset_index(drop=True)
        b = getattr(file_reg, table).reset_index(drop=True)
        pd.testing.assert_frame_equal(a.drop(columns=[]), b, check_dtype=False)
    assert int(load_site_table(cfg, "counts")["n"].iloc[0]) == 160
    with pytest.raises(SourceError, match=r"query for registry table 'patients'"):
        bad = toml.read_text().replace("flat.v_patients", "flat.nope")
        toml.write_text(bad)
        load_site_registry(load_site(toml))


def test_status_rules_survive_the_omop_round_trip(pg: PgServer, tmp_path: Path) -> None:
    """HER2 NEG / UNKNOWN (IHC 1+ / 2+), ER and PR unknown, male patients: as in the files."""
    frames = synthesize("DE", 60, 5, "mixed")
    p = frames["patients"]
    p.loc[0:9, "her2_status"] = "NEG"
    p.loc[10:19, "her2_status"] = "UNKNOWN"
    p.loc[20:24, "er_status"] = "UNKNOWN"
    p.loc[25:29, "pr_status"] = "NEG"
    p.loc[30:32, "sex"] = "M"
    os.environ[ENV] = ADMIN_PASSWORD
    try:
        load_omop(pg.url(ADMIN), "mixed", frames, reader=READER)
    finally:
        os.environ[ENV] = READER_PASSWORD
    db = load_site_registry(load_site(_db_site(tmp_path, pg.url(), "mixed"))).patients
    cols = ["sex", "her2_status", "er_status", "pr_status", "ecog", "de_novo", "brain_mets"]
    na = {"<NA>": "nan", "None": "nan"}
    want = p[cols].astype(str).replace(na).reset_index(drop=True)
    got = db[cols].astype(str).replace(na).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    assert (db["her2_status"] == "NEG").sum() == 10 and (db["her2_status"] == "UNKNOWN").sum() == 10


def test_a_failing_table_query_stops_site_check(pg: PgServer, tmp_path: Path) -> None:
    toml = tmp_path / "site.toml"
    toml.write_text(
        f'[site]\nid = "g"\ncountry = "GR"\n\n[data.analysis]\nurl = "{pg.url()}"\n'
        'query = "SELECT * FROM research.nowhere"\n'
    )
    _fails(toml, "the query of [data.analysis]", "research.nowhere", "run the query")


@pytest.mark.parametrize(
    ("registry", "needle"),
    [
        ('url = "postgresql://u@h/db"\n', "needs exactly one of omop_schema"),
        (
            'url = "postgresql://u@h/db"\nomop_schema = "cdm"\n[data.registry.queries]\n'
            'patients = "SELECT 1"\n',
            "needs exactly one of omop_schema",
        ),
        ('url = "mysql://u@h/db"\nomop_schema = "cdm"\n', "scheme 'mysql' is not supported"),
        ('url = "postgresql://u@h/db"\nomop_schema = "cdm"\nfetch_rows = 0\n', "fetch_rows"),
        ('url = "postgresql://u@h/db?password=x"\nomop_schema = "cdm"\n', "contains a password"),
        (
            'url = "postgresql://u@h/db"\nomop_schema = "cdm"\n[data.registry.concepts]\n'
            'her3 = ["LOINC:1-1"]\n',
            "is not a concept set her2fed uses",
        ),
        (
            'url = "postgresql://u@h/db"\nomop_schema = "cdm"\n[data.registry.concepts]\n'
            'her2 = ["85319-2"]\n',
            '"VOCABULARY:CODE"',
        ),
        (
            'url = "postgresql://u@h/db"\nomop_schema = "cdm"\n[data.registry.concepts]\n'
            "drugs = { aspirin = [1] }\n",
            "is not an ingredient of the her2fed drug vocabulary",
        ),
        (
            'url = "postgresql://u@h/db"\n[data.registry.queries]\npatients = "SELECT 1"\n',
            "registry table 'treatments' has no query",
        ),
    ],
)
def test_database_config_errors_name_the_key_and_the_fix(
    tmp_path: Path, registry: str, needle: str
) -> None:
    toml = tmp_path / "site.toml"
    toml.write_text(f'[site]\nid = "x"\ncountry = "GR"\n\n[data.registry]\n{registry}')
    with pytest.raises(SpecError) as info:
        load_site(toml)
    assert needle in str(info.value) and "Fix:" in str(info.value)
    assert "password=x" not in str(info.value)


def test_generic_study_from_database_tables_equals_files(pg: PgServer, tmp_path: Path) -> None:
    """[data.NAME] url + query feeds a study exactly as the CSV does (types come from SQL)."""
    import subprocess
    import sys

    made = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "generic" / "make_sites.py"), str(tmp_path / "f")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    sites = ("athens", "oslo", "munich")
    with psycopg.connect(pg.url(ADMIN), password=ADMIN_PASSWORD, autocommit=True) as db:
        db.execute("DROP SCHEMA IF EXISTS generic CASCADE")
        db.execute("CREATE SCHEMA generic")
        db.execute(f"GRANT USAGE ON SCHEMA generic TO {READER}")
        for site in sites:
            for table in ("analysis", "competing"):
                frame = pd.read_csv(tmp_path / "f" / site / f"{table}.csv")
                types = {"int64": "bigint", "float64": "double precision"}
                cols = ", ".join(
                    f'"{c}" {types.get(str(t), "text")}' for c, t in frame.dtypes.items()
                )
                name = f"generic.{site}_{table}"
                db.execute(f"CREATE TABLE {name} (k serial, {cols})")
                quoted = ", ".join(f'"{c}"' for c in frame.columns)
                with db.cursor().copy(f"COPY {name} ({quoted}) FROM STDIN WITH (FORMAT csv)") as cp:
                    cp.write(frame.to_csv(index=False, header=False))
                db.execute(f"GRANT SELECT ON {name} TO {READER}")
    for site in sites:
        (tmp_path / "d" / site).mkdir(parents=True)
        text = (tmp_path / "f" / site / "site.toml").read_text()
        for table in ("analysis", "competing"):
            query = f"SELECT * FROM generic.{site}_{table} ORDER BY k"
            text = text.replace(f'path = "{table}.csv"', f'url = "{pg.url()}"\nquery = "{query}"')
        (tmp_path / "d" / site / "site.toml").write_text(text)
    study = ROOT / "examples" / "generic" / "study.toml"
    got = {}
    for kind in ("f", "d"):
        approve(study, [tmp_path / kind / s / "site.toml" for s in sites])
        code, _, err = run(
            "local",
            str(study),
            *_site_args(tmp_path / kind),
            "--out",
            str(tmp_path / f"out_{kind}"),
            "--transport",
            "inprocess",
        )
        assert code == 0, err
        got[kind] = json.loads((tmp_path / f"out_{kind}" / "results.json").read_text())["analyses"]
    assert got["f"] == got["d"]
