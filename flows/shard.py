"""One shard of a run: a set of leads replayed, its part of every dataset written, partials returned.

Every lead's funnel depends only on its own activities, so a run is N shards of leads split by
a stable hash of lead_id (N = 1 for a small input). A shard works in two steps, the same
functions whether a local run calls them in this process or a Dask run on workers:
1. `replay_shard` replays the shard's leads as of the run's date, writes its part of every
   lead-grain dataset into the run's pending area and returns small partials (cohort counts,
   funnel reach, the points fingerprint that tells which published dates may have changed);
2. `write_dates`, once the driver knows every date to write, writes the shard's part of those
   dates' snapshot partitions and returns the daily metrics' partials (counts, and the values
   medians are taken of).
The replayed history is kept in the process between the steps; a worker that did not replay the
shard (a retried or moved task) replays it again from the shard's input files.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import polars as pl

from flows.catalog import LEAD_GRAIN, SNAPSHOTS
from flows.store import OutputStore
from transforms.classify import History, classify
from transforms.metrics import cohort_conversion_parts, daily_funnel, transitions_daily_parts
from transforms.restatement import points_fingerprint
from transforms.rules import FunnelConfig
from transforms.sharding import reached_counts, shard_of


@dataclass(frozen=True)
class Replayed:
    """What a shard's replay hands back: partials only, no lead rows."""

    cohort_conversion: pl.DataFrame
    reached: list[int]
    fingerprint: pl.DataFrame
    written: dict[str, int]
    pid: int = field(default_factory=os.getpid)
    peak_rss_gb: float = 0.0  # the peak of the process so far, this shard included


@dataclass(frozen=True)
class DatesWritten:
    """What a shard hands back for the dates it wrote: the daily metrics' partials."""

    daily_funnel: pl.DataFrame
    transitions_daily: pl.DataFrame
    sla_daily: pl.DataFrame
    written: dict[str, int]
    pid: int = field(default_factory=os.getpid)
    peak_rss_gb: float = 0.0


# Histories replayed in this process, by (pending area, shard), until their dates are written.
_REPLAYED: dict[tuple[str, int], History] = {}


def replay_shard(leads: pl.DataFrame, activities: pl.DataFrame, config: FunnelConfig, as_of: date,
                 pending: OutputStore, shard: int, fingerprint_from: date) -> Replayed:
    """Replay one shard's leads as of `as_of` and write its part of every lead-grain dataset.

    Rerunning a shard rewrites the same part files, so a retry, or a rerun after a lost
    worker, leaves one copy of its rows.
    """
    history = classify(leads.lazy(), activities.lazy(), config, as_of)
    written = {}
    for dataset in LEAD_GRAIN:
        frame = dataset.check(dataset.frame(history).collect(), config)
        written[dataset.name] = pending.write_dataset(dataset, frame, shard)
    _REPLAYED[(str(pending.root), shard)] = history
    return Replayed(
        cohort_conversion=cohort_conversion_parts(history.milestones_dataset(), config).collect(),
        reached=reached_counts(history.transitions, len(config.stages)),
        fingerprint=points_fingerprint(history.points.lazy(), history.leads.lazy(), fingerprint_from,
                                       config).collect(),
        written=written,
        peak_rss_gb=peak_rss_gb(),
    )


def write_dates(config: FunnelConfig, as_of: date, dates: list[date], pending: OutputStore,
                shard: int) -> DatesWritten:
    """Write this shard's part of each date's snapshot partition; return the daily metrics' partials."""
    history = _REPLAYED.pop((str(pending.root), shard), None)
    if history is None:  # not replayed in this process: replay from the shard's input files
        leads, activities = read_shard_inputs(pending, shard)
        history = classify(leads.lazy(), activities.lazy(), config, as_of)
    written = {SNAPSHOTS.name: 0}
    start, end = min(dates), max(dates)
    states = history.snapshot_states(start, end)
    for day in dates:
        snapshot = SNAPSHOTS.check(history.snapshot_day(states, day).collect(), config)
        written[SNAPSHOTS.name] += pending.write_dataset(SNAPSHOTS, snapshot, shard, day)
    in_dates = pl.col("date").is_in(pl.Series(dates, dtype=pl.Date).implode())
    return DatesWritten(
        daily_funnel=daily_funnel(history.transitions.lazy(), history.intervals.lazy(), history.leads.lazy(),
                                  start, end, config).filter(in_dates).collect(),
        transitions_daily=transitions_daily_parts(history.transitions.lazy(), start, end, config)
        .filter(in_dates).collect(),
        sla_daily=history.sla_daily_parts(start, end).filter(in_dates).collect(),
        written=written,
        peak_rss_gb=peak_rss_gb(),
    )


def split(frame: pl.DataFrame, shards: int) -> list[pl.DataFrame]:
    """A validated table split by the shard of its lead_id (one frame when there is one shard)."""
    if shards == 1:
        return [frame]
    ids = frame.select(shard_of("lead_id", shards)).to_series()
    return [frame.filter(ids == shard) for shard in range(shards)]


def write_shard_inputs(leads: pl.DataFrame, activities: pl.DataFrame, pending: OutputStore, shards: int) -> None:
    """The validated tables split by shard into the pending area, for workers to read."""
    for table, frame in (("leads", leads), ("activities", activities)):
        for shard, part in enumerate(split(frame, shards)):
            pending.write_part(part, pending.shard_input(table, shard))


def read_shard_inputs(pending: OutputStore, shard: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One shard's validated leads and activities, as written by `write_shard_inputs`."""
    leads, activities = (pl.read_parquet(pending.shard_input(table, shard)) for table in ("leads", "activities"))
    return leads, activities


def forget(pending: OutputStore) -> None:
    """Drop the histories this process kept for a pending area (a failed run's)."""
    for key in [k for k in _REPLAYED if k[0] == str(pending.root)]:
        del _REPLAYED[key]


def peak_rss_gb() -> float:
    """Peak resident memory of the calling process since it started its program (VmHWM).

    Not getrusage's ru_maxrss: a worker spawned by fork and exec carries its parent's peak
    there, because right after fork it maps every page of the parent.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1e6, 3)  # kB -> GB
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)  # no procfs: an upper bound
