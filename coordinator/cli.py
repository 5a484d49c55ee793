"""The ``her2fed`` command.

Every error a user can cause is printed as one message naming the problem
and the fix, with exit status 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from coordinator.orchestrate import StudyOutcome, run_study
from coordinator.report import write_report
from coordinator.results import results_document
from coordinator.study import LoadedStudy, load_study
from coordinator.study_cli import add_study_commands
from coordinator.transport import MIN_SECURE_SITES, AggregationError, InProcessTransport
from her2fed.errors import Her2fedError, SpecError
from site_agent.approval import check_site_approval
from site_agent.atomic import write_atomic
from site_agent.cli import add_site_commands
from site_agent.config import SiteConfig, load_site
from site_agent.handlers import SiteAgent
from site_agent.policy import PolicyRefusal
from site_agent.site_files import site_files
from site_agent.synth import main as synth_main

STUDY_HANDLER = "site_agent.federation.study_handler:factory"


def write_json_atomic(path: Path, doc: Any) -> None:
    """results.json, all of it or none of it (``write_atomic``)."""
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    write_atomic(path, text.encode("utf-8"))


def _site_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=SITE.toml, got {text!r}")
    return name, Path(path)


def _progress(quiet: bool) -> Callable[[str], None]:
    """Timestamped progress lines on stderr (stdout is for the summary table)."""
    started = time.perf_counter()

    def progress(msg: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return progress


def _require_secure_sites(n: int) -> None:
    if n < MIN_SECURE_SITES:
        raise AggregationError(
            f"secure aggregation needs at least {MIN_SECURE_SITES} sites, got {n}: "
            "with fewer, a pooled sum would reveal a site's data, so nothing is released. "
            "Fix: add sites"
        )


def write_study_outputs(
    loaded: LoadedStudy,
    outcome: StudyOutcome,
    *,
    out_dir: Path,
    transport: str,
    countries: dict[str, str],
    progress: Callable[[str], None],
    quiet: bool = False,
    deployment: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``results.json`` and ``report.html`` of a finished study, the same for every transport.

    ``her2fed local`` and ``her2fed study run`` both end here, so a deployed
    federation's outputs differ from a local run's only in the provenance
    (``transport``, ``aggregation``), never in the analyses.
    """
    study = loaded.study
    aggregation = dict(outcome.aggregation)
    if deployment:
        aggregation["deployment"] = deployment
    doc = results_document(
        name=study.name,
        study_hash=loaded.hash,
        analyses={a.id: a for a in study.analyses},
        results=outcome.results,
        sites=outcome.sites,
        grid_days=study.grid.grid_days,
        horizon_days=study.grid.horizon_days,
        rounds=outcome.rounds,
        transport=transport,
        aggregation=aggregation,
        rules=study.rules.as_dict() if study.uses_registry else None,
        countries=countries,
        release_rule=outcome.release_rule,
        releases=outcome.releases,
    )
    out = out_dir / "results.json"
    write_json_atomic(out, doc)
    report = out_dir / "report.html"
    write_report(out, report)
    progress(f"done in {outcome.rounds} rounds; wrote {out} and {report}")
    if not quiet:
        print(summary_table(doc))
    return doc


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
    _require_secure_sites(len(configs))
    _require_approved(loaded, configs)
    progress = _progress(args.quiet)
    progress(f"study {study.name!r}: {len(study.analyses)} analyses over {len(configs)} sites")
    if args.transport == "grpc":
        outcome = _run_over_grpc(loaded, configs, progress)
    else:
        agents = [SiteAgent(cfg, study) for cfg in configs.values()]
        outcome = run_study(study, InProcessTransport(agents), progress)
    write_study_outputs(
        loaded,
        outcome,
        out_dir=Path(args.out),
        transport=args.transport,
        countries={name: cfg.country for name, cfg in configs.items()},
        progress=progress,
        quiet=args.quiet,
    )
    return 0


def _require_approved(loaded: LoadedStudy, configs: dict[str, SiteConfig]) -> None:
    """Every site must have approved this exact study file, as it would in a federation.

    The site agents check it themselves (over gRPC they refuse the session);
    checking here first names every site that is not ready in one message,
    before any process starts, and holds the in-process run to the same rule.
    """
    data = loaded.path.read_bytes()
    problems = []
    for name, cfg in configs.items():
        files = site_files(cfg)
        if not files.site_key.is_file():
            problems.append(
                f"site {name}: no identity key at {files.site_key} (it signs the site's audit "
                f"log). Fix: her2fed site keys {cfg.path}"
            )
            continue
        try:
            check_site_approval(files, data)
        except PolicyRefusal as err:
            problems.append(f"site {name}: {err}")
    if problems:
        raise SpecError(
            str(loaded.path),
            f"not every site is ready to answer this study ({loaded.hash})",
            "see below; a rehearsal takes the real steps (README, consortium lead guide; `make "
            "demo` runs them): `her2fed study keygen`, `her2fed study sign`, and at each site "
            "`her2fed site keys` and `her2fed site approve`\n  " + "\n  ".join(problems),
        )


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
        SiteSpec(
            name,
            site_config=str(cfg.path.resolve()),
            handler=STUDY_HANDLER,
            identity_key=str(cfg.key_paths.site_key.resolve()),
        )
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


def cmd_study_run(args: argparse.Namespace) -> int:
    """Run a study on the deployed federation (SuperLink started by `consortium serve`)."""
    from coordinator.federation.consortium import load_federation
    from coordinator.federation.deployed import StudyFederation
    from coordinator.grpc_transport import GrpcTransport

    loaded = load_study(args.study)
    config = load_federation(args.federation)
    progress = _progress(args.quiet)
    fed = StudyFederation(config, say=progress)
    _require_secure_sites(len(fed.sites))
    progress(
        f"study {loaded.study.name!r}: {len(loaded.study.analyses)} analyses over "
        f"{len(fed.sites)} sites of {config.name!r} ({', '.join(fed.sites)})"
    )
    with fed:
        fed.wait_online(args.wait_sites)
        progress("sites online; opening the study session through Flower")
        session, _ = fed.open_session(loaded.hash, args.open_timeout)
        try:
            transport = GrpcTransport(
                session,
                loaded.path.read_bytes(),
                coordinator_key=fed.coordinator_key,
                consortium=fed.registry,
                timeout=args.round_timeout,
            )
            progress(f"session open at {len(transport.sites())} sites; running the rounds")
            outcome = run_study(loaded.study, transport, progress)
        finally:
            session.close()
    write_study_outputs(
        loaded,
        outcome,
        out_dir=Path(args.out),
        transport="grpc",
        countries={s: fed.cards[s].country for s in fed.sites},
        progress=progress,
        quiet=args.quiet,
        deployment={
            "federation": config.name,
            "fleet": config.fleet_public,
            "aggregation": config.aggregation_public,
        },
    )
    return 0


def cmd_consortium_init(args: argparse.Namespace) -> int:
    from coordinator.federation.consortium import init_consortium

    ports = {"fleet": args.fleet_port, "superlink": args.superlink_port}
    ports["aggregation"] = args.aggregation_port
    made = init_consortium(
        args.directory,
        hosts=args.host,
        sites=args.site,
        name=args.name,
        bind=args.bind,
        ports=ports,
        valid_days=args.valid_days,
    )
    d = Path(args.directory)
    print(f"wrote {made.federation}")
    print(f"wrote {made.ca_cert} and {made.ca_key} (the consortium CA; keep ca.key offline)")
    names = ", ".join(dict.fromkeys([*args.host, "127.0.0.1", "localhost"]))
    print(f"wrote {d / 'pki' / 'server.pem'} (TLS server certificate for {names})")
    print(f"wrote {d / 'coordinator.key'} (private) and {made.coordinator_pub}")
    print(f"wrote {made.registry} (no site yet)")
    print()
    print("Next:")
    print("  1. each site runs `her2fed site keys SITE.toml` and sends you its card; add it:")
    print(f"       her2fed consortium add-site {made.federation} CARD.toml")
    print("  2. send every site these three files (public; put them in the site's consortium/):")
    print(f"       {made.ca_cert}  {made.coordinator_pub}  {made.registry}")
    print(f"  3. start the SuperLink and fleet gateway: her2fed consortium serve {made.federation}")
    print("  4. sites run `her2fed site start SITE.toml --superlink HOST:PORT` (fleet.public)")
    print(f"  5. her2fed study run STUDY.toml --federation {made.federation} --out DIR")
    return 0


def cmd_consortium_add_site(args: argparse.Namespace) -> int:
    from coordinator.federation.consortium import add_site, load_federation
    from coordinator.federation.control import FlowerControl
    from site_agent.federation.card import SiteCard, public_key_der

    config = load_federation(args.federation)
    card = SiteCard.load(args.card)
    result = add_site(config, card, replace=args.replace)
    if not result.changed:
        print(f"site {card.site_id} is pinned with these keys already; nothing changed")
    else:
        verb = "replaced the keys of" if result.replaced else "pinned"
        print(f"{verb} site {card.site_id} ({card.country}):")
        print(f"  identity key {card.public_hex}")
        print(f"  node key     {card.node_fingerprint}")
        print("  (confirm both with the site by phone before its first study)")
        print(f"updated {config.registry}: {len(result.sites)} site(s): {', '.join(result.sites)}")
    control = FlowerControl(config.superlink, config.ca_cert.read_bytes())
    try:
        if control.reachable():
            if result.replaced is not None:
                old = control.node_id_of(result.replaced.node_public_key)
                same = public_key_der(result.replaced.node_public_key) == public_key_der(
                    card.node_public_key
                )
                if old is not None and not same:
                    control.unregister(old)
                    print(f"unregistered the old node key (node {old}) at the SuperLink")
            node = control.register(card.site_id, card.node_public_key)
            print(f"node key registered at the running SuperLink (node {node})")
        else:
            print(
                f"the SuperLink ({config.superlink}) is not running; `her2fed consortium serve` "
                "registers the node key when it starts"
            )
    finally:
        control.close()
    if result.changed:
        print(
            f"Send the updated {config.registry} to every site (they restart `her2fed site "
            "start` to read it): secure aggregation checks every peer's key against it."
        )
    return 0


def cmd_consortium_serve(args: argparse.Namespace) -> int:
    from coordinator.federation.consortium import load_federation
    from coordinator.federation.deployed import ConsortiumServer

    config = load_federation(args.federation)

    def say(line: str) -> None:
        print(line, flush=True)

    ConsortiumServer(config, say=say, startup_timeout=args.startup_timeout).run()
    return 0


def cmd_consortium_status(args: argparse.Namespace) -> int:
    from coordinator.federation.consortium import load_federation, load_registry
    from coordinator.federation.control import FlowerControl

    config = load_federation(args.federation)
    config.require_files()
    registry = load_registry(config.registry)
    cards = config.cards()
    expected = config.sites if config.sites is not None else tuple(sorted(cards))
    control = FlowerControl(config.superlink, config.ca_cert.read_bytes())
    try:
        up = control.reachable()
        status: dict[str, str] = {}
        if up:
            nodes = {sid: control.node_id_of(c.node_public_key) for sid, c in cards.items()}
            registered = {sid: n for sid, n in nodes.items() if n is not None}
            status = {sid: "registered" if n else "not registered" for sid, n in nodes.items()}
            status.update(dict.fromkeys(control.online(registered), "online"))
    finally:
        control.close()
    print(f"federation {config.name!r} ({config.path})")
    print(
        f"SuperLink {config.superlink}: {'running' if up else 'not running'}; "
        f"sites connect to {config.fleet_public}"
    )
    for sid in sorted(set(expected) | set(cards)):
        found = cards.get(sid)
        pinned = "pinned" if sid in registry.sites else "NOT in the registry"
        state = status.get(sid, "-")
        role = "" if sid in expected else " (not in [federation] sites)"
        if found is None:
            print(f"  {sid:<20} no card: add it with `her2fed consortium add-site`")
        else:
            print(
                f"  {sid:<20} {found.country:<4} {pinned:<8} {state:<15} "
                f"{found.node_fingerprint}{role}"
            )
    return 0


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
        description="Run STUDY.toml across the given sites and write DIR/results.json and "
        "DIR/report.html. Every site must have approved the study as sites do in a federation "
        "(`her2fed study keygen` and `study sign` by the lead; `her2fed site keys` and `site "
        "approve` at each site; `make demo` shows the steps); at least three sites.",
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
    _add_study_commands(sub)
    _add_consortium_commands(sub)
    add_study_commands(sub)  # her2fed study keygen|sign|verify (shared `study` group)
    # `her2fed synth ...` is handed whole to the generator's own parser (see main)
    sub.add_parser(
        "synth", help="write synthetic multi-country HER2+ registry sites", add_help=False
    )
    return parser


def _add_study_commands(sub: Any) -> None:
    from coordinator.study_cli import study_commands

    run = study_commands(sub).add_parser(
        "run",
        help="run STUDY.toml across the consortium's sites",
        description="Run STUDY.toml on the deployed federation of FEDERATION.toml: waits until "
        "the study's sites are online, starts the aggregation service, opens the session "
        "through the SuperLink's Control API (this host), runs every round over the sites' "
        "gRPC streams under secure aggregation, writes DIR/results.json and DIR/report.html "
        "(as `her2fed local` does) and stops the aggregation service. The SuperLink and "
        "gateway must be running (`her2fed consortium serve`).",
    )
    run.add_argument("study", metavar="STUDY.toml")
    run.add_argument(
        "--federation",
        metavar="FEDERATION.toml",
        required=True,
        help="the federation (written by `her2fed consortium init`)",
    )
    run.add_argument("--out", metavar="DIR", required=True, help="output directory")
    run.add_argument(
        "--wait-sites",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for the study's sites to be online (default 120)",
    )
    run.add_argument(
        "--open-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long the sites have to join the session (default 60)",
    )
    run.add_argument(
        "--round-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long a site may take to answer one round (default 120)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress or summary output")
    run.set_defaults(func=cmd_study_run)


def _add_consortium_commands(sub: Any) -> None:
    cons = sub.add_parser("consortium", help="the consortium lead's set-up and services")
    cons_sub = cons.add_subparsers(dest="consortium_command", required=True)
    init = cons_sub.add_parser(
        "init",
        help="create the consortium's CA, certificates, coordinator key, registry and config",
        description="Create DIR/federation.toml, a consortium CA and a server certificate for "
        "the given host names (plus 127.0.0.1 and localhost), the coordinator's Ed25519 key "
        "and an empty site registry (DIR/consortium.toml).",
    )
    init.add_argument("directory", metavar="DIR")
    init.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="NAME",
        help="DNS name or IP sites use to reach this host (repeatable; the first is the public "
        "address written to federation.toml)",
    )
    init.add_argument(
        "--site",
        action="append",
        default=[],
        metavar="NAME",
        help="a site of the consortium (repeatable; default: every site added later)",
    )
    init.add_argument("--name", default="her2fed consortium", help="the federation's name")
    init.add_argument(
        "--bind",
        default="0.0.0.0",
        metavar="ADDRESS",
        help="interface of the public fleet gateway and aggregation service (default 0.0.0.0)",
    )
    init.add_argument(
        "--fleet-port", type=int, default=9092, metavar="PORT", help="public (default 9092)"
    )
    init.add_argument(
        "--aggregation-port", type=int, default=9443, metavar="PORT", help="public (default 9443)"
    )
    init.add_argument(
        "--superlink-port",
        type=int,
        default=9093,
        metavar="PORT",
        help="the SuperLink's port, bound to 127.0.0.1 only (default 9093)",
    )
    init.add_argument(
        "--valid-days",
        type=int,
        default=825,
        metavar="DAYS",
        help="validity of the CA and server certificate (default 825)",
    )
    init.set_defaults(func=cmd_consortium_init)
    add = cons_sub.add_parser(
        "add-site",
        help="pin a site's public keys and register its node",
        description="Pin the Ed25519 identity key and Flower node key of CARD.toml (written by "
        "`her2fed site keys` at the site) in the registry, and register the node key with the "
        "SuperLink if it is running (`consortium serve` registers it otherwise).",
    )
    add.add_argument("federation", metavar="FEDERATION.toml")
    add.add_argument("card", metavar="CARD.toml")
    add.add_argument(
        "--replace",
        action="store_true",
        help="replace the keys of a site pinned before (after confirming the new fingerprints)",
    )
    add.set_defaults(func=cmd_consortium_add_site)
    serve = cons_sub.add_parser(
        "serve",
        help="run the SuperLink (loopback) and the public fleet gateway",
        description="Start flower-superlink on the loopback address of FEDERATION.toml (TLS, "
        "node authentication, no runtime installs, telemetry or update checks), register "
        "every pinned site's node key, and serve the fleet gateway on the public address "
        "(forwards /v1/fleet/* only). Prints sites coming online and going offline; stops on "
        "Ctrl-C or SIGTERM.",
    )
    serve.add_argument("federation", metavar="FEDERATION.toml")
    serve.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long the SuperLink may take to start (default 60)",
    )
    serve.set_defaults(func=cmd_consortium_serve)
    status = cons_sub.add_parser(
        "status",
        help="list the sites: pinned keys, registration, online",
        description="List every site of FEDERATION.toml with its country, whether its keys are "
        "in the registry, whether its node is registered/online at the SuperLink (if running) "
        "and its node key fingerprint.",
    )
    status.add_argument("federation", metavar="FEDERATION.toml")
    status.set_defaults(func=cmd_consortium_status)


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
    except BrokenPipeError:  # `her2fed ... | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:  # a path the user gave cannot be read or written
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"her2fed: error: {where}{err.strerror or err}. Fix: check the path and permissions",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("her2fed: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
