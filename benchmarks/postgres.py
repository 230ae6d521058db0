"""Read the 1M-lead activities from PostgreSQL and from Parquet, in fresh processes, and compare.

Usage: python -m benchmarks.postgres [--uri postgresql://postgres@127.0.0.1:5432/test]
The 1m input of benchmarks.run is loaded once into the schema funnel_bench as text columns.
"""

from __future__ import annotations

import argparse
import json
import sys

import polars as pl
import psycopg

from benchmarks.run import _child, typed_input

SCHEMA = "funnel_bench"
READ = """
import sys, time
from pathlib import Path
from flows.inputs import read_input
from flows.settings import parse_source
t = time.perf_counter()
frame = read_input(sys.argv[1], "activities", parse_source({"activities_table": "funnel_bench.activities"})).frame
print(time.perf_counter() - t, frame.height)
"""


def _load(uri: str) -> None:
    directory = typed_input("1m")
    with psycopg.connect(uri, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('funnel_bench.activities') IS NOT NULL").fetchone()
        if exists and exists[0]:
            return
        print("loading activities into PostgreSQL ...", flush=True)
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        frame = pl.read_parquet(directory / "activities.parquet")
        conn.execute(f"CREATE TABLE {SCHEMA}.activities ({', '.join(f'{c} text' for c in frame.columns)})")
        with conn.cursor().copy(f"COPY {SCHEMA}.activities FROM STDIN WITH (FORMAT csv, HEADER true)") as copy:
            for i, chunk in enumerate(frame.iter_slices(2_000_000)):
                copy.write(chunk.write_csv(include_header=i == 0))
        conn.execute(f"ANALYZE {SCHEMA}.activities")


def main() -> None:
    """Time both reads and print their wall time, read time and peak RSS."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--uri", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    _load(args.uri)
    out = {}
    for name, location in (("postgresql", args.uri), ("parquet", str(typed_input("1m")))):
        wall, rss, text, _ = _child([sys.executable, "-c", READ, location], None)
        seconds, rows = text.split()
        out[name] = {"rows": int(rows), "read_s": round(float(seconds), 1), "process_s": round(wall, 1),
                     "peak_rss_gb": round(rss, 2)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
