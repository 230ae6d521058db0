"""The benchmark: `funnel run` against the DuckDB timing peer, back to back, on the same typed input.

Usage: python -m benchmarks.run [--scales 1m] [--repeat 2] [--timezone Europe/Berlin]
                                [--memory-limit-gb 8] [--shards N] [--workers N] [--no-peer]

Inputs come from the peer's generator (`../shared/bench/gen_big.py`: typed, valid Parquet) and
are cached under data/bench/typed-<scale>/. Every measurement is a fresh process: wall time and
peak RSS (`wait4`, the process and its waited-for children) are recorded, and for `funnel run`
the phase times, shards and per-process peaks (driver, Dask workers) from its run manifest.
With --memory-limit-gb both run inside a cgroup v1 memory limit; the cgroup's own peak is
reported beside the RSS, as it also counts the page cache of the files a run writes. Results
are printed and written as JSON to data/bench/results/.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "data" / "bench"
PEER = REPO.parent / "shared" / "bench"
SCALES = {"small": (100_000, 2_000_000), "1m": (1_000_000, 20_000_000), "2m": (2_000_000, 40_000_000),
          "5m": (5_000_000, 100_000_000)}
AS_OF = "2025-11-15"
CGROUP = Path("/sys/fs/cgroup/memory/funnel-bench")


def _child(cmd: list[str], limit_gb: float | None) -> tuple[float, float, str, float | None, float]:
    """Run a command (inside the memory cgroup if asked).

    Wall seconds, peak RSS in GB, stdout, cgroup peak, and CPU seconds (user + system, the process
    and its waited-for children): on a shared machine the CPU time moves less than the wall time.
    """
    if limit_gb is not None:
        CGROUP.mkdir(exist_ok=True)
        (CGROUP / "memory.limit_in_bytes").write_text(str(int(limit_gb * 2**30)))
        (CGROUP / "memory.max_usage_in_bytes").write_text("0")
        cmd = ["sh", "-c", f'echo $$ > {CGROUP}/cgroup.procs && exec "$@"', "sh", *cmd]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(cmd[:6])} ... failed: {err.read().strip().splitlines()[-3:]}")
        rss = usage.ru_maxrss / 1e6  # the largest single process of the run
        cpu = usage.ru_utime + usage.ru_stime
        cgroup = None
        if limit_gb is not None:  # every process of the run, and the page cache it caused
            cgroup = round(int((CGROUP / "memory.max_usage_in_bytes").read_text()) / 1e9, 2)
        return wall, rss, out.read(), cgroup, cpu


def typed_input(scale: str) -> Path:
    """The peer generator's typed Parquet input of a scale, made once."""
    leads, activities = SCALES[scale]
    directory = BENCH / f"typed-{scale}"
    if not (directory / "activities.parquet").exists():
        print(f"generating {scale}: {leads:,} leads, {activities:,} activities ...", flush=True)
        _child([sys.executable, str(PEER / "gen_big.py"), str(directory), str(leads), str(activities)], None)
    return directory


def bench_scale(scale: str, repeat: int, timezone: str, limit_gb: float | None, shards: int | None,
                peer: bool, workers: int | None = None) -> dict[str, Any]:
    """The peer and `funnel run`, back to back, `repeat` times."""
    directory = typed_input(scale)
    runs: list[dict[str, Any]] = []
    for _ in range(repeat):
        row: dict[str, Any] = {}
        if peer:
            with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
                wall, rss, _, cgroup, cpu = _child([sys.executable, str(PEER / "peer_duckdb.py"),
                                               str(directory / "leads.parquet"), str(directory / "activities.parquet"),
                                               tmp, AS_OF, timezone], limit_gb)
                row["peer"] = {"seconds": round(wall, 2), "cpu_seconds": round(cpu, 1), "peak_rss_gb": round(rss, 2),
                               "cgroup_peak_gb": cgroup}
        with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
            cmd = [sys.executable, "-m", "flows.cli", "run", "--as-of", AS_OF, "--input", str(directory),
                   "--output", tmp, "--timezone", timezone]
            if shards:
                cmd += ["--shards", str(shards)]
            if workers:
                cmd += ["--workers", str(workers)]
            wall, rss, _, cgroup, cpu = _child(cmd, limit_gb)
            manifest = json.loads(next((Path(tmp) / "runs").glob("*.json")).read_text())
            execution = manifest["execution"]
            row["funnel"] = {"seconds": round(wall, 2), "cpu_seconds": round(cpu, 1), "peak_rss_gb": round(rss, 2),
                             "cgroup_peak_gb": cgroup,
                             "phases": manifest.get("phase_seconds", {}), "shards": execution["shards"],
                             "memory_budget_gb": execution.get("memory_budget_gb"),
                             "driver_peak_rss_gb": execution["driver_peak_rss_gb"],
                             "worker_peak_rss_gb": execution["worker_peak_rss_gb"]}
        print(json.dumps(row), flush=True)
        runs.append(row)
    summary: dict[str, Any] = {"scale": scale, "leads": SCALES[scale][0], "activities": SCALES[scale][1],
                               "runs": runs}
    funnel = statistics.median(r["funnel"]["seconds"] for r in runs)
    summary["funnel_median_s"] = round(funnel, 2)
    summary["funnel_peak_rss_gb"] = max(r["funnel"]["peak_rss_gb"] for r in runs)
    if peer:
        summary["peer_median_s"] = round(statistics.median(r["peer"]["seconds"] for r in runs), 2)
        summary["ratio"] = round(funnel / summary["peer_median_s"], 2)
    return summary


def main() -> None:
    """Run the benchmark and write its results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="1m")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--timezone", default="Europe/Berlin")
    parser.add_argument("--memory-limit-gb", type=float, default=None)
    parser.add_argument("--shards", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="run funnel on a local Dask cluster of N workers")
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
               "started": datetime.now(UTC).isoformat(), "as_of": AS_OF, "timezone": args.timezone,
               "memory_limit_gb": args.memory_limit_gb,
               "workers": args.workers,
               "scales": [bench_scale(s, args.repeat, args.timezone, args.memory_limit_gb, args.shards,
                                      not args.no_peer, args.workers) for s in args.scales.split(",")]}
    target = BENCH / "results" / f"{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2) + "\n")
    for scale in results["scales"]:
        peer = f", peer {scale['peer_median_s']} s, ratio {scale['ratio']}" if "ratio" in scale else ""
        print(f"{scale['scale']}: funnel run {scale['funnel_median_s']} s, {scale['funnel_peak_rss_gb']} GB{peer}")
    print(f"results: {target}")


if __name__ == "__main__":
    main()
