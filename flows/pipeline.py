"""Prefect flows: the nightly run and the backfill. Extract, validate, classify, write."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import polars as pl
from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from flows import DEFAULT_INPUT, DEFAULT_OUTPUT, REPO
from flows.io import OutputStore, TransientInputError, load_config, read_input
from flows.outputs import checked, cohort_frame, history_frames, metric_day_frames, snapshot_frame
from flows.report import write_report
from schemas.quarantine import ActivitiesQuarantineSchema, LeadsQuarantineSchema
from transforms.classify import History, classify
from transforms.config import DaskConfig, FunnelConfig, SourceConfig
from transforms.metrics import (
    cohort_conversion,
    combine_cohort_conversion,
    combine_daily_funnel,
    combine_transitions_daily,
    daily_funnel,
    transitions_daily,
)
from transforms.sharding import reached_counts
from transforms.staging import Staged, stage_activities, stage_leads


@dataclass(frozen=True)
class Inputs:
    """Raw input tables as read."""

    leads: pl.DataFrame
    activities: pl.DataFrame


@dataclass(frozen=True)
class Validated:
    """Both tables after validation."""

    leads: Staged
    activities: Staged


@dataclass
class RunSummary:
    """What a run read, refused and wrote; the body of its manifest."""

    run_id: str
    flow: str
    as_of: date
    start: date
    output: Path
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    report: Path | None = None
    shards: int = 1


@dataclass(frozen=True)
class Published:
    """What the writing part of a run hands back for the manifest and the artifact."""

    written: dict[str, int]
    daily_funnel: pl.DataFrame
    reached: list[int]
    worker_peak_rss_gb: dict[int, float] = field(default_factory=dict)  # per Dask worker process


def default_as_of(timezone: str) -> date:
    """Yesterday in the configured timezone: the last complete local day."""
    return datetime.now(ZoneInfo(timezone)).date() - timedelta(days=1)


def code_version() -> str:
    """Package version plus the git commit the code runs from, when known."""
    version = importlib.metadata.version("funnel")
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{commit}"


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only reads that failed on the connection or the file system, not on wrong names."""
    try:
        state.result()
    except (TransientInputError, OSError):
        return True
    except Exception:  # a final error (wrong table, column, password): fail at once
        return False
    return False


@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=1), retry_condition_fn=_transient,
      cache_policy=NO_CACHE)
def extract(location: str, source: SourceConfig) -> Inputs:
    """Read both input tables (retried with backoff: the only step that touches a flaky outside)."""
    return Inputs(leads=read_input(location, "leads", source), activities=read_input(location, "activities", source))


@task(cache_policy=NO_CACHE)
def validate(inputs: Inputs, config: FunnelConfig, run_start: datetime) -> Validated:
    """Row rules, duplicates and references; every row valid, quarantined or collapsed."""
    leads = stage_leads(inputs.leads, run_start)
    activities = stage_activities(inputs.activities, leads.valid, config.catalogue, run_start)
    return Validated(leads=leads, activities=activities)


@task(cache_policy=NO_CACHE)
def replay_history(valid: Validated, config: FunnelConfig, as_of: date) -> History:
    """One replay of all history up to the as-of boundary."""
    return classify(valid.leads.valid.lazy(), valid.activities.valid.lazy(), config, as_of)


def _add(total: dict[str, int], rows: dict[str, int]) -> None:
    for name, count in rows.items():
        total[name] = total.get(name, 0) + count


def _quarantine_frames(valid: Validated) -> dict[str, pl.DataFrame]:
    """Both tables' quarantined rows, by table, checked."""
    return {table: checked(schema.validate, staged.quarantine, f"quarantine/{table}")
            for table, staged, schema in (("leads", valid.leads, LeadsQuarantineSchema),
                                          ("activities", valid.activities, ActivitiesQuarantineSchema))}


@task(cache_policy=NO_CACHE)
def write_history(history: History, valid: Validated, store: OutputStore) -> dict[str, int]:
    """Whole datasets: transitions, stage_history, milestones, cohort_conversion, quarantine."""
    frames = history_frames(history)
    frames["metrics/cohort_conversion"] = cohort_frame(
        cohort_conversion(frames["milestones"].lazy(), history.as_of, history.config).collect())
    written = {name: store.write_dataset(name, frame) for name, frame in frames.items()}
    for table, frame in _quarantine_frames(valid).items():
        written[f"quarantine/{table}"] = store.write_frame(frame, store.quarantine_dir(table, history.as_of))
    return written


@dataclass(frozen=True)
class DailyMetrics:
    """Daily metrics and snapshot states for a whole date range, computed once, split per date."""

    daily_funnel: pl.DataFrame
    transitions_daily: pl.DataFrame
    states: pl.DataFrame


@task(cache_policy=NO_CACHE)
def daily_metrics(history: History, start: date, end: date) -> DailyMetrics:
    """daily_funnel, transitions_daily and the snapshot states for every date of the range, once."""
    config = history.config
    funnel = daily_funnel(history.transitions.lazy(), history.intervals.lazy(), history.leads.lazy(),
                          start, end, config).collect()
    moves = transitions_daily(history.transitions.lazy(), start, end, config).collect()
    return DailyMetrics(daily_funnel=funnel, transitions_daily=moves, states=history.snapshot_states(start))


@task(cache_policy=NO_CACHE)
def write_day(history: History, metrics: DailyMetrics, day: date, store: OutputStore) -> dict[str, int]:
    """The date partitions of one day: snapshot, daily funnel, daily transitions."""
    frames = {"snapshots": snapshot_frame(history, metrics.states, day),
              **metric_day_frames(metrics.daily_funnel, metrics.transitions_daily, day)}
    return {name: store.write_partition(name, day, frame) for name, frame in frames.items()}


def _table_summary(staged: Staged) -> dict[str, Any]:
    reasons = (
        staged.quarantine.select(pl.col("reasons").explode()).group_by("reasons").len()
        .sort("reasons").rows()
    )
    return {**staged.counts.as_dict(), "quarantine_reasons": dict(reasons)}


def _funnel_markdown(summary: RunSummary, config: FunnelConfig, published: Published) -> str:
    """The run's numbers and the funnel of the as-of date, for the Prefect UI."""
    today = (
        published.daily_funnel.filter(pl.col("date") == summary.as_of)
        .group_by("stage", maintain_order=True).agg(pl.col("in_stage").sum())
    )
    owners = {s.name: s.owner_team for s in config.stages}
    lines = [f"# Funnel run {summary.run_id} ({summary.flow}), as of {summary.as_of}", "",
             "| table | read | valid | quarantined | collapsed |", "|---|---|---|---|---|"]
    lines += [f"| {t} | {c['read']} | {c['valid']} | {c['quarantined']} | {c['collapsed']} |"
              for t, c in summary.tables.items()]
    lines += ["", "| stage | owner | leads in stage |", "|---|---|---|"]
    lines += [f"| {s} | {owners[s]} | {n} |" for s, n in today.rows()]
    reached = published.reached
    names = config.stage_names
    lines += ["", "| from -> to | reached from | reached to | conversion |", "|---|---|---|---|"]
    lines += [f"| {names[i]} -> {names[i + 1]} | {reached[i]} | {reached[i + 1]} | "
              f"{(reached[i + 1] / reached[i] if reached[i] else 0):.1%} |" for i in range(len(names) - 1)]
    lines += ["", "| dataset | rows written |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(summary.written.items())]
    return "\n".join(lines)


def _single(valid: Validated, config: FunnelConfig, store: OutputStore, start: date, end: date,
            on_day: Callable[[date], None] | None) -> Published:
    """One process: replay once, write the whole datasets, then every date's partitions."""
    history = replay_history(valid, config, end)
    metrics = daily_metrics(history, start, end)
    written = write_history(history, valid, store)
    days = pl.date_range(start, end, eager=True).to_list()
    futures = write_day.map(unmapped(history), unmapped(metrics), days, unmapped(store))
    for day, future in zip(days, futures, strict=True):
        _add(written, future.result())
        if on_day is not None:
            on_day(day)
    return Published(written=written, daily_funnel=metrics.daily_funnel,
                     reached=reached_counts(history.transitions, len(config.stages)))


@task(cache_policy=NO_CACHE)
def split_input(valid: Validated, staged: OutputStore, shards: int) -> None:
    """The validated tables, split by shard into the run's staging area."""
    from flows.shards import stage_input

    stage_input(valid.leads.valid, valid.activities.valid, staged, shards)


def _sharded(valid: Validated, config: FunnelConfig, settings: DaskConfig, store: OutputStore, run_id: str,
             start: date, end: date, on_day: Callable[[date], None] | None) -> Published:
    """Shards on Dask, each writing its parts into a staging area, then one commit.

    Metrics are combined from the shards' partial aggregates. Nothing is published unless
    every shard succeeded.
    """
    from flows.shards import dask_runner, replay_shards

    shards = settings.shard_count
    staged = store.staging(run_id)
    try:
        split_input(valid, staged, shards)
        runner = cast(TaskRunner[PrefectFuture[Any]], dask_runner(settings))
        results = replay_shards.with_options(task_runner=runner)(
            shards, str(staged.root), config, end, start, end)
        written: dict[str, int] = {}
        for result in results:
            _add(written, result.written)
        funnel = combine_daily_funnel([r.daily_funnel for r in results], config)
        moves = combine_transitions_daily([r.transitions_daily.lazy() for r in results], config).collect()
        cohort = cohort_frame(combine_cohort_conversion([r.cohort_conversion.lazy() for r in results], end,
                                                        config).collect())
        cohort_dir = staged.dataset_dir("metrics/cohort_conversion")
        written["metrics/cohort_conversion"] = staged.write_part(cohort, cohort_dir)
        for table, frame in _quarantine_frames(valid).items():
            written[f"quarantine/{table}"] = staged.write_part(frame, staged.quarantine_dir(table, end))
        for day in pl.date_range(start, end, eager=True).to_list():
            for name, frame in metric_day_frames(funnel, moves, day).items():
                _add(written, {name: staged.write_partition_part(name, day, frame)})
            if on_day is not None:
                on_day(day)
        store.commit(staged)
    finally:
        shutil.rmtree(staged.root, ignore_errors=True)
    reached = [sum(column) for column in zip(*(r.reached for r in results), strict=True)]
    peaks: dict[int, float] = {}
    for result in results:
        peaks[result.worker_pid] = max(peaks.get(result.worker_pid, 0.0), result.worker_peak_rss_gb)
    return Published(written=written, daily_funnel=funnel, reached=reached, worker_peak_rss_gb=peaks)


def run_pipeline(flow_name: str, start: date | None, end: date | None, input_location: str | None, output_dir: Path,
                 config_path: Path | None, timezone: str | None,
                 on_day: Callable[[date], None] | None = None, workers: int | None = None,
                 dask_address: str | None = None) -> RunSummary:
    """Everything a run does; the two flows differ only in their date range."""
    config = load_config(config_path, timezone)  # refused before any data is read
    settings = config.dask.overridden(workers, dask_address)
    location = input_location or config.source.uri or str(DEFAULT_INPUT)
    end = end or default_as_of(config.timezone)
    start = start or end
    if start > end:
        raise ValueError(f"--start {start} is after --end {end}")
    store = OutputStore(output_dir)
    run_start = datetime.now(UTC)
    summary = RunSummary(run_id=f"{run_start:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}", flow=flow_name,
                         as_of=end, start=start, output=output_dir,
                         shards=settings.shard_count if settings.enabled else 1)
    with store.locked():
        store.clear_tmp()
        valid = validate(extract(location, config.source), config, run_start)
        summary.tables = {"leads": _table_summary(valid.leads), "activities": _table_summary(valid.activities)}
        if settings.enabled:
            published = _sharded(valid, config, settings, store, summary.run_id, start, end, on_day)
        else:
            published = _single(valid, config, store, start, end, on_day)
        summary.written = published.written
        manifest = {
            "run_id": summary.run_id, "flow": flow_name, "as_of": end.isoformat(),
            "dates": {"start": start.isoformat(), "end": end.isoformat()},
            "started_at": run_start.isoformat(), "ended_at": datetime.now(UTC).isoformat(),
            "timezone": config.timezone, "config_hash": config.config_hash, "code_version": code_version(),
            "input": location, "tables": summary.tables, "rows_written": summary.written,
            "execution": {"shards": summary.shards, "dask_workers": settings.workers,
                          "dask_address": settings.address,
                          "worker_peak_rss_gb": sorted(published.worker_peak_rss_gb.values())},
        }
        store.write_manifest(summary.run_id, manifest)
        summary.report = write_report(store, end, config)
    create_markdown_artifact(_funnel_markdown(summary, config, published), key="funnel-run",
                             description=f"Funnel as of {end}")
    return summary


# Two workers for two cores: each date task holds one day's snapshot in memory, and Polars
# already uses every core inside a task; an unbounded pool ran all 365 days of a backfill at
# once (21 GB at 1M leads).
DATE_WORKERS = 2


def _date_runner() -> TaskRunner[PrefectFuture[Any]]:
    return cast(TaskRunner[PrefectFuture[Any]], ThreadPoolTaskRunner(max_workers=DATE_WORKERS))


@flow(name="funnel-nightly", log_prints=False, task_runner=_date_runner())
def nightly(as_of: date | None = None, input_location: str | None = None, output_dir: str = str(DEFAULT_OUTPUT),
            config_path: str | None = None, timezone: str | None = None, workers: int | None = None,
            dask_address: str | None = None) -> RunSummary:
    """Recompute the whole history as of one date and write every dataset and its partitions.

    `workers` / `dask_address` shard the replay on a local or an existing Dask cluster.
    """
    return run_pipeline("nightly", None, as_of, input_location, Path(output_dir),
                        Path(config_path) if config_path else None, timezone, None, workers, dask_address)


@flow(name="funnel-backfill", log_prints=False, task_runner=_date_runner())
def backfill(start: date, end: date, input_location: str | None = None, output_dir: str = str(DEFAULT_OUTPUT),
             config_path: str | None = None, timezone: str | None = None,
             on_day: Callable[[date], None] | None = None, workers: int | None = None,
             dask_address: str | None = None) -> RunSummary:
    """Write the partitions of every date from start to end from one history as of end."""
    return run_pipeline("backfill", start, end, input_location, Path(output_dir),
                        Path(config_path) if config_path else None, timezone, on_day, workers, dask_address)
