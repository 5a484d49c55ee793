"""What every benchmark shares: the machine, the clock, memory, git state and BENCHMARKS.md.

Each benchmark owns one or more marked sections of BENCHMARKS.md and rewrites
only those, so benchmarks can be re-run one at a time. Every section records
the command that produced it, the date, the machine, the commit (and any
uncommitted files) and the load on the machine: a timing means little without
the code and the conditions that produced it.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- bench:{key}:{edge} -->"
# BLAS threading changes timings a lot on small machines; recorded with each run.
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

_T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress on stderr, so stdout carries only the section a run writes."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- timing


def best_of(repeats: int, fn: Callable[[], T]) -> tuple[float, T]:
    """Least wall time of ``repeats`` calls (the run least disturbed), with its result."""
    best, out, found = float("inf"), None, False
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - t0
        if elapsed < best:
            best, out, found = elapsed, result, True
    assert found, "repeats must be >= 1"
    return best, out  # type: ignore[return-value]


class Stopwatch:
    """Seconds accumulated per named phase; ``with sw("phase"): ...`` adds to it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - t0)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def get(self, phase: str) -> float:
        return self.seconds.get(phase, 0.0)


# ---------------------------------------------------------------- memory


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM): what the OS had to give it at worst.

    Read from /proc so a child process reports its own peak; ``ru_maxrss`` of
    RUSAGE_SELF would do too, but /proc also works after a fork's inheritance.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# ---------------------------------------------------------------- formatting


def fmt_s(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "–"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:,.0f} B"
    if n < 1024**2:
        return f"{n / 1024:,.1f} KiB"
    return f"{n / 1024**2:,.2f} MiB"


def fmt_mib(n_bytes: float) -> str:
    return f"{n_bytes / 1024**2:,.0f} MiB"


def fmt_ratio(x: float) -> str:
    """Two decimals, or two significant digits below 0.1 (0.0019 is not 0.00)."""
    if x != x:
        return "–"
    return f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


# ---------------------------------------------------------------- synthetic rows


@dataclass(frozen=True)
class CoxModel:
    """A known proportional-hazards model to draw benchmark rows from.

    Continuous covariates (``binary_p`` None) are normal, the others 0/1 with
    that probability; event and censoring times are exponential, rounded up
    to whole days and censored at ``horizon``.
    """

    covariates: tuple[str, ...]
    binary_p: tuple[float | None, ...]
    beta: NDArray[np.float64]
    base_hazard: float
    censor_hazard: float
    horizon: int


def draw_cox_rows(
    rng: np.random.Generator, model: CoxModel, rows: int, shift: float
) -> tuple[NDArray[np.int64], NDArray[np.int64], dict[str, NDArray[Any]]]:
    """(days, event 0/1, covariate columns); ``shift`` moves the continuous covariates."""
    cols: dict[str, NDArray[Any]] = {}
    for name, p in zip(model.covariates, model.binary_p, strict=True):
        if p is None:
            cols[name] = rng.normal(shift, 1.0, rows)
        else:
            cols[name] = (rng.random(rows) < p).astype(np.int64)
    x = np.column_stack([np.asarray(cols[c], dtype=np.float64) for c in model.covariates])
    t_event = rng.exponential(1.0 / (model.base_hazard * np.exp(x @ model.beta)))
    t_censor = rng.exponential(1.0 / model.censor_hazard, rows)
    days = np.ceil(np.minimum(t_event, t_censor)).astype(np.int64)
    event = (t_event <= t_censor).astype(np.int64)
    beyond = days > model.horizon
    event[beyond] = 0
    days[beyond] = model.horizon
    return days, event, cols


# ---------------------------------------------------------------- machine and code


def _proc_field(path: str, prefix: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def blas_name() -> str:
    try:
        config: Any = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas['version']}"
    except Exception:  # the layout of numpy's build info is not a stable API
        return "BLAS unknown"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def git_state() -> str:
    """Commit and uncommitted tracked files: timings belong to the code that produced them."""
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout

        head = git("rev-parse", "--short", "HEAD").strip()
        changed = git("status", "--porcelain", "-uno").splitlines()
        # BENCHMARKS.md is what the runs write: its own changes say nothing about the code
        dirty = [line[3:] for line in changed if line and line[3:] != "BENCHMARKS.md"]
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {head}" + (f", uncommitted changes in {', '.join(dirty)}" if dirty else "")


def machine(libraries: Mapping[str, str] | None = None) -> dict[str, str]:
    """The machine, the libraries that matter for this benchmark, the code and the load now.

    Call it before the benchmark starts, so the load average is the other
    jobs', not this one's.
    """
    ram_kib = _proc_field("/proc/meminfo", "MemTotal:")
    ram = f"{int(ram_kib.split()[0]) / 1024**2:.1f} GiB" if ram_kib else "unknown"
    threads = [f"{k}={os.environ[k]}" for k in THREAD_VARS if k in os.environ]
    info = {
        "CPU": f"{_proc_field('/proc/cpuinfo', 'model name') or 'unknown'}, "
        f"nproc = {os.cpu_count()}",
        "RAM": ram,
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "numpy": f"{np.__version__} ({blas_name()}, threads: {' '.join(threads) or 'default'})",
    }
    info.update(libraries or {})
    info["her2fed"] = git_state()
    info["load average at start (1, 5, 15 min)"] = load_average()
    return info


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """How to reproduce this run: thread variables, the venv's python, ``-m``, the arguments."""
    env = [f"{k}={os.environ[k]}" for k in THREAD_VARS if k in os.environ]
    python = os.path.relpath(sys.executable, ROOT) if sys.executable else "python"
    args = list(argv if argv is not None else sys.argv[1:])
    return " ".join([*env, python, "-m", module, *args])


# ---------------------------------------------------------------- BENCHMARKS.md


def section(
    key: str, title: str, command: str, info: Mapping[str, str], body: Sequence[str]
) -> str:
    """One marked section: title, command, date, machine, then the benchmark's own lines."""
    out = [MARK.format(key=key, edge="start"), f"### {title}", ""]
    out += [f"Command: `{command}`", ""]
    out += [f"Run: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}", ""]
    out += [f"- {k}: {v}" for k, v in info.items()]
    out += [
        f"- load average at end: {load_average()} (nproc {os.cpu_count()}: a higher load "
        "means other jobs competed for the CPUs)"
    ]
    out += ["", *body, "", MARK.format(key=key, edge="end")]
    return "\n".join(out)


def write_markdown(path: Path, key: str, text: str) -> None:
    """Replace the marked section ``key``, or append it; nothing else in the file changes."""
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(
        re.escape(MARK.format(key=key, edge="start"))
        + r".*?"
        + re.escape(MARK.format(key=key, edge="end")),
        re.DOTALL,
    )
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text, doc, count=1)
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(doc)


def publish(path: Path | None, key: str, text: str) -> None:
    """Print the section; with ``--markdown FILE``, also write it there."""
    print(text)
    if path is not None:
        write_markdown(path, key, text)
        log(f"wrote section {key!r} of {path}")
