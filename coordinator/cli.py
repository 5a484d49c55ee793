"""The ``her2fed`` command.

Every error a user can cause is printed as one message naming the problem
and the fix, with exit status 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from coordinator.orchestrate import StudyOutcome, run_study
from coordinator.report import write_report
from coordinator.results import results_document
from coordinator.study import LoadedStudy, load_study
from coordinator.transport import MIN_SECURE_SITES, AggregationError, InProcessTransport
from her2fed.errors import Her2fedError, SpecError
from site_agent.cli import add_site_commands
from site_agent.config import SiteConfig, load_site
from site_agent.handlers import SiteAgent
from site_agent.synth import main as synth_main

STUDY_HANDLER = "site_agent.federation.study_handler:factory"


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide results from colleagues
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _site_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=SITE.toml, got {text!r}")
    return name, Path(path)


def cmd_local(args: argparse.Namespace) -> int:
    loaded = load_study(args.study)
    study = loaded.study
    names = [n for n, _ in args.site]
    if len(set(names)) != len(names):
        raise SpecError(
            "--site", f"site names must be unique, got {names}", "give each site its own NAME"
        )
    # every site config is read here first, so a broken one fails before anything starts
    configs = {name: replace(load_site(path), site_id=name) for name, path in args.site}
    if len(configs) < MIN_SECURE_SITES:
        raise AggregationError(
            f"secure aggregation needs at least {MIN_SECURE_SITES} sites, got {len(configs)}: "
            "with fewer, a pooled sum would reveal a site's data, so nothing is released. "
            "Fix: add sites"
        )
    started = time.perf_counter()

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr)

    progress(f"study {study.name!r}: {len(study.analyses)} analyses over {len(configs)} sites")
    if args.transport == "grpc":
        outcome = _run_over_grpc(loaded, configs, progress)
    else:
        agents = [SiteAgent(cfg, study) for cfg in configs.values()]
        outcome = run_study(study, InProcessTransport(agents), progress)
    doc = results_document(
        name=study.name,
        study_hash=loaded.hash,
        analyses={a.id: a for a in study.analyses},
        results=outcome.results,
        sites=outcome.sites,
        grid_days=study.grid.grid_days,
        horizon_days=study.grid.horizon_days,
        rounds=outcome.rounds,
        transport=args.transport,
        aggregation=dict(outcome.aggregation),
        rules=study.rules.as_dict() if study.uses_registry else None,
        countries={name: cfg.country for name, cfg in configs.items()},
    )
    out = Path(args.out) / "results.json"
    write_json_atomic(out, doc)
    report = Path(args.out) / "report.html"
    write_report(out, report)
    progress(f"done in {outcome.rounds} rounds; wrote {out} and {report}")
    if not args.quiet:
        print(summary_table(doc))
    return 0


def _run_over_grpc(
    loaded: LoadedStudy, configs: dict[str, SiteConfig], progress: Callable[[str], None]
) -> StudyOutcome:
    """A real local federation: SuperLink, one SuperNode + site agent per site, TLS.

    Every process started here is stopped on the way out, also on errors and
    Ctrl-C (LocalFederation's signal guard).
    """
    from coordinator.federation.local import LocalFederation, SiteSpec
    from coordinator.grpc_transport import GrpcTransport

    specs = [
        SiteSpec(name, site_config=str(cfg.path.resolve()), handler=STUDY_HANDLER)
        for name, cfg in configs.items()
    ]
    progress("starting a local federation (SuperLink, SuperNodes, site agents; TLS)")
    with LocalFederation(specs) as fed:
        progress("federation up; opening the study session through Flower")
        session, _ = fed.open_session(loaded.hash)
        assert fed.coordinator_key is not None and fed.consortium is not None
        try:
            transport = GrpcTransport(
                session,
                loaded.path.read_bytes(),
                coordinator_key=fed.coordinator_key,
                consortium=fed.consortium,
            )
            progress(f"session open at {len(transport.sites())} sites; running the rounds")
            return run_study(loaded.study, transport, progress)
        finally:
            session.close()
            progress("stopping the federation")


def summary_table(doc: dict[str, Any]) -> str:
    """A few lines a person can read at the end of a run."""
    lines = [f"{'analysis':<28} {'kind':<13} result"]
    for aid, entry in doc["analyses"].items():
        pooled = entry["pooled"]
        if entry["kind"] == "km":
            text = "; ".join(
                f"{g}: median {_fmt(v['median'])} (n={v['n_risk'][0] if v['n_risk'] else 0})"
                for g, v in pooled["groups"].items()
            )
        elif entry["kind"] == "cox":
            text = "; ".join(f"HR {k} {_fmt(v)}" for k, v in pooled["hr"].items())
        elif entry["kind"] == "logrank":
            text = f"chisq {_fmt(pooled['chisq'])} df {pooled['df']} p {_fmt(pooled['p'])}"
        elif entry["kind"] == "attrition":
            a1 = pooled["groups"]["all"]["A1"][0]["estimate"]
            a3 = pooled["groups"]["all"]["A3"][0]["estimate"]
            text = f"no 2L after 1L: A1 {_pct(a1)}, A3 {_pct(a3)} (all sites)"
        elif entry["kind"] == "pathways":
            text = f"{len(pooled['transitions'])} line-to-line flows"
        else:
            text = f"{len(pooled['groups'])} group(s)"
        lines.append(f"{aid:<28} {entry['kind']:<13} {text}")
    return "\n".join(lines)


def _pct(v: Any) -> str:
    return "NA" if v is None else f"{100 * v:.1f}%"


def _fmt(v: Any) -> str:
    return "NA" if v is None else f"{v:.4g}"


def cmd_report(args: argparse.Namespace) -> int:
    write_report(Path(args.results), Path(args.out))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="her2fed",
        description="Federated survival analytics for HER2+ metastatic breast cancer.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    local = sub.add_parser(
        "local",
        help="run a study across site configs on this machine",
        description="Run STUDY.toml across the given sites and write DIR/results.json.",
    )
    local.add_argument("study", metavar="STUDY.toml")
    local.add_argument(
        "--site",
        metavar="NAME=SITE.toml",
        type=_site_arg,
        action="append",
        required=True,
        help="a site and its config file (repeat per site)",
    )
    local.add_argument("--out", metavar="DIR", required=True, help="output directory")
    local.add_argument(
        "--transport",
        choices=["inprocess", "grpc"],
        default="inprocess",
        help="inprocess: all sites in this process; grpc: a real local federation "
        "(Flower SuperLink + one SuperNode and site agent per site, gRPC over TLS on loopback)",
    )
    local.add_argument("--quiet", action="store_true", help="no progress or summary output")
    local.set_defaults(func=cmd_local)
    report = sub.add_parser(
        "report",
        help="write the HTML report of a results.json",
        description="Render RESULTS.json as one self-contained HTML file (figures embedded, "
        "no external requests, printable).",
    )
    report.add_argument("results", metavar="RESULTS.json")
    report.add_argument("--out", metavar="REPORT.html", required=True)
    report.set_defaults(func=cmd_report)
    add_site_commands(sub)
    # `her2fed synth ...` is handed whole to the generator's own parser (see main)
    sub.add_parser(
        "synth", help="write synthetic multi-country HER2+ registry sites", add_help=False
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["synth"]:
        return synth_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Her2fedError as err:
        print(f"her2fed: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("her2fed: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
