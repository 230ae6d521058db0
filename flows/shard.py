"""One shard of a run: a set of leads validated and replayed, its part of every dataset written, partials returned.

Every lead's funnel depends only on its own rows, so a run is N shards of leads split by a
stable hash of the normalised lead_id (N = 1 for a small input). The driver splits the input
into shards, in memory (`split_in_memory`) when a local run's input fits its memory budget
twice over, else streamed into shard files (`split_inputs`), and finds the activity_ids that
repeat across shards (`repeated_ids`); everything else happens per shard, in two steps, the
same functions whether a local run calls them in this process or a Dask run on workers:
1. `replay_shard` validates the shard's raw rows (quarantine written per shard), replays its
   leads as of the run's date, writes its part of every lead-grain dataset into the run's
   pending area and returns small partials (table counts, cohort counts, funnel reach, the
   points fingerprint that tells which published dates may have changed);
2. `write_dates`, once the driver knows every date to write, writes the shard's part of those
   dates' snapshot partitions and returns the daily metrics' partials.
Between the steps a shard's replayed history is kept in the process by a run split in memory;
otherwise it is spilled to the pending area, so only the shards being replayed (one per core
locally) hold rows in memory.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final

import polars as pl

from flows.catalog import LEAD_GRAIN, QUARANTINE, SNAPSHOTS
from flows.inputs import InputError, Source, first_line
from flows.store import OutputStore
from transforms.calendar import day_start
from transforms.classify import History, classify
from transforms.metrics import cohort_conversion_parts, daily_funnel, transitions_daily_parts
from transforms.restatement import points_fingerprint
from transforms.rules import FunnelConfig
from transforms.sharding import reached_counts, shard_of
from transforms.validation import (
    RawTable,
    RepeatedIds,
    TableValidation,
    id_hash,
    identifier,
    repeated_activity_ids,
    validate_activities,
    validate_leads,
)

TABLES = ("leads", "activities")
# The frames of a History, spilled between a shard's two steps.
HISTORY_FRAMES = ("leads", "transitions", "intervals", "points", "owners", "clocks")
# Activity ids sorted at once by the duplicate pre-pass (their hashes: 8 bytes each, twice).
IDS_PER_BUCKET = 25_000_000
# Repeating id hashes sent to every shard (8 bytes each); beyond this each shard sorts its own.
MAX_SHARED_HASHES = 1_000_000
_SPILL_COMPRESSION: Final = "lz4"  # work files: written once, read once, soon deleted


@dataclass(frozen=True)
class ShardJob:
    """What every shard of one run is given; picklable, for Dask workers (it carries the repeated ids)."""

    pending_root: str
    shards: int
    config: FunnelConfig
    as_of: date
    run_start: datetime
    fingerprint_from: date
    schemas: dict[str, dict[str, pl.DataType]]  # each raw table's columns, for a shard without rows
    repeated_ids: RepeatedIds | None = None  # activity_ids repeating across shards (None: one shard sees all)
    keep: bool = False  # keep each history in this process between the steps (a run split in memory)

    @property
    def pending(self) -> OutputStore:
        """The run's pending area."""
        return OutputStore(Path(self.pending_root))


@dataclass(frozen=True)
class Replayed:
    """What a shard's replay hands back: partials only, no lead rows."""

    tables: dict[str, dict[str, Any]]
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


def lead_shard(column: str, dtype: pl.DataType, shards: int) -> pl.Expr:
    """The shard of each raw row, from its lead_id normalised as validation normalises it."""
    return shard_of(identifier(column, dtype), shards)


def split_inputs(sources: dict[str, Source], pending: OutputStore, shards: int) -> None:
    """Stream each input table into one folder of Parquet files per lead shard, in the pending area.

    The streaming engine reads the input in morsels and writes each to its shard's files, so
    neither the whole input nor its text is held at once (20M activities: about 0.5 GB).
    """
    for table, source in sources.items():
        dtype = source.frame.collect_schema()["lead_id"]
        try:
            source.frame.with_columns(lead_shard("lead_id", dtype, shards)).sink_parquet(
                pl.PartitionBy(pending.shard_inputs(table), key="_shard", include_key=False),
                mkdir=True, compression=_SPILL_COMPRESSION, statistics=False)
        except pl.exceptions.PolarsError as exc:  # the input's pages are first read here
            raise InputError(f"{source.where}: unreadable: {first_line(exc)}") from exc


def split_in_memory(tables: dict[str, RawTable], shards: int) -> list[dict[str, RawTable]]:
    """Each input table, read whole, as one frame per lead shard: the shards `split_inputs` writes.

    For an input that fits the memory budget twice over: the whole table and its shards are held
    while it is split (20M typed activities: about 2.5 GB for about 1.3 s, where writing and
    reading the shard files took about 5 s). Each whole table is let go once split. The
    malformed CSV lines go with shard 0, as `read_raw_shard` gives them.
    """
    parts: list[dict[str, RawTable]] = [{} for _ in range(shards)]
    for table in list(tables):
        raw = tables.pop(table)
        if shards == 1:
            parts[0][table] = raw
            continue
        shard = raw.frame.select(lead_shard("lead_id", raw.frame.schema["lead_id"], shards)).to_series()
        frames = pl.collect_all([raw.frame.lazy().filter(shard == s) for s in range(shards)])
        for s, frame in enumerate(frames):
            parts[s][table] = RawTable(frame, raw.malformed) if s == 0 else RawTable(frame)
        del raw, shard, frames
    return parts


def _shard_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.parquet")) if directory.is_dir() else []


def read_raw_shard(job: ShardJob, table: str, shard: int, malformed: pl.DataFrame | None = None) -> RawTable:
    """One shard's raw rows of an input table, as `split_inputs` wrote them."""
    files = _shard_files(job.pending.shard_input(table, shard))
    frame = (pl.read_parquet(files, hive_partitioning=False) if files
             else pl.DataFrame(schema=job.schemas[table]))
    return RawTable(frame) if malformed is None else RawTable(frame, malformed)


def shard_files(pending: OutputStore, table: str) -> list[Path]:
    """Every shard file `split_inputs` wrote for a table."""
    return [f for d in sorted(pending.shard_inputs(table).glob("_shard=*")) for f in _shard_files(d)]


def repeated_ids(activities: pl.LazyFrame, config: FunnelConfig, run_start: datetime, rows: int,
                 shard_rows: int) -> RepeatedIds:
    """The activity_ids the duplicate_activity_id rule quarantines, over every shard's activities.

    `activities` holds every shard's raw activities (their files, or the shards in memory),
    `rows` of them. A bounded pre-pass: the 64-bit hashes of the normalised ids that occur
    more than once, found in buckets of the hash of at most `IDS_PER_BUCKET` rows each (one
    column read and sorted per bucket: 20M ids in about 1.3 s, where a group-by took 2.5 s).
    Then the rows with such a hash are read and checked exactly, in groups of about
    `shard_rows` rows, so an input full of repeated ids (an export written twice) needs about
    one shard's memory; only one id repeated on very many rows (they are checked together)
    could need more. Blank ids are left out: their rows are quarantined by a row rule and never
    count as duplicates. The hashes go to the shards too (up to `MAX_SHARED_HASHES`), whose
    exact-duplicate collapse then need not sort their own.
    """
    none = pl.Series("activity_id", [], pl.String)
    if rows == 0:
        return RepeatedIds(none, pl.Series("_h", [], pl.UInt64))
    text = identifier("activity_id", activities.collect_schema()["activity_id"])
    scan = activities.filter(text.is_not_null() & (text != ""))
    key = id_hash(text).alias("_h")
    buckets = max(1, -(-rows // IDS_PER_BUCKET))
    found, candidate_rows = [], 0
    for bucket in range(buckets):
        hashes = scan.select(key).filter(pl.col("_h") % buckets == bucket).collect(engine="streaming")["_h"].sort()
        shared = hashes.filter((hashes == hashes.shift(1)) | (hashes == hashes.shift(-1)))
        candidate_rows += shared.len()
        found.append(shared.unique())
    repeated = pl.concat(found)
    groups = max(1, -(-candidate_rows // max(1, shard_rows)))
    ids = [repeated_activity_ids(scan.filter(key.is_in(part.implode())).collect(engine="streaming"),
                                 config.catalogue, run_start)
           for part in (repeated.filter(repeated % groups == group) for group in range(groups)) if not part.is_empty()]
    return RepeatedIds(pl.concat([none, *ids]).sort(), repeated if repeated.len() <= MAX_SHARED_HASHES else None)


def table_summary(result: TableValidation) -> dict[str, Any]:
    """One table's counts and quarantine reasons, additive over shards."""
    reasons = result.quarantine.select(pl.col("reasons").explode()).group_by("reasons").len().rows()
    return {**result.counts.as_dict(), "quarantine_reasons": dict(reasons)}


def add_summaries(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Table summaries of disjoint shards added up (reasons sorted by name)."""
    total: dict[str, Any] = {"read": 0, "valid": 0, "quarantined": 0, "collapsed": 0}
    reasons: dict[str, int] = {}
    for part in parts:
        for key in total:
            total[key] += part[key]
        for reason, count in part["quarantine_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    return {**total, "quarantine_reasons": dict(sorted(reasons.items()))}


def replay_shard(job: ShardJob, shard: int, inputs: dict[str, RawTable]) -> Replayed:
    """Validate and replay one shard's leads as of the run's date; write its quarantine and lead-grain parts.

    Each raw table is taken out of `inputs` as it is validated, so no raw rows outlive their
    validation. Rerunning a shard rewrites the same part files, so a retry, or a rerun after a
    lost worker, leaves one copy of its rows.
    """
    config, pending = job.config, job.pending
    leads = validate_leads(inputs.pop("leads"), job.run_start, config.personal_columns)
    activities = validate_activities(inputs.pop("activities"), leads.valid, config.catalogue, job.run_start,
                                     job.repeated_ids)
    written = {}
    tables = {}
    for table, checked in (("leads", leads), ("activities", activities)):
        dataset = QUARANTINE[table]
        written[dataset.name] = pending.write_dataset(dataset, dataset.check(checked.quarantine, config), shard,
                                                      day=job.as_of)
        tables[table] = table_summary(checked)
    history = classify(leads.valid.lazy(), activities.valid.lazy(), config, job.as_of)
    del leads, activities
    for dataset in LEAD_GRAIN:
        frame = dataset.check(dataset.frame(history).collect(), config)
        written[dataset.name] = pending.write_dataset(dataset, frame, shard)
    since = day_start(job.fingerprint_from, config.timezone)
    if job.keep:
        _REPLAYED[(job.pending_root, shard)] = replace(history, points=_points_from(history, since))
    else:
        _spill(history, pending.shard_history(shard), since)
    return Replayed(
        tables=tables,
        cohort_conversion=cohort_conversion_parts(history.milestones_dataset(), config).collect(),
        reached=reached_counts(history.transitions, len(config.stages)),
        fingerprint=points_fingerprint(history.points.lazy(), history.leads.lazy(), job.fingerprint_from,
                                       config).collect(),
        written=written,
        peak_rss_gb=peak_rss_gb(),
    )


def _points_from(history: History, since: datetime) -> pl.DataFrame:
    """The scoring points the dates step can count: those from `since` on.

    `since` starts the run's first date to write or check minus the score window, so it is
    never after the first point a snapshot's engagement score can count.
    """
    return history.points.filter(pl.col("occurred_at") >= since)


def _spill(history: History, directory: Path, since: datetime) -> None:
    """Write the frames the dates step reads; of the scoring points, only those from `since` on."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in HISTORY_FRAMES:
        frame: pl.DataFrame = _points_from(history, since) if name == "points" else getattr(history, name)
        frame.write_parquet(directory / f"{name}.parquet", compression=_SPILL_COMPRESSION, statistics=False)


def _unspill(job: ShardJob, shard: int) -> History:
    directory = job.pending.shard_history(shard)
    frames = {name: pl.read_parquet(directory / f"{name}.parquet") for name in HISTORY_FRAMES}
    return History(as_of=job.as_of, config=job.config, **frames)


def write_dates(job: ShardJob, shard: int, dates: list[date]) -> DatesWritten:
    """Write this shard's part of each date's snapshot partition; return the daily metrics' partials."""
    config, pending = job.config, job.pending
    history = _REPLAYED.pop((job.pending_root, shard), None) or _unspill(job, shard)
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
