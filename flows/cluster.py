"""Shards on Dask: the same shard functions as a local run, one Prefect task per shard on a worker.

The driver streams the raw input into shard files in the run's pending area; a worker reads,
validates and replays only its own shard's files, so the pending area must be one file system
that the driver and every worker see at the same path. Dask is imported only here, and this module only when a
run asks for workers or a scheduler address.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from prefect import Task, flow
from prefect.futures import PrefectFuture
from prefect.settings import get_current_settings
from prefect.task_runners import TaskRunner
from prefect_dask.task_runners import DaskTaskRunner

from flows.settings import DaskConfig

T = TypeVar("T")


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


def on_dask(settings: DaskConfig, task: Task[..., T], calls: list[tuple[Any, ...]]) -> list[T]:
    """One task run per call on the cluster; fails if any still fails after its retries."""

    @flow(name=f"funnel-{task.name}-on-dask", log_prints=False,
          task_runner=cast(TaskRunner[PrefectFuture[Any]], dask_runner(settings)))
    def shards_flow() -> list[T]:
        futures = [task.submit(*call) for call in calls]
        return [future.result() for future in futures]

    return shards_flow()
