"""A night with late rows against a night without, at the peer's typed 1M/20M input.

Usage: python -m benchmarks.late [--scale 1m] [--late-share 0.01] [--repeat 1]

Both outputs first publish the ten days before the as-of date by a backfill of an input where
a `late_share` of all activities, taken from those nine days, is missing. Then each runs the
nightly of the as-of date as a whole `funnel run` process: one on that same input (no late
rows: nothing earlier may be rewritten), one on the full input (the missing rows arrive late).
The ratio of the two nights' wall times is the cost of restatement.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from benchmarks.run import AS_OF, BENCH, _child, typed_input
from transforms.calendar import boundary

TZ = "Europe/Berlin"


def _inputs(scale: str, late_share: float, work: Path) -> tuple[Path, Path]:
    """The full input, and one without the late rows (in `work`)."""
    full = typed_input(scale)
    as_of = date.fromisoformat(AS_OF)
    since, until = boundary(as_of - timedelta(days=10), TZ), boundary(as_of - timedelta(days=1), TZ)
    activities = pl.scan_parquet(full / "activities.parquet")
    total = activities.select(pl.len()).collect().item()
    recent = activities.filter(pl.col("occurred_at").is_between(since, until, closed="left")).select("activity_id")
    candidates = recent.collect()
    late = candidates.sample(n=min(int(total * late_share), candidates.height), seed=1)
    early = work / "early"
    early.mkdir()
    (early / "leads.parquet").symlink_to((full / "leads.parquet").resolve())
    activities.join(late.lazy(), on="activity_id", how="anti").sink_parquet(early / "activities.parquet")
    print(f"{late.height:,} of {total:,} activities arrive late ({late.height / total:.2%})", flush=True)
    return full, early


def _night(input_dir: Path, early: Path, work: Path, name: str) -> dict[str, object]:
    """Publish ten days from the early input, then time the as-of date's nightly on `input_dir`."""
    as_of = date.fromisoformat(AS_OF)
    out = work / name
    funnel = [sys.executable, "-m", "flows.cli"]
    _child([*funnel, "backfill", "--start", str(as_of - timedelta(days=10)), "--end", str(as_of - timedelta(days=1)),
            "--input", str(early), "--output", str(out), "--timezone", TZ], None)
    wall, rss, _, _ = _child([*funnel, "run", "--as-of", AS_OF, "--input", str(input_dir), "--output", str(out),
                           "--timezone", TZ], None)
    runs = sorted((out / "runs").glob("*.json"), key=lambda p: json.loads(p.read_text())["ended_at"])
    manifest = json.loads(runs[-1].read_text())
    return {"seconds": round(wall, 2), "peak_rss_gb": round(rss, 2), "dates_written": manifest["dates_written"],
            "phases": manifest["phase_seconds"]}


def main() -> None:
    """Run both nights `repeat` times and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="1m")
    parser.add_argument("--late-share", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
        work = Path(tmp)
        full, early = _inputs(args.scale, args.late_share, work)
        results = []
        for i in range(args.repeat):
            quiet = _night(early, early, work, f"quiet-{i}")
            late = _night(full, early, work, f"late-{i}")
            results.append({"quiet": quiet, "late": late,
                            "ratio": round(float(str(late["seconds"])) / float(str(quiet["seconds"])), 2)})
            print(json.dumps(results[-1]), flush=True)
    target = BENCH / "results" / "late.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
