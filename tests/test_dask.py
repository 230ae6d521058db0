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
# Row order within a dataset is not part of the contract (a sharded dataset, quarantine included,
# has one part per shard); metrics are combined by the driver, in order.
ORDERED = {d.name for d in catalog.DATASETS if d.name.startswith("metrics/")}


def _read_all(output: Path) -> dict[str, pl.DataFrame]:
    return {name: pl.read_parquet(output / name, hive_partitioning=True) for name in DATASETS}


def _assert_same_rows(got: dict[str, pl.DataFrame], want: dict[str, pl.DataFrame]) -> None:
    for name in DATASETS:
        # Without [[sla]] in the config (every test here but the first), the SLA datasets are empty.
        assert got[name].height > 0 or name in (catalog.SLA.name, catalog.SLA_DAILY.name), name
        if name in ORDERED:  # metrics are combined in the driver, in order
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


def _sample_with_cross_lead_duplicates(directory: Path) -> Path:
    """The shipped dirty sample (CSV) plus activity_ids repeated across leads, so across shards.

    One id twice on two leads (both quarantined); one on two leads where one copy has an
    invalid timestamp (that copy quarantined by its row rule, the other valid); one on three
    leads with an exact copy (collapsed, then all three quarantined).
    """
    directory.mkdir()
    (directory / "leads.csv").write_bytes((SAMPLE_RULES.parent / "leads.csv").read_bytes())
    leads = pl.read_csv(SAMPLE_RULES.parent / "leads.csv", infer_schema=False)["lead_id"].head(6).to_list()
    extra = [
        ("X1", leads[0], "2026-09-01 10:00:00", "page_view"), ("X1", leads[1], "2026-09-01 10:00:00", "page_view"),
        ("X2", leads[2], "2026-09-02 10:00:00", "email_open"), ("X2", leads[3], "not a time", "email_open"),
        ("X3", leads[3], "2026-09-03 10:00:00", "form_submit"), ("X3", leads[4], "2026-09-03 10:00:00", "form_submit"),
        ("X3", leads[5], "2026-09-03 11:00:00", "demo_request"),
        ("X3", leads[5], "2026-09-03 11:00:00", "demo_request"),
    ]
    text = (SAMPLE_RULES.parent / "activities.csv").read_text()
    text += "".join(f"{a},{lead},{at},{kind},\n" for a, lead, at, kind in extra)
    (directory / "activities.csv").write_text(text)
    return directory


@pytest.mark.usefixtures("prefect_server")
def test_a_small_memory_budget_forces_many_shards_with_the_same_rows_and_quarantine(tmp_path: Path) -> None:
    """A budget too small for one shard: the input is streamed into shards, each validated on its own.

    Every dataset, every metric, the quarantine (duplicate activity_ids across shards included)
    and the manifest's accounting equal a one-shard run's.
    """
    import json

    from flows.memory import BASE_GB, GB_PER_MILLION_ACTIVITIES
    from flows.pipeline import nightly

    inputs = _sample_with_cross_lead_duplicates(tmp_path / "in")
    common = {"input_location": str(inputs), "timezone": "Europe/Berlin", "config_path": str(SAMPLE_RULES),
              "as_of": AS_OF}
    single = nightly(output_dir=str(tmp_path / "single"), **common)
    # Room for about a thousand activities per shard: the sample's ten thousand need ten or more.
    budget = BASE_GB + GB_PER_MILLION_ACTIVITIES * 0.001
    sharded = nightly(output_dir=str(tmp_path / "sharded"), memory_gb=budget, **common)
    assert single.shards == 1 and sharded.shards >= 10
    assert sharded.tables == single.tables and sharded.written == single.written
    want = _read_all(tmp_path / "single")
    _assert_same_rows(_read_all(tmp_path / "sharded"), want)
    quarantined = want[catalog.QUARANTINE["activities"].name]
    duplicates = quarantined.filter(pl.col("reasons").list.contains("duplicate_activity_id"))["activity_id"]
    assert sorted(d for d in duplicates.to_list() if d.startswith("X")) == ["X1", "X1", "X3", "X3", "X3"]
    assert "X2" in quarantined.filter(pl.col("reasons").list.contains("occurred_at_invalid"))["activity_id"]
    manifest = json.loads(next((tmp_path / "sharded" / "runs").glob("*.json")).read_text())
    assert manifest["execution"]["shards"] == sharded.shards
    assert manifest["execution"]["memory_budget_gb"] == pytest.approx(budget)
    for counts in manifest["tables"].values():
        assert counts["read"] == counts["valid"] + counts["quarantined"] + counts["collapsed"]
    assert not (tmp_path / "sharded" / ".tmp").exists()


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
