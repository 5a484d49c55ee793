"""``her2fed site ...``: commands hospital IT runs next to the data."""

from __future__ import annotations

import argparse
from typing import Any

from her2fed.errors import Her2fedError
from site_agent.config import load_site
from site_agent.data import describe, load_table, prepare


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config and every table; print aggregate counts only."""
    cfg = load_site(args.config)
    print(f"site {cfg.site_id} ({cfg.country}): config {cfg.path} OK")
    print(f"policy: {cfg.policy}")
    problems = 0
    tables = {}
    for name, path in cfg.tables.items():
        try:
            df = load_table(path, f"{cfg.path} [data.{name}]")
        except Her2fedError as err:
            problems += 1
            print(f"  [FAIL] table {name}: {err}")
            continue
        tables[name] = df
        print(f"  [ OK ] table {name}: {path.name}, {len(df)} rows, {len(df.columns)} columns")
        for col, present, missing in describe(df, list(df.columns)):
            print(f"         {col:<24} {present:>8} present {missing:>8} missing")
    for name, path in cfg.registry.items():
        state = "present" if path.exists() else "MISSING"
        problems += 0 if path.exists() else 1
        print(
            f"  [{'INFO' if path.exists() else 'FAIL'}] registry {name}: {path.name} {state} "
            "(registry validation arrives with the HER2+ schema)"
        )
    if args.study:
        from coordinator.study import load_study

        study = load_study(args.study).study
        for analysis in study.analyses:
            if analysis.dataset not in tables:
                problems += 1
                print(
                    f"  [FAIL] analysis {analysis.id}: dataset {analysis.dataset!r} not available"
                )
                continue
            try:
                rows = prepare(
                    tables[analysis.dataset], analysis, str(cfg.tables[analysis.dataset])
                )
            except Her2fedError as err:
                problems += 1
                print(f"  [FAIL] analysis {analysis.id}: {err}")
                continue
            print(
                f"  [ OK ] analysis {analysis.id}: {rows.time.size} complete rows, "
                f"{rows.dropped} dropped for missing values, "
                f"{int((rows.event > 0).sum())} events"
            )
    print("check passed" if problems == 0 else f"check FAILED: {problems} problem(s)")
    return 0 if problems == 0 else 1


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
