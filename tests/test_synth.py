"""The synthetic site generator: deterministic, valid, realistic, and calibrated.

Calibration is checked on what a site's records show (Kaplan-Meier medians on
dates, shares of patients), at n = 2000 per country, against the figures of
shared/cohorts.md that each profile quotes in ``targets``. Tolerances are about
four standard deviations of the estimate at that size (measured over seeds), so
they catch a broken generator but not sampling noise.
"""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from site_agent.config import Policy, load_site
from site_agent.registry import load_registry
from site_agent.synth import (
    PROFILES,
    SynthCohort,
    main,
    parse_sites,
    synthesize,
    synthesize_cohort,
    write_site,
)

MONTH = 30.4375
N = 2000


@cache
def cohort(country: str, n: int = N, seed: int = 11) -> SynthCohort:
    return synthesize_cohort(country, n, seed, f"site-{country.lower()}")


# ---------------------------------------------------------------------------
# estimators for the checks (small, independent of the package under test)


def km_median(time: npt.ArrayLike, event: npt.ArrayLike) -> float:
    """Smallest time with Kaplan-Meier S(t) <= 0.5."""
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=bool)
    s = 1.0
    at_risk = t.size
    for u in np.unique(t):
        here = t == u
        d = int((e & here).sum())
        if d:
            s *= 1 - d / at_risk
            if s <= 0.5:
                return float(u)
        at_risk -= int(here.sum())
    return float("inf")


def cif_at(time: npt.ArrayLike, cause: npt.ArrayLike, horizon: float) -> float:
    """Aalen-Johansen cumulative incidence of cause 1 at ``horizon`` (cause 2 competing)."""
    t = np.asarray(time, dtype=float)
    c = np.asarray(cause, dtype=int)
    s, cif, at_risk = 1.0, 0.0, t.size
    for u in np.unique(t[t <= horizon]):
        here = t == u
        cif += s * int((c[here] == 1).sum()) / at_risk
        s *= 1 - int((c[here] > 0).sum()) / at_risk
        at_risk -= int(here.sum())
    return cif


def days(delta: pd.Series) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = delta.dt.days.to_numpy(dtype=float)
    return out


def age(c: SynthCohort) -> pd.Series:
    p = c.frames["patients"]
    years: pd.Series = p["met_dx_date"].dt.year - p["birth_year"]
    return years


def hr_pos(c: SynthCohort) -> pd.Series:
    p = c.frames["patients"]
    return (p["er_status"] == "POS") | (p["pr_status"] == "POS")


def reach(c: SynthCohort, k: int) -> float:
    n_lines = c.lines.groupby("patient_id")["line"].max()
    return float((n_lines >= k).sum() / len(c.frames["patients"]))


def pfs_median(c: SynthCohort, k: int) -> float:
    lk = c.lines[c.lines["line"] == k]
    return km_median(lk["pfs_days"], lk["pfs_event"]) / MONTH


def os_median(c: SynthCohort, from_line: int | None = None) -> float:
    p = c.frames["patients"].set_index("patient_id")
    end = p["death_date"].fillna(p["last_contact_date"])
    if from_line is None:
        return km_median(days(end - p["met_dx_date"]), p["death_date"].notna()) / MONTH
    lk = c.lines[c.lines["line"] == from_line].set_index("patient_id")
    return (
        km_median(days(end[lk.index] - lk["start_date"]), p.loc[lk.index, "death_date"].notna())
        / MONTH
    )


def cif_second_line(c: SynthCohort, mask: pd.Series | None = None) -> float:
    """P(2L within 5 years of 1L start), death competing, censored at last contact."""
    p = c.frames["patients"].set_index("patient_id")
    l1 = c.lines[c.lines["line"] == 1].set_index("patient_id")
    if mask is not None:
        l1 = l1[mask.reindex(l1.index).to_numpy()]
    l2 = c.lines[c.lines["line"] == 2].set_index("patient_id")["start_date"].reindex(l1.index)
    death, last = p.loc[l1.index, "death_date"], p.loc[l1.index, "last_contact_date"]
    cause = np.where(l2.notna(), 1, np.where(death.notna(), 2, 0))
    end = l2.fillna(death).fillna(last)
    return cif_at(days(end - l1["start_date"]), cause, 5 * 365.25)


def no_second_line(c: SynthCohort) -> tuple[float, dict[str, float]]:
    """Share of 1L-treated patients without 2L, and why, among those whose 1L ended."""
    p = c.frames["patients"].set_index("patient_id")
    care = c.frames["care_events"]
    l1 = c.lines[c.lines["line"] == 1].set_index("patient_id")
    has2 = l1.index.isin(c.lines.loc[c.lines["line"] == 2, "patient_id"])
    ended = l1.index[~has2 & (l1["end_reason"] != "on_treatment").to_numpy()]
    q = p.loc[ended]
    lost = q["transfer_out_date"].notna() | ended.isin(
        care.loc[care["event"] == "transfer_out", "patient_id"]
    )
    pal = ~lost & (
        q["palliative_care_date"].notna()
        | ended.isin(care.loc[care["event"] == "palliative_care", "patient_id"])
    )
    dead = ~lost & ~pal & q["death_date"].notna()
    n = len(q)
    reasons = {
        "r_death": dead.sum() / n,
        "r_pal": pal.sum() / n,
        "r_lost": lost.sum() / n,
        "r_other": (~lost & ~pal & ~dead).sum() / n,
    }
    return float(1 - has2.mean()), reasons


def time_on_first_line(c: SynthCohort) -> float:
    l1 = c.lines[c.lines["line"] == 1]
    return (
        km_median(days(l1["stop_date"] - l1["start_date"]) + 1, l1["end_reason"] != "on_treatment")
        / MONTH
    )


# ---------------------------------------------------------------------------
# determinism


def test_same_seed_same_extract_and_no_global_rng() -> None:
    np.random.seed(1)
    a = synthesize("GR", 300, 5, "athens")
    state = np.random.get_state()[1].copy()  # type: ignore[index]
    np.random.seed(2)
    b = synthesize("GR", 300, 5, "athens")
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    np.random.seed(1)
    synthesize("GR", 300, 6, "athens")
    assert (np.random.get_state()[1] == state).all(), "the global RNG must not be touched"  # type: ignore[index]
    c = synthesize("GR", 300, 6, "athens")
    assert not a["patients"]["met_dx_date"].equals(c["patients"]["met_dx_date"])


def test_unknown_country_and_bad_size() -> None:
    with pytest.raises(ValueError, match="known: DE, DK"):
        synthesize("XX", 10, 1, "x")
    with pytest.raises(ValueError, match="n_patients"):
        synthesize("GR", 0, 1, "x")


# ---------------------------------------------------------------------------
# schema validity and writing


@pytest.mark.parametrize("country", sorted(set(PROFILES) - {"GB"}))
def test_every_country_passes_validation_without_exclusions(country: str, tmp_path: Path) -> None:
    frames = synthesize(country, 250, 3, f"h-{country}")
    toml = write_site(tmp_path, f"h-{country}", country, frames)
    registry = load_registry(load_site(toml).registry)
    report = registry.report
    assert report.total_excluded == 0, report.lines()
    assert report.her2_status["POS"] == 250
    assert all(not t.extra_columns for t in report.tables.values())
    assert len(registry.treatments) == len(frames["treatments"])
    assert len(registry.progressions) == len(frames["progressions"])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_write_site_round_trip(fmt: str, tmp_path: Path) -> None:
    frames = synthesize("DK", 400, 8, "copenhagen")
    toml = write_site(tmp_path / "cph", "copenhagen", "dk", frames, fmt)  # type: ignore[arg-type]
    cfg = load_site(toml)
    # rehearsal sites: the default policy, except one site per country may be compared
    rehearsal = Policy(per_site_release=True)
    assert (cfg.site_id, cfg.country, cfg.policy) == ("copenhagen", "DK", rehearsal)
    assert set(cfg.registry) == {"patients", "treatments", "progressions", "care_events"}
    assert all(path.suffix == f".{fmt}" for path in cfg.registry.values())
    reg = load_registry(cfg.registry)
    assert reg.report.total_excluded == 0
    for name in ("patients", "treatments", "progressions", "care_events"):
        want = frames[name]
        want = want[[c for c in want.columns if not c.startswith("_")]].reset_index(drop=True)
        got = getattr(reg, name)[list(want.columns)].reset_index(drop=True)
        for col in want.columns:
            left, right = got[col], want[col]
            if pd.api.types.is_datetime64_any_dtype(right.dtype) or col in ("ecog", "birth_year"):
                pd.testing.assert_series_equal(left, right, check_dtype=False, check_names=False)
            else:
                assert (
                    left.astype(object).where(left.notna(), None).tolist()
                    == right.astype(object).where(right.notna(), None).tolist()
                ), f"{name}.{col}"
        if fmt == "csv":
            header = pd.read_csv(cfg.registry[name], nrows=1).columns
            assert not any(str(c).startswith("_") for c in header)


def test_cli_writes_sites_and_reports_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["--out", str(tmp_path), "--sites", "athens:GR:60, oslo:no:40", "--seed", "4",
         "--format", "parquet"]
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("synth: athens (GR) 60 patients")
    for name in ("athens", "oslo"):
        cfg = load_site(tmp_path / name / "site.toml")
        assert load_registry(cfg.registry).report.total_excluded == 0
    with pytest.raises(SystemExit) as info:
        main(["--out", str(tmp_path), "--sites", "athens:GR"])
    assert info.value.code == 2
    assert "NAME:COUNTRY:N" in capsys.readouterr().err


def test_parse_sites_defaults_and_errors() -> None:
    assert parse_sites("a:GR:10,b:uk:5") == [("a", "GR", 10), ("b", "UK", 5)]
    for bad, message in [
        ("a:XX:10", "unknown country"),
        ("a:GR:0", ">= 1"),
        ("a:GR:5,a:NO:5", "twice"),
        ("", "no sites"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_sites(bad)


def test_ten_thousand_patients_in_a_few_seconds() -> None:
    began = time.perf_counter()
    frames = synthesize("DE", 10_000, 1, "munich")
    assert time.perf_counter() - began < 8.0
    assert len(frames["patients"]) == 10_000


# ---------------------------------------------------------------------------
# realism of the records


def test_administrations_look_like_a_hospitals() -> None:
    c = cohort("GR")
    t = c.frames["treatments"]
    p = c.frames["patients"].set_index("patient_id")
    lines = c.lines
    # q21 IV cycles: trastuzumab and pertuzumab in THP lines every 21 days (+ delays)
    thp = lines.loc[(lines["regimen"] == "THP") & (lines["line"] == 1), "patient_id"]
    h = t[t["patient_id"].isin(thp) & (t["_true_line"] == 1) & (t["route"] == "iv")]
    h = h[h["drug"].str.lower().isin(["trastuzumab", "herceptin", "pertuzumab", "perjeta"])]
    gaps = h.groupby(["patient_id", "drug"])["start_date"].diff().dt.days.dropna()
    assert gaps.mode().iloc[0] == 21 and (gaps >= 21).mean() > 0.99
    # oral drugs are dispensings with a supply; infusions have none
    oral = t["route"] == "oral"
    assert t.loc[oral, "days_supply"].notna().all() and t.loc[~oral, "days_supply"].isna().all()
    # neo/adjuvant exposure only before metastatic diagnosis, only in recurrent patients
    met = p.loc[t["patient_id"], "met_dx_date"].to_numpy()
    before = t["start_date"].to_numpy() < met
    assert (t.loc[before, "_true_line"].fillna(0) == 0).all()
    assert not p.loc[t.loc[before, "patient_id"], "de_novo"].any()
    assert (t.loc[~before, "_true_line"].fillna(1) >= 1).all()
    # supportive care and ovarian suppression never carry a line
    sup = t["drug"].str.lower().isin(["ondansetron", "zofran", "denosumab", "xgeva", "zoladex"])
    assert t.loc[sup, "_true_line"].isna().all() and sup.any()
    # goserelin after metastatic diagnosis only for premenopausal women
    gos = ~before & t["drug"].str.lower().isin(["goserelin", "zoladex", "l02ae03"])
    assert gos.any()
    assert (
        c.frames["patients"].set_index("patient_id").loc[t.loc[gos, "patient_id"], "_age"] < 50
    ).all()
    # the clinician's line number, where documented, is the generator's line
    documented = t["line_number"].notna()
    assert documented.mean() > 0.5
    assert (t.loc[documented, "line_number"] == t.loc[documented, "_true_line"]).all()


def test_lines_dates_and_deaths_are_consistent() -> None:
    c = cohort("DK")
    p = c.frames["patients"].set_index("patient_id")
    t, g, lines = c.frames["treatments"], c.frames["progressions"], c.lines
    # lines are numbered 1..n per patient, as their treatment rows say
    per = lines.groupby("patient_id")["line"].agg(["min", "max", "count"])
    assert (per["min"] == 1).all() and (per["max"] == per["count"]).all()
    assert set(t["_true_line"].dropna().unique()) == set(range(lines["line"].max() + 1))
    # every event is on or before last contact, and nothing happens after death
    last = p["last_contact_date"]
    assert (t["start_date"].to_numpy() <= last[t["patient_id"]].to_numpy()).all()
    assert (g["progression_date"].to_numpy() <= last[g["patient_id"]].to_numpy()).all()
    dead = p["death_date"].notna()
    assert (p.loc[dead, "death_date"] == p.loc[dead, "last_contact_date"]).all()
    # each progression ends a line: it falls after the line's start and before the next line
    nxt = lines.groupby("patient_id")["start_date"].shift(-1)
    prog = lines["progression_date"]
    ok = prog.isna() | ((prog >= lines["start_date"]) & (nxt.isna() | (prog < nxt)))
    assert ok.all()
    recorded = set(zip(g["patient_id"], g["progression_date"], strict=True))
    with_prog = lines[prog.notna()]
    assert all(
        (pid, d) in recorded
        for pid, d in zip(with_prog["patient_id"], with_prog["progression_date"], strict=True)
    )
    # transfers out end the follow-up
    moved = p["transfer_out_date"].notna()
    assert (p.loc[moved, "last_contact_date"] == p.loc[moved, "transfer_out_date"]).all()


def test_drug_names_vary_like_real_sites() -> None:
    names: set[str] = set()
    routes: set[tuple[str, str]] = set()
    columns: set[str] = set()
    for i, country in enumerate(["GR", "NO", "DE", "FR", "IT", "ES", "NL", "DK", "US"]):
        t = synthesize(country, 150, 20 + i, f"s{i}")["treatments"]
        names |= set(t["drug"].str.lower())
        columns |= set(t.columns)
        if "route" in t:
            routes |= set(zip(t["drug"].str.lower(), t["route"], strict=True))
    assert {"herceptin", "trastuzumab", "phesgo", "kadcyla", "perjeta"} <= names
    assert names & {"kanjinti", "ogivri", "herzuma", "ontruzant", "trazimera", "zercepac"}
    assert any(n.startswith("l01") for n in names), "some sites write ATC codes"
    assert ("herceptin sc", "sc") in routes or ("trastuzumab", "sc") in routes
    assert {"line_number", "stop_reason", "atc", "route"} <= columns


# ---------------------------------------------------------------------------
# calibration against shared/cohorts.md


def close(value: float, target: float, tol: float, what: str) -> None:
    assert abs(value - target) <= tol, f"{what}: {value:.3f} vs target {target} (±{tol})"


@pytest.mark.parametrize("country", ["GR", "NO", "DE", "FR", "IT", "NL", "DK", "US"])
def test_demographics(country: str) -> None:
    c, t = cohort(country), PROFILES[country].targets
    close(float(age(c).median()), t["age_median"], 1.5, "median age")
    close(float(hr_pos(c).mean()), t["hr_pos"], 0.05, "HR+ share")
    if "de_novo" in t:
        close(float(c.frames["patients"]["de_novo"].mean()), t["de_novo"], 0.05, "de novo")


def test_greece_togetHER() -> None:
    c, t = cohort("GR"), PROFILES["GR"].targets
    close(float(c.frames["patients"]["brain_mets"].mean()), t["brain"], 0.05, "brain mets")
    for k, tol in ((2, 1.0), (3, 1.0), (4, 1.0)):
        close(pfs_median(c, k), t[f"pfs_{k}"], tol, f"PFS {k}L")
    close(os_median(c, from_line=2), t["os_from_2l"], 4.0, "OS from 2L start")


def test_norway_registries() -> None:
    c, t = cohort("NO"), PROFILES["NO"].targets
    for k, tol in ((2, 0.06), (3, 0.05), (4, 0.04)):
        close(reach(c, k), t[f"reach_{k}"], tol, f"reached {k}L")
    l1 = c.lines[(c.lines["line"] == 1) & c.lines["anti_her2"]]
    close(float(l1["regimen"].isin(["THP", "HP", "HP+ET"]).mean()), 0.55, 0.06, "1L P+H")
    h_only = l1["regimen"].isin(["TH", "H+ET", "H+vin", "H+cap"]).mean()
    close(float(h_only), 0.41, 0.06, "1L H without P")
    ever = c.frames["patients"]["patient_id"].isin(c.lines.loc[c.lines["anti_her2"], "patient_id"])
    close(float(1 - ever.mean()), t["no_anti_her2"], 0.04, "no anti-HER2 therapy")
    a = age(c)
    close(float(a[~ever].median()), 74, 3, "age without anti-HER2")
    close(float(a[ever].median()), 55, 2, "age with anti-HER2")
    close(time_on_first_line(c), t["tot_1l"], 1.0, "1L duration")


def test_eu5_attrition_and_reasons() -> None:
    c, t = cohort("FR"), PROFILES["FR"].targets
    share, reasons = no_second_line(c)
    close(share, t["no_2l"], 0.05, "no 2L among treated")
    for key, value in reasons.items():
        close(value, t[key], 0.10, f"reason {key}")
    close(time_on_first_line(c), t["tot_1l"], 1.2, "1L duration")
    close(pfs_median(c, 1), t["pfs_1"], 2.0, "1L PFS")


def test_italy_attrition_a4() -> None:
    c, t = cohort("IT"), PROFILES["IT"].targets
    close(no_second_line(c)[0], t["no_2l"], 0.05, "no 2L among treated")
    p = c.frames["patients"].set_index("patient_id")
    l1 = c.lines[(c.lines["line"] == 1) & (c.lines["end_reason"] != "on_treatment")]
    l1 = l1.set_index("patient_id")
    has2 = l1.index.isin(c.lines.loc[c.lines["line"] == 2, "patient_id"])
    died = days(p.loc[l1.index, "death_date"] - l1["stop_date"]) <= 183
    close(float((~has2 & died).mean()), t["a4"], 0.03, "A4")


def test_germany_praegnant() -> None:
    close(cif_second_line(cohort("DE")), PROFILES["DE"].targets["cif_2l_5y"], 0.05, "CIF 2L")


def test_netherlands_sonabre() -> None:
    c, t = cohort("NL"), PROFILES["NL"].targets
    hr = hr_pos(c).set_axis(c.frames["patients"]["patient_id"])
    l1 = c.lines[c.lines["line"] == 1]
    thp = (l1["regimen"] == "THP").to_numpy()
    pos = hr.reindex(l1["patient_id"]).to_numpy()
    close(float(thp[pos].mean()), t["thp_hr_pos"], 0.06, "THP in HR+")
    close(float(thp[~pos].mean()), t["thp_hr_neg"], 0.07, "THP in HR-")
    close(cif_second_line(c, hr), t["continue_hr_pos"], 0.06, "continuation HR+")
    close(cif_second_line(c, ~hr), t["continue_hr_neg"], 0.08, "continuation HR-")


def test_denmark_dbcg() -> None:
    c, t = cohort("DK"), PROFILES["DK"].targets
    close(os_median(c), t["os"], 4.5, "OS from metastatic diagnosis")
    for k in (1, 2, 3):
        close(pfs_median(c, k), t[f"pfs_{k}"], 1.0 if k > 1 else 1.2, f"PFS {k}L")


def test_us_ehr() -> None:
    c, t = cohort("US"), PROFILES["US"].targets
    close(pfs_median(c, 1), t["pfs_1"], 1.2, "1L rwPFS")
    close(os_median(c, from_line=1), t["os_from_1l"], 4.5, "OS from 1L start")


def test_every_profile_states_its_source_and_line_medians() -> None:
    for country, prof in PROFILES.items():
        assert prof.source and prof.targets, country
        assert len(prof.pfs_months) == len(prof.pfs_knob) >= 4
        assert abs(sum(prof.first_line.values()) - 1) < 0.02, country
