"""The default HER2+ study over a real local federation, against the same study in-process.

``her2fed local --transport grpc`` starts a Flower SuperLink, one SuperNode
and one site-agent process per site, opens the study session through one
Flower message, and then runs every study round on the gRPC aggregation
streams (docs/federation.md). Where does its wall time go, and what does a
round on the stream cost next to a Flower message round? This script answers
both in one run, so the two latencies are measured on the same machine under
the same load:

- synthetic sites exactly as ``her2fed synth`` writes them;
- the study in-process (``InProcessTransport``, secure aggregation, sites in
  turn in this process), for the ratio;
- a ``LocalFederation`` (real processes, TLS on loopback, handler
  ``site_agent.federation.study_handler:factory``) with federation start-up,
  session set-up through Flower (including ``--flower-pings`` timed Flower
  message rounds), transport set-up, the study rounds, session close and
  shutdown timed apart; every ``AggregationSession.broadcast`` is timed and
  its payload sizes recorded, and after the study a few minimal real steps
  (the study file re-sent) give the bare round trip of the stream;
- ``--sessions N`` repeats the session part (Flower session + study) N times
  in the same federation; the cheap in-process study runs ``--inprocess-runs``
  times; medians are reported with their range.

The pooled results of every run must equal the in-process ones (dict equality
of ``pooled_json``) and no process may outlive the federation; otherwise the
script exits 1. Timings are reported, never asserted. ``--markdown PATH``
rewrites only this script's section of PATH.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import flwr
import grpc
import numpy as np

from bench.common import ROOT, command_line, fmt_bytes, fmt_s, log, machine, publish
from bench.common import section as common_section
from coordinator.federation.local import LocalFederation, RunOutcome, SiteSpec
from coordinator.federation.server import AggregationServer, AggregationSession
from coordinator.grpc_transport import GrpcTransport
from coordinator.orchestrate import StudyOutcome, run_study
from coordinator.rehearsal import approve_everywhere
from coordinator.results import pooled_json
from coordinator.study import LoadedStudy, load_study
from coordinator.transport import InProcessTransport
from her2fed.secagg.messages import MAGIC, Step
from site_agent.config import load_site
from site_agent.handlers import SiteAgent
from site_agent.synth import main as synth_main

STUDY = ROOT / "examples" / "her2" / "study.toml"
HANDLER = "site_agent.federation.study_handler:factory"
DEFAULT_SITES = "athens:GR:400,oslo:NO:700,munich:DE:600"
SEED = 2026  # `her2fed synth`'s default, so the sites are the demo's
PROBE_ROUND0 = 1_000_000  # labels of the probe broadcasts, far above any study round

# ---------------------------------------------------------------- recording


@dataclass(frozen=True)
class Broadcast:
    """One request/reply exchange with every addressed site."""

    study_round: int  # 0 = transport set-up, -1 = probe after the study
    kind: str
    seconds: float
    down: Mapping[str, int]  # payload bytes sent to each site
    up: Mapping[str, int]  # payload bytes each site replied


def broadcast_kind(step: str, payloads: Mapping[str, bytes]) -> str:
    """``secagg`` broadcasts are named by the secure-aggregation message they carry.

    Read from the message header (magic + step byte), so classifying costs no parse.
    """
    if step != "secagg" or not payloads:
        return step
    first = next(iter(payloads.values()))
    if first[: len(MAGIC)] != MAGIC or len(first) <= len(MAGIC):
        return step
    return f"secagg:{Step(first[len(MAGIC)]).name.lower()}"


SETUP_KINDS = ("secagg:session_open", "secagg:advertise_bundle", "secagg:share_bundle")


@dataclass
class Recorder:
    """Round boundaries (from ``run_study``'s progress) and every timed broadcast."""

    study_round: int = 0
    marks: list[float] = field(default_factory=list)  # perf_counter at each round's start
    broadcasts: list[Broadcast] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)  # round -> its query steps

    def progress(self, msg: str) -> None:
        if msg.startswith("round "):
            self.marks.append(time.perf_counter())
            head, _, rest = msg.partition(":")
            self.study_round = int(head.split()[1])
            self.labels[self.study_round] = rest.strip()

    def round_walls(self, end: float) -> list[float]:
        edges = [*self.marks, end]
        return [b - a for a, b in itertools.pairwise(edges)]


class TimedSession(AggregationSession):
    """The session ``GrpcTransport`` talks to, with a stopwatch on every broadcast.

    A second handle on the same server-side session (same id), so nothing in
    the transport or the server changes; only the call is timed.
    """

    def __init__(self, server: AggregationServer, inner: AggregationSession, rec: Recorder) -> None:
        super().__init__(server, inner.session_id, inner.study_hash, list(inner.sites))
        self.rec = rec

    def broadcast(
        self,
        round_: int,
        step: str,
        payload_per_site: Mapping[str, bytes],
        timeout: float = 60.0,
    ) -> dict[str, bytes]:
        kind = broadcast_kind(step, payload_per_site)
        t0 = time.perf_counter()
        replies = super().broadcast(round_, step, payload_per_site, timeout)
        seconds = time.perf_counter() - t0
        study_round = -1 if round_ >= PROBE_ROUND0 else self.rec.study_round
        self.rec.broadcasts.append(
            Broadcast(
                study_round,
                kind,
                seconds,
                {s: len(p) for s, p in payload_per_site.items()},
                {s: len(r) for s, r in replies.items()},
            )
        )
        return replies


# ---------------------------------------------------------------- runs


@dataclass(frozen=True)
class InProcessRun:
    seconds: float  # agents built (tables read lazily) + run_study
    round_walls: list[float]
    labels: dict[int, str]
    outcome: StudyOutcome


@dataclass(frozen=True)
class SessionRun:
    """One study over the federation, through its own Flower session."""

    open_session: float
    flower: RunOutcome
    transport_setup: float
    rounds: float
    round_walls: list[float]
    close: float
    broadcasts: list[Broadcast]
    outcome: StudyOutcome


@dataclass
class FederationRun:
    startup: float = 0.0
    shutdown: float = 0.0
    sessions: list[SessionRun] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)
    leftovers: list[int] = field(default_factory=list)


def make_sites(out: Path, spec: str, seed: int) -> dict[str, Path]:
    """The sites ``her2fed synth --sites SPEC --seed SEED`` writes (its own code path)."""
    code = synth_main(["--out", str(out), "--sites", spec, "--seed", str(seed)])
    if code != 0:
        raise SystemExit(f"her2fed synth failed with status {code}")
    names = [item.split(":")[0].strip() for item in spec.split(",") if item.strip()]
    return {n: out / n / "site.toml" for n in names}


def run_inprocess(loaded: LoadedStudy, sites: Mapping[str, Path]) -> InProcessRun:
    rec = Recorder()
    t0 = time.perf_counter()
    agents = [SiteAgent(replace(load_site(p), site_id=n), loaded.study) for n, p in sites.items()]
    outcome = run_study(loaded.study, InProcessTransport(agents), rec.progress)
    end = time.perf_counter()
    return InProcessRun(end - t0, rec.round_walls(end), rec.labels, outcome)


def run_session(
    fed: LocalFederation, loaded: LoadedStudy, flower_pings: int, probes: int
) -> SessionRun:
    """What ``her2fed local --transport grpc`` does per study, each phase timed apart."""
    assert fed.aggregation is not None
    assert fed.coordinator_key is not None and fed.consortium is not None
    t0 = time.perf_counter()
    inner, flower_run = fed.open_session(loaded.hash, flower_ping_rounds=flower_pings)
    open_s = time.perf_counter() - t0
    rec = Recorder()
    session = TimedSession(fed.aggregation, inner, rec)
    study_bytes = loaded.path.read_bytes()
    try:
        t0 = time.perf_counter()
        transport = GrpcTransport(
            session,
            study_bytes,
            coordinator_key=fed.coordinator_key,
            consortium=fed.consortium,
        )
        setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        outcome = run_study(loaded.study, transport, rec.progress)
        end = time.perf_counter()
        # The bare round trip: a real, cheap step (the site re-hashes and re-checks the
        # study file and replies "ok"), signed and verified both ways like every step.
        everyone = {s: study_bytes for s in transport.sites()}
        for i in range(probes):
            session.broadcast(PROBE_ROUND0 + i, "study", everyone)
    finally:
        t1 = time.perf_counter()
        inner.close()
        close_s = time.perf_counter() - t1
    return SessionRun(
        open_session=open_s,
        flower=flower_run,
        transport_setup=setup_s,
        rounds=end - t0,
        round_walls=rec.round_walls(end),
        close=close_s,
        broadcasts=rec.broadcasts,
        outcome=outcome,
    )


def run_federation(
    loaded: LoadedStudy,
    sites: Mapping[str, Path],
    workdir: Path,
    n_sessions: int,
    flower_pings: int,
    probes: int,
) -> FederationRun:
    # each site runs as itself (its own key signs its audit log) and has approved the study
    approve_everywhere(loaded.path, sites.values(), workdir / "lead")
    specs = [
        SiteSpec(
            n,
            site_config=str(p.resolve()),
            handler=HANDLER,
            identity_key=str(load_site(p).key_paths.site_key.resolve()),
        )
        for n, p in sites.items()
    ]
    fed = LocalFederation(specs, workdir)
    run = FederationRun()
    log(f"federation: starting SuperLink, gateway, {len(specs)} SuperNodes and site agents")
    t0 = time.perf_counter()
    fed.start()
    run.startup = time.perf_counter() - t0
    try:
        log(f"federation up in {run.startup:.1f} s")
        for i in range(n_sessions):
            log(f"session {i + 1}/{n_sessions}: opening through Flower ({flower_pings} pings)")
            s = run_session(fed, loaded, flower_pings, probes)
            log(
                f"session {i + 1}: open {s.open_session:.1f} s, {s.outcome.rounds} rounds in "
                f"{s.rounds:.2f} s, {len(s.broadcasts)} broadcasts"
            )
            run.sessions.append(s)
    finally:
        log("federation: stopping every process")
        t0 = time.perf_counter()
        run.survivors = fed.stop()
        run.shutdown = time.perf_counter() - t0
        run.leftovers = fed.leftovers()
    return run


def pooled(loaded: LoadedStudy, outcome: StudyOutcome) -> dict[str, object]:
    return {a.id: pooled_json(a, outcome.results[a.id]) for a in loaded.study.analyses}


# ---------------------------------------------------------------- statistics and formatting


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def p90(xs: Sequence[float]) -> float:
    return float(np.percentile(xs, 90)) if xs else float("nan")


def fmt_range(xs: Sequence[float]) -> str:
    """Median, with the range when there is more than one sample."""
    if len(xs) <= 1:
        return fmt_s(xs[0]) if xs else "–"
    return f"{fmt_s(median(xs))} ({fmt_s(min(xs))}–{fmt_s(max(xs))})"


def per_site_mean(rows: Sequence[Mapping[str, int]]) -> float:
    """Mean over sites of the bytes each site sent/received over these broadcasts."""
    totals: dict[str, int] = {}
    for row in rows:
        for s, n in row.items():
            totals[s] = totals.get(s, 0) + n
    return sum(totals.values()) / len(totals) if totals else 0.0


# ---------------------------------------------------------------- report


@dataclass(frozen=True)
class Report:
    sites: Mapping[str, Path]
    spec: str
    seed: int
    inproc: list[InProcessRun]
    fed: FederationRun
    flower_pings: int
    probes: int
    equal: bool
    mismatches: list[str]
    machine: dict[str, str]


def pings_of(s: SessionRun) -> list[float]:
    """The ServerApp's timed Flower message rounds of this session (seconds)."""
    return [float(p) for p in s.flower.report.get("ping_seconds", [])]


def end_to_end(r: Report) -> list[float]:
    """Per session: what one ``her2fed local --transport grpc`` run would take, pings excluded."""
    return [
        r.fed.startup
        + s.open_session
        - sum(pings_of(s))
        + s.transport_setup
        + s.rounds
        + s.close
        + r.fed.shutdown
        for s in r.fed.sessions
    ]


def phase_table(r: Report) -> list[str]:
    ss = r.fed.sessions
    opens = [
        float(s.flower.report["open_seconds"]) for s in ss if "open_seconds" in s.flower.report
    ]
    inproc = [x.seconds for x in r.inproc]
    n = len(r.sites)
    rows = [
        (
            f"federation start-up (PKI and keys, aggregation service, SuperLink, gateway, "
            f"{n} SuperNodes + {n} site agents online)",
            fmt_s(r.fed.startup),
            "–",
        ),
        (
            "session set-up through Flower (`open_session`: run submitted, ServerApp up, one "
            "message per site, sites dial in and are welcomed, run finished), ping rounds excluded",
            fmt_range([s.open_session - sum(pings_of(s)) for s in ss]),
            "–",
        ),
        (
            "&nbsp;&nbsp;of which the open-session message round, timed inside the ServerApp",
            fmt_range(opens),
            "–",
        ),
        (
            "transport set-up (study file to every site; hash and policy check)",
            fmt_range([s.transport_setup for s in ss]),
            "–",
        ),
        (
            f"study rounds, sum ({ss[0].outcome.rounds} rounds; in-process: agents built + "
            "`run_study`)",
            fmt_range([s.rounds for s in ss]),
            fmt_range(inproc),
        ),
        ("session close", fmt_range([s.close for s in ss]), "–"),
        ("shutdown (every process stopped)", fmt_s(r.fed.shutdown), "–"),
        (
            "**one study end to end** (start-up + session + shutdown, ping rounds excluded)",
            f"**{fmt_range(end_to_end(r))}**",
            f"**{fmt_range(inproc)}**",
        ),
        (
            "**ratio, study rounds only** gRPC / in-process",
            f"**{median([s.rounds for s in ss]) / median(inproc):.2f}**",
            "",
        ),
        (
            "**ratio, end to end** gRPC / in-process",
            f"**{median(end_to_end(r)) / median(inproc):.0f}**",
            "",
        ),
    ]
    return [
        "| phase | gRPC federation (real processes) | in-process |",
        "|---|---:|---:|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
    ]


def rounds_table(r: Report) -> list[str]:
    ss = r.fed.sessions
    first = ss[0]
    lines = [
        "| round | queries | broadcasts | gRPC round wall | of which in broadcasts | "
        "coordinator outside broadcasts | payload down / up per site | in-process round |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    steps_by_round = r.inproc[0].labels
    n_rounds = first.outcome.rounds
    for k in range(1, n_rounds + 1):
        walls = [s.round_walls[k - 1] for s in ss]
        in_bc = [sum(b.seconds for b in s.broadcasts if b.study_round == k) for s in ss]
        outside = [w - b for w, b in zip(walls, in_bc, strict=True)]
        bcs = [b for b in first.broadcasts if b.study_round == k]
        inproc = [x.round_walls[k - 1] for x in r.inproc]
        lines.append(
            f"| {k} | {steps_by_round.get(k, '')} | {len(bcs)} | {fmt_range(walls)} | "
            f"{fmt_range(in_bc)} | {fmt_range(outside)} | "
            f"{fmt_bytes(per_site_mean([b.down for b in bcs]))} / "
            f"{fmt_bytes(per_site_mean([b.up for b in bcs]))} | {fmt_range(inproc)} |"
        )
    study_bcs = [b for b in first.broadcasts if b.study_round >= 1]
    lines.append(
        f"| **all** | | {len(study_bcs)} | {fmt_range([s.rounds for s in ss])} | "
        f"{fmt_range([sum(b.seconds for b in s.broadcasts if b.study_round >= 1) for s in ss])}"
        f" | | {fmt_bytes(per_site_mean([b.down for b in study_bcs]))} / "
        f"{fmt_bytes(per_site_mean([b.up for b in study_bcs]))} | "
        f"{fmt_range([sum(x.round_walls) for x in r.inproc])} |"
    )
    return lines


def latency_table(r: Report) -> list[str]:
    bcs = [b for s in r.fed.sessions for b in s.broadcasts]
    groups: list[tuple[str, Callable[[Broadcast], bool]]] = [
        ("`study` (transport set-up: study file, hash and policy check)", lambda b: (
            b.kind == "study" and b.study_round == 0)),
        ("`prepare`, round 1 (sites read their tables, derive lines of therapy, summarise)",
         lambda b: b.kind == "prepare" and b.study_round == 1),
        ("`prepare`, later rounds (queries out; summaries computed; layouts back)",
         lambda b: b.kind == "prepare" and b.study_round > 1),
        ("`secagg` key set-up (session open, advertise bundle, share bundle)",
         lambda b: b.kind in SETUP_KINDS),
        ("`secagg` round begin (site masks its summaries, replies masked vector)",
         lambda b: b.kind == "secagg:round_begin"),
        ("`secagg` consistency + unmask requests",
         lambda b: b.kind in ("secagg:consistency_request", "secagg:unmask_request")),
        ("**every broadcast of the study** (rounds 1..n)", lambda b: b.study_round >= 1),
        ("**bare round trip** (study file re-sent after the study; cheap site step)",
         lambda b: b.study_round == -1),
    ]  # fmt: skip
    lines = [
        "| gRPC broadcast (every site, request + verified reply) | n | median | p90 | max | "
        "payload down / up per site (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, pick in groups:
        sel = [b for b in bcs if pick(b)]
        if not sel:
            continue
        secs = [b.seconds for b in sel]
        down = median([per_site_mean([b.down]) for b in sel])
        up = median([per_site_mean([b.up]) for b in sel])
        lines.append(
            f"| {label} | {len(sel)} | {fmt_s(median(secs))} | {fmt_s(p90(secs))} | "
            f"{fmt_s(max(secs))} | {fmt_bytes(down)} / {fmt_bytes(up)} |"
        )
    pings = [p for s in r.fed.sessions for p in pings_of(s)]
    if pings:
        lines.append(
            f"| **Flower message round** (`query.ping` to every SuperNode, "
            f"`send_and_receive`, same run) | {len(pings)} | {fmt_s(median(pings))} | "
            f"{fmt_s(p90(pings))} | {fmt_s(max(pings))} | empty |"
        )
    return lines


def findings(r: Report) -> list[str]:
    ss = r.fed.sessions
    bcs = [b for s in ss for b in s.broadcasts]
    study = [b.seconds for b in bcs if b.study_round >= 1]
    bare = [b.seconds for b in bcs if b.study_round == -1]
    pings = [p for s in ss for p in pings_of(s)]
    out = []
    if pings and bare:
        out.append(
            f"one Flower message round (median {fmt_s(median(pings))}) costs "
            f"{median(pings) / median(bare):,.0f}x a bare gRPC round trip "
            f"(median {fmt_s(median(bare))}) and {median(pings) / median(study):,.0f}x "
            f"the median study broadcast ({fmt_s(median(study))})"
        )
    total = median(end_to_end(r))
    rounds = median([s.rounds for s in ss])
    set_up = median([s.open_session - sum(pings_of(s)) for s in ss])
    out.append(
        f"of one study end to end ({fmt_s(total)}, ping rounds excluded) the study rounds "
        f"take {rounds / total:.0%}; federation start-up {r.fed.startup / total:.0%}, "
        f"session set-up through Flower {set_up / total:.0%}, shutdown "
        f"{r.fed.shutdown / total:.0%}"
    )
    out.append(rounds_comparison(r))
    for s_i, s in enumerate(ss, 1):
        inside = sum(b.seconds for b in s.broadcasts if b.study_round >= 1)
        out.append(
            f"session {s_i}: {s.outcome.rounds} study rounds, "
            f"{sum(1 for b in s.broadcasts if b.study_round >= 1)} study broadcasts "
            f"(+1 transport set-up, +{r.probes} probes), "
            f"{s.outcome.aggregation.get('sessions', '?')} secure-aggregation key set-up(s); "
            f"rounds {fmt_s(s.rounds)}, of which "
            f"{inside / s.rounds:.0%} waiting on broadcasts; Flower pings "
            f"{', '.join(fmt_s(p) for p in pings_of(s)) or 'none'}"
        )
    return out


def rounds_comparison(r: Report) -> str:
    """Network vs in-process study rounds, split where the per-round table shows the cause."""
    ss = r.fed.sessions
    net, loc = median([s.rounds for s in ss]), median([x.seconds for x in r.inproc])
    net1 = median([s.round_walls[0] for s in ss])
    loc1 = median([x.round_walls[0] for x in r.inproc])
    net_rest = median([sum(s.round_walls[1:]) for s in ss])
    loc_rest = median([sum(x.round_walls[1:]) for x in r.inproc])
    later = [b.seconds for s in ss for b in s.broadcasts if b.study_round >= 2]
    n_later = sum(1 for b in ss[0].broadcasts if b.study_round >= 2)
    verdict = (
        "about as long as"
        if abs(net / loc - 1) <= 0.1
        else ("less time than" if net < loc else "more time than")
    )
    return (
        f"the study rounds take {verdict} in-process ({fmt_s(net)} vs {fmt_s(loc)}): round 1, "
        f"where every site reads its tables and derives lines of therapy, takes {fmt_s(net1)} "
        f"over the network ({len(r.sites)} site processes in parallel on {os.cpu_count()} "
        f"CPUs) vs {fmt_s(loc1)} in-process (sites in turn); rounds 2.. take "
        f"{fmt_s(net_rest)} vs {fmt_s(loc_rest)}, their {n_later} broadcasts "
        f"{fmt_s(median(later))} each (median)"
    )


def section(key: str, title: str, command: str, r: Report) -> str:
    n_inproc = len(r.inproc)
    out = [
        f"Study `examples/her2/study.toml` ({len(load_study(STUDY).study.analyses)} analyses) "
        f"on `her2fed synth --sites {r.spec} --seed {r.seed}`; {len(r.fed.sessions)} "
        f"session(s) over one federation, {n_inproc} in-process run(s); medians with "
        "(min–max) where there are several samples.",
        "",
        "#### Where the wall time goes",
        "",
        *phase_table(r),
        "",
        "#### Per study round",
        "",
        *rounds_table(r),
        "",
        "#### Round-trip latency: gRPC stream vs Flower message",
        "",
        *latency_table(r),
        "",
    ]
    out += [f"- {line}" for line in findings(r)]
    out += [
        f"- pooled results, every gRPC session vs in-process (dict equality of `pooled_json`): "
        f"{'equal' if r.equal else 'DIFFERENT: ' + ', '.join(r.mismatches)}",
        f"- processes left after shutdown: {len(r.fed.leftovers)} "
        f"(survivors reported by `stop()`: {len(r.fed.survivors)})",
        "- payload bytes are what `broadcast` carries (queries, layouts, secure-aggregation "
        "messages); the signed envelope adds ~200 bytes per message, TLS and HTTP/2 framing "
        "more. Broadcast times include the sites' own work for that step (summaries, masking), "
        'sites running in parallel processes; "coordinator outside broadcasts" is the '
        "coordinator's secure-aggregation bookkeeping, unmasking and estimation.",
    ]
    return common_section(key, title, command, r.machine, out)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--quick", action="store_true", help="1 session, 10 probes, 3 in-process runs (3, 20, 5)"
    )
    ap.add_argument("--sites", default=DEFAULT_SITES, help=f"NAME:COUNTRY:N,... ({DEFAULT_SITES})")
    ap.add_argument("--seed", type=int, default=SEED, help=f"synth seed (default {SEED})")
    ap.add_argument("--sessions", type=int, help="studies over the one federation (and in-process)")
    ap.add_argument(
        "--flower-pings", type=int, default=3, help="timed Flower message rounds per session"
    )
    ap.add_argument("--probes", type=int, help="bare gRPC round trips per session after the study")
    ap.add_argument(
        "--inprocess-runs",
        type=int,
        help="in-process runs of the study (cheap, so more samples; default 5, quick 3)",
    )
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (sites, logs)")
    ap.add_argument("--markdown", type=Path, help="write this run's section into this file")
    args = ap.parse_args(argv)
    args.sessions = args.sessions or (1 if args.quick else 3)
    args.probes = args.probes if args.probes is not None else (10 if args.quick else 20)
    args.inprocess_runs = args.inprocess_runs or (3 if args.quick else 5)
    if args.sessions < 1 or args.inprocess_runs < 1 or args.flower_pings < 0 or args.probes < 0:
        ap.error("--sessions, --inprocess-runs must be >= 1, --flower-pings and --probes >= 0")
    return args


def compare(loaded: LoadedStudy, ref: StudyOutcome, runs: Sequence[StudyOutcome]) -> list[str]:
    """Analysis ids whose pooled results differ from the reference in any run."""
    want = pooled(loaded, ref)
    bad: list[str] = []
    for i, outcome in enumerate(runs, 1):
        got = pooled(loaded, outcome)
        bad += [f"{aid} (run {i})" for aid in want if got.get(aid) != want[aid]]
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # load average before this script adds its own
    info = machine({"flwr": flwr.__version__, "grpcio": grpc.__version__})
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="her2fed-bench-network-"))
    try:
        log(f"synthesising sites {args.sites} (seed {args.seed}) in {workdir}")
        sites = make_sites(workdir / "sites", args.sites, args.seed)
        loaded = load_study(STUDY)
        inproc: list[InProcessRun] = []
        for i in range(args.inprocess_runs):
            inproc.append(run_inprocess(loaded, sites))
            log(f"in-process run {i + 1}/{args.inprocess_runs}: {fmt_s(inproc[-1].seconds)}")
        fed = run_federation(
            loaded, sites, workdir / "federation", args.sessions, args.flower_pings, args.probes
        )
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    mismatches = compare(
        loaded,
        inproc[0].outcome,
        [x.outcome for x in inproc[1:]] + [s.outcome for s in fed.sessions],
    )
    report = Report(
        sites=sites,
        spec=args.sites,
        seed=args.seed,
        inproc=inproc,
        fed=fed,
        flower_pings=args.flower_pings,
        probes=args.probes,
        equal=not mismatches,
        mismatches=mismatches,
        machine=info,
    )
    default = args.sites == DEFAULT_SITES and args.seed == SEED
    key = ("network" if default else "network-custom") + ("-quick" if args.quick else "")
    title = "Network: the default HER2+ study over a local gRPC federation"
    title += " (quick run)" if args.quick else ""
    text = section(key, title, command_line("bench.bench_network", argv), report)
    publish(args.markdown, key, text)
    ok = True
    if mismatches:
        log(f"gRPC and in-process pooled results DIFFER: {', '.join(mismatches)}")
        ok = False
    if fed.leftovers or fed.survivors:
        log(f"processes left running: {sorted(set(fed.leftovers) | set(fed.survivors))}")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
