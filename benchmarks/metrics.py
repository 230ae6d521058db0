"""Time the three metrics datasets for a 365-day range at 1M leads, from one validated history.

Usage: python -m benchmarks.metrics
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime

from benchmarks.run import typed_input
from flows.inputs import read_table
from flows.settings import load_config
from transforms.classify import classify
from transforms.metrics import cohort_conversion, daily_funnel, transitions_daily
from transforms.validation import validate_activities, validate_leads


def main() -> None:
    """Print seconds and rows for daily_funnel, transitions_daily and cohort_conversion over a year."""
    config, directory = load_config(None), typed_input("1m")
    now = datetime.now(UTC)
    leads = validate_leads(read_table(directory, "leads"), now).valid
    acts = validate_activities(read_table(directory, "activities"), leads, config.catalogue, now).valid
    end = date(2025, 11, 15)
    start = date(2024, 11, 16)
    history = classify(leads.lazy(), acts.lazy(), config, end)
    t = time.perf_counter()
    funnel = daily_funnel(history.transitions.lazy(), history.intervals.lazy(), history.leads.lazy(), start, end,
                          config).collect()
    moves = transitions_daily(history.transitions.lazy(), start, end, config).collect()
    cohorts = cohort_conversion(history.milestones_dataset(), end, config).collect()
    seconds = time.perf_counter() - t
    print(f"metrics for {start}..{end}: {seconds:.1f}s; rows daily_funnel {funnel.height:,}, "
          f"transitions_daily {moves.height:,}, cohort_conversion {cohorts.height:,}")


if __name__ == "__main__":
    main()
