"""Bad study or site files fail with one message naming the file, field and fix.

Every case goes through the real command-line entry point; none may print a
traceback, and each must exit with status 2 and leave no results file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from coordinator.cli import main
from coordinator.study import load_study
from her2fed.errors import Her2fedError
from site_agent.config import load_site
from tests.fedrun import load
from tests.rehearsal import approve

GOOD_STUDY = """
[study]
name = "t"
time_unit = "day"
grid_days = 30
horizon_days = 120

[[analysis]]
id = "km1"
kind = "km"
dataset = "analysis"
time = "week"
event = "arrest"
by = { column = "fin", levels = [0, 1] }
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    d = tmp_path / "site"
    d.mkdir()
    load("rossi").to_csv(d / "analysis.csv", index=False)
    (d / "site.toml").write_text(
        '[site]\nid = "s1"\ncountry = "GR"\n\n[data.analysis]\npath = "analysis.csv"\n'
    )
    return d


def _parses(path: Path, site_toml: Path) -> bool:
    try:
        load_study(path)
        load_site(site_toml)
    except Her2fedError:
        return False
    return True


def run_cli(
    tmp_path: Path, study: str, site_toml: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    path = tmp_path / "study.toml"
    path.write_text(study)
    out = tmp_path / "out"
    sites = [arg for i in (1, 2, 3) for arg in ("--site", f"s{i}={site_toml}")]
    if _parses(path, site_toml):  # a broken study cannot be signed; `local` names the error
        approve(path, [site_toml])
    code = main(["local", str(path), *sites, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    if code != 0:
        assert not (out / "results.json").exists(), "a failed run must not leave results"
    assert "Traceback" not in err
    return code, err


def test_good_study_runs(tmp_path: Path, site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(tmp_path, GOOD_STUDY, site / "site.toml", capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "results.json").exists()


STUDY_ERRORS = [
    (GOOD_STUDY.replace('kind = "km"', 'kind = "kaplan"'), "unknown kind 'kaplan'", "use one of"),
    (GOOD_STUDY.replace('kind = "km"', 'kind = "attrition"'), "unknown key(s)", "max_line"),
    (
        GOOD_STUDY.replace('dataset = "analysis"', 'dataset = "registry"'),
        "registry analyses name an endpoint",
        "endpoint",
    ),
    (GOOD_STUDY.replace("[study]", "[studdy]"), "unknown top-level", "[study]"),
    (GOOD_STUDY.replace("grid_days = 30", "grid_days = 0"), "grid_days", "grid_days = 30"),
    (
        GOOD_STUDY.replace('time = "week"', 'time = "week"\nconf_typ = "log"'),
        "unknown key(s) ['conf_typ']",
        "remove them",
    ),
    (
        GOOD_STUDY + GOOD_STUDY[GOOD_STUDY.index("[[analysis]]") :],
        "duplicate id(s) ['km1']",
        "unique id",
    ),
    (GOOD_STUDY.replace("levels = [0, 1]", "levels = [0, 0]"), "has duplicates", "each level once"),
    (GOOD_STUDY.replace('kind = "km"', 'kind = "cox"'), "covariates", "covariates = ["),
    (
        GOOD_STUDY.replace("horizon_days = 120", "horizon_days = 120\nx = ["),
        "not valid TOML",
        "TOML syntax",
    ),
    (GOOD_STUDY.replace('time_unit = "day"', 'time_unit = "month"'), "unsupported unit", "day"),
]


@pytest.mark.parametrize(("text", "problem", "fix"), STUDY_ERRORS)
def test_bad_study(
    tmp_path: Path,
    site: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    problem: str,
    fix: str,
) -> None:
    code, err = run_cli(tmp_path, text, site / "site.toml", capsys)
    assert code == 2
    assert "study.toml" in err and problem in err and "Fix:" in err and fix in err


def _edit(site: Path, change: object) -> None:
    df = pd.read_csv(site / "analysis.csv")
    assert callable(change)
    change(df)
    df.to_csv(site / "analysis.csv", index=False)


def _set(col: str, row: int, value: object) -> object:
    def change(df: pd.DataFrame) -> None:
        df[col] = df[col].astype(object)
        df.loc[row, col] = value

    return change


DATA_ERRORS = [
    (lambda df: df.drop(columns=["fin"], inplace=True), "missing column(s) ['fin']", "add them"),
    (_set("week", 6, "soon"), "non-numeric value(s), first at data row 7", "number of days"),
    (_set("week", 9, -3), "negative time(s), first at data row 10", ">= 0 days"),
    (_set("fin", 2, 7), "value(s) '7' are not among the declared levels", "declare every level"),
    (_set("arrest", 4, 2), "event code(s) ['2'] are not declared", "recode to 0 = censored"),
]


@pytest.mark.parametrize(("change", "problem", "fix"), DATA_ERRORS)
def test_bad_site_data(
    tmp_path: Path,
    site: Path,
    capsys: pytest.CaptureFixture[str],
    change: object,
    problem: str,
    fix: str,
) -> None:
    _edit(site, change)
    code, err = run_cli(tmp_path, GOOD_STUDY, site / "site.toml", capsys)
    assert code == 2
    assert "analysis.csv" in err and problem in err and fix in err


SITE_ERRORS = [
    ('[site]\ncountry = "GR"\n[data.analysis]\npath = "analysis.csv"\n', "site.id", "add [site]"),
    (
        '[site]\nid = "s"\ncountry = "GR"\n[data.analysis]\npath = "nope.csv"\n',
        "file not found",
        "relative to the config file",
    ),
    (
        '[site]\nid = "s"\ncountry = "GR"\n[data.analysis]\npath = "a.xlsx"\n',
        "unsupported file type",
        ".csv or .parquet",
    ),
    (
        '[site]\nid = "s"\ncountry = "GR"\n[data.other]\npath = "analysis.csv"\n',
        "does not declare",
        "[data.analysis]",
    ),
    (
        '[site]\nid = "s"\ncountry = "GR"\n[data.analysis]\npath = "analysis.csv"\n'
        "[policy]\nmin_cel = 5\n",
        "unknown policy key",
        "min_cell",
    ),
    (
        '[site]\nid = "s"\ncountry = "GR"\n[data.analysis]\npath = "analysis.csv"\n'
        '[policy]\nmin_cell = "five"\n',
        "must be a whole number >= 0",
        "min_cell = 5",
    ),
]


@pytest.mark.parametrize(("text", "problem", "fix"), SITE_ERRORS)
def test_bad_site_config(
    tmp_path: Path,
    site: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    problem: str,
    fix: str,
) -> None:
    (site / "site.toml").write_text(text)
    code, err = run_cli(tmp_path, GOOD_STUDY, site / "site.toml", capsys)
    assert code == 2
    assert "site.toml" in err and problem in err and fix in err


def test_unreadable_table(tmp_path: Path, site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "analysis.csv").write_bytes(b'"unterminated\n\x00\x01,2\n')
    code, err = run_cli(tmp_path, GOOD_STUDY, site / "site.toml", capsys)
    assert code == 2 and "cannot be read as CSV" in err and "export the table again" in err


def test_console_script_real_process(tmp_path: Path, site: Path) -> None:
    """The installed command, as a user runs it: exit 2, one clean line, no traceback."""
    study = tmp_path / "study.toml"
    study.write_text(GOOD_STUDY.replace('kind = "km"', 'kind = "kaplan"'))
    exe = Path(sys.executable).parent / "her2fed"
    proc = subprocess.run(
        [
            str(exe),
            "local",
            str(study),
            "--site",
            f"s1={site / 'site.toml'}",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("her2fed: error:") and "Traceback" not in proc.stderr
    assert "unknown kind 'kaplan'" in proc.stderr
