"""The benchmark: nightly run and backfill at enterprise scale, phase by phase, against a floor.

Usage: python -m benchmarks.run [--scales small,1m,2m] [--repeat 3] [--backfill-days 365]
                                [--dask-scale 2m --dask-workers 2]

Inputs are generated once per scale with `funnel generate` (Parquet) and cached under
data/bench/. Every measurement runs in a fresh child process, whose wall time and peak RSS
(`wait4`) are recorded; medians over the repeats are printed as a table and written as JSON to
data/bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "data" / "bench"
FUNNEL = [sys.executable, "-m", "flows.cli"]
SCALES = {"small": 100_000, "1m": 1_000_000, "2m": 2_000_000}
AS_OF = date(2026, 10, 31)
SEED = 1


def _child(cmd: list[str]) -> tuple[float, float, str]:
    """Run a command; its wall seconds, its own peak RSS in GB (wait4), and its stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {err.read().strip().splitlines()[-1:]}")
        return wall, usage.ru_maxrss / 1e6, out.read()


def _input(scale: str) -> Path:
    """Generated Parquet input of a scale, made once."""
    directory = BENCH / scale
    marker = directory / ".complete"
    if not marker.exists():
        print(f"generating {scale} ({SCALES[scale]:,} leads) ...", flush=True)
        _child([*FUNNEL, "generate", "--leads", str(SCALES[scale]), "--seed", str(SEED), "--format", "parquet",
                "--out", str(directory)])
        marker.write_text(f"seed={SEED}\n")
    return directory


PHASES_CODE = """
import json, sys, time
from datetime import UTC, date, datetime
from pathlib import Path
import flows
from flows.io import OutputStore, load_config
from flows.pipeline import daily_metrics, extract, replay_history, validate, write_day, write_history
config, marks = load_config(None), {}
t = time.perf_counter()
raw = extract.fn(sys.argv[1], config.source); marks["extract"] = time.perf_counter() - t; t = time.perf_counter()
valid = validate.fn(raw, config, datetime.now(UTC))
marks["validate"] = time.perf_counter() - t; t = time.perf_counter()
history = replay_history.fn(valid, config, date.fromisoformat(sys.argv[3]))
marks["classify"] = time.perf_counter() - t; t = time.perf_counter()
day = date.fromisoformat(sys.argv[3])
metrics = daily_metrics.fn(history, day, day); marks["metrics"] = time.perf_counter() - t; t = time.perf_counter()
store = OutputStore(Path(sys.argv[2]))
rows = sum(write_history.fn(history, valid, store).values()) + sum(write_day.fn(history, metrics, day, store).values())
marks["write"] = time.perf_counter() - t
print(json.dumps({"phases": marks, "rows_written": rows, "activities": valid.activities.counts.read}))
"""

FLOOR_CODE = """
import sys, time
from pathlib import Path
import polars as pl
t = time.perf_counter()
leads = pl.read_parquet(Path(sys.argv[1]) / "leads.parquet")
acts = pl.read_parquet(Path(sys.argv[1]) / "activities.parquet")
ordered = acts.sort("lead_id", "occurred_at")
rows = int(sys.argv[3])
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
pl.concat([ordered] * (rows // ordered.height + 1)).head(rows).write_parquet(out / "floor.parquet", compression="zstd")
print(time.perf_counter() - t)
"""


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def bench_scale(scale: str, repeat: int) -> dict[str, Any]:
    """Phases in-process, the whole `funnel run` process, and the floor, `repeat` times each."""
    directory = _input(scale)
    phases: list[dict[str, float]] = []
    phase_rss, run_wall, run_rss, floor = [], [], [], []
    rows = activities = 0
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            _, rss, out = _child([sys.executable, "-c", PHASES_CODE, str(directory), tmp, AS_OF.isoformat()])
            result = json.loads(out.strip().splitlines()[-1])
            phases.append(result["phases"])
            phase_rss.append(rss)
            rows, activities = result["rows_written"], result["activities"]
        with tempfile.TemporaryDirectory() as tmp:
            wall, rss, _ = _child([*FUNNEL, "run", "--as-of", AS_OF.isoformat(), "--input", str(directory),
                                   "--output", tmp])
            run_wall.append(wall)
            run_rss.append(rss)
        with tempfile.TemporaryDirectory() as tmp:
            _, _, out = _child([sys.executable, "-c", FLOOR_CODE, str(directory), tmp, str(rows)])
            floor.append(float(out.strip()))
    medians = {name: _median([p[name] for p in phases]) for name in phases[0]}
    floor_s = _median(floor)
    return {
        "scale": scale, "leads": SCALES[scale], "activities": activities, "rows_written": rows, "runs": repeat,
        "phases_s": medians, "phases_x_floor": {k: round(v / floor_s, 2) for k, v in medians.items()},
        "phases_peak_rss_gb": _median(phase_rss), "floor_s": floor_s,
        "funnel_run_s": _median(run_wall), "funnel_run_peak_rss_gb": _median(run_rss),
    }


def bench_backfill(scale: str, days: int) -> dict[str, Any]:
    """`funnel backfill` over `days` days ending at the as-of date, as a whole process."""
    directory = _input(scale)
    start = date.fromordinal(AS_OF.toordinal() - days + 1)
    with tempfile.TemporaryDirectory() as tmp:
        wall, rss, _ = _child([*FUNNEL, "backfill", "--start", start.isoformat(), "--end", AS_OF.isoformat(),
                               "--input", str(directory), "--output", tmp])
    return {"scale": scale, "days": days, "seconds": round(wall, 1), "peak_rss_gb": round(rss, 2)}


def bench_dask(scale: str, workers: int, single: dict[str, Any] | None) -> dict[str, Any]:
    """`funnel run --workers N` as a whole process, with each worker process's peak RSS."""
    directory = _input(scale)
    with tempfile.TemporaryDirectory() as tmp:
        wall, rss, _ = _child([*FUNNEL, "run", "--as-of", AS_OF.isoformat(), "--input", str(directory),
                               "--output", tmp, "--workers", str(workers)])
        manifest = json.loads(next((Path(tmp) / "runs").glob("*.json")).read_text())
    result = {"scale": scale, "workers": workers, "seconds": round(wall, 1), "driver_peak_rss_gb": round(rss, 2),
              "worker_peak_rss_gb": manifest["execution"]["worker_peak_rss_gb"]}
    if single is not None:
        result |= {"single_process_s": single["funnel_run_s"],
                   "single_process_peak_rss_gb": single["funnel_run_peak_rss_gb"]}
    return result


def _table(results: list[dict[str, Any]], backfills: list[dict[str, Any]], dask: list[dict[str, Any]]) -> str:
    lines = ["| scale | activities | extract | validate | classify | metrics | write | floor | funnel run | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r["phases_s"]
        lines.append(f"| {r['leads']:,} leads | {r['activities']:,} | {p['extract']} s | {p['validate']} s | "
                     f"{p['classify']} s | {p['metrics']} s | {p['write']} s | {r['floor_s']} s | "
                     f"{r['funnel_run_s']} s | {r['funnel_run_peak_rss_gb']} GB |")
    for b in backfills:
        lines.append(f"\nbackfill of {b['days']} days at {b['scale']}: {b['seconds']} s, "
                     f"peak RSS {b['peak_rss_gb']} GB")
    for d in dask:
        single = (f" (single process: {d['single_process_s']} s, peak RSS {d['single_process_peak_rss_gb']} GB)"
                  if "single_process_s" in d else "")
        lines.append(f"\nfunnel run --workers {d['workers']} at {d['scale']}: {d['seconds']} s, driver peak RSS "
                     f"{d['driver_peak_rss_gb']} GB, worker peak RSS {d['worker_peak_rss_gb']} GB{single}")
    by_scale = {r["scale"]: r for r in results}
    if "1m" in by_scale and "2m" in by_scale:
        growth = by_scale["2m"]["funnel_run_s"] / by_scale["1m"]["funnel_run_s"]
        lines.append(f"\ngrowth 2M/1M funnel run: {growth:.2f}x (target <= 2.2x)")
    return "\n".join(lines)


def main() -> None:
    """Run the chosen scales and backfills; print a table; write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="small,1m,2m")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backfill-days", default="30,365", help="comma-separated day counts at 1m; empty: none")
    parser.add_argument("--dask-scale", default="", help="also run this scale on a local Dask cluster; empty: no")
    parser.add_argument("--dask-workers", type=int, default=2)
    args = parser.parse_args()
    results = []
    for scale in args.scales.split(","):
        print(f"benchmarking {scale} ...", flush=True)
        results.append(bench_scale(scale, args.repeat))
        print(json.dumps(results[-1]), flush=True)
    backfills = []
    for days in filter(None, args.backfill_days.split(",")):
        print(f"backfill {days} days ...", flush=True)
        backfills.append(bench_backfill("1m", int(days)))
    dask = []
    if args.dask_scale:
        print(f"dask {args.dask_scale} on {args.dask_workers} workers ...", flush=True)
        single = next((r for r in results if r["scale"] == args.dask_scale), None)
        dask.append(bench_dask(args.dask_scale, args.dask_workers, single))
    table = _table(results, backfills, dask)
    print(table)
    out = BENCH / "results" / f"{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                           "python": platform.python_version()},
                               "results": results, "backfills": backfills, "dask": dask, "table": table},
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
