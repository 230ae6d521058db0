"""Phase timings of one nightly computation on a generated input directory, in-process.

Usage: python benchmarks/phases.py INPUT_DIR [AS_OF]
"""

from __future__ import annotations

import itertools
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

from flows.io import load_config, read_table
from transforms.classify import classify
from transforms.staging import stage_activities, stage_leads


def main() -> None:
    """Print seconds per phase: read, validate leads, validate activities, replay, datasets."""
    directory = Path(sys.argv[1])
    as_of = date.fromisoformat(sys.argv[2]) if len(sys.argv) > 2 else date(2026, 10, 31)
    config = load_config(None)
    run_start = datetime.now(UTC)
    marks = [("start", time.perf_counter())]
    leads_raw, acts_raw = read_table(directory, "leads"), read_table(directory, "activities")
    marks.append(("read", time.perf_counter()))
    leads = stage_leads(leads_raw, run_start)
    marks.append(("validate leads", time.perf_counter()))
    acts = stage_activities(acts_raw, leads.valid, config.catalogue, run_start)
    marks.append((f"validate {acts.counts.read:,} activities", time.perf_counter()))
    history = classify(leads.valid.lazy(), acts.valid.lazy(), config, as_of)
    marks.append(("replay", time.perf_counter()))
    for frame in (history.transitions_dataset(), history.stage_history_dataset(), history.milestones_dataset(),
                  history.snapshots_dataset(as_of, as_of)):
        frame.collect()
    marks.append(("four datasets", time.perf_counter()))
    for (_, before), (name, after) in itertools.pairwise(marks):
        print(f"{name:<32} {after - before:6.1f}s")


if __name__ == "__main__":
    main()
