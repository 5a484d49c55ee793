"""How a study's cost grows with the number of sites: 3, 10, 30 and 100, secure aggregation on.

A consortium grows by adding hospitals, each with a cohort of its own size,
so this is weak scaling: every site holds the same number of synthetic rows
(``--rows``) and the same KM + Cox study (5 covariates, Efron ties, 30-day
grid, the default site policy) runs over more and more of them. The question
is who pays for a new site. With plain sums the coordinator's work would grow
linearly with the sites and each site's would stay flat; secure aggregation
(pairwise masks, Shamir shares of every site's secrets) adds work that grows
with the number of *other* sites at every party, and this script measures how
much.

Everything runs in one process (the issue accepts in-process; the network is
measured by bench_network.py). The study is run three ways per site count:

- **timed**: ``InProcessTransport``'s calls in its order (local summaries,
  secure-aggregation key set-up, masking, consistency, unmasking), every
  party's share on its own stopwatch, every message through its bytes; this
  gives coordinator and per-site time per round and the critical path (sites
  in parallel, network free), and the bytes each party sends;
- **end to end** through the real ``InProcessTransport`` (the parts must add
  up to about this);
- **plain sums** (``secure=False``) for reference.

All three must give the same pooled results (timed = real bit for bit, KM
counts = plain bit for bit, Cox coefficients within 1e-7 of plain), else the
script exits 1. Timings are reported, never asserted. Flower's simulation
engine is not used: a study's rounds do not travel as Flower messages (only the
session opening does, see docs/federation.md), so it would time Flower, not
her2fed. ``--markdown PATH`` rewrites only this script's section of PATH.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from bench.common import (
    CoxModel,
    command_line,
    draw_cox_rows,
    fmt_bytes,
    fmt_s,
    log,
    machine,
    publish,
)
from bench.common import section as common_section
from coordinator.orchestrate import StudyOutcome, run_study
from coordinator.results import pooled_json
from coordinator.transport import (
    ROUNDS_PER_SESSION,
    AggregationError,
    InProcessTransport,
    merge_failing,
    reuse_session,
)
from her2fed.cox import CoxResult
from her2fed.disclosure import ReleaseRule
from her2fed.grid import TimeGrid
from her2fed.protocol import Query
from her2fed.secagg import messages
from her2fed.secagg.config import SessionConfig
from her2fed.secagg.coordinator import CoordinatorSession, SecureSum
from her2fed.secagg.driver import Consortium, simulated_consortium
from her2fed.secagg.messages import Message
from her2fed.secagg.randomness import SYSTEM_RANDOM
from her2fed.secagg.site import SiteSession
from her2fed.study import Study, parse_analysis
from her2fed.summary import Additive, flatten_all, split_flat
from site_agent.config import Policy, SiteConfig
from site_agent.handlers import Failing, Released, SiteAgent

SITES_FULL = (3, 10, 30, 100)
SITES_QUICK = (3, 10, 30)
ROWS = 1_000
DATASET = "d"
TIME, EVENT = "time", "event"
GRID_DAYS, HORIZON_DAYS = 30, 3650
COVARIATES = ("x0", "x1", "x2", "x3", "x4")  # x0-x2 continuous, x3-x4 0/1
TRUE_BETA = np.array([0.4, -0.3, 0.2, 0.5, -0.25])
BINARY_P = (None, None, None, 0.4, 0.25)
BASE_HAZARD, CENSOR_HAZARD = 1 / 1200, 1 / 2500  # per day
MODEL = CoxModel(COVARIATES, BINARY_P, TRUE_BETA, BASE_HAZARD, CENSOR_HAZARD, HORIZON_DAYS)
COX_TOL = 1e-7
BIG = 100  # from this many sites on, one run of each kind (a secure in-process run takes ~40 s)
COORD = "coordinator"
# a site's steps (ledger names) in the order they happen; the coordinator's likewise
SETUP_STEPS = ("open", "share_keys", "receive_shares")
ROUND_STEPS = ("summary", "masked_input", "consistency", "unmask")
ALL_SITE_STEPS = (*SETUP_STEPS, *ROUND_STEPS)
SUM_STEPS = ("collect", "consistency", "unmask", "finish")
COORD_STEPS = ("setup", *SUM_STEPS, "estimate")
STEP_LABELS = {
    ("site", "open"): "site: open (fresh X25519 keys and seeds for every round of the session)",
    ("site", "share_keys"): "site: share keys (check n adverts; Shamir-split 2 secrets per "
    "session round for n peers; seal n-1 share boxes)",
    ("site", "receive_shares"): "site: receive shares (open n-1 share boxes)",
    ("site", "summary"): "site: local summaries (KM counts, Cox sums) + flatten",
    ("site", "masked_input"): "site: masked input (encode; self mask + n-1 pairwise masks; sign)",
    ("site", "consistency"): "site: consistency (check and sign the survivor set)",
    ("site", "unmask"): "site: unmask (verify every survivor's signed survivor set; reveal shares)",
    ("coord", "setup"): "coordinator: key set-up (collect and relay adverts and n x (n-1) "
    "share boxes)",
    ("coord", "collect"): "coordinator: collect masked inputs (verify, add)",
    ("coord", "consistency"): "coordinator: consistency (check n signed survivor sets)",
    ("coord", "unmask"): "coordinator: unmask (collect revealed shares)",
    ("coord", "finish"): "coordinator: finish (rebuild n self-mask seeds from t shares each, "
    "remove masks, decode, split)",
    ("coord", "estimate"): "coordinator: estimation (KM, Newton steps, next queries)",
}

M = TypeVar("M", bound=Message)
T = TypeVar("T")
Vectors = tuple[NDArray[np.int64], NDArray[np.float64]]  # a site's flattened (ints, floats)

# ---------------------------------------------------------------- data and study


def make_site(seed: int, index: int, rows: int) -> pd.DataFrame:
    """Site ``index``'s rows from a known Cox model; the same for every site count.

    Seeded by (seed, index), so the 10-site run contains the 3-site run's
    sites. A small per-site shift of the continuous covariates makes sites
    differ (as hospitals do) without drifting out of range at 100 sites.
    """
    rng = np.random.default_rng([seed, index])
    days, event, cols = draw_cox_rows(rng, MODEL, rows, shift=rng.normal(0.0, 0.25))
    return pd.DataFrame({TIME: days, EVENT: event, **cols})


def scale_study() -> Study:
    km = {"id": "km", "kind": "km", "dataset": DATASET, "time": TIME, "event": EVENT}
    cox = {
        "id": "cox",
        "kind": "cox",
        "dataset": DATASET,
        "time": TIME,
        "event": EVENT,
        "covariates": list(COVARIATES),
        "ties": "efron",
    }
    return Study(
        "bench-scale",
        TimeGrid(GRID_DAYS, HORIZON_DAYS),
        (parse_analysis(km, "bench"), parse_analysis(cox, "bench")),
    )


def site_name(i: int) -> str:
    return f"site-{i:03d}"


def agents_for(study: Study, frames: Sequence[pd.DataFrame]) -> list[SiteAgent]:
    """Fresh agents (no prepared rows carried over), the default site policy."""
    return [
        SiteAgent(
            SiteConfig(Path(f"{site_name(i)}.toml"), site_name(i), "XX", policy=Policy()),
            study,
            tables={DATASET: f},
        )
        for i, f in enumerate(frames)
    ]


# ---------------------------------------------------------------- the timed transport


@dataclass
class Ledger:
    """Seconds per (party, step, round), bytes each party sent and received per round."""

    seconds: dict[tuple[str, str, int], float] = field(default_factory=lambda: defaultdict(float))
    sent: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    received: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))

    def run(self, party: str, step: str, r: int, fn: Callable[[], T]) -> T:
        t0 = time.perf_counter()
        out = fn()
        self.seconds[(party, step, r)] += time.perf_counter() - t0
        return out


@dataclass
class _Secure:
    config: SessionConfig
    coordinator: CoordinatorSession
    sites: dict[str, SiteSession]
    rounds_used: int = 0


class TimedSecureTransport:
    """``InProcessTransport``'s work, in its order, with every party on its own stopwatch.

    A site's time covers its local summaries, flattening and padding, parsing
    what it receives, its protocol step and serialising its reply; the
    coordinator's covers the same on its side. Coordinator estimation happens
    outside ``aggregate`` and is timed by the caller (``timed_run``).
    """

    def __init__(
        self, agents: Sequence[SiteAgent], consortium: Consortium, rounds_per_session: int
    ) -> None:
        self._agents = list(agents)
        self._rounds_per_session = rounds_per_session
        self._consortium = consortium
        self._secure: _Secure | None = None
        self.ledger = Ledger()
        self.round = 0
        self.sessions = 0
        self.ring_bytes: dict[int, int] = {}  # round -> masked vector bytes per site
        self.agg_start: list[float] = []
        self.agg_end: list[float] = []

    def release_rule(self) -> ReleaseRule:
        """The benchmark times the statistics: its sites' policy releases the pooled rows as is."""
        return ReleaseRule.strictest([a.release_rule for a in self._agents])

    def confirm_release(self, releases: Mapping[str, Released]) -> Failing:
        return merge_failing(a.check_release(releases) for a in self._agents)

    def sites(self) -> list[str]:
        return [a.site_id for a in self._agents]

    def describe(self) -> dict[str, object]:
        return {"method": "secure aggregation, timed in-process driver (benchmark)"}

    def exclude(self, sites: Sequence[str]) -> None:
        raise AggregationError(f"benchmark sites never drop out: {list(sites)}")

    def aggregate(self, queries: Sequence[Query]) -> list[Additive]:
        self.agg_start.append(time.perf_counter())
        self.round += 1
        r, led = self.round, self.ledger
        answers: dict[str, list[Additive]] = {}
        flat: dict[str, Vectors] = {}
        for agent in self._agents:

            def summarise(agent: SiteAgent = agent) -> tuple[list[Additive], Vectors]:
                mine = agent.answer(queries)
                return mine, flatten_all(mine)

            answers[agent.site_id], flat[agent.site_id] = led.run(
                agent.site_id, "summary", r, summarise
            )
        layouts = led.run(
            COORD, "finish", r, lambda: {tuple(a.layout() for a in v) for v in answers.values()}
        )
        if len(layouts) != 1:
            raise AggregationError("sites answered with different summary layouts; refused")
        n_ints, n_floats = (len(v) for v in next(iter(flat.values())))
        c = self._secure
        if c is None or not reuse_session(c.config, c.rounds_used, n_ints, n_floats):
            c = self._open(n_ints, n_floats, r)
        self.ring_bytes[r] = 8 * c.config.encoding.ring_length
        pad_i, pad_f = c.config.n_ints - n_ints, c.config.n_floats - n_floats
        padded: dict[str, Vectors] = {}
        for s, (ints, floats) in flat.items():
            t0 = time.perf_counter()  # padding is the site's work (it masks the padded vector)
            padded[s] = (np.pad(ints, (0, pad_i)), np.pad(floats, (0, pad_f)))
            led.seconds[(s, "masked_input", r)] += time.perf_counter() - t0
        total = self._round(c, r, padded)
        dropped = sorted(set(flat) - set(total.contributors))
        if dropped:
            raise AggregationError(f"site(s) {dropped} dropped out of the secure sum")
        first = next(iter(answers.values()))
        out = led.run(
            COORD,
            "finish",
            r,
            lambda: split_flat(first, total.ints[:n_ints], total.floats[:n_floats]),
        )
        self.agg_end.append(time.perf_counter())
        return out

    # The two halves below are driver.SteppedSession's calls (the in-process transport's
    # engine), with every hop serialised, timed at sender and receiver, and counted.

    def _to_site(
        self, site: str, step: str, r: int, data: bytes, cls: type[M], act: Callable[[M], T]
    ) -> T:
        self.ledger.received[(site, r)] += len(data)
        return self.ledger.run(site, step, r, lambda: act(cls.from_bytes(data)))

    def _reply(self, site: str, step: str, r: int, msg: Message | None) -> bytes | None:
        if msg is None:
            return None
        data = self.ledger.run(site, step, r, msg.to_bytes)
        self.ledger.sent[(site, r)] += len(data)
        return data

    def _from_coord(self, step: str, r: int, fn: Callable[[], M], copies: int) -> tuple[M, bytes]:
        """The coordinator's message (kept, so the driver needs no parse) and its bytes."""

        def make() -> tuple[M, bytes]:
            msg = fn()
            return msg, msg.to_bytes()

        msg, data = self.ledger.run(COORD, step, r, make)
        self.ledger.sent[(COORD, r)] += len(data) * copies
        return msg, data

    def _at_coord(
        self, step: str, r: int, data: bytes | None, cls: type[M], accept: Callable[[M], None]
    ) -> None:
        if data is not None:
            self.ledger.received[(COORD, r)] += len(data)
            self.ledger.run(COORD, step, r, lambda: accept(cls.from_bytes(data)))

    def _open(self, n_ints: int, n_floats: int, r: int) -> _Secure:
        cons, rng = self._consortium, SYSTEM_RANDOM
        names = tuple(sorted(cons.site_keys))

        def create() -> tuple[SessionConfig, CoordinatorSession]:
            config = SessionConfig.create(
                names,
                n_rounds=self._rounds_per_session,
                n_ints=n_ints,
                n_floats=n_floats,
                rng=rng,
            )
            coord = CoordinatorSession(
                config, cons.coordinator_key, cons.registry, used_sessions=set(), rng=rng
            )
            return config, coord

        config, coord = self.ledger.run(COORD, "setup", r, create)
        sites: dict[str, SiteSession] = {}
        for s in names:
            t0 = time.perf_counter()
            sites[s] = SiteSession(
                s, cons.site_keys[s], cons.registry, used_sessions=set(), rng=rng
            )
            self.ledger.seconds[(s, "open", r)] += time.perf_counter() - t0
        n = len(names)
        _, opened = self._from_coord("setup", r, coord.open, n)
        for s in names:
            adv = self._to_site(s, "open", r, opened, messages.SessionOpen, sites[s].open)
            data = self._reply(s, "open", r, adv)
            self._at_coord("setup", r, data, messages.Advertise, coord.receive_advertise)
        _, bundle = self._from_coord("setup", r, coord.advertise_bundle, n)
        for s in names:
            keys = self._to_site(
                s, "share_keys", r, bundle, messages.AdvertiseBundle, sites[s].share_keys
            )
            data = self._reply(s, "share_keys", r, keys)
            self._at_coord("setup", r, data, messages.ShareKeys, coord.receive_share_keys)

        def share_bundles() -> dict[str, bytes]:
            return {k: v.to_bytes() for k, v in coord.share_bundles().items()}

        shares = self.ledger.run(COORD, "setup", r, share_bundles)
        self.ledger.sent[(COORD, r)] += sum(len(b) for b in shares.values())
        for s, data in shares.items():
            self._to_site(
                s, "receive_shares", r, data, messages.ShareBundle, sites[s].receive_shares
            )
        self._secure = _Secure(config, coord, sites)
        self.sessions += 1
        return self._secure

    def _round(
        self,
        c: _Secure,
        r: int,
        inputs: dict[str, Vectors],
    ) -> SecureSum:
        coord, sites = c.coordinator, c.sites
        begin_msg, begin = self._from_coord("collect", r, coord.begin_round, len(sites))
        for s in begin_msg.participants:

            def masked(m: messages.RoundBegin, s: str = s) -> Message:
                return sites[s].masked_input(m, *inputs[s])

            reply = self._to_site(s, "masked_input", r, begin, messages.RoundBegin, masked)
            data = self._reply(s, "masked_input", r, reply)
            self._at_coord("collect", r, data, messages.MaskedInput, coord.receive_masked_input)
        request_msg, request = self._from_coord(
            "consistency", r, coord.consistency_request, len(sites)
        )
        for s in request_msg.survivors:
            ack = self._to_site(
                s, "consistency", r, request, messages.ConsistencyRequest, sites[s].consistency
            )
            data = self._reply(s, "consistency", r, ack)
            self._at_coord(
                "consistency", r, data, messages.ConsistencyAck, coord.receive_consistency
            )
        unmask_msg, unmask = self._from_coord("unmask", r, coord.unmask_request, len(sites))
        for a in unmask_msg.acks:
            s = a.sender
            resp = self._to_site(s, "unmask", r, unmask, messages.UnmaskRequest, sites[s].unmask)
            data = self._reply(s, "unmask", r, resp)
            self._at_coord("unmask", r, data, messages.UnmaskResponse, coord.receive_unmask)
        total = self.ledger.run(COORD, "finish", r, coord.finish_round)
        c.rounds_used += 1
        return total


# ---------------------------------------------------------------- runs


@dataclass(frozen=True)
class ScaleRun:
    """One timed run of the study over ``n`` sites."""

    n: int
    ledger: Ledger
    rounds: int
    sessions: int
    threshold: int
    ring_bytes: dict[int, int]
    labels: dict[int, str]
    wall: float
    outcome: StudyOutcome

    @property
    def names(self) -> list[str]:
        return [site_name(i) for i in range(self.n)]

    def secs(self, party: str, steps: Sequence[str], r: int | None = None) -> float:
        rounds = range(1, self.rounds + 1) if r is None else (r,)
        return sum(self.ledger.seconds.get((party, st, k), 0.0) for st in steps for k in rounds)

    def site_secs(self, steps: Sequence[str], r: int | None = None) -> list[float]:
        return [self.secs(s, steps, r) for s in self.names]

    def step_max(self, step: str, r: int) -> float:
        return max(self.ledger.seconds.get((s, step, r), 0.0) for s in self.names)

    def coord(self, steps: Sequence[str], r: int | None = None) -> float:
        return self.secs(COORD, steps, r)

    def setup_critical(self, r: int | None = None) -> float:
        rounds = range(1, self.rounds + 1) if r is None else (r,)
        return sum(
            sum(self.step_max(st, k) for st in SETUP_STEPS) + self.coord(["setup"], k)
            for k in rounds
        )

    def round_critical(self, r: int | None = None) -> float:
        """Slowest site per step plus the coordinator, steps in sequence (set-up excluded)."""
        rounds = range(1, self.rounds + 1) if r is None else (r,)
        return sum(
            sum(self.step_max(st, k) for st in ROUND_STEPS)
            + self.coord([*SUM_STEPS, "estimate"], k)
            for k in rounds
        )

    def bytes_per_site(self, table: dict[tuple[str, int], int], r: int | None = None) -> float:
        rounds = range(1, self.rounds + 1) if r is None else (r,)
        return sum(table.get((s, k), 0) for s in self.names for k in rounds) / self.n


def timed_run(study: Study, frames: Sequence[pd.DataFrame], rounds_per_session: int) -> ScaleRun:
    agents = agents_for(study, frames)
    # keys exist before a study in a real consortium; generating them is not timed
    cons = simulated_consortium([a.site_id for a in agents], SYSTEM_RANDOM)
    transport = TimedSecureTransport(agents, cons, rounds_per_session)
    labels: dict[int, str] = {}

    def progress(msg: str) -> None:
        head, _, rest = msg.partition(":")
        if head.startswith("round "):
            labels[int(head.split()[1])] = rest.strip()

    gc.collect()
    t0 = time.perf_counter()
    outcome = run_study(study, transport, progress)
    end = time.perf_counter()
    # coordinator work between rounds: estimators fed with the sums, next queries built
    starts, ends = transport.agg_start, transport.agg_end
    led = transport.ledger
    led.seconds[(COORD, "estimate", 1)] += starts[0] - t0
    for k, done in enumerate(ends, 1):
        nxt = starts[k] if k < len(starts) else end
        led.seconds[(COORD, "estimate", k)] += nxt - done
    assert transport._secure is not None
    return ScaleRun(
        n=len(frames),
        ledger=led,
        rounds=outcome.rounds,
        sessions=transport.sessions,
        threshold=transport._secure.config.threshold,
        ring_bytes=transport.ring_bytes,
        labels=labels,
        wall=end - t0,
        outcome=outcome,
    )


def end_to_end(
    study: Study, frames: Sequence[pd.DataFrame], secure: bool, rounds_per_session: int
) -> tuple[float, StudyOutcome]:
    """``run_study`` through the real ``InProcessTransport`` (keys made before the clock)."""
    transport = InProcessTransport(
        agents_for(study, frames),
        secure=secure,
        rounds_per_session=rounds_per_session,
        workers=1,  # every party in turn, like the timed driver
    )
    gc.collect()
    t0 = time.perf_counter()
    outcome = run_study(study, transport)
    return time.perf_counter() - t0, outcome


@dataclass(frozen=True)
class Measured:
    run: ScaleRun
    e2e: float
    plain: float
    same_as_e2e: bool
    km_same_as_plain: bool
    cox_vs_plain: float

    @property
    def ok(self) -> bool:
        return self.same_as_e2e and self.km_same_as_plain and self.cox_vs_plain < COX_TOL


def measure(
    study: Study, n: int, rows: int, seed: int, repeats: int, rounds_per_session: int
) -> Measured:
    frames = [make_site(seed, i, rows) for i in range(n)]
    runs = []
    for i in range(repeats):
        runs.append(timed_run(study, frames, rounds_per_session))
        log(f"{n} sites: timed run {i + 1}/{repeats}: {fmt_s(runs[-1].wall)}")
    best = min(runs, key=lambda x: x.wall)
    e2e = [end_to_end(study, frames, True, rounds_per_session) for _ in range(repeats)]
    plain = [end_to_end(study, frames, False, rounds_per_session) for _ in range(repeats)]
    log(
        f"{n} sites: InProcessTransport {fmt_s(min(t for t, _ in e2e))}, "
        f"plain sums {fmt_s(min(t for t, _ in plain))}"
    )
    ref, flat = e2e[0][1], plain[0][1]
    same = all(
        pooled_json(a, x.outcome.results[a.id]) == pooled_json(a, ref.results[a.id])
        for a in study.analyses
        for x in runs
    )
    km = study.analyses[0]
    km_same = pooled_json(km, ref.results[km.id]) == pooled_json(km, flat.results[km.id])
    cox_s, cox_p = ref.results["cox"], flat.results["cox"]
    assert isinstance(cox_s, CoxResult) and isinstance(cox_p, CoxResult)
    diff = float(np.max(np.abs(cox_s.coef - cox_p.coef)))
    return Measured(
        best,
        min(t for t, _ in e2e),
        min(t for t, _ in plain),
        same,
        km_same,
        diff,
    )


# ---------------------------------------------------------------- report


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def mean_max(xs: Sequence[float]) -> str:
    return f"{fmt_s(mean(xs))} ({fmt_s(max(xs))})"


def slope(ns: Sequence[int], ys: Sequence[float]) -> float:
    """Exponent a of y ~ n^a, least squares on log-log (1 = linear, 0 = flat)."""
    if len(ns) < 2 or min(ys) <= 0:
        return float("nan")
    a, _ = np.polyfit(np.log(ns), np.log(ys), 1)
    return float(a)


def summary_table(ms: Sequence[Measured], rows: int) -> list[str]:
    head = "| | " + " | ".join(f"{m.run.n} sites" for m in ms) + " | growth n^a |"
    lines = [head, "|---|" + "---:|" * (len(ms) + 1)]
    ns = [m.run.n for m in ms]

    def row(
        label: str, cell: Callable[[Measured], str], y: Callable[[Measured], float] | None
    ) -> None:
        a = slope(ns, [y(m) for m in ms]) if y is not None else float("nan")
        grow = "" if math.isnan(a) else f"{a:.2f}"
        lines.append(f"| {label} | " + " | ".join(cell(m) for m in ms) + f" | {grow} |")

    def site_setup(m: Measured) -> list[float]:
        return m.run.site_secs(SETUP_STEPS)

    def site_rounds(m: Measured) -> list[float]:
        return m.run.site_secs(ROUND_STEPS)

    def coord_all(m: Measured) -> float:
        return m.run.coord(COORD_STEPS)

    def critical(m: Measured) -> float:
        return m.run.setup_critical() + m.run.round_critical()

    row("rows in total", lambda m: f"{m.run.n * rows:,}", None)
    row(
        "study rounds (secure-aggregation key set-ups)",
        lambda m: f"{m.run.rounds} ({m.run.sessions})",
        None,
    )
    row("Shamir threshold", lambda m: str(m.run.threshold), None)
    row(
        "masked vector per site and round (ring elements x 8 bytes)",
        lambda m: " / ".join(fmt_bytes(b) for b in sorted(set(m.run.ring_bytes.values()))),
        None,
    )
    row(
        "**key set-up, critical path** (slowest site per step + coordinator)",
        lambda m: f"**{fmt_s(m.run.setup_critical())}**",
        lambda m: m.run.setup_critical(),
    )
    row(
        "key set-up: coordinator",
        lambda m: fmt_s(m.run.coord(["setup"])),
        lambda m: m.run.coord(["setup"]),
    )
    row(
        "key set-up: per site, mean (max)",
        lambda m: mean_max(site_setup(m)),
        lambda m: mean(site_setup(m)),
    )
    row(
        "**coordinator, all rounds** (set-up + secure sums + estimation)",
        lambda m: f"**{fmt_s(coord_all(m))}**",
        coord_all,
    )
    row(
        "coordinator: secure sums (collect, unmask, decode, split)",
        lambda m: fmt_s(m.run.coord(SUM_STEPS)),
        lambda m: m.run.coord(SUM_STEPS),
    )
    row(
        "coordinator: estimation (KM, Newton steps, queries)",
        lambda m: fmt_s(m.run.coord(["estimate"])),
        lambda m: m.run.coord(["estimate"]),
    )
    row(
        "coordinator per site (all rounds / n)",
        lambda m: fmt_s(coord_all(m) / m.run.n),
        lambda m: coord_all(m) / m.run.n,
    )
    row(
        "**per site, all rounds** (set-up + summaries + masking...), mean (max)",
        lambda m: f"**{mean_max(m.run.site_secs(ALL_SITE_STEPS))}**",
        lambda m: mean(m.run.site_secs(ALL_SITE_STEPS)),
    )
    row(
        "per site: local summaries (KM + Cox sums), mean (max)",
        lambda m: mean_max(m.run.site_secs(["summary"])),
        lambda m: mean(m.run.site_secs(["summary"])),
    )
    row(
        "per site: secure aggregation in rounds (mask, consistency, unmask), mean (max)",
        lambda m: mean_max(m.run.site_secs(ROUND_STEPS[1:])),
        lambda m: mean(m.run.site_secs(ROUND_STEPS[1:])),
    )
    row(
        "per site: rounds without set-up, mean (max)",
        lambda m: mean_max(site_rounds(m)),
        lambda m: mean(site_rounds(m)),
    )
    row(
        "**critical path** (sites in parallel, network free)",
        lambda m: f"**{fmt_s(critical(m))}**",
        critical,
    )
    row(
        "in-process, timed driver (every party in turn)",
        lambda m: fmt_s(m.run.wall),
        lambda m: m.run.wall,
    )
    row(
        "in-process, real `InProcessTransport` (secure)",
        lambda m: fmt_s(m.e2e),
        lambda m: m.e2e,
    )
    row(
        "in-process, plain sums (`secure=False`, reference)",
        lambda m: fmt_s(m.plain),
        lambda m: m.plain,
    )
    row(
        "sent per site, whole study (mean)",
        lambda m: fmt_bytes(m.run.bytes_per_site(m.run.ledger.sent)),
        lambda m: m.run.bytes_per_site(m.run.ledger.sent),
    )
    row(
        "received per site, whole study (mean)",
        lambda m: fmt_bytes(m.run.bytes_per_site(m.run.ledger.received)),
        lambda m: m.run.bytes_per_site(m.run.ledger.received),
    )
    row(
        "sent by the coordinator, whole study",
        lambda m: fmt_bytes(sum(v for (p, _), v in m.run.ledger.sent.items() if p == COORD)),
        lambda m: float(sum(v for (p, _), v in m.run.ledger.sent.items() if p == COORD)),
    )
    return lines


def steps_table(ms: Sequence[Measured]) -> list[str]:
    """Where the time goes, step by step, summed over the study's rounds."""
    ns = [m.run.n for m in ms]
    lines = [
        "| step, all rounds (site: mean over sites) | "
        + " | ".join(f"{n} sites" for n in ns)
        + " | growth n^a |",
        "|---|" + "---:|" * (len(ms) + 1),
    ]
    for (who, step), label in STEP_LABELS.items():
        if who == "site":
            ys = [mean(m.run.site_secs([step])) for m in ms]
        else:
            ys = [m.run.coord([step]) for m in ms]
        a = slope(ns, ys)
        grow = "" if math.isnan(a) else f"{a:.2f}"
        lines.append(f"| {label} | " + " | ".join(fmt_s(y) for y in ys) + f" | {grow} |")
    return lines


def rounds_table(ms: Sequence[Measured]) -> list[str]:
    lines = [
        "| sites | round | queries | key set-up | masked vector / site | "
        "sent / received per site | coordinator | per site: mean (max) | critical path |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for m in ms:
        x = m.run
        for r in range(1, x.rounds + 1):
            setup = x.coord(["setup"], r) > 0
            lines.append(
                f"| {x.n} | {r} | {x.labels.get(r, '')} | {'yes' if setup else ''} | "
                f"{fmt_bytes(x.ring_bytes[r])} | {fmt_bytes(x.bytes_per_site(x.ledger.sent, r))}"
                f" / {fmt_bytes(x.bytes_per_site(x.ledger.received, r))} | "
                f"{fmt_s(x.coord(COORD_STEPS, r))} | "
                f"{mean_max(x.site_secs(ALL_SITE_STEPS, r))} | "
                f"{fmt_s(x.setup_critical(r) + x.round_critical(r))} |"
            )
    return lines


def findings(ms: Sequence[Measured]) -> list[str]:
    ns = [m.run.n for m in ms]
    lo, hi = ms[0], ms[-1]
    factor = hi.run.n / lo.run.n

    def ratio(f: Callable[[Measured], float]) -> str:
        return f"x{f(hi) / f(lo):.1f}"

    out = [
        f"from {lo.run.n} to {hi.run.n} sites (x{factor:.0f}): coordinator time "
        f"{ratio(lambda m: m.run.coord(COORD_STEPS))}, of which key set-up "
        f"{ratio(lambda m: m.run.coord(['setup']))}; mean per-site time "
        f"{ratio(lambda m: mean(m.run.site_secs(ALL_SITE_STEPS)))} (local summaries "
        f"{ratio(lambda m: mean(m.run.site_secs(['summary'])))}, secure aggregation incl. set-up "
        f"{ratio(lambda m: mean(m.run.site_secs([*SETUP_STEPS, *ROUND_STEPS[1:]])))}); "
        f"critical path {ratio(lambda m: m.run.setup_critical() + m.run.round_critical())}",
    ]
    share = [m.run.setup_critical() / (m.run.setup_critical() + m.run.round_critical()) for m in ms]
    out.append(
        "share of the critical path spent in key set-up: "
        + ", ".join(f"{n} sites {s:.0%}" for n, s in zip(ns, share, strict=True))
    )
    gaps = [m.run.wall - sum(m.run.ledger.seconds.values()) for m in ms]
    out.append(
        "the timed parts add up to the timed driver's wall time within "
        f"{fmt_s(max(gaps))} (the driver's own loop), and the driver's wall "
        "time is within "
        f"{max(abs(m.run.wall / m.e2e - 1) for m in ms):.0%} of the real `InProcessTransport`'s"
    )
    secure_over_plain = ", ".join(f"{m.run.n} sites {m.e2e / m.plain:.1f}x" for m in ms)
    out.append(f"in-process secure / plain sums: {secure_over_plain}")
    out += [
        f"pooled results, timed driver vs `InProcessTransport`, all runs: "
        f"{'equal' if all(m.same_as_e2e for m in ms) else 'DIFFERENT'}; KM vs plain sums: "
        f"{'equal' if all(m.km_same_as_plain for m in ms) else 'DIFFERENT'}; Cox coefficients "
        f"vs plain sums, max abs diff {max(m.cox_vs_plain for m in ms):.1e} "
        f"(must be < {COX_TOL:g})",
    ]
    return out


def section(
    key: str,
    title: str,
    command: str,
    info: dict[str, str],
    ms: Sequence[Measured],
    rows: int,
    seed: int,
    repeats: str,
    rounds_per_session: int,
) -> str:
    out = [
        f"Study: KM + Cox (5 covariates, Efron ties), grid {GRID_DAYS} days, horizon "
        f"{HORIZON_DAYS} days, default site policy; {rows:,} synthetic rows per site (seed "
        f"{seed}); secure aggregation on, keys for {rounds_per_session} rounds per set-up "
        f"(`InProcessTransport`'s default); {repeats} by wall time. *growth n^a* is the "
        "least-squares slope of log(time) on log(sites): 1 = linear, 0 = flat, 2 = quadratic.",
        "",
        "#### Totals",
        "",
        *summary_table(ms, rows),
        "",
        "#### Where the time goes, per step",
        "",
        *steps_table(ms),
        "",
        "#### Per round",
        "",
        *rounds_table(ms),
        "",
    ]
    out += [f"- {line}" for line in findings(ms)]
    out += [
        "- site time = its local summaries, flattening, and its secure-aggregation steps "
        "including parsing and serialising messages; coordinator time = its secure-aggregation "
        "steps, splitting the sums, and estimation between rounds. Bytes are the "
        "secure-aggregation messages (masked vectors, keys, shares, signatures); queries are "
        "in-process calls here (bench_network.py measures their size on the wire).",
    ]
    return common_section(key, title, command, info, out)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="3, 10, 30 sites, best of 1")
    full = " ".join(map(str, SITES_FULL))
    ap.add_argument("--sites", type=int, nargs="+", help=f"site counts (default {full})")
    ap.add_argument("--rows", type=int, default=ROWS, help=f"rows per site (default {ROWS:,})")
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument(
        "--repeats",
        type=int,
        help=f"best of this many (default 3, but 1 from {BIG} sites on; quick 1)",
    )
    ap.add_argument(
        "--rounds-per-session",
        type=int,
        default=ROUNDS_PER_SESSION,
        help=f"rounds of keys per secure-aggregation set-up (InProcessTransport's default "
        f"{ROUNDS_PER_SESSION})",
    )
    ap.add_argument("--markdown", type=Path, help="write this run's section into this file")
    args = ap.parse_args(argv)
    args.sites = args.sites or list(SITES_QUICK if args.quick else SITES_FULL)
    args.fixed_repeats = args.repeats is not None
    args.repeats = args.repeats or (1 if args.quick else 3)
    if min(args.sites) < 3 or args.rows < 1 or args.repeats < 1 or args.rounds_per_session < 1:
        ap.error(
            "site counts must be >= 3 (secure aggregation); --rows, --repeats and "
            "--rounds-per-session >= 1"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine({"pandas": pd.__version__})
    study = scale_study()
    ms: list[Measured] = []
    for n in sorted(set(args.sites)):
        repeats = args.repeats if args.fixed_repeats or n < BIG else 1
        log(f"{n} sites x {args.rows:,} rows, best of {repeats}")
        ms.append(measure(study, n, args.rows, args.seed, repeats, args.rounds_per_session))
    default = (args.rows, args.seed, args.rounds_per_session) == (
        ROWS,
        20240611,
        ROUNDS_PER_SESSION,
    ) and args.sites == list(SITES_QUICK if args.quick else SITES_FULL)
    key = ("scale" if default else "scale-custom") + ("-quick" if args.quick else "")
    ns = [m.run.n for m in ms]
    title = f"Scale: {min(ns)} to {max(ns)} sites, in-process, secure aggregation"
    title += " (quick run)" if args.quick else ""
    command = command_line("bench.bench_scale", argv)
    repeats = (
        f"best of {args.repeats}"
        if args.fixed_repeats or max(ns) < BIG
        else f"best of {args.repeats} (1 from {BIG} sites on)"
    )
    text = section(
        key, title, command, info, ms, args.rows, args.seed, repeats, args.rounds_per_session
    )
    publish(args.markdown, key, text)
    if not all(m.ok for m in ms):
        log("pooled results DIFFER between the timed run, InProcessTransport and plain sums")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
