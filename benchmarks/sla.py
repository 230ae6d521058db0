"""The cost of owners and two handoff SLAs on a nightly run, at the peer's typed 1M/20M input.

Usage: python -m benchmarks.sla [--repeat 2]

The input is the peer's activities with 10% of them turned into `owner_assigned` rows carrying
one of 60 `owner_id`s (made once under data/bench/typed-1m-owners/). Each repeat runs `funnel run`
on it twice, back to back: with the default rules, and with the sample's (the defaults plus two SLAs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import polars as pl

from benchmarks.run import AS_OF, BENCH, _child, typed_input
from flows.settings import DEFAULT_CONFIG

SAMPLE_RULES = Path(__file__).resolve().parent.parent / "data" / "sample" / "funnel.toml"  # defaults + 2 SLAs



def owners_input() -> Path:
    """The 1M/20M typed input with 10% of the activities as assignments (made once)."""
    directory = BENCH / "typed-1m-owners"
    if not (directory / "activities.parquet").exists():
        source = typed_input("1m")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "leads.parquet").symlink_to((source / "leads.parquet").resolve())
        assigned = (pl.col("activity_id").hash(7) % 10) == 0
        owner = pl.format("rep-{}", (pl.col("activity_id").hash(11) % 60).cast(pl.String))
        (pl.scan_parquet(source / "activities.parquet")
         .with_columns(pl.when(assigned).then(pl.lit("owner_assigned")).otherwise(pl.col("activity_type"))
                       .alias("activity_type"), pl.when(assigned).then(owner).alias("owner_id"))
         .sink_parquet(directory / "activities.parquet"))
    return directory


def main() -> None:
    """Time both configs `repeat` times and print the ratio of the medians."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    directory = owners_input()
    with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
        configs = {"default": DEFAULT_CONFIG, "two_slas": SAMPLE_RULES}
        seconds: dict[str, list[float]] = {name: [] for name in configs}
        for i in range(args.repeat):
            for name, config in configs.items():
                out = Path(tmp) / f"{name}-{i}"
                wall, rss, _, _ = _child([sys.executable, "-m", "flows.cli", "run", "--as-of", AS_OF, "--input",
                                       str(directory), "--output", str(out), "--config", str(config),
                                       "--timezone", "Europe/Berlin"], None)
                seconds[name].append(round(wall, 2))
                print(json.dumps({"config": name, "seconds": round(wall, 2), "peak_rss_gb": round(rss, 2)}), flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"default {medians['default']:.2f} s, two SLAs {medians['two_slas']:.2f} s, "
          f"ratio {medians['two_slas'] / medians['default']:.3f}")


if __name__ == "__main__":
    main()
