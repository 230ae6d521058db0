"""The nightly deployment: the nightly flow on a cron schedule in the funnel's timezone."""

from __future__ import annotations

from pathlib import Path

from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.io import load_config
from flows.pipeline import nightly


def nightly_deployment(input_location: str | Path | None, output_dir: Path, config_path: Path | None,
                       timezone: str | None, cron: str | None = None, workers: int | None = None,
                       dask_address: str | None = None) -> RunnerDeployment:
    """A deployment of the nightly flow at `cron` (default: the config's) in the configured zone."""
    config = load_config(config_path, timezone)
    deployment = nightly.to_deployment(
        name="funnel-nightly",
        schedules=[Cron(cron or config.schedule_cron, timezone=config.timezone)],
        parameters={"input_location": str(input_location) if input_location else None,
                    "output_dir": str(output_dir),
                    "config_path": str(config_path) if config_path else None, "timezone": config.timezone,
                    "workers": workers, "dask_address": dask_address},
        concurrency_limit=1,
        description="Recompute the lead funnel as of yesterday and replace every dataset atomically.",
    )
    assert isinstance(deployment, RunnerDeployment)  # sync context: never a coroutine
    return deployment
