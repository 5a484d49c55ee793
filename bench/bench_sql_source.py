"""What reading a site from PostgreSQL (OMOP) costs compared with reading its CSV files.

A hospital choosing between an export and a database connection wants to know
the price of the connection: this script synthesises one site, writes it as
CSV and loads it as OMOP into a throwaway PostgreSQL server (the one the tests
use), then times reading (rows/s) and validating both. Both reads must give
the same validated patients, or the timing is meaningless. Timings are
reported, never asserted.

    .venv/bin/python -m bench.bench_sql_source --patients 10000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import pandas as pd

from site_agent.omop import parse_db_registry, read_omop
from site_agent.omop_load import load_omop
from site_agent.registry import Origin, _read, validate_registry
from site_agent.synth import synthesize, write_site
from tests.pgserver import ADMIN, ADMIN_PASSWORD, READER, READER_PASSWORD, postgres_server

TABLES = ("patients", "treatments", "progressions", "care_events")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of N reads (default 3)")
    parser.add_argument("--fetch-rows", type=int, default=50_000)
    args = parser.parse_args()
    frames = synthesize("NO", args.patients, 11, "bench")
    with tempfile.TemporaryDirectory() as tmp, postgres_server() as server:
        site = Path(tmp) / "site"
        write_site(site, "bench", "NO", frames)
        os.environ["HER2FED_DB_PASSWORD"] = ADMIN_PASSWORD
        began = time.perf_counter()
        load_omop(server.url(ADMIN), "bench", frames, reader=READER)
        print(f"synth --to (load OMOP): {time.perf_counter() - began:.1f} s")
        os.environ["HER2FED_DB_PASSWORD"] = READER_PASSWORD
        spec = {"url": server.url(), "omop_schema": "bench", "fetch_rows": args.fetch_rows}
        src = parse_db_registry(spec, "bench: data.registry", site)

        def read_db() -> dict[str, pd.DataFrame]:
            return read_omop(src)[0]

        def read_csv() -> dict[str, pd.DataFrame]:
            return {t: _read(t, site / f"{t}.csv", "bench") for t in TABLES}

        for name, read in (("PostgreSQL/OMOP", read_db), ("CSV", read_csv)):
            best = float("inf")
            raw: dict[str, pd.DataFrame] = {}
            for _ in range(args.repeat):
                began = time.perf_counter()
                raw = read()
                best = min(best, time.perf_counter() - began)
            rows = sum(len(f) for f in raw.values())
            began = time.perf_counter()
            reg = validate_registry(raw, {t: Origin(t, t) for t in raw})
            valid = time.perf_counter() - began
            tracemalloc.start()
            read()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(
                f"{name:<16} {rows:>9,} rows read in {best:6.2f} s ({rows / best:>9,.0f} rows/s), "
                f"validated in {valid:5.2f} s; {len(reg.patients)} patients kept; "
                f"peak Python memory while reading {peak / 1e6:,.0f} MB"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
