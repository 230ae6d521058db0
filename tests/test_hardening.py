"""What a hostile or unlucky night does: full disks, signals, killed parents, leaked credentials, markup in data."""

from __future__ import annotations

import json
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
from synthetic.generate import generate, write_inputs
from tests.conftest import dirty_input

AS_OF = date(2026, 10, 31)
CLI = [sys.executable, "-m", "flows.cli"]


def _read_all(output: Path) -> dict[str, pl.DataFrame]:
    return {d.name: pl.read_parquet(output / d.name) for d in catalog.DATASETS}


def _children(parent: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(proc.name))
            except (OSError, IndexError):
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dirty generated input directory."""
    return dirty_input(tmp_path_factory.mktemp("input"), 600, seed=8, days=200)


def test_a_full_disk_fails_before_anything_is_swapped(inputs: Path, tmp_path: Path) -> None:
    """On a disk with room for one run, the second fails in one line and the first stays published whole."""
    disk = tmp_path / "disk"
    disk.mkdir()
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")}
    run = [*CLI, "run", "--as-of", str(AS_OF), "--input", str(inputs), "--output", str(disk / "out")]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=14M", "tmpfs", str(disk)], check=True)
    try:
        subprocess.run(run, check=True, env=env, capture_output=True, timeout=300)
        before = _read_all(disk / "out")
        failed = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300)
        assert failed.returncode == 1
        assert failed.stderr.count("\n") == 1 and "No space left on device" in failed.stderr
        assert str(disk / "out") in failed.stderr  # the message names where
        after = _read_all(disk / "out")
        for name, frame in before.items():
            assert_frame_equal(after[name], frame)
        assert len(list((disk / "out" / "runs").iterdir())) == 1
        assert not (disk / "out" / ".tmp" / "commit.json").exists()  # it failed before the commit began
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_sigterm_ends_a_run_cleanly(tmp_path: Path) -> None:
    """SIGTERM mid-run: exit at once with one line, nothing published, the lock free for the next run."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    dirty_input(inputs, 20_000, seed=9, days=60)
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")}
    proc = subprocess.Popen([*CLI, "run", "--as-of", str(AS_OF), "--input", str(inputs), "--output", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / ".lock").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "funnel: interrupted; nothing published"
    assert not (out / "transitions").exists() and not (out / "runs").exists()
    again = subprocess.run([*CLI, "run", "--as-of", str(AS_OF), "--input", str(inputs), "--output", str(out)],
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr


def test_no_child_outlives_a_sigkilled_funnel(tmp_path: Path) -> None:
    """Prefect's temporary API server ends with the `funnel` process that started it, even on SIGKILL."""
    inputs = tmp_path / "in"
    dirty_input(inputs, 20_000, seed=10, days=60)
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([*CLI, "run", "--as-of", str(AS_OF), "--input", str(inputs), "--output",
                             str(tmp_path / "out")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    children: list[int] = []
    while time.monotonic() < deadline and not children:
        children = _children(proc.pid)
        time.sleep(0.05)
    assert children, "the temporary API server was not started"
    time.sleep(1)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(c) for c in children):
        time.sleep(0.1)
    assert not [c for c in children if _alive(c)]


def test_a_proxy_in_the_environment_does_not_stand_between_a_run_and_its_temporary_api(tmp_path: Path) -> None:
    """Behind an HTTP proxy (HTTP_PROXY and HTTPS_PROXY set) the run still reaches its local API directly."""
    inputs = tmp_path / "in"
    dirty_input(inputs, 300, seed=11, days=30)
    dead = "http://127.0.0.1:9"  # nothing listens there: a request through it fails at once
    env = os.environ | {"HTTP_PROXY": dead, "http_proxy": dead, "HTTPS_PROXY": dead, "https_proxy": dead}
    env.pop("PREFECT_API_URL", None)
    run = subprocess.run([*CLI, "run", "--as-of", str(AS_OF), "--input", str(inputs), "--output",
                          str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "done in" in run.stdout


@pytest.mark.usefixtures("prefect_server")
def test_no_credential_reaches_prefect_the_manifest_or_the_terminal(inputs: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A URI with a password anywhere is refused before it becomes a flow parameter; nothing stores it."""
    from prefect.client.orchestration import get_client

    from flows.cli import main

    secret = "hunter2-s3cr3t"
    for uri in (f"postgresql://reader:{secret}@127.0.0.1:5432/test",
                f"postgresql://reader@127.0.0.1:5432/test?password={secret}",
                f"postgresql://reader@127.0.0.1:5432/test?sslpassword={secret}"):
        assert main(["run", "--as-of", str(AS_OF), "--input", uri, "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "holds a credential" in err and secret not in err
    assert main(["run", "--as-of", str(AS_OF), "--input", str(inputs), "--output", str(tmp_path / "out")]) == 0
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    assert runs and not any(secret in json.dumps(run.parameters, default=str) for run in runs)
    everything = "".join(p.read_text(errors="replace") for p in (tmp_path / "out").rglob("*.json"))
    assert secret not in everything


@pytest.mark.usefixtures("prefect_server")
def test_personal_data_never_reaches_an_output(tmp_path: Path) -> None:
    """No email and no company name in any dataset (quarantine included), manifest or report."""
    from flows.pipeline import nightly

    data = generate(400, seed=31, dirty=True, days=120)
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_inputs(inputs, data.leads, data.activities, "csv")
    nightly(as_of=AS_OF, input_location=str(inputs), output_dir=str(out))
    personal = {v.strip() for c in ("email", "company") for v in data.leads[c].drop_nulls() if len(v.strip()) > 3}
    quarantined = pl.read_parquet(out / "quarantine" / "leads")
    assert quarantined.height > 0
    assert set(quarantined["email"].drop_nulls().unique()) <= {"<redacted>"}
    for name, frame in _read_all(out).items():
        for column in frame.select(pl.col(pl.String)).columns:
            leaked = set(frame[column].drop_nulls().str.strip_chars().unique()) & personal
            assert not leaked, (name, column, sorted(leaked)[:3])
    texts = [p.read_text(errors="replace") for p in out.rglob("*") if p.suffix in (".json", ".html")]
    assert not [v for v in personal if any(v in text for text in texts)]
