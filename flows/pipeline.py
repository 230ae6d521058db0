"""Prefect flows: the nightly run and the backfill, one execution path for both.

Scan the input, choose the lead shards from its size and the memory budget, stream it into
shard files when there is more than one, validate and replay each shard (in this process or
on Dask, the same `flows/shard.py`), guard against a collapsed input, combine the shards'
partial metrics, build the report and the manifest, all in the run's pending area, then
commit once.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows import DEFAULT_INPUT, DEFAULT_OUTPUT, REPO
from flows.catalog import (
    COHORT_CONVERSION,
    DAILY_FUNNEL,
    DATED,
    LEAD_GRAIN,
    SLA_DAILY,
    SNAPSHOTS,
    TRANSITIONS_DAILY,
)
from flows.inputs import Source, TransientInputError, scan_input
from flows.lineage import Lineage
from flows.memory import budget_gb, cores, shards_for, split_fits_in_memory
from flows.quality import QualityError, emit_run_completed, quality_violations
from flows.report import write_report
from flows.settings import (
    GuardConfig,
    RunSettings,
    Settings,
    SourceConfig,
    load_settings,
    output_location,
    redacted_location,
)
from flows.shard import (
    TABLES,
    DatesWritten,
    Replayed,
    ShardJob,
    add_summaries,
    forget,
    peak_rss_gb,
    read_raw_shard,
    repeated_ids,
    replay_shard,
    shard_files,
    split_in_memory,
    split_inputs,
    write_dates,
)
from flows.store import SCRATCH, OutputStore, Store, open_store
from transforms.calendar import boundary
from transforms.metrics import combine_cohort_conversion, combine_daily_funnel, combine_transitions_daily
from transforms.restatement import combine_fingerprints, earliest_change, first_changed_date, same_rows
from transforms.rules import FunnelConfig
from transforms.sla import combine_sla_daily
from transforms.validation import RawTable

DEFAULT_REMOTE_SHARDS = 8


class CollapsedInputError(RuntimeError):
    """The input collapsed (no valid lead, far fewer than last time, mostly quarantined): nothing published."""


@dataclass
class RunSummary:
    """What a run read, refused and wrote; the body of its manifest."""

    run_id: str
    flow: str
    as_of: date
    start: date
    output: Path | str
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    report: Path | str | None = None
    shards: int = 1
    memory_budget_gb: float = 0.0
    dates: dict[str, list[str]] = field(default_factory=dict)  # written, by reason


def default_as_of(timezone: str, now: datetime | None = None) -> date:
    """The day before the run's scheduled start (or now) in the configured timezone.

    Inside a Prefect flow run the scheduled start is used, so a late or retried run still
    publishes the date it was scheduled for.
    """
    if now is None:
        from prefect.runtime import flow_run

        scheduled = flow_run.scheduled_start_time
        now = scheduled if isinstance(scheduled, datetime) else datetime.now(UTC)
    return now.astimezone(ZoneInfo(timezone)).date() - timedelta(days=1)


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
def extract(location: str, source: SourceConfig, spill: str) -> dict[str, Source]:
    """Find and scan both input tables, their types checked; a database table is streamed into `spill`.

    Retried with backoff: the only step that touches a flaky outside.
    """
    return {table: scan_input(location, table, source, Path(spill)) for table in TABLES}


def guard(tables: dict[str, dict[str, Any]], limits: GuardConfig, last_valid_leads: int | None) -> None:
    """Refuse to publish a collapsed input (FUNNEL_SPEC.md section 4); --force skips this."""
    leads = tables["leads"]
    if leads["valid"] == 0:
        raise CollapsedInputError(f"input has no valid lead ({leads['read']} read, {leads['quarantined']} "
                                  "quarantined): nothing published (--force publishes anyway)")
    if last_valid_leads and leads["valid"] < limits.min_lead_ratio * last_valid_leads:
        raise CollapsedInputError(f"input has {leads['valid']} valid leads, fewer than {limits.min_lead_ratio:.0%} "
                                  f"of the last published run's {last_valid_leads}: nothing published "
                                  "(--force publishes anyway)")
    for table in TABLES:
        counts = tables[table]
        if counts["read"] and counts["quarantined"] / counts["read"] > limits.max_quarantine_share:
            raise CollapsedInputError(f"{table}: {counts['quarantined']} of {counts['read']} rows quarantined, more "
                                      f"than {limits.max_quarantine_share:.0%}: nothing published (--force "
                                      "publishes anyway)")


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def replay(job: ShardJob, shard: int, inputs: dict[str, RawTable] | None = None,
           malformed: dict[str, pl.DataFrame] | None = None) -> Replayed:
    """One shard's validation and replay: its raw rows given in-process, or read from the pending area.

    Given rows are taken out of `inputs` as they are validated, so they are not kept alive.
    """
    if inputs is None:
        inputs = {table: read_raw_shard(job, table, shard, (malformed or {}).get(table)) for table in TABLES}
    return replay_shard(job, shard, inputs)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def dates_of_shard(job: ShardJob, shard: int, dates: list[date]) -> DatesWritten:
    """One shard's part of every date partition the run writes."""
    return write_dates(job, shard, dates)


def shard_count(run: RunSettings, activities: int) -> int:
    """Shards of this run: as configured, else enough that each fits the memory budget.

    On local Dask workers the budget is shared by the workers, which replay shards at the same
    time. On a remote cluster it is each worker's: set `[run] memory_gb` there, since the
    default is measured on the driver's machine.
    """
    if run.shards:
        return run.shards
    budget = budget_gb(run.memory_gb)
    if run.dask.address:
        return max(DEFAULT_REMOTE_SHARDS, shards_for(activities, budget))
    if run.dask.workers:
        return max(run.dask.workers, shards_for(activities, budget / run.dask.workers))
    return shards_for(activities, budget, cores())


@dataclass
class DatePlan:
    """Which date partitions a run writes, and why (FUNNEL_SPEC.md section 4)."""

    asked: list[date]  # the run's own dates: D, or S..E of a backfill
    catch_up: list[date]  # after the last published date, up to the run's first date
    rules_changed: list[date]  # every other published date, when the rules' hash changed
    maybe_changed: list[date]  # published dates the new input may have changed; kept only if they did
    late_rows: list[date] = field(default_factory=list)  # those of them whose rows did change

    @property
    def dates(self) -> list[date]:
        """Every date computed, in order."""
        return sorted({*self.asked, *self.catch_up, *self.rules_changed, *self.maybe_changed})

    def as_dict(self) -> dict[str, list[str]]:
        """For the manifest: the dates written, by reason."""
        return {reason: [d.isoformat() for d in days] for reason, days in (
            ("asked", self.asked), ("catch_up", self.catch_up), ("rules_changed", self.rules_changed),
            ("late_rows", self.late_rows))}


def plan_dates(flow_name: str, store: Store, config: FunnelConfig, run: RunSettings, start: date,
               end: date, force: bool) -> tuple[DatePlan, list[date]]:
    """The run's dates, catch-up and rules-changed restatement; and the published dates still to check."""
    asked = pl.date_range(start, end, eager=True).to_list()
    published = [d for d in store.published_dates(SNAPSHOTS) if d <= end and d not in set(asked)]
    last_date = max(store.published_dates(SNAPSHOTS), default=None)
    catch_up = []
    if last_date is not None and last_date < start - timedelta(days=1):
        catch_up = pl.date_range(last_date + timedelta(days=1), start - timedelta(days=1), eager=True).to_list()
        if len(catch_up) > run.max_catch_up_days and not force:
            raise ValueError(f"{len(catch_up)} unpublished dates since {last_date} exceed run.max_catch_up_days "
                             f"({run.max_catch_up_days}); run `funnel backfill --start {catch_up[0]} --end {end}` "
                             "or raise the limit")
    manifests = store.manifests()
    if manifests and published and manifests[-1]["config_hash"] != config.config_hash:
        if flow_name == "nightly" and run.on_rules_change == "refuse":
            raise ValueError(f"the rules changed since the last run ({manifests[-1]['config_hash']} -> "
                             f"{config.config_hash}); restate every published date with `funnel backfill --start "
                             f"{min(published)} --end {end}`")
        return DatePlan(asked, catch_up, published, []), []
    return DatePlan(asked, catch_up, [], []), published


def _published_fingerprint(manifests: list[dict[str, Any]]) -> pl.DataFrame | None:
    if not manifests or "points_fingerprint" not in manifests[-1]:
        return None
    rows = manifests[-1]["points_fingerprint"]
    return pl.DataFrame(rows, schema={"date": pl.String, "_lo": pl.Int64, "_hi": pl.Int64, "_n": pl.Int64},
                        orient="row").with_columns(pl.col("date").str.to_date())


def maybe_changed(store: Store, pending: OutputStore, to_check: list[date], fingerprint: pl.DataFrame,
                  config: FunnelConfig) -> list[date]:
    """The published dates whose partitions the new input may have changed (see transforms/restatement.py)."""
    if not to_check:
        return []
    old_fingerprint = _published_fingerprint(store.manifests())
    if old_fingerprint is None or any(not store.has(d) for d in LEAD_GRAIN):
        return to_check  # nothing to compare with: check every date
    last = max(to_check)
    compared = [d for d in LEAD_GRAIN if d.times is not None]
    instant = earliest_change({d.name: store.scan(d) for d in compared},
                              {d.name: pl.scan_parquet(pending.path(d)) for d in compared},
                              {d.name: d.times for d in compared if d.times is not None},
                              boundary(last, config.timezone))
    firsts = [first_changed_date(old_fingerprint, fingerprint, last)]
    if instant is not None:
        firsts.append(instant.astimezone(ZoneInfo(config.timezone)).date())
    first = min((d for d in firsts if d is not None), default=None)
    return [] if first is None else [d for d in to_check if d >= first]


def drop_unchanged(store: Store, pending: OutputStore, dates: list[date], written: dict[str, int]) -> list[date]:
    """Drop from the pending area every partition of these dates equal to the published one.

    Returns the dates some partition of which still differs, and takes the dropped rows off
    `written`, so a date whose rows the late input did not change is not rewritten at all.
    """
    changed = []
    published = {dataset.name: set(store.published_dates(dataset)) for dataset in DATED} if dates else {}
    for day in dates:
        for dataset in DATED:
            new = pending.path(dataset, day)
            if new.exists() and day in published[dataset.name]:
                rows = pl.read_parquet(new)
                if same_rows(rows, store.read_day(dataset, day)):
                    shutil.rmtree(new)
                    written[dataset.name] -= rows.height
                    continue
            changed.append(day)
            break
    return changed


def _each_shard(run: RunSettings, step: Any, calls: list[tuple[Any, ...]]) -> list[Any]:
    """One call of a shard step per shard, results in shard order: one task each on Dask, else in this process."""
    if run.dask.enabled:
        from flows.cluster import on_dask

        return on_dask(run.dask, step, calls)
    parallel = local_parallelism(len(calls))
    if parallel == 1:
        return [step(*call) for call in calls]
    return _side_by_side(step, calls, parallel)


def local_parallelism(shards: int) -> int:
    """Shards a local run replays at once: one per core (the shard count was sized for that)."""
    return max(1, min(cores(), shards))


def _side_by_side(step: Any, calls: list[tuple[Any, ...]], parallel: int) -> list[Any]:
    """Shard steps as tasks on this process's threads, `parallel` at a time, results in call order.

    Polars releases the GIL, so a second shard fills the core that one shard leaves idle in its
    single-threaded parts (parsing plans, checks, writes): on 2 cores the replay of 1M/20M took
    20-25% less time. If a shard fails, the ones still running are waited for before the error
    is raised, so nothing writes into the pending area once the run has given up on it.
    """
    futures = [step.submit(*call) for call in calls[:parallel]]
    results = []
    try:
        for i in range(len(calls)):
            results.append(futures[i].result())
            if i + parallel < len(calls):
                futures.append(step.submit(*calls[i + parallel]))
    except BaseException:
        for future in futures:
            future.wait()
        raise
    return results


def replay_shards(sources: dict[str, Source], config: FunnelConfig, run: RunSettings, pending: OutputStore,
                  plan: DatePlan, to_check: list[date], run_start: datetime,
                  lap: Callable[[str], None]) -> tuple[ShardJob, list[Replayed]]:
    """Every shard validated and replayed.

    A local run whose input fits its memory budget (`split_fits_in_memory`), or has one shard,
    reads it whole and splits it in memory; otherwise the input is streamed into shard files.
    Either way the activity_ids repeating across shards are found before any shard runs.
    """
    rows = sources["activities"].rows
    shards = shard_count(run, rows)
    in_memory = not run.dask.enabled and (
        shards == 1 or split_fits_in_memory(rows, budget_gb(run.memory_gb), local_parallelism(shards)))
    job = ShardJob(pending_root=str(pending.root), shards=shards, config=config, as_of=max(plan.asked),
                   run_start=run_start,
                   fingerprint_from=min([*plan.dates, *to_check]) - timedelta(days=config.window_days),
                   schemas={table: dict(source.frame.collect_schema()) for table, source in sources.items()},
                   keep=in_memory)
    if in_memory:
        parts = split_in_memory({table: source.collect() for table, source in sources.items()}, shards)
        every = pl.concat([part["activities"].frame for part in parts]).lazy()
    else:
        split_inputs(sources, pending, shards)
        files = shard_files(pending, "activities")
        every = (pl.scan_parquet(files, hive_partitioning=False) if files
                 else pl.LazyFrame(schema=job.schemas["activities"]))
    if shards > 1:  # one shard sees every activity itself
        job = replace(job, repeated_ids=repeated_ids(every, config, run_start, rows, -(-rows // shards)))
    lap("split")
    if in_memory:
        # The rows given are consumed by the replay, so a retry could not see them: no retries.
        return job, _each_shard(run, replay.with_options(retries=0), [(job, s, parts[s]) for s in range(shards)])
    malformed = {table: source.malformed for table, source in sources.items()}
    return job, _each_shard(run, replay, [(job, s, None, malformed if s == 0 else None) for s in range(shards)])


@dataclass(frozen=True)
class Combined:
    """The run-wide metrics combined from every shard's partials."""

    daily_funnel: pl.DataFrame
    written: dict[str, int]
    reached: list[int]
    fingerprint: pl.DataFrame


def _add(total: dict[str, int], rows: dict[str, int]) -> None:
    for name, count in rows.items():
        total[name] = total.get(name, 0) + count


@task(cache_policy=NO_CACHE)
def combine(replayed: list[Replayed], dated: list[DatesWritten], config: FunnelConfig,
            pending: OutputStore, plan: DatePlan, on_day: Callable[[date], None] | None) -> Combined:
    """Run-wide metrics, checked and written into the pending area."""
    as_of, dates = max(plan.asked), plan.dates
    written: dict[str, int] = {}
    parts: list[Replayed | DatesWritten] = [*replayed, *dated]
    for part in parts:
        _add(written, part.written)
    start, end = min(dates), max(dates)
    funnel = combine_daily_funnel([r.daily_funnel for r in dated], config)
    moves = combine_transitions_daily([r.transitions_daily.lazy() for r in dated], config).collect()
    handoffs = combine_sla_daily([r.sla_daily.lazy() for r in dated], start, end, config).filter(
        pl.col("date").is_in(pl.Series(dates, dtype=pl.Date).implode())).collect()
    cohort = combine_cohort_conversion([r.cohort_conversion.lazy() for r in replayed], as_of, config).collect()
    written[COHORT_CONVERSION.name] = pending.write_dataset(COHORT_CONVERSION, COHORT_CONVERSION.check(cohort, config))
    for day in dates:
        for dataset, frame in ((DAILY_FUNNEL, funnel), (TRANSITIONS_DAILY, moves), (SLA_DAILY, handoffs)):
            rows = dataset.check(frame.filter(pl.col("date") == day), config)
            _add(written, {dataset.name: pending.write_dataset(dataset, rows, day=day)})
        if on_day is not None:
            on_day(day)
    reached = [sum(column) for column in zip(*(r.reached for r in replayed), strict=True)]
    fingerprint = combine_fingerprints([r.fingerprint for r in replayed])
    return Combined(daily_funnel=funnel, written=written, reached=reached, fingerprint=fingerprint)


def _funnel_markdown(summary: RunSummary, config: FunnelConfig, combined: Combined) -> str:
    """The run's numbers and the funnel of the as-of date, for the Prefect UI."""
    today = (
        combined.daily_funnel.filter(pl.col("date") == summary.as_of)
        .group_by("stage", maintain_order=True).agg(pl.col("in_stage").sum())
    )
    owners = {s.name: s.owner_team for s in config.stages}
    lines = [f"# Funnel run {summary.run_id} ({summary.flow}), as of {summary.as_of}", "",
             "| table | read | valid | quarantined | collapsed |", "|---|---|---|---|---|"]
    lines += [f"| {t} | {c['read']} | {c['valid']} | {c['quarantined']} | {c['collapsed']} |"
              for t, c in summary.tables.items()]
    lines += ["", "| stage | owner | leads in stage |", "|---|---|---|"]
    lines += [f"| {s} | {owners[s]} | {n} |" for s, n in today.rows()]
    reached = combined.reached
    names = config.stage_names
    lines += ["", "| from -> to | reached from | reached to | conversion |", "|---|---|---|---|"]
    lines += [f"| {names[i]} -> {names[i + 1]} | {reached[i]} | {reached[i + 1]} | "
              f"{(reached[i + 1] / reached[i] if reached[i] else 0):.1%} |" for i in range(len(names) - 1)]
    restated = {k: v for k, v in summary.dates.items() if k != "asked" and v}
    if restated:
        lines += ["", "| dates rewritten | why |", "|---|---|"]
        lines += [f"| {', '.join(days)} | {reason.replace('_', ' ')} |" for reason, days in restated.items()]
    lines += ["", "| dataset | rows written |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(summary.written.items())]
    return "\n".join(lines)


def _last_valid_leads(store: Store) -> int | None:
    manifests = store.manifests()
    return int(manifests[-1]["tables"]["leads"]["valid"]) if manifests else None


def run_pipeline(flow_name: str, start: date | None, end: date | None, input_location: str | None,
                 output_dir: str | Path | None, config_path: Path | None, timezone: str | None,
                 on_day: Callable[[date], None] | None = None, workers: int | None = None,
                 dask_address: str | None = None, force: bool = False,
                 shards: int | None = None, output_format: str | None = None,
                 memory_gb: float | None = None) -> RunSummary:
    """Everything a run does; the two flows differ only in their date range."""
    settings = load_settings(config_path, timezone)  # refused before any data is read
    config = settings.rules
    run = settings.run
    if memory_gb is not None and memory_gb <= 0:
        raise ValueError(f"--memory-gb must be positive, not {memory_gb}")
    run = replace(run, dask=run.dask.overridden(workers, dask_address), shards=run.shards if shards is None else shards,
                  memory_gb=run.memory_gb if memory_gb is None else memory_gb)
    location = input_location or run.source.uri or str(DEFAULT_INPUT)
    end = end or default_as_of(config.timezone)
    start = start or end
    if start > end:
        raise ValueError(f"--start {start} is after --end {end}")
    today = datetime.now(ZoneInfo(config.timezone)).date()
    if end > today:
        raise ValueError(f"as-of date {end} is after today ({today} in {config.timezone}): nothing published")
    output = output_location(str(output_dir or run.output.location or DEFAULT_OUTPUT), "--output")
    store = open_store(output, output_format or run.output.format)  # parquet on an object store refused here
    run_start = datetime.now(UTC)
    run_id = f"{run_start:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    with Lineage.start(settings, f"funnel-{flow_name}", location, store.location) as lineage:
        summary, manifest, combined = _publish(flow_name, start, end, location, store, settings, run, force, run_id,
                                               run_start, on_day, lineage)
    emit_run_completed(manifest, store.location)
    create_markdown_artifact(_funnel_markdown(summary, config, combined), key="funnel-run",
                             description=f"Funnel as of {end}")
    if manifest["quality_violations"]:
        raise QualityError(manifest["quality_violations"])
    return summary


def _publish(flow_name: str, start: date, end: date, location: str, store: Store, settings: Settings,
             run: RunSettings, force: bool, run_id: str, run_start: datetime,
             on_day: Callable[[date], None] | None, lineage: Lineage) -> tuple[RunSummary, dict[str, Any], Combined]:
    config = settings.rules
    output = store.root if isinstance(store, OutputStore) else store.location
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        phases[phase] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    with contextlib.ExitStack() as stack:
        spill = stack.enter_context(tempfile.TemporaryDirectory(prefix="funnel-extract-"))
        sources = extract(location, run.source, spill)  # a missing input fails here, before the output is touched
        lap("extract")
        stack.enter_context(store.locked())
        store.prepare()
        plan, to_check = plan_dates(flow_name, store, config, run, start, end, force)
        pending = store.pending(run_id)
        try:
            job, replayed = replay_shards(sources, config, run, pending, plan, to_check, run_start, lap)
            sources.clear()  # a single shard's rows were read from them: let them go
            tables = {table: add_summaries([r.tables[table] for r in replayed]) for table in TABLES}
            lap("validate_and_replay")
            if not force:
                guard(tables, run.guard, _last_valid_leads(store))
            plan.maybe_changed = maybe_changed(store, pending, to_check,
                                               combine_fingerprints([r.fingerprint for r in replayed]), config)
            dated = _each_shard(run, dates_of_shard, [(job, s, plan.dates) for s in range(job.shards)])
        finally:
            forget(pending)
            shutil.rmtree(pending.root / SCRATCH, ignore_errors=True)
        summary = RunSummary(run_id=run_id, flow=flow_name, as_of=end, start=start, output=output, tables=tables,
                             shards=job.shards, memory_budget_gb=budget_gb(run.memory_gb))
        lap("dates")
        combined = combine(replayed, dated, config, pending, plan, on_day)
        plan.late_rows = drop_unchanged(store, pending, plan.maybe_changed, combined.written)
        summary.written = combined.written
        summary.dates = plan.as_dict()
        lap("combine")
        peaks: dict[int, float] = {}
        parts: list[Replayed | DatesWritten] = [*replayed, *dated]
        for part in parts:
            peaks[part.pid] = max(peaks.get(part.pid, 0.0), part.peak_rss_gb)
        manifest = {
            "run_id": run_id, "flow": flow_name, "as_of": end.isoformat(),
            "dates": {"start": start.isoformat(), "end": end.isoformat()},
            "dates_written": summary.dates,
            "started_at": run_start.isoformat(), "ended_at": datetime.now(UTC).isoformat(),
            "timezone": config.timezone, "config_hash": config.config_hash, "code_version": code_version(),
            "input": redacted_location(location), "tables": summary.tables, "rows_written": summary.written,
            "forced": force,
            "execution": {"shards": summary.shards, "memory_budget_gb": summary.memory_budget_gb,
                          "split": "memory" if job.keep else "files",
                          "parallel_shards": 0 if run.dask.enabled else local_parallelism(summary.shards),
                          "dask_workers": run.dask.workers,
                          "dask_address": run.dask.address, "driver_peak_rss_gb": peak_rss_gb(),
                          "worker_peak_rss_gb": sorted(v for pid, v in peaks.items() if pid != os.getpid())},
            "points_fingerprint": [[d.isoformat(), lo, hi, n] for d, lo, hi, n in combined.fingerprint.rows()],
        }
        manifest["quality_violations"] = quality_violations(manifest, run.quality)
        manifest["lineage_run_id"] = lineage.run_id
        summary.report = write_report(store, pending, manifest, config, [r.cohort_conversion.lazy() for r in replayed])
        lap("report")
        manifest["phase_seconds"] = phases  # the manifest is part of the commit, so the commit is not timed here
        pending.write_manifest(run_id, manifest)
        manifest.update(store.publish(pending))  # a Delta store adds the tables' new versions
    lineage.complete(manifest)
    return summary, manifest, combined


@flow(name="funnel-nightly", log_prints=False)
def nightly(as_of: date | None = None, input_location: str | None = None, output_dir: str | None = None,
            config_path: str | None = None, timezone: str | None = None, workers: int | None = None,
            dask_address: str | None = None, force: bool = False, shards: int | None = None,
            output_format: str | None = None, memory_gb: float | None = None) -> RunSummary:
    """Recompute the whole history as of one date (default: the day before the scheduled start) and publish it.

    `workers` / `dask_address` run the shards on a local or an existing Dask cluster; `output_dir`
    and `output_format` default to the config's `[output]`, `shards` and `memory_gb` to its `[run]`.
    """
    return run_pipeline("nightly", None, as_of, input_location, output_dir,
                        Path(config_path) if config_path else None, timezone, None, workers, dask_address, force,
                        shards, output_format, memory_gb)


@flow(name="funnel-backfill", log_prints=False)
def backfill(start: date, end: date, input_location: str | None = None, output_dir: str | None = None,
             config_path: str | None = None, timezone: str | None = None,
             on_day: Callable[[date], None] | None = None, workers: int | None = None,
             dask_address: str | None = None, force: bool = False, shards: int | None = None,
             output_format: str | None = None, memory_gb: float | None = None) -> RunSummary:
    """Write the partitions of every date from start to end from one history as of end."""
    return run_pipeline("backfill", start, end, input_location, output_dir,
                        Path(config_path) if config_path else None, timezone, on_day, workers, dask_address, force,
                        shards, output_format, memory_gb)
