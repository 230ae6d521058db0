"""Prefect flows: the nightly run and the backfill. Extract, validate, classify, write."""

from __future__ import annotations

import importlib.metadata
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pandera.polars as pa
import polars as pl
from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from flows.io import OutputStore, TransientInputError, load_config, read_input
from flows.report import write_report
from schemas.cohort_conversion import CohortConversionModel
from schemas.daily_funnel import DailyFunnelModel
from schemas.milestones import milestones_schema
from schemas.quarantine import ActivitiesQuarantineSchema, LeadsQuarantineSchema
from schemas.snapshots import SnapshotsModel
from schemas.stage_history import StageHistoryModel
from schemas.transitions import TransitionsModel
from schemas.transitions_daily import TransitionsDailyModel
from transforms.classify import History, classify
from transforms.config import FunnelConfig, SourceConfig
from transforms.metrics import cohort_conversion, daily_funnel, transitions_daily
from transforms.milestones import milestone_columns
from transforms.staging import Staged, stage_activities, stage_leads

REPO = Path(__file__).resolve().parent.parent
DEFAULT_INPUT = REPO / "data" / "sample"
DEFAULT_OUTPUT = REPO / "data" / "output"
Validator = Callable[[pl.DataFrame], pl.DataFrame]


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


def _checked(validator: Validator, frame: pl.DataFrame, name: str) -> pl.DataFrame:
    try:
        return validator(frame)
    except (pa.errors.SchemaError, pa.errors.SchemaErrors) as exc:
        raise RuntimeError(f"output {name} breaks its schema, nothing written for it: {exc}") from exc


@task(cache_policy=NO_CACHE)
def write_history(history: History, valid: Validated, store: OutputStore) -> dict[str, int]:
    """Whole datasets: transitions, stage_history, milestones, cohort_conversion, quarantine."""
    config = history.config
    milestones = history.milestones_dataset().collect()
    datasets: list[tuple[str, pl.DataFrame, Validator]] = [
        ("transitions", history.transitions_dataset().collect(), TransitionsModel.validate),
        ("stage_history", history.stage_history_dataset().collect(), StageHistoryModel.validate),
        ("milestones", milestones, milestones_schema(milestone_columns(config)).validate),
        ("metrics/cohort_conversion", cohort_conversion(milestones.lazy(), history.as_of, config).collect(),
         CohortConversionModel.validate),
    ]
    checked = [(name, _checked(check, frame, name)) for name, frame, check in datasets]
    written = {name: store.write_dataset(name, frame) for name, frame in checked}
    for table, staged, schema in (("leads", valid.leads, LeadsQuarantineSchema),
                                  ("activities", valid.activities, ActivitiesQuarantineSchema)):
        frame = _checked(schema.validate, staged.quarantine, f"quarantine/{table}")
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
    parts: list[tuple[str, pl.DataFrame, Validator]] = [
        ("snapshots", history.snapshot_day(metrics.states, day).collect(), SnapshotsModel.validate),
        ("metrics/daily_funnel", metrics.daily_funnel.filter(pl.col("date") == day), DailyFunnelModel.validate),
        ("metrics/transitions_daily", metrics.transitions_daily.filter(pl.col("date") == day),
         TransitionsDailyModel.validate),
    ]
    checked = [(name, _checked(check, frame, name)) for name, frame, check in parts]
    return {name: store.write_partition(name, day, frame) for name, frame in checked}


def _table_summary(staged: Staged) -> dict[str, Any]:
    reasons = (
        staged.quarantine.select(pl.col("reasons").explode()).group_by("reasons").len()
        .sort("reasons").rows()
    )
    return {**staged.counts.as_dict(), "quarantine_reasons": dict(reasons)}


def _funnel_markdown(summary: RunSummary, history: History, metrics: DailyMetrics) -> str:
    """The run's numbers and the funnel of the as-of date, for the Prefect UI."""
    today = (
        metrics.daily_funnel.filter(pl.col("date") == summary.as_of)
        .group_by("stage", maintain_order=True).agg(pl.col("in_stage").sum())
    )
    owners = {s.name: s.owner_team for s in history.config.stages}
    lines = [f"# Funnel run {summary.run_id} ({summary.flow}), as of {summary.as_of}", "",
             "| table | read | valid | quarantined | collapsed |", "|---|---|---|---|---|"]
    lines += [f"| {t} | {c['read']} | {c['valid']} | {c['quarantined']} | {c['collapsed']} |"
              for t, c in summary.tables.items()]
    lines += ["", "| stage | owner | leads in stage |", "|---|---|---|"]
    lines += [f"| {s} | {owners[s]} | {n} |" for s, n in today.rows()]
    reached = [history.transitions.filter(pl.col("to_rank") >= k)["lead_key"].n_unique()
               for k in range(len(history.config.stages))]
    names = history.config.stage_names
    lines += ["", "| from -> to | reached from | reached to | conversion |", "|---|---|---|---|"]
    lines += [f"| {names[i]} -> {names[i + 1]} | {reached[i]} | {reached[i + 1]} | "
              f"{(reached[i + 1] / reached[i] if reached[i] else 0):.1%} |" for i in range(len(names) - 1)]
    lines += ["", "| dataset | rows written |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(summary.written.items())]
    return "\n".join(lines)


def run_pipeline(flow_name: str, start: date | None, end: date | None, input_location: str | None, output_dir: Path,
                 config_path: Path | None, timezone: str | None,
                 on_day: Callable[[date], None] | None = None) -> RunSummary:
    """Everything a run does; the two flows differ only in their date range."""
    config = load_config(config_path, timezone)  # refused before any data is read
    location = input_location or config.source.uri or str(DEFAULT_INPUT)
    end = end or default_as_of(config.timezone)
    start = start or end
    if start > end:
        raise ValueError(f"--start {start} is after --end {end}")
    store = OutputStore(output_dir)
    run_start = datetime.now(UTC)
    summary = RunSummary(run_id=f"{run_start:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}", flow=flow_name,
                         as_of=end, start=start, output=output_dir)
    with store.locked():
        store.clear_tmp()
        valid = validate(extract(location, config.source), config, run_start)
        summary.tables = {"leads": _table_summary(valid.leads), "activities": _table_summary(valid.activities)}
        history = replay_history(valid, config, end)
        metrics = daily_metrics(history, start, end)
        summary.written = write_history(history, valid, store)
        days = pl.date_range(start, end, eager=True).to_list()
        futures = write_day.map(unmapped(history), unmapped(metrics), days, unmapped(store))
        for day, future in zip(days, futures, strict=True):
            for name, rows in future.result().items():
                summary.written[name] = summary.written.get(name, 0) + rows
            if on_day is not None:
                on_day(day)
        manifest = {
            "run_id": summary.run_id, "flow": flow_name, "as_of": end.isoformat(),
            "dates": {"start": start.isoformat(), "end": end.isoformat()},
            "started_at": run_start.isoformat(), "ended_at": datetime.now(UTC).isoformat(),
            "timezone": config.timezone, "config_hash": config.config_hash, "code_version": code_version(),
            "input": location, "tables": summary.tables, "rows_written": summary.written,
        }
        store.write_manifest(summary.run_id, manifest)
        summary.report = write_report(store, end, config)
    create_markdown_artifact(_funnel_markdown(summary, history, metrics), key="funnel-run",
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
            config_path: str | None = None, timezone: str | None = None) -> RunSummary:
    """Recompute the whole history as of one date and write every dataset and its partitions."""
    return run_pipeline("nightly", None, as_of, input_location, Path(output_dir),
                        Path(config_path) if config_path else None, timezone)


@flow(name="funnel-backfill", log_prints=False, task_runner=_date_runner())
def backfill(start: date, end: date, input_location: str | None = None, output_dir: str = str(DEFAULT_OUTPUT),
             config_path: str | None = None, timezone: str | None = None,
             on_day: Callable[[date], None] | None = None) -> RunSummary:
    """Write the partitions of every date from start to end from one history as of end."""
    return run_pipeline("backfill", start, end, input_location, Path(output_dir),
                        Path(config_path) if config_path else None, timezone, on_day)
