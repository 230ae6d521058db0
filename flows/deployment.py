"""Deployments from the config: the nightly on its cron in the funnel's timezone, and the backfill on demand.

`funnel serve` runs the nightly in its own process (`nightly_deployment`); `funnel deploy`
registers both flows on a Prefect server for a process work pool (`deploy`), loaded from this
checkout by the worker. Either way the schedule is read from the same config file the runs
read, so a company in Berlin gets its snapshots cut at Berlin midnight. Parameters name
locations, never credentials: a database password stays in the worker's environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from prefect import Flow
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows import REPO
from flows.pipeline import backfill, nightly
from flows.settings import DEFAULT_CONFIG, Settings, database_uri_without_password, load_settings, output_location
from flows.settings import dask_address as scheduler_address
from transforms.rules import ConfigError

NIGHTLY_ENTRYPOINT = "flows/pipeline.py:nightly"
BACKFILL_ENTRYPOINT = "flows/pipeline.py:backfill"
DEFAULT_NAME = "funnel"
NIGHTLY_DESCRIPTION = "Recompute the lead funnel as of yesterday and replace every dataset atomically."
BACKFILL_DESCRIPTION = "Write the partitions of every date from start to end from one history as of end."


def nightly_deployment(input_location: str | Path | None, output_dir: Path, config_path: Path | None,
                       timezone: str | None, cron: str | None = None, workers: int | None = None,
                       dask_address: str | None = None) -> RunnerDeployment:
    """A deployment of the nightly flow at `cron` (default: the config's) in the configured zone."""
    settings = load_settings(config_path, timezone)
    config = settings.rules
    deployment = nightly.to_deployment(
        name="funnel-nightly",
        schedules=[Cron(cron or settings.run.schedule_cron, timezone=config.timezone)],
        parameters={"input_location": str(input_location) if input_location else None,
                    "output_dir": str(output_dir),
                    "config_path": str(config_path) if config_path else None, "timezone": config.timezone,
                    "workers": workers, "dask_address": dask_address},
        concurrency_limit=1,
        description=NIGHTLY_DESCRIPTION,
    )
    assert isinstance(deployment, RunnerDeployment)  # sync context: never a coroutine
    return deployment


@dataclass(frozen=True)
class Deployed:
    """A deployment as registered on the server."""

    name: str  # "<flow>/<deployment>", as `prefect deployment run` takes it
    id: UUID
    schedule: str | None  # "<cron> (<timezone>)", or None for one run on demand


def run_parameters(config_path: Path, input_location: str | None, output_dir: Path | str, workers: int | None = None,
                   dask_address: str | None = None, shards: int | None = None,
                   output_format: str | None = None) -> dict[str, Any]:
    """The parameters both deployments share: absolute locations, and never a credential.

    No timezone: each run reads it from the config file, the same one the schedule came from.
    """
    location = input_location
    if location is not None:
        if location.startswith(("postgresql://", "postgres://")):
            database_uri_without_password(location)  # refused before it is stored on the server
        elif "://" not in location:
            location = str(Path(location).resolve())
        elif urlsplit(location).password is not None:
            raise ConfigError("--input holds a credential; keep it in the worker's environment, not in a parameter")
    output = output_location(str(output_dir), "--output")  # an object-store URI with a credential is refused
    return {"input_location": location, "output_dir": output if "://" in output else str(Path(output).resolve()),
            "output_format": output_format, "config_path": str(config_path.resolve()), "workers": workers,
            "dask_address": scheduler_address(dask_address, "--dask-address") if dask_address else None,
            "shards": shards}


def _ensure_process_pool(work_pool: str) -> None:
    """Create the work pool as a process pool if the server has none of that name; refuse another type."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(work_pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=work_pool, type="process",
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))
            return
    if pool.type != "process":
        raise ValueError(f"work pool {work_pool!r} is a {pool.type!r} pool; funnel deploys to a process pool")


def deployments(settings: Settings, parameters: dict[str, Any], work_pool: str,
                name: str = DEFAULT_NAME) -> list[RunnerDeployment]:
    """The nightly (on the config's cron, in its timezone) and the backfill (start and end asked per run)."""
    schedule = Cron(settings.run.schedule_cron, timezone=settings.rules.timezone)
    built = []
    for flow, entrypoint, schedules, description in (
            (nightly, NIGHTLY_ENTRYPOINT, [schedule], NIGHTLY_DESCRIPTION),
            (backfill, BACKFILL_ENTRYPOINT, [], BACKFILL_DESCRIPTION)):
        # From this checkout: the worker's pull step changes into it and loads the entrypoint from there.
        source = flow.from_source(source=str(REPO), entrypoint=entrypoint)
        assert isinstance(source, Flow)  # sync context: never a coroutine
        deployment = source.to_deployment(name=name, schedules=schedules, parameters=parameters,
                                          concurrency_limit=1, description=description, work_pool_name=work_pool)
        assert isinstance(deployment, RunnerDeployment)  # sync context: never a coroutine
        built.append(deployment)
    return built


def deploy(config_path: Path | None, input_location: str | None, output_dir: Path | str, work_pool: str,
           name: str = DEFAULT_NAME, workers: int | None = None, dask_address: str | None = None,
           shards: int | None = None, output_format: str | None = None) -> list[Deployed]:
    """Create or update the nightly and backfill deployments on the configured Prefect server."""
    from prefect.settings import get_current_settings

    config_path = config_path or DEFAULT_CONFIG
    settings = load_settings(config_path)  # a bad config is refused before the server is touched
    parameters = run_parameters(config_path, input_location, output_dir, workers, dask_address, shards, output_format)
    if not get_current_settings().api.url:
        # Without one, Prefect would start a temporary server and the deployments would vanish with it.
        raise ValueError("funnel deploy needs a Prefect server: set PREFECT_API_URL (e.g. "
                         "http://127.0.0.1:4200/api after `prefect server start`)")
    _ensure_process_pool(work_pool)
    registered = []
    for deployment in deployments(settings, parameters, work_pool, name):
        deployment_id = deployment.apply(work_pool_name=work_pool)
        assert isinstance(deployment_id, UUID)  # sync context: never a coroutine
        schedule = (f"{settings.run.schedule_cron} ({settings.rules.timezone})"
                    if deployment.schedules else None)
        registered.append(Deployed(name=f"{deployment.flow_name}/{deployment.name}", id=deployment_id,
                                   schedule=schedule))
    return registered


def deploy_report(deployed: list[Deployed], work_pool: str) -> list[str]:
    """What `funnel deploy` prints: each deployment and its schedule, then how to run them."""
    lines = [f"funnel deploy: {d.name}: {'cron ' + d.schedule if d.schedule else 'on demand'}, work pool {work_pool}"
             for d in deployed]
    backfill_name = next((d.name for d in deployed if d.schedule is None), f"funnel-backfill/{DEFAULT_NAME}")
    lines += [f"  start a worker:   prefect worker start --pool {work_pool}",
              f"  run a backfill:   prefect deployment run '{backfill_name}' -p start=YYYY-MM-DD -p end=YYYY-MM-DD"]
    return lines
