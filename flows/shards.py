"""Sharded runs on Dask: the replay, the snapshots and partial metrics, one task per shard.

Every lead's funnel depends only on its own activities, so the validated leads and activities
are split by a stable hash of lead_id into the run's staging area (`.tmp/run-<id>/input/`).
Each shard is a Prefect task on a Dask worker: it reads its own leads and activities, replays
them, writes its part file of every dataset into the staging area, and returns only small
partial aggregates (counts, and the values that medians are taken of). The driver combines
those, and commits every dataset once all shards have succeeded.

Dask is imported only here, and this module only when a run asks for workers or an address.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.settings import get_current_settings
from prefect_dask.task_runners import DaskTaskRunner

from flows.io import OutputStore
from flows.outputs import history_frames, snapshot_frame
from transforms.classify import classify
from transforms.config import DaskConfig, FunnelConfig
from transforms.metrics import cohort_conversion_parts, daily_funnel, transitions_daily_parts
from transforms.sharding import reached_counts, shard_of


@dataclass(frozen=True)
class ShardResult:
    """What a shard hands back: partial metrics, funnel reach and rows written, no lead rows."""

    daily_funnel: pl.DataFrame
    transitions_daily: pl.DataFrame
    cohort_conversion: pl.DataFrame
    reached: list[int]
    written: dict[str, int]
    worker_pid: int
    worker_peak_rss_gb: float  # the peak of the worker process so far, this shard included


def stage_input(leads: pl.DataFrame, activities: pl.DataFrame, staged: OutputStore, shards: int) -> None:
    """Write the validated tables split by shard, so each shard reads only its own leads."""
    for table, frame in (("leads", leads), ("activities", activities)):
        ids = frame.select(shard_of("lead_id", shards)).to_series()
        for shard in range(shards):
            part = frame.filter(ids == shard)
            staged.write_part(part, staged.shard_input_dir(table, shard))


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def replay_shard(shard: int, staging_root: str, config: FunnelConfig, as_of: date, start: date,
                 end: date) -> ShardResult:
    """Replay one shard's leads; write its part of every dataset and partition; return partials.

    Rerunning a shard rewrites the same part files, so a retry, or a rerun after a lost
    worker, leaves one copy of its rows.
    """
    staged = OutputStore(Path(staging_root))
    leads, activities = (pl.read_parquet(staged.shard_input_dir(table, shard))
                         for table in ("leads", "activities"))
    history = classify(leads.lazy(), activities.lazy(), config, as_of)
    written = {}
    frames = history_frames(history)
    for name, frame in frames.items():
        written[name] = staged.write_part(frame, staged.dataset_dir(name), shard)
    states = history.snapshot_states(start)
    written["snapshots"] = 0
    for day in pl.date_range(start, end, eager=True).to_list():
        written["snapshots"] += staged.write_partition_part("snapshots", day, snapshot_frame(history, states, day),
                                                            shard)
    return ShardResult(
        daily_funnel=daily_funnel(history.transitions.lazy(), history.intervals.lazy(), history.leads.lazy(),
                                  start, end, config).collect(),
        transitions_daily=transitions_daily_parts(history.transitions.lazy(), start, end, config).collect(),
        cohort_conversion=cohort_conversion_parts(frames["milestones"].lazy(), config).collect(),
        reached=reached_counts(history.transitions, len(config.stages)),
        written=written,
        worker_pid=os.getpid(),
        worker_peak_rss_gb=_peak_rss_gb(),
    )


def _peak_rss_gb() -> float:
    """Peak resident memory of the calling process since it started its program (VmHWM).

    Not getrusage's ru_maxrss: a worker spawned by fork and exec carries its parent's peak
    there, because right after fork it maps every page of the parent.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1e6, 3)  # kB -> GB
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)  # no procfs: an upper bound


def _api_url() -> str | None:
    """The Prefect API this run talks to, also when it is the temporary local server."""
    url = get_current_settings().api.url
    if url:
        return str(url)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    return server.api_url if server.running else None


def dask_runner(settings: DaskConfig) -> DaskTaskRunner:
    """The task runner of the shards: an existing cluster, or a local one of N processes.

    Local worker processes are pointed at this run's Prefect API; otherwise each would start
    a temporary API server of its own.
    """
    if settings.address:
        return DaskTaskRunner(address=settings.address)
    cluster: dict[str, Any] = {"n_workers": settings.workers, "threads_per_worker": 1, "processes": True,
                               "dashboard_address": None}
    url = _api_url()
    if url:
        cluster["env"] = {"PREFECT_API_URL": url}
    return DaskTaskRunner(cluster_kwargs=cluster)


@flow(name="funnel-shards", log_prints=False)
def replay_shards(shards: int, staging_root: str, config: FunnelConfig, as_of: date, start: date,
                  end: date) -> list[ShardResult]:
    """Every shard as one task on the cluster; fails if any shard still fails after its retries."""
    futures = replay_shard.map(list(range(shards)), unmapped(staging_root), unmapped(config), unmapped(as_of),
                               unmapped(start), unmapped(end))
    return [future.result() for future in futures]
