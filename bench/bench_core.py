"""Speed and memory: her2fed's pooled estimators with secure aggregation against lifelines.

The claim her2fed makes is "the pooled answer, without pooling": this script
puts a price on it. For KM, log-rank, Aalen-Johansen (CIF) and Cox (10
covariates, Efron ties) it runs the real pipeline - site agents behind the
in-process transport with secure aggregation on, the real orchestrator - on
5 synthetic sites of 10,000, 100,000 and 200,000 rows each, and lifelines on
the same rows pooled, in the same process and the same run, so the ratio
holds on a noisy machine. A fast wrong answer is no benchmark: every run also
checks that both gave the same answer.

her2fed's time is split into loading (each site validates its table and
builds its arrays), local summaries (the sites' own computation, site after
site in this process), secure aggregation (key set-up, masking, unmasking,
decoding) and estimation (the coordinator between rounds). Peak memory is
measured per role, each in a process of its own so that resident sets are not
shared: one site with 200,000 rows, the coordinator, the whole in-process
federation, and lifelines on the pooled rows.

Run ``make bench`` (or ``make bench QUICK=1``, sites of 10,000 rows only);
``--markdown BENCHMARKS.md`` records the run there. Timings are reported,
never asserted; the script exits 1 only if her2fed and lifelines disagree.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from bench.common import (
    ROOT,
    CoxModel,
    Stopwatch,
    best_of,
    command_line,
    draw_cox_rows,
    fmt_mib,
    fmt_ratio,
    fmt_s,
    log,
    machine,
    peak_rss_bytes,
    publish,
    section,
)
from coordinator.orchestrate import StudyOutcome, run_study
from coordinator.transport import InProcessTransport
from her2fed.cif import CIFCurve
from her2fed.cox import CoxResult
from her2fed.estimate import AnalysisRun, CurvesResult, LogrankOutcome
from her2fed.grid import TimeGrid
from her2fed.km import KMCurve
from her2fed.protocol import Query
from her2fed.secagg import prg
from her2fed.secagg.encoding import Encoding
from her2fed.study import Study, parse_analysis
from her2fed.summary import Additive, flatten_all, split_flat
from site_agent.config import Policy, SiteConfig
from site_agent.handlers import SiteAgent

DATASET = "d"
TIME, EVENT, CAUSE, ARM = "time", "event", "cause", "arm"
HORIZON_DAYS = 3650
COVARIATES = tuple(f"x{i}" for i in range(10))
# the benchmark measures the statistics on a 1-day grid against lifelines on the same rows:
# neither the grid rule nor disclosure control (which coarsens the release) is what it times
BENCH_POLICY = Policy(min_grid_days=1, min_cell=0, min_at_risk=0)
# x0-x4 continuous, x5-x9 0/1; one true coefficient is zero on purpose.
BINARY_P = (None, None, None, None, None, 0.5, 0.3, 0.2, 0.6, 0.1)
TRUE_BETA = np.array([0.5, -0.4, 0.25, 0.1, 0.0, 0.6, -0.3, 0.35, -0.2, 0.15])
BASE_HAZARD = 1 / 1500  # per day: median survival ~3 years at x = 0
CENSOR_HAZARD = 1 / 2500
MODEL = CoxModel(COVARIATES, BINARY_P, TRUE_BETA, BASE_HAZARD, CENSOR_HAZARD, HORIZON_DAYS)
CAUSE1_SHARE = 0.6  # of events, for the competing-risks (Aalen-Johansen) analysis
N_SITES = 5
SIZES_FULL = (10_000, 100_000, 200_000)
SIZES_QUICK = (10_000,)
ESTIMATORS = ("km", "logrank", "aj", "cox")
LABELS = {
    "km": "Kaplan-Meier",
    "logrank": "log-rank (2 arms)",
    "aj": "Aalen-Johansen (2 causes)",
    "cox": "Cox (10 covariates, Efron)",
}
# her2fed vs lifelines must agree to this (max abs difference of the compared numbers);
# AJ is looser because lifelines jitters tied times (see agreement notes in the output).
TOL = {"km": 1e-9, "logrank": 1e-9, "aj": 1e-3, "cox": 1e-5}
SEED = 20240611
PHASES = ("loading", "summaries", "secure", "estimation")


# ---------------------------------------------------------------- data


def make_site(seed: int, site: int, rows: int) -> pd.DataFrame:
    """One site's rows from a known Cox model, so both fitters have a true target.

    Each site has its own generator (seeded by ``(seed, site)``), so one site's
    rows can be made in a process of its own for the memory measurement.
    Continuous covariates get a small per-site mean shift so sites are not
    exchangeable copies; times are whole days with heavy ties (1M rows over
    3650 days), which is where Efron ties cost something. Events are split
    into two competing causes for Aalen-Johansen, and ``arm`` (from x5) is the
    log-rank grouping.
    """
    rng = np.random.default_rng([seed, site])
    days, event, cols = draw_cox_rows(rng, MODEL, rows, shift=0.1 * site)
    cause = np.where(event == 1, np.where(rng.random(rows) < CAUSE1_SHARE, 1, 2), 0)
    arm = np.where(cols["x5"] == 1, "B", "A")
    return pd.DataFrame({TIME: days, EVENT: event, CAUSE: cause, ARM: arm, **cols})


def make_sites(n_sites: int, rows: int, seed: int) -> list[pd.DataFrame]:
    return [make_site(seed, s, rows) for s in range(n_sites)]


# ---------------------------------------------------------------- studies


def study_for(estimator: str) -> Study:
    spec: dict[str, Any] = {"id": estimator, "dataset": DATASET, "time": TIME, "event": EVENT}
    if estimator == "km":
        spec["kind"] = "km"
    elif estimator == "logrank":
        spec.update(kind="logrank", by={"column": ARM, "levels": ["A", "B"]})
    elif estimator == "aj":
        spec.update(kind="cif", event=CAUSE, causes=[1, 2])
    else:
        spec.update(kind="cox", covariates=list(COVARIATES), ties="efron")
    grid = TimeGrid(1, HORIZON_DAYS)
    return Study(f"bench-{estimator}", grid, (parse_analysis(spec, "bench"),))


def agents_for(study: Study, frames: Sequence[pd.DataFrame]) -> list[SiteAgent]:
    """Fresh agents, so no run reuses another's prepared rows."""
    return [
        SiteAgent(
            SiteConfig(Path(f"site{i}.toml"), f"site{i}", "XX", policy=BENCH_POLICY),
            study,
            tables={DATASET: f},
        )
        for i, f in enumerate(frames)
    ]


class SplitTransport(InProcessTransport):
    """``InProcessTransport`` (secure, sites in turn) with a stopwatch per phase.

    It only times the real transport's two halves: ``aggregate`` (the sites'
    summaries, then the secure sum) and ``_secure_sum``; the orchestrator's
    time outside ``aggregate`` is estimation.
    """

    def __init__(self, agents: Sequence[SiteAgent], sw: Stopwatch) -> None:
        super().__init__(agents)
        self.sw = sw

    def aggregate(self, queries: Sequence[Query]) -> list[Additive]:
        t0 = time.perf_counter()
        try:
            return super().aggregate(queries)
        finally:
            self.sw.add("aggregate", time.perf_counter() - t0)

    def _secure_sum(self, answers: list[list[Additive]]) -> list[Additive]:
        with self.sw("secure"):
            return super()._secure_sum(answers)


@dataclass(frozen=True)
class Her2fedRun:
    """One end-to-end her2fed run and where its time went (seconds)."""

    total: float
    phases: dict[str, float]
    rounds: int
    sessions: int
    outcome: StudyOutcome


def her2fed_run(study: Study, frames: Sequence[pd.DataFrame]) -> Her2fedRun:
    """Load (every site in turn), then run the study; time each phase."""
    agents = agents_for(study, frames)
    sw = Stopwatch()
    t0 = time.perf_counter()
    with sw("loading"):
        for agent in agents:
            for analysis in study.analyses:
                agent.rows(analysis.id)
    transport = SplitTransport(agents, sw)
    t1 = time.perf_counter()
    outcome = run_study(study, transport)
    end = time.perf_counter()
    phases = {
        "loading": sw.get("loading"),
        "summaries": sw.get("aggregate") - sw.get("secure"),
        "secure": sw.get("secure"),
        "estimation": (end - t1) - sw.get("aggregate"),
    }
    return Her2fedRun(end - t0, phases, outcome.rounds, transport.stats.sessions, outcome)


# ---------------------------------------------------------------- lifelines


def lifelines_fit(estimator: str, pooled: pd.DataFrame) -> Any:
    """lifelines' counterpart on the pooled rows (already concatenated, not timed).

    Imported here, so the memory children of the site and coordinator roles
    do not carry lifelines in their resident set.
    """
    import lifelines
    from lifelines.statistics import logrank_test

    if estimator == "km":
        return lifelines.KaplanMeierFitter().fit(pooled[TIME], pooled[EVENT])
    if estimator == "logrank":
        a, b = pooled[pooled[ARM] == "A"], pooled[pooled[ARM] == "B"]
        return logrank_test(a[TIME], b[TIME], a[EVENT], b[EVENT])
    if estimator == "aj":
        with warnings.catch_warnings():  # "tied event times ... jittered": noted in the output
            warnings.simplefilter("ignore")
            return lifelines.AalenJohansenFitter(seed=0).fit(
                pooled[TIME], pooled[CAUSE], event_of_interest=1
            )
    return lifelines.CoxPHFitter().fit(
        pooled[[TIME, EVENT, *COVARIATES]], duration_col=TIME, event_col=EVENT
    )


def _step(
    t: NDArray[np.float64], s: NDArray[np.float64], grid: NDArray[np.float64], start: float
) -> NDArray[np.float64]:
    """A step function's values on ``grid`` (``start`` before its first time)."""
    i = np.searchsorted(t, grid, side="right") - 1
    return np.where(i >= 0, s[np.maximum(i, 0)], start)


def agreement(estimator: str, outcome: StudyOutcome, fitted: Any) -> float:
    """Max abs difference between her2fed's and lifelines' answer (see ``TOL``)."""
    res = outcome.results[estimator]
    if estimator == "logrank":
        assert isinstance(res, LogrankOutcome)
        return abs(res.test.chisq - float(fitted.test_statistic)) / max(res.test.chisq, 1e-300)
    if estimator == "cox":
        assert isinstance(res, CoxResult)
        coef = np.asarray(fitted.params_.loc[list(res.names)], dtype=np.float64)
        return float(np.max(np.abs(res.coef - coef)))
    assert isinstance(res, CurvesResult)
    curve = res.groups["all"]
    if estimator == "km":
        assert isinstance(curve, KMCurve)
        ours_t, ours, start = curve.time, curve.surv, 1.0
        frame = fitted.survival_function_
    else:
        assert isinstance(curve, CIFCurve)
        ours_t, ours, start = curve.time, curve.cif[:, 0], 0.0
        frame = fitted.cumulative_density_
    ref_t = np.asarray(frame.index, dtype=np.float64)
    ref = np.asarray(frame.iloc[:, 0], dtype=np.float64)
    # compare mid-day, after every event of the day: lifelines' AJ moves tied times by
    # up to 1e-4 days either way (its jitter), so a day's events straddle the whole day
    grid = np.union1d(np.round(ref_t), ours_t) + 0.5
    if estimator == "aj":
        # ... and on the horizon day, where a third of the rows are censored
        # administratively, its jitter moves that day's events after those censorings:
        # the last few events then meet a risk set of a handful and the CIF jumps by 0.08
        grid = grid[grid < HORIZON_DAYS]
    return float(np.max(np.abs(_step(ours_t, ours, grid, start) - _step(ref_t, ref, grid, start))))


# ---------------------------------------------------------------- memory (child processes)


ROLES = ("site", "coordinator", "inprocess", "lifelines")


def record_study(study: Study, frames: Sequence[pd.DataFrame]) -> list[dict[str, Any]]:
    """The study's rounds as the coordinator saw them: queries, merged sums, masked length.

    Plain sums here (the sums are what secure aggregation releases, bit for
    bit for ints); the memory children replay these rounds, each in its role.
    """
    rounds: list[dict[str, Any]] = []

    class Recorder(InProcessTransport):
        def aggregate(self, queries: Sequence[Query]) -> list[Additive]:
            merged = super().aggregate(queries)
            rounds.append({"queries": list(queries), "merged": merged})
            return merged

    run_study(study, Recorder(agents_for(study, frames), secure=False, workers=1))
    return rounds


def _masked(enc: Encoding, ints: NDArray[Any], floats: NDArray[Any], n_sites: int) -> bytes:
    """A site's masked input as it leaves the site: encode, self mask + n-1 pair masks."""
    ring = enc.encode(ints, floats)
    for k in range(n_sites):
        prg.apply_mask(ring, bytes([k + 1]) * 32, 1)
    return ring.tobytes()


def run_role(role: str, rows: int, seed: int, n_sites: int, plan: Path) -> dict[str, float]:
    """Do one role's work for the Cox study and report this process's peak RSS (bytes)."""
    study = study_for("cox")
    if role == "lifelines":
        pooled = pd.concat(make_sites(n_sites, rows, seed), ignore_index=True)
        data = peak_rss_bytes()
        lifelines_fit("cox", pooled)
        return {"data": data, "peak": peak_rss_bytes()}
    if role == "inprocess":
        frames = make_sites(n_sites, rows, seed)
        data = peak_rss_bytes()
        run_study(study, InProcessTransport(agents_for(study, frames)))
        return {"data": data, "peak": peak_rss_bytes()}
    rounds = pickle.loads(plan.read_bytes())
    if role == "site":
        frame = make_site(seed, 0, rows)
        data = peak_rss_bytes()
        (agent,) = agents_for(study, [frame])
        for rnd in rounds:
            ints, floats = flatten_all(agent.answer(rnd["queries"]))
            _masked(Encoding(ints.size, floats.size, n_sites), ints, floats, n_sites)
        return {"data": data, "peak": peak_rss_bytes()}
    # coordinator: holds every site's masked vector until the round closes, removes the
    # self masks, decodes the sum, splits it and runs the estimator between rounds
    data = peak_rss_bytes()
    run = AnalysisRun(study.analyses[0], study.grid)
    for rnd in rounds:
        merged: list[Additive] = rnd["merged"]
        ints, floats = flatten_all(merged)
        enc = Encoding(ints.size, floats.size, n_sites)
        received = [np.frombuffer(_masked(enc, ints, floats, 0), np.uint64)]
        rng = np.random.default_rng(0)
        received += [
            rng.integers(0, 2**63, enc.ring_length, dtype=np.uint64) for _ in range(n_sites - 1)
        ]
        total = np.zeros(enc.ring_length, np.uint64)
        for vec in received:
            np.add(total, vec, out=total)
        for k in range(n_sites):
            prg.apply_mask(total, bytes([k + 1]) * 32, -1)
        del received, total
        exact = enc.encode(ints, floats)  # the unmasked sum: decode it as the coordinator does
        got_i, got_f = enc.decode(exact)
        run.receive(split_flat(merged, got_i, got_f))
    return {"data": data, "peak": peak_rss_bytes()}


def measure_memory(rows: int, seed: int, n_sites: int) -> dict[str, dict[str, float]]:
    """Peak RSS of each role, each in a fresh ``python -m bench.bench_core --role`` child."""
    study = study_for("cox")
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="her2fed-bench-mem-") as tmp:
        plan = Path(tmp) / "rounds.pkl"
        log(f"memory: recording the Cox study's rounds ({n_sites} x {rows:,} rows)")
        plan.write_bytes(pickle.dumps(record_study(study, make_sites(n_sites, rows, seed))))
        for role in ROLES:
            log(f"memory: {role} in a child process")
            cmd = [sys.executable, "-m", "bench.bench_core", "--role", role]
            cmd += ["--rows", str(rows), "--seed", str(seed), "--plan", str(plan)]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"memory role {role} failed:\n{done.stderr[-2000:]}")
            out[role] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# ---------------------------------------------------------------- measuring


@dataclass
class Cell:
    """One estimator at one size."""

    her2fed: Her2fedRun
    lifelines: float
    lifelines_repeats: int
    diff: float

    @property
    def ratio(self) -> float:
        return self.her2fed.total / self.lifelines


@dataclass
class SizeRun:
    rows: int
    events: int
    distinct_days: int
    cells: dict[str, Cell] = field(default_factory=dict)


def measure_size(rows: int, seed: int, repeats: int, estimators: Sequence[str]) -> SizeRun:
    log(f"{N_SITES} sites x {rows:,} rows (seed {seed}): generating")
    frames = make_sites(N_SITES, rows, seed)
    pooled = pd.concat(frames, ignore_index=True)
    events = int(pooled[EVENT].sum())
    days = int(pooled.loc[pooled[EVENT] == 1, TIME].nunique())
    out = SizeRun(rows, events, days)
    for est in estimators:
        study = study_for(est)
        runs: list[Her2fedRun] = []
        for _ in range(repeats):
            runs.append(her2fed_run(study, frames))
        best = min(runs, key=lambda r: r.total)
        # lifelines' AJ takes minutes at 1M rows (it jitters ties, then a variance pass)
        ll_repeats = 1 if est == "aj" and len(pooled) > 100_000 else repeats
        ll, fitted = best_of(ll_repeats, lambda est=est: lifelines_fit(est, pooled))  # type: ignore[misc]
        cell = Cell(best, ll, ll_repeats, agreement(est, best.outcome, fitted))
        out.cells[est] = cell
        log(
            f"  {est}: her2fed {fmt_s(best.total)}, lifelines {fmt_s(ll)}, "
            f"ratio {cell.ratio:.2f}, diff {cell.diff:.1e}"
        )
    return out


# ---------------------------------------------------------------- report


def speed_table(sizes: Sequence[SizeRun]) -> list[str]:
    head = "| estimator | rows (5 sites) | her2fed end to end | lifelines, pooled | **ratio** |"
    head += " loading | local summaries | secure aggregation | estimation | rounds (key set-ups) |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for est in ESTIMATORS:
        for s in sizes:
            c = s.cells.get(est)
            if c is None:
                continue
            h = c.her2fed
            lines.append(
                f"| {LABELS[est]} | {N_SITES * s.rows:,} | {fmt_s(h.total)} | "
                f"{fmt_s(c.lifelines)} | **{fmt_ratio(c.ratio)}** | "
                + " | ".join(fmt_s(h.phases[p]) for p in PHASES)
                + f" | {h.rounds} ({h.sessions}) |"
            )
    return lines


def memory_table(mem: dict[str, dict[str, float]], rows: int) -> list[str]:
    what = {
        "site": f"one site, {rows:,} rows: its data, summaries and masking of every round",
        "coordinator": f"coordinator ({N_SITES} sites): masked vectors, unmasking, decoding, "
        "Newton",
        "inprocess": f"whole in-process federation ({N_SITES} sites + coordinator, one process)",
        "lifelines": f"lifelines CoxPHFitter on the {N_SITES * rows:,} pooled rows",
    }
    lines = [
        "| process (Cox study) | peak RSS | of which data before the work |",
        "|---|---:|---:|",
    ]
    for role in ROLES:
        m = mem[role]
        lines.append(f"| {what[role]} | {fmt_mib(m['peak'])} | {fmt_mib(m['data'])} |")
    return lines


def agreement_lines(sizes: Sequence[SizeRun]) -> tuple[list[str], bool]:
    ok = True
    out: list[str] = []
    what = {
        "km": "KM S(t) max abs diff",
        "logrank": "log-rank chi-square rel diff",
        "aj": "AJ CIF (cause 1) max abs diff before the horizon day",
        "cox": "Cox coef max abs diff",
    }
    for est in ESTIMATORS:
        diffs = [s.cells[est].diff for s in sizes if est in s.cells]
        if not diffs:
            continue
        good = max(diffs) < TOL[est]
        ok &= good
        out.append(
            f"agreement with lifelines, {what[est]}: "
            + ", ".join(f"{d:.1e}" for d in diffs)
            + f" (must be < {TOL[est]:g}): {'ok' if good else 'FAIL'}"
        )
    return out, ok


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="5 sites x 10,000 rows only, best of 2")
    ap.add_argument("--rows", type=int, nargs="+", help="rows per site, one run per value")
    ap.add_argument("--estimators", nargs="+", choices=ESTIMATORS, default=list(ESTIMATORS))
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--repeats", type=int, help="best of this many (default 3, quick 2)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory children")
    ap.add_argument("--markdown", type=Path, help="write this run's section into this file")
    ap.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)  # memory child
    ap.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.rows = args.rows or list(SIZES_QUICK if args.quick else SIZES_FULL)
    args.repeats = args.repeats or (2 if args.quick else 3)
    if min(args.rows) < 1 or args.repeats < 1:
        ap.error("--rows and --repeats must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role is not None:
        print(json.dumps(run_role(args.role, args.rows[0], args.seed, N_SITES, args.plan)))
        return 0
    from importlib.metadata import version

    info = machine({"pandas": pd.__version__, "lifelines": version("lifelines")})
    sizes = [measure_size(r, args.seed, args.repeats, args.estimators) for r in args.rows]
    mem_rows = max(args.rows)
    mem = None if args.no_memory else measure_memory(mem_rows, args.seed, N_SITES)
    agree, ok = agreement_lines(sizes)
    body = [
        "#### Time: her2fed (secure aggregation, in-process) / lifelines (pooled rows)",
        "",
        *speed_table(sizes),
        "",
    ]
    if mem is not None:
        body += [f"#### Peak memory, Cox, {N_SITES} sites x {mem_rows:,} rows", ""]
        body += [*memory_table(mem, mem_rows), ""]
    body += [f"- {line}" for line in agree]
    for s in sizes:
        n = N_SITES * s.rows
        body.append(
            f"- {N_SITES} x {s.rows:,} rows: {s.events:,} events ({s.events / n:.0%}) on "
            f"{s.distinct_days:,} distinct days; grid 1 day, horizon {HORIZON_DAYS} days"
        )
    cox = [s.cells["cox"] for s in sizes if "cox" in s.cells]
    if cox:
        res = cox[-1].her2fed.outcome.results["cox"]
        assert isinstance(res, CoxResult)
        body.append(
            f"- Cox at the largest size: {res.iterations} Newton iterations; max |coef - true| "
            f"{float(np.max(np.abs(res.coef - TRUE_BETA))):.3f}"
        )
    body.append(
        f"- seed {args.seed}; her2fed best of {args.repeats} by end-to-end time (its phases "
        "from that run), lifelines best of the same except AJ above 100,000 rows (1 fit)"
    )
    sized = (args.rows == list(SIZES_QUICK)) or (args.rows == list(SIZES_FULL))
    key = "speed-quick" if args.quick else "speed"
    if not sized or args.estimators != list(ESTIMATORS) or args.seed != SEED:
        key += "-custom"
    title = f"Speed and memory: {N_SITES} sites x " + ", ".join(f"{r:,}" for r in args.rows)
    title += " rows" + (" (quick run)" if args.quick else "")
    publish(
        args.markdown, key, section(key, title, command_line("bench.bench_core", argv), info, body)
    )
    if not ok:
        log("her2fed and lifelines DISAGREE (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
