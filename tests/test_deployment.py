"""`funnel deploy` through a real Prefect server and a process worker: schedule, timezone, parameters, outputs.

The server (`prefect server start`, SQLite in its own PREFECT_HOME) and the worker (`prefect worker
start`) are subprocesses in their own process groups, killed whole at the end. Nothing leaves
127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from flows.settings import DEFAULT_CONFIG
from tests.conftest import dirty_input

PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "funnel-test"
# 00:30 on 1 November in Berlin (CET, UTC+1) but still 31 October in UTC: a nightly that used UTC
# would publish 2026-10-30 instead of the day before its Berlin start.
SCHEDULED_START = datetime(2026, 10, 31, 23, 30, tzinfo=UTC)
NIGHTLY_DATE = date(2026, 10, 31)
BACKFILL = (date(2026, 10, 20), date(2026, 10, 22))
RUN_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _quiet_env(home: Path, **extra: str) -> dict[str, str]:
    """The test environment without its Prefect API settings, telemetry off, home in tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_UI_ENABLED="false", **extra)
    return env


@contextmanager
def _process_group(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess in its own process group, killed with all its children on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield process
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server on a free port (SQLite, its own PREFECT_HOME), for the session."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    args = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    with _process_group(args, _quiet_env(home), home / "server.log") as server:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.25)
        yield api


@contextmanager
def _api_settings(api: str) -> Iterator[None]:
    """Prefect clients in this process talk to the test server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
        yield


def _wait_final(api: str, flow_run_id: UUID, log: Path) -> dict[str, Any]:
    """The flow run once its state is final (bounded); fails with the worker's log otherwise."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run: dict[str, Any] = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(0.5)
    pytest.fail(f"flow run {flow_run_id} not finished after {RUN_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")


def test_parameters_are_absolute_and_credential_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.deployment import run_parameters
    from transforms.rules import ConfigError

    monkeypatch.chdir(tmp_path)
    assert run_parameters(Path("c.toml"), "in", Path("out"), shards=4) == {
        "input_location": str(tmp_path / "in"), "output_dir": str(tmp_path / "out"), "output_format": None,
        "config_path": str(tmp_path / "c.toml"), "workers": None, "dask_address": None, "shards": 4}
    lake = run_parameters(Path("c.toml"), None, "s3://lake/funnel", output_format="delta")
    assert (lake["output_dir"], lake["output_format"]) == ("s3://lake/funnel", "delta")
    with pytest.raises(ConfigError, match="credential"):
        run_parameters(Path("c.toml"), None, "s3://key:secret@lake/funnel")
    assert run_parameters(Path("c.toml"), "postgresql://etl@db:5432/crm", Path("out"))["input_location"] == (
        "postgresql://etl@db:5432/crm")
    with pytest.raises(ConfigError, match="holds a credential"):
        run_parameters(Path("c.toml"), "postgresql://etl:secret@db:5432/crm", Path("out"))
    with pytest.raises(ConfigError, match="holds a credential"):
        run_parameters(Path("c.toml"), "s3://key:secret@bucket/crm", Path("out"))
    with pytest.raises(ConfigError, match="not a Dask scheduler address"):
        run_parameters(Path("c.toml"), None, Path("out"), dask_address="db:8786")


def test_deploy_refuses_without_a_server(tmp_path: Path) -> None:
    """No PREFECT_API_URL: a temporary server would forget the deployments, so nothing is deployed."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployment import deploy

    with temporary_settings(updates={PREFECT_API_URL: None}), pytest.raises(ValueError, match="PREFECT_API_URL"):
        deploy(None, None, tmp_path / "out", POOL)


def test_deploy_then_worker_runs_nightly_at_scheduled_date_and_backfill(prefect_api: str, tmp_path: Path) -> None:
    """Both deployments from the config; a process worker runs a late nightly and a 3-day backfill."""
    from prefect import get_client
    from prefect.states import Scheduled

    from flows.deployment import deploy, deploy_report

    config = tmp_path / "berlin.toml"
    config.write_text(DEFAULT_CONFIG.read_text().replace('timezone = "UTC"', 'timezone = "Europe/Berlin"'))
    inputs = dirty_input(tmp_path / "input", 300, seed=1, days=60)
    output = tmp_path / "output"
    with _api_settings(prefect_api):
        deployed = {d.name: d for d in deploy(config, str(inputs), output, POOL)}
    assert sorted(deployed) == ["funnel-backfill/funnel", "funnel-nightly/funnel"]
    assert deployed["funnel-nightly/funnel"].schedule == "0 2 * * * (Europe/Berlin)"
    assert deployed["funnel-backfill/funnel"].schedule is None
    assert deploy_report(list(deployed.values()), POOL)[-1] == (
        "  run a backfill:   prefect deployment run 'funnel-backfill/funnel' -p start=YYYY-MM-DD -p end=YYYY-MM-DD")

    nightly_id = deployed["funnel-nightly/funnel"].id
    stored = httpx.get(f"{prefect_api}/deployments/{nightly_id}", timeout=10).json()
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in stored["schedules"]] == [
        ("0 2 * * *", "Europe/Berlin")]
    assert stored["global_concurrency_limit"]["limit"] == 1
    assert stored["work_pool_name"] == POOL
    assert stored["parameters"] == {"input_location": str(inputs), "output_dir": str(output),
                                    "output_format": None, "config_path": str(config), "workers": None,
                                    "dask_address": None, "shards": None}

    worker_log = tmp_path / "worker.log"
    worker_env = _quiet_env(tmp_path / "worker-home", PREFECT_API_URL=prefect_api, PREFECT_WORKER_QUERY_SECONDS="1",
                            PREFECT_WORKER_PREFETCH_SECONDS="0")
    with _process_group([PREFECT, "worker", "start", "--pool", POOL, "--type", "process"], worker_env, worker_log):
        with _api_settings(prefect_api), get_client(sync_client=True) as client:
            nightly_run = client.create_flow_run_from_deployment(
                nightly_id, state=Scheduled(scheduled_time=SCHEDULED_START))
        nightly_final = _wait_final(prefect_api, nightly_run.id, worker_log)
        # One after the other: both write the same output location, which a second run finds locked.
        with _api_settings(prefect_api), get_client(sync_client=True) as client:
            backfill_run = client.create_flow_run_from_deployment(
                deployed["funnel-backfill/funnel"].id,
                parameters={"start": BACKFILL[0].isoformat(), "end": BACKFILL[1].isoformat()})
        backfill_final = _wait_final(prefect_api, backfill_run.id, worker_log)

    assert (nightly_final["state_type"], backfill_final["state_type"]) == ("COMPLETED", "COMPLETED"), (
        worker_log.read_text()[-4000:])
    assert nightly_final["deployment_id"] == str(nightly_id)
    snapshots = sorted(p.name for p in (output / "snapshots").iterdir())
    assert snapshots == ["snapshot_date=2026-10-20", "snapshot_date=2026-10-21", "snapshot_date=2026-10-22",
                         f"snapshot_date={NIGHTLY_DATE}"]
    manifests = sorted((json.loads(p.read_text()) for p in (output / "runs").glob("*.json")),
                       key=lambda m: m["started_at"])
    assert [(m["flow"], m["dates"], m["timezone"]) for m in manifests] == [
        ("nightly", {"start": "2026-10-31", "end": "2026-10-31"}, "Europe/Berlin"),
        ("backfill", {"start": "2026-10-20", "end": "2026-10-22"}, "Europe/Berlin")]
