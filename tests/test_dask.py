"""Sharded runs on a local Dask cluster of 2 worker processes give the single-process rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from flows import catalog
from tests.conftest import dirty_input

AS_OF = date(2026, 10, 31)
DATASETS = [d.name for d in catalog.DATASETS]
# The sample's rules: the defaults plus two handoff SLAs, so that sla and sla_daily have rows to compare.
SAMPLE_RULES = Path(__file__).resolve().parent.parent / "data" / "sample" / "funnel.toml"
# Row order within a dataset is not part of the contract (a sharded dataset has one part per shard);
# metrics and quarantine are combined by the driver, in order.
ORDERED = {d.name for d in catalog.DATASETS if d.name.startswith(("metrics/", "quarantine/"))}


def _read_all(output: Path) -> dict[str, pl.DataFrame]:
    return {name: pl.read_parquet(output / name, hive_partitioning=True) for name in DATASETS}


def _assert_same_rows(got: dict[str, pl.DataFrame], want: dict[str, pl.DataFrame]) -> None:
    for name in DATASETS:
        # Without [[sla]] in the config (every test here but the first), the SLA datasets are empty.
        assert got[name].height > 0 or name in (catalog.SLA.name, catalog.SLA_DAILY.name), name
        if name in ORDERED:  # metrics and quarantine are combined in the driver, in order
            assert_frame_equal(got[name], want[name], check_exact=True)
        else:
            assert_frame_equal(got[name].sort(pl.all()), want[name].sort(pl.all()), check_exact=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dirty generated input (Parquet, text columns)."""
    return dirty_input(tmp_path_factory.mktemp("input"), 1500, seed=17, days=200)


@pytest.mark.usefixtures("prefect_server")
def test_one_shard_eight_shards_and_two_workers_give_the_same_rows(inputs: Path, tmp_path: Path) -> None:
    """Nightly and a backfill across the end of DST, Berlin time: every dataset, every metric."""
    from flows.pipeline import backfill, nightly

    for name, flow_kwargs in (("nightly", {"as_of": AS_OF}),
                              ("backfill", {"start": date(2026, 10, 20), "end": AS_OF})):
        runner = nightly if name == "nightly" else backfill
        common = {"input_location": str(inputs), "timezone": "Europe/Berlin", "config_path": str(SAMPLE_RULES),
                  **flow_kwargs}
        single = runner(output_dir=str(tmp_path / name / "single"), **common)
        local = runner(output_dir=str(tmp_path / name / "local8"), shards=8, **common)
        sharded = runner(output_dir=str(tmp_path / name / "dask"), workers=2, **common)
        assert (single.shards, local.shards, sharded.shards) == (1, 8, 2)
        assert sharded.written == single.written == local.written
        want = _read_all(tmp_path / name / "single")
        assert want[catalog.SLA.name].height > 0 and want[catalog.SLA_DAILY.name].height > 0
        _assert_same_rows(_read_all(tmp_path / name / "dask"), want)
        _assert_same_rows(_read_all(tmp_path / name / "local8"), want)
        parts = sorted(p.name for p in (tmp_path / name / "dask" / "transitions").iterdir())
        assert parts == ["part-0.parquet", "part-1.parquet"]
        assert len(list((tmp_path / name / "local8" / "transitions").iterdir())) == 8
        assert not (tmp_path / name / "dask" / ".tmp").exists()  # the pending area is removed after commit


@pytest.mark.usefixtures("prefect_server")
def test_a_sharded_run_replaces_a_single_process_one_whole(inputs: Path, tmp_path: Path) -> None:
    """Switching between one process and shards never leaves parts of the other layout behind."""
    from flows.pipeline import nightly

    out = tmp_path / "out"
    nightly(as_of=AS_OF, input_location=str(inputs), output_dir=str(out), workers=2)
    sharded = _read_all(out)
    nightly(as_of=AS_OF, input_location=str(inputs), output_dir=str(out))
    assert [p.name for p in (out / "transitions").iterdir()] == ["part-0.parquet"]
    _assert_same_rows(_read_all(out), sharded)


def _worker_pids(parent: int) -> list[int]:
    """Dask worker processes started by a run (its spawned multiprocessing children)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat[1]) == parent and "spawn_main" in cmdline:
            found.append(int(proc.name))
    return found


def test_a_worker_killed_mid_run_leaves_outputs_whole(tmp_path: Path) -> None:
    """SIGKILL one Dask worker while the shards run.

    The run completes with the single-process rows, or fails with every dataset still its
    previous version.
    """
    inputs, older, out, reference = tmp_path / "in", tmp_path / "older", tmp_path / "out", tmp_path / "reference"
    dirty_input(inputs, 30_000, seed=3, days=120)
    dirty_input(older, 2_000, seed=4, days=120)  # yesterday's export: other rows, same as-of
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")}
    cli = [sys.executable, "-m", "flows.cli", "run", "--as-of", str(AS_OF)]
    subprocess.run([*cli, "--input", str(inputs), "--output", str(reference)], check=True, env=env,
                   capture_output=True, timeout=300)
    subprocess.run([*cli, "--input", str(older), "--output", str(out)], check=True, env=env,
                   capture_output=True, timeout=300)
    previous = _read_all(out)

    proc = subprocess.Popen([*cli, "--input", str(inputs), "--output", str(out), "--workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2 and proc.poll() is None:
        workers = _worker_pids(proc.pid)
        time.sleep(0.05)
    assert len(workers) == 2, "no Dask workers seen"
    shard_parts = list((out / ".tmp").glob("run-*/transitions/part-*.parquet"))
    while time.monotonic() < deadline and not shard_parts and proc.poll() is None:
        time.sleep(0.02)  # kill once a shard is writing its parts, mid-run
        shard_parts = list((out / ".tmp").glob("run-*/transitions/part-*.parquet"))
    assert proc.poll() is None, "the run ended before a worker could be killed"
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    print(f"worker {workers[0]} killed; the run exited with {proc.returncode}: {err.strip()}")
    if proc.returncode == 0:
        _assert_same_rows(_read_all(out), _read_all(reference))
    else:
        assert err.count("\n") == 1 and err.startswith("funnel: "), err
        _assert_same_rows(_read_all(out), previous)


def test_default_runs_do_not_import_dask() -> None:
    """Without --workers or --dask-address nothing of Dask is loaded."""
    code = ("import sys, flows.cli, flows.pipeline, flows.deployment; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'prefect_dask')))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert loaded.strip() == "[]"
