"""``her2fed site ...``: commands hospital IT runs next to the data."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

import pandas as pd

from her2fed.errors import Her2fedError
from her2fed.lot import RuleSet
from her2fed.protocol import RegistryRows
from site_agent.config import SiteConfig, load_site
from site_agent.data import describe
from site_agent.derived import derive_registry
from site_agent.handlers import SiteAgent
from site_agent.officer_cli import add_officer_commands
from site_agent.policy import check_study
from site_agent.sources import declared_tables, load_site_registry_noted, load_site_table
from site_agent.sql_source import SourceError


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config and every table; print aggregate counts only."""
    cfg = load_site(args.config)
    print(f"site {cfg.site_id} ({cfg.country}): config {cfg.path} OK")
    print(f"policy: {cfg.policy}")
    problems = 0
    tables = {}
    for name in declared_tables(cfg):
        try:
            df = load_site_table(cfg, name)
        except SourceError:
            raise  # the database cannot be read at all: stop with its message (exit 2)
        except Her2fedError as err:
            problems += 1
            print(f"  [FAIL] table {name}: {err}")
            continue
        tables[name] = df
        path = cfg.tables.get(name)
        shown = path.name if path else "query"
        print(f"  [ OK ] table {name}: {shown}, {len(df)} rows, {len(df.columns)} columns")
        for col, present, missing in describe(df, list(df.columns)):
            print(f"         {col:<24} {present:>8} present {missing:>8} missing")
    frames: dict[str, pd.DataFrame] | None = None
    if cfg.has_registry:
        bad, frames = _check_registry(cfg)
        problems += bad
    if args.study:
        problems += _check_study(cfg, args.study, tables, frames)
    print("check passed" if problems == 0 else f"check FAILED: {problems} problem(s)")
    return 0 if problems == 0 else 1


def _check_study(
    cfg: SiteConfig,
    study_path: str,
    tables: dict[str, pd.DataFrame],
    registry: dict[str, pd.DataFrame] | None,
) -> int:
    """Prepare every analysis exactly as a query would, reporting counts or the problem."""
    from coordinator.study import load_study

    study = load_study(study_path).study
    problems = 0
    try:
        check_study(cfg.policy, study)
        print("  [ OK ] the study passes this site's policy")
    except Her2fedError as err:
        problems += 1
        print(f"  [FAIL] policy: {err}")
    agent = SiteAgent(cfg, study, tables=tables, registry=registry)
    for analysis in study.analyses:
        try:
            rows = agent.rows(analysis.id)
        except Her2fedError as err:
            problems += 1
            print(f"  [FAIL] analysis {analysis.id}: {err}")
            continue
        if isinstance(rows, RegistryRows):
            print(
                f"  [ OK ] analysis {analysis.id}: {len(rows.patient_group)} patients, "
                f"{len(rows.lines)} lines"
            )
        else:
            print(
                f"  [ OK ] analysis {analysis.id}: {rows.time.size} complete rows, "
                f"{rows.dropped} dropped for missing values, "
                f"{int((rows.event > 0).sum())} events"
            )
    return problems


def _check_registry(cfg: SiteConfig) -> tuple[int, dict[str, pd.DataFrame] | None]:
    """Validate the registry extract and derive lines; print aggregate counts only."""
    try:
        reg, notes = load_site_registry_noted(cfg)
    except SourceError:
        raise  # the database cannot be read at all: stop with its message (exit 2)
    except Her2fedError as err:
        print(f"  [FAIL] registry: {err}")
        return 1, None
    for note in notes:
        print(f"         {note}")
    frames = {
        "patients": reg.patients,
        "treatments": reg.treatments,
        "progressions": reg.progressions,
        "care_events": reg.care_events,
    }
    for line in reg.report.lines():
        print(f"  [ OK ] {line}" if line.startswith("registry ") else f"         {line}")
    try:
        derived = derive_registry(
            reg.patients,
            reg.treatments,
            reg.progressions,
            reg.care_events,
            country=cfg.country,
            rules=RuleSet(),
        )
    except Her2fedError as err:
        print(f"  [FAIL] lines of therapy: {err}")
        return 1, frames
    lr = derived.lines_result
    print(
        f"  [ OK ] lines of therapy ({lr.rules.version}): {len(derived.patients)} HER2+ "
        f"patients, {lr.n_patients_with_lines} with >= 1 line, {len(derived.lines)} lines; "
        f"{derived.n_not_her2_positive} patients not HER2+ (outside the cohort)"
    )
    per_line = derived.lines["line"].value_counts().sort_index()
    print("         patients per line: " + ", ".join(f"L{k} {v}" for k, v in per_line.items()))
    if lr.n_unmapped:
        names = ", ".join(f"{n} ({c})" for n, c in lr.unmapped.names[:10])
        print(
            f"  [WARN] {lr.n_unmapped} treatment row(s) with unmapped drug names (not used "
            f"for lines): {names}"
        )
    if lr.agreement is not None and lr.agreement.n_compared:
        print(
            f"         agreement with clinician line numbers: {100 * lr.agreement.share:.1f}% "
            f"of {lr.agreement.n_compared} administrations"
        )
    return 0, frames


def cmd_keys(args: argparse.Namespace) -> int:
    """Create the site's keys (if missing) and print the card to send to the consortium lead."""
    from site_agent.federation.deploy import make_site_keys

    cfg = load_site(args.config)
    result = make_site_keys(cfg, force=args.force)
    for path in result.created:
        print(f"wrote {path} (private key, mode 600: never send it anywhere)")
    if not result.created:
        print(f"keys exist already: {cfg.key_paths.site_key}, {cfg.key_paths.node_key} (kept)")
    print(f"wrote {result.card_path} (public keys only)")
    print()
    print(result.card.to_toml(), end="")
    print()
    print(
        f"Send {result.card_path} to the consortium lead and confirm the two fingerprints above "
        "with them by phone. They send back ca.pem, coordinator.pub and consortium.toml: put "
        f"them where [keys] of {cfg.path} says (default {cfg.path.parent / 'consortium'}/), then "
        f"run `her2fed site start {cfg.path} --superlink HOST:PORT`."
    )
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    """Run the site: SuperNode + site agent, supervised, until Ctrl-C or SIGTERM."""
    from site_agent.federation.deploy import start_site

    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            print(line, flush=True)

    cfg = load_site(args.config)
    start_site(
        cfg,
        superlink=args.superlink,
        coordinator_hosts=tuple(args.coordinator_host),
        runtime_port=args.runtime_port,
        state_dir=args.state_dir,
        max_restarts=args.max_restarts,
        log_level=args.log_level,
        say=say,
    )
    sys.stdout.flush()
    return 0


def add_site_commands(sub: Any) -> None:
    site = sub.add_parser("site", help="commands for a hospital's site agent")
    site_sub = site.add_subparsers(dest="site_command", required=True)
    check = site_sub.add_parser(
        "check",
        help="validate a site's config and data",
        description="Validate SITE.toml and its tables; print a data-quality summary "
        "(aggregate counts only). Exit 1 if anything is wrong.",
    )
    check.add_argument("config", metavar="SITE.toml")
    check.add_argument(
        "--study",
        metavar="STUDY.toml",
        help="also check that the data fit every analysis of this study",
    )
    check.set_defaults(func=cmd_check)
    add_officer_commands(site_sub)  # approve, revoke, approvals, audit (privacy officer)
    keys = site_sub.add_parser(
        "keys",
        help="create the site's keys and the card for the consortium lead",
        description="Create the site's Ed25519 identity key and Flower node key (EC P-256) at "
        "the paths of [keys] in SITE.toml (default keys/site.key, keys/node.key; mode 600) "
        "unless they exist, write the site card (public keys only) next to them and print it "
        "with the fingerprints to confirm by phone.",
    )
    keys.add_argument("config", metavar="SITE.toml")
    keys.add_argument(
        "--force",
        action="store_true",
        help="replace existing keys (the lead must then re-add the new card with --replace)",
    )
    keys.set_defaults(func=cmd_keys)
    start = site_sub.add_parser(
        "start",
        help="connect this site to the consortium (outbound only) and serve studies",
        description="Check the site's keys and consortium files, then run flower-supernode "
        "(process isolation, TLS with the consortium CA, node key; runtime API on 127.0.0.1) "
        "and the her2fed site agent, supervised together, until Ctrl-C or SIGTERM. The site "
        "only dials out: to the SuperLink's fleet port and to the aggregation service.",
    )
    start.add_argument("config", metavar="SITE.toml")
    start.add_argument(
        "--superlink",
        metavar="HOST:PORT",
        required=True,
        help="the consortium's public fleet address (from the consortium lead)",
    )
    start.add_argument(
        "--coordinator-host",
        metavar="HOST",
        action="append",
        default=[],
        help="a host the site may dial for aggregation (repeatable; default: the SuperLink host)",
    )
    start.add_argument(
        "--runtime-port",
        type=int,
        default=0,
        metavar="PORT",
        help="loopback port of the SuperNode's runtime API (default: a free one)",
    )
    start.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keep Flower's home, logs and the per-start secret here (default: a temporary "
        "directory removed on exit)",
    )
    start.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        metavar="N",
        help="give up when a process exits more than N times in 10 minutes (default 5)",
    )
    start.add_argument("--log-level", default="INFO", help="site agent log level (default INFO)")
    start.set_defaults(func=cmd_start)
