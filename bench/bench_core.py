"""her2fed's federated KM and Cox against lifelines on the same rows pooled.

The claim her2fed makes is "the pooled answer, without pooling": this script
puts a price on that claim. It runs the real pipeline (site agents behind the
in-process transport, the real orchestrator) on synthetic sites and lifelines
on the concatenated rows, in one process, and reports the time ratio together
with a check that both gave the same answer - a fast wrong answer is no
benchmark. It also splits her2fed's time into site preparation, local
summaries, merging and estimation, because sites run in parallel in a real
federation: what a user waits for is the slowest site per round plus the
coordinator, not the sequential in-process total.

Run ``make bench`` (or ``make bench QUICK=1``); ``--markdown BENCHMARKS.md``
records the run in that file. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import re
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lifelines
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from coordinator.orchestrate import StudyOutcome, run_study
from coordinator.transport import Failing, InProcessTransport, merge_failing
from her2fed.cox import CoxResult
from her2fed.disclosure import ReleaseRule
from her2fed.estimate import CurvesResult
from her2fed.grid import TimeGrid
from her2fed.km import KMCurve
from her2fed.protocol import Query
from her2fed.study import Study, parse_analysis
from her2fed.summary import Additive, merge
from site_agent.config import Policy, SiteConfig
from site_agent.handlers import Released, SiteAgent

T = TypeVar("T")

DATASET = "d"
TIME, EVENT = "time", "event"
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
FULL = (5, 200_000)
QUICK = (5, 20_000)
KM_TOL, COX_TOL = 1e-9, 1e-5
MARK = "<!-- bench:{key}:{edge} -->"
# BLAS threading changes both sides' timings a lot on small machines; recorded with each run.
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data


def make_site(rng: np.random.Generator, rows: int, site: int) -> pd.DataFrame:
    """One site's rows from a known Cox model, so both fitters have a true target.

    Continuous covariates get a small per-site mean shift so the sites are not
    exchangeable copies; times are whole days with heavy ties (1M rows over
    3650 days), which is the case where Efron ties matter and are costly.
    """
    cols: dict[str, NDArray[Any]] = {}
    for name, p in zip(COVARIATES, BINARY_P, strict=True):
        if p is None:
            cols[name] = rng.normal(0.1 * site, 1.0, rows)
        else:
            cols[name] = (rng.random(rows) < p).astype(np.int64)
    x = np.column_stack([np.asarray(cols[c], dtype=np.float64) for c in COVARIATES])
    t_event = rng.exponential(1.0 / (BASE_HAZARD * np.exp(x @ TRUE_BETA)))
    t_censor = rng.exponential(1.0 / CENSOR_HAZARD, rows)
    days = np.ceil(np.minimum(t_event, t_censor)).astype(np.int64)
    event = (t_event <= t_censor).astype(np.int64)
    beyond = days > HORIZON_DAYS
    event[beyond] = 0
    days[beyond] = HORIZON_DAYS
    return pd.DataFrame({TIME: days, EVENT: event, **cols})


def make_sites(n_sites: int, rows: int, seed: int) -> list[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    return [make_site(rng, rows, s) for s in range(n_sites)]


# ---------------------------------------------------------------- her2fed


def km_study() -> Study:
    spec = {"id": "km", "kind": "km", "dataset": DATASET, "time": TIME, "event": EVENT}
    return Study("bench-km", TimeGrid(1, HORIZON_DAYS), (parse_analysis(spec, "bench"),))


def cox_study() -> Study:
    spec = {
        "id": "cox",
        "kind": "cox",
        "dataset": DATASET,
        "time": TIME,
        "event": EVENT,
        "covariates": list(COVARIATES),
        "ties": "efron",
    }
    return Study("bench-cox", TimeGrid(1, HORIZON_DAYS), (parse_analysis(spec, "bench"),))


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


def her2fed_end_to_end(study: Study, frames: Sequence[pd.DataFrame]) -> StudyOutcome:
    return run_study(study, InProcessTransport(agents_for(study, frames)))


class TimedTransport:
    """``InProcessTransport`` with a stopwatch on every site answer and every merge.

    Same calls in the same order as the real transport (minus the error
    wrapping), so the parts add up to what the end-to-end run spends.
    """

    def __init__(self, agents: Sequence[SiteAgent]) -> None:
        self._agents = list(agents)
        self.site_seconds: list[list[float]] = []  # [round][site]
        self.merge_seconds: list[float] = []  # [round]

    def release_rule(self) -> ReleaseRule:
        """The benchmark times the statistics: its sites' policy releases the pooled rows as is."""
        return ReleaseRule.strictest([a.release_rule for a in self._agents])

    def confirm_release(self, releases: Mapping[str, Released]) -> Failing:
        return merge_failing(a.check_release(releases) for a in self._agents)

    def sites(self) -> list[str]:
        return [a.site_id for a in self._agents]

    def describe(self) -> dict[str, object]:
        return {"method": "plain sum (benchmark breakdown)"}

    def exclude(self, sites: Sequence[str]) -> None:
        raise RuntimeError(f"benchmark sites never drop out: {list(sites)}")

    def aggregate(self, queries: Sequence[Query]) -> list[Additive]:
        answers: list[list[Additive]] = []
        per_site: list[float] = []
        for agent in self._agents:
            t0 = time.perf_counter()
            answers.append(agent.answer(queries))
            per_site.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        merged = [merge(site[i] for site in answers) for i in range(len(queries))]
        self.merge_seconds.append(time.perf_counter() - t0)
        self.site_seconds.append(per_site)
        return merged


@dataclass(frozen=True)
class Breakdown:
    """Where one her2fed run spent its time (seconds)."""

    prep: list[float]  # per site
    summaries: list[list[float]]  # per round, per site
    merge: float
    estimate: float  # coordinator: everything in run_study not spent at sites or merging
    rounds: int
    outcome: StudyOutcome

    @property
    def prep_max(self) -> float:
        return max(self.prep)

    @property
    def prep_sum(self) -> float:
        return sum(self.prep)

    @property
    def summaries_max(self) -> float:
        """Rounds are synchronous: each waits for its slowest site."""
        return sum(max(r) for r in self.summaries)

    @property
    def summaries_sum(self) -> float:
        return sum(sum(r) for r in self.summaries)

    @property
    def critical(self) -> float:
        """Wall time if sites ran in parallel and the network were free."""
        return self.prep_max + self.summaries_max + self.merge + self.estimate

    @property
    def sequential(self) -> float:
        return self.prep_sum + self.summaries_sum + self.merge + self.estimate


def her2fed_breakdown(study: Study, frames: Sequence[pd.DataFrame]) -> Breakdown:
    agents = agents_for(study, frames)
    prep: list[float] = []
    for agent in agents:  # the agent caches prepared rows; prepare them up front to time it
        t0 = time.perf_counter()
        for a in study.analyses:
            agent.rows(a.id)
        prep.append(time.perf_counter() - t0)
    transport = TimedTransport(agents)
    t0 = time.perf_counter()
    outcome = run_study(study, transport)
    total = time.perf_counter() - t0
    site_total = sum(sum(r) for r in transport.site_seconds)
    merge_total = sum(transport.merge_seconds)
    return Breakdown(
        prep=prep,
        summaries=transport.site_seconds,
        merge=merge_total,
        estimate=total - site_total - merge_total,
        rounds=outcome.rounds,
        outcome=outcome,
    )


# ---------------------------------------------------------------- lifelines


def lifelines_km(pooled: pd.DataFrame) -> Any:
    return lifelines.KaplanMeierFitter().fit(pooled[TIME], pooled[EVENT])


def lifelines_cox(pooled: pd.DataFrame) -> Any:
    return lifelines.CoxPHFitter().fit(
        pooled[[TIME, EVENT, *COVARIATES]], duration_col=TIME, event_col=EVENT
    )


# ---------------------------------------------------------------- measuring


def best_of(repeats: int, fn: Callable[[], T]) -> tuple[float, T]:
    """Least wall time of ``repeats`` calls: the run least disturbed by the machine."""
    best, out = float("inf"), None
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - t0
        if elapsed < best:
            best, out = elapsed, result
    assert out is not None
    return best, out


def best_breakdown(repeats: int, study: Study, frames: Sequence[pd.DataFrame]) -> Breakdown:
    runs: list[Breakdown] = []
    for _ in range(repeats):
        gc.collect()
        runs.append(her2fed_breakdown(study, frames))
    return min(runs, key=lambda b: b.sequential)


def traced_peak(fn: Callable[[], object]) -> int:
    """Peak bytes allocated (numpy included) by one untimed call, inputs excluded."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------- agreement


def km_diff(outcome: StudyOutcome, kmf: Any) -> float:
    """Max |S_her2fed(t) - S_lifelines(t)| over every time either curve lists."""
    res = outcome.results["km"]
    assert isinstance(res, CurvesResult)
    curve = res.groups["all"]
    assert isinstance(curve, KMCurve)
    sf = kmf.survival_function_
    ref_t = np.asarray(sf.index, dtype=np.float64)
    ref_s = np.asarray(sf.iloc[:, 0], dtype=np.float64)
    grid = np.union1d(ref_t, curve.time)

    def step(t: NDArray[np.float64], s: NDArray[np.float64]) -> NDArray[np.float64]:
        i = np.searchsorted(t, grid, side="right") - 1
        return np.where(i >= 0, s[np.maximum(i, 0)], 1.0)

    return float(np.max(np.abs(step(curve.time, curve.surv) - step(ref_t, ref_s))))


def cox_diffs(outcome: StudyOutcome, cph: Any) -> tuple[float, float]:
    """Max abs coefficient difference and max relative SE difference."""
    res = outcome.results["cox"]
    assert isinstance(res, CoxResult)
    names = list(res.names)
    coef = np.asarray(cph.params_.loc[names], dtype=np.float64)
    se = np.asarray(cph.standard_errors_.loc[names], dtype=np.float64)
    return float(np.max(np.abs(res.coef - coef))), float(np.max(np.abs(res.se / se - 1)))


# ---------------------------------------------------------------- report


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    except OSError:
        pass
    threads = [f"{k}={os.environ[k]}" for k in THREAD_VARS if k in os.environ]
    return {
        "CPU": f"{cpu}, nproc = {os.cpu_count()}",
        "RAM": ram,
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "numpy": f"{np.__version__} ({blas_name()}, threads: {' '.join(threads) or 'default'})",
        "pandas": pd.__version__,
        "lifelines": lifelines.__version__,
    }


def blas_name() -> str:
    try:
        config: Any = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas['version']}"
    except Exception:  # the layout of numpy's build info is not a stable API
        return "BLAS unknown"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s"


def fmt_mib(n_bytes: float) -> str:
    return f"{n_bytes / 1024**2:,.0f} MiB"


@dataclass(frozen=True)
class Measured:
    """One estimator's numbers (seconds unless named otherwise)."""

    e2e: float
    parts: Breakdown
    lifelines: float
    diff: float
    her2fed_peak: int
    lifelines_peak: int | None


def table(km: Measured, cox: Measured) -> str:
    def max_sum(mx: float, total: float) -> str:
        return f"{fmt_s(mx)} ({fmt_s(total)})"

    def ratio(m: Measured, t: float) -> str:
        return f"{t / m.lifelines:.2f}"

    def lifelines_peak(m: Measured) -> str:
        return "not measured" if m.lifelines_peak is None else fmt_mib(m.lifelines_peak)

    p = "**"
    rows: list[tuple[str, Callable[[Measured], str]]] = [
        (
            "site prep (validate + arrays): max site (sum)",
            lambda m: max_sum(m.parts.prep_max, m.parts.prep_sum),
        ),
        (
            "local summaries, all rounds: max site/round (sum)",
            lambda m: max_sum(m.parts.summaries_max, m.parts.summaries_sum),
        ),
        ("merge (coordinator)", lambda m: fmt_s(m.parts.merge)),
        ("estimation (coordinator)", lambda m: fmt_s(m.parts.estimate)),
        ("rounds", lambda m: str(m.parts.rounds)),
        (
            f"{p}her2fed critical path{p} (parallel sites, plain sums)",
            lambda m: fmt_s(m.parts.critical),
        ),
        (
            f"{p}her2fed end to end{p} (in-process, sites in turn, secure aggregation)",
            lambda m: fmt_s(m.e2e),
        ),
        (f"{p}lifelines on pooled rows{p}", lambda m: fmt_s(m.lifelines)),
        (f"{p}ratio end to end{p} her2fed / lifelines", lambda m: ratio(m, m.e2e)),
        (f"{p}ratio critical path{p} her2fed / lifelines", lambda m: ratio(m, m.parts.critical)),
        ("agreement: max abs diff (S(t) / coef)", lambda m: f"{m.diff:.1e}"),
        ("tracemalloc peak, her2fed run", lambda m: fmt_mib(m.her2fed_peak)),
        ("tracemalloc peak, lifelines fit", lifelines_peak),
    ]
    lines = ["| | KM | Cox (10 covariates, Efron) |", "|---|---:|---:|"]
    lines += [f"| {name} | {cell(km)} | {cell(cox)} |" for name, cell in rows]
    return "\n".join(lines)


def section(
    key: str,
    title: str,
    command: str,
    km: Measured,
    cox: Measured,
    extra: Sequence[str],
    rss: Sequence[tuple[str, float]],
) -> str:
    out = [MARK.format(key=key, edge="start"), f"### {title}", ""]
    out += [f"Command: `{command}`", ""]
    out += [f"Run: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}", ""]
    out += [f"- {k}: {v}" for k, v in machine().items()]
    out += ["", table(km, cox), ""]
    out += [f"- {line}" for line in extra]
    peaks = ", ".join(f"{name} {mib:,.0f} MiB" for name, mib in rss)
    out += [f"- peak RSS (ru_maxrss, process high-water mark) after: {peaks}"]
    out += ["", MARK.format(key=key, edge="end")]
    return "\n".join(out)


def write_markdown(path: Path, key: str, text: str) -> None:
    """Replace this run's marked section, or append it; the rest is hand-written."""
    doc = path.read_text() if path.exists() else "# Benchmarks\n\n## Results\n"
    pattern = re.compile(
        re.escape(MARK.format(key=key, edge="start"))
        + r".*?"
        + re.escape(MARK.format(key=key, edge="end")),
        re.DOTALL,
    )
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text, doc)
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(doc)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help=f"{QUICK[0]} sites x {QUICK[1]} rows")
    ap.add_argument("--sites", type=int, help=f"number of sites (default {FULL[0]})")
    ap.add_argument("--rows", type=int, help=f"rows per site (default {FULL[1]})")
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--repeats", type=int, default=5, help="best of this many timings")
    ap.add_argument(
        "--no-lifelines-memory",
        action="store_true",
        help="skip the extra traced lifelines fits (they cost one more fit each)",
    )
    ap.add_argument("--markdown", type=Path, help="write this run's section into this file")
    args = ap.parse_args(argv)
    default = QUICK if args.quick else FULL
    args.sites = args.sites or default[0]
    args.rows = args.rows or default[1]
    if args.sites < 1 or args.rows < 1 or args.repeats < 1:
        ap.error("--sites, --rows and --repeats must be >= 1")
    return args


def measure(
    name: str,
    study: Study,
    frames: Sequence[pd.DataFrame],
    pooled: pd.DataFrame,
    fit: Callable[[pd.DataFrame], Any],
    compare: Callable[[StudyOutcome, Any], float],
    repeats: int,
    lifelines_memory: bool,
) -> tuple[Measured, StudyOutcome, Any]:
    log(f"{name}: her2fed end to end, best of {repeats}")
    e2e, outcome = best_of(repeats, lambda: her2fed_end_to_end(study, frames))
    log(f"{name}: her2fed {fmt_s(e2e)}; breakdown, best of {repeats}")
    parts = best_breakdown(repeats, study, frames)
    log(f"{name}: her2fed critical path {fmt_s(parts.critical)}; lifelines, best of {repeats}")
    ll, fitted = best_of(repeats, lambda: fit(pooled))
    log(f"{name}: lifelines {fmt_s(ll)}; memory")
    her_peak = traced_peak(lambda: her2fed_end_to_end(study, frames))
    ll_peak = traced_peak(lambda: fit(pooled)) if lifelines_memory else None
    diff = compare(outcome, fitted)
    return Measured(e2e, parts, ll, diff, her_peak, ll_peak), outcome, fitted


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    n_total = args.sites * args.rows
    log(f"{args.sites} sites x {args.rows:,} rows (seed {args.seed}): generating")
    frames = make_sites(args.sites, args.rows, args.seed)
    pooled = pd.concat(frames, ignore_index=True)
    events = int(pooled[EVENT].sum())
    ties = int(pooled.loc[pooled[EVENT] == 1, TIME].nunique())
    rss = [("data", maxrss_mib())]
    log(f"{n_total:,} rows, {events:,} events at {ties:,} distinct days")

    trace_lifelines = not args.no_lifelines_memory
    km, _, _ = measure(
        "KM", km_study(), frames, pooled, lifelines_km, km_diff, args.repeats, trace_lifelines
    )
    cox, cox_out, cph = measure(
        "Cox",
        cox_study(),
        frames,
        pooled,
        lifelines_cox,
        lambda outcome, fitted: cox_diffs(outcome, fitted)[0],
        args.repeats,
        trace_lifelines,
    )
    coef_diff, se_diff = cox_diffs(cox_out, cph)
    rss.append(("all runs", maxrss_mib()))
    cox_res = cox_out.results["cox"]
    assert isinstance(cox_res, CoxResult)

    ok_km, ok_cox = km.diff < KM_TOL, coef_diff < COX_TOL
    extra = [
        f"{args.sites} sites x {args.rows:,} rows = {n_total:,} rows; {events:,} events "
        f"({events / n_total:.0%}) on {ties:,} distinct event days; grid 1 day, "
        f"horizon {HORIZON_DAYS} days; seed {args.seed}; best of {args.repeats}",
        f"KM S(t) max abs diff vs lifelines {km.diff:.2e} (must be < {KM_TOL:g}): "
        f"{'ok' if ok_km else 'FAIL'}",
        f"Cox coef max abs diff vs lifelines {coef_diff:.2e} (must be < {COX_TOL:g}): "
        f"{'ok' if ok_cox else 'FAIL'}; SE max rel diff {se_diff:.1e}; "
        f"her2fed Newton iterations {cox_res.iterations}; max |coef - true| "
        f"{float(np.max(np.abs(cox_res.coef - TRUE_BETA))):.3f}",
    ]
    size = (args.sites, args.rows)
    key = {QUICK: "quick", FULL: "full"}.get(size, f"{args.sites}x{args.rows}")
    title = {"quick": "Quick run", "full": "Full run"}.get(key, "Run")
    title += f": {args.sites} sites x {args.rows:,} rows"
    env = [f"{k}={os.environ[k]}" for k in THREAD_VARS if k in os.environ]
    if env:  # a separate section, so default and pinned-thread runs sit side by side
        key += "+" + "+".join(env)
        title += f", {' '.join(env)}"
    python = os.path.relpath(sys.executable) if sys.executable else "python"
    command = " ".join([*env, python, "bench/bench_core.py", *(argv or sys.argv[1:])])
    text = section(key, title, command, km, cox, extra, rss)
    print(text)
    if args.markdown is not None:
        write_markdown(args.markdown, key, text)
        log(f"wrote {args.markdown}")
    if not (ok_km and ok_cox):
        log("her2fed and lifelines DISAGREE (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
