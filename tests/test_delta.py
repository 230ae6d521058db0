"""Delta Lake outputs on a real S3 API: moto's server, started here on a free port, with real authentication."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from flows.catalog import DATASETS, SNAPSHOTS
from flows.delta import DeltaStore
from tests.conftest import dirty_input

BUCKET = "funnel-lake"
START, AS_OF, NEXT = date(2026, 10, 25), date(2026, 10, 28), date(2026, 10, 29)
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A moto S3 server with authentication on, a bucket, and a user's keys in the standard AWS variables."""
    import boto3

    port = _free_port()
    # Requests after the first four (bucket, user, policy, key) must carry a valid signature.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        admin = {"aws_access_key_id": "admin", "aws_secret_access_key": "admin", "region_name": REGION,
                 "endpoint_url": endpoint}
        boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="funnel")
        iam.put_user_policy(UserName="funnel", PolicyName="lake", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="funnel")["AccessKey"]
        variables = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                     "AWS_REGION": REGION, "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"}
        with pytest.MonkeyPatch.context() as patch:
            for name, value in variables.items():
                patch.setenv(name, value)
            yield variables
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dirty generated input directory."""
    return dirty_input(tmp_path_factory.mktemp("input"), 400, seed=11, days=120)


def _objects(prefix: str) -> dict[str, bytes]:
    import boto3

    client = boto3.client("s3", region_name=REGION, endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def _parquet(output: Path) -> dict[str, pl.DataFrame]:
    return {d.name: pl.read_parquet(output / d.name, hive_partitioning=d.partition is not None) for d in DATASETS}


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(frame.columns, nulls_last=True)


def _assert_same_rows(delta: pl.DataFrame, parquet: pl.DataFrame, name: str) -> None:
    assert delta.columns == parquet.columns, name
    assert_frame_equal(_sorted(delta), _sorted(parquet), check_row_order=True), name


@pytest.mark.usefixtures("prefect_server")
def test_s3_delta_backfill_and_nightly_equal_local_parquet_with_time_travel(
        s3: dict[str, str], inputs: Path, tmp_path: Path) -> None:
    """A backfill then a nightly to s3:// as Delta hold the local Parquet run's rows; the old versions stay readable."""
    from flows.pipeline import backfill, nightly

    lake, local = f"s3://{BUCKET}/runs-a", tmp_path / "local"
    for output, output_format in ((lake, "delta"), (str(local), "parquet")):
        backfill(start=START, end=AS_OF, input_location=str(inputs), output_dir=output, output_format=output_format)
    first = DeltaStore(lake).manifests()[-1]["delta_versions"]
    backfilled = pl.read_parquet(local / SNAPSHOTS.name, hive_partitioning=True)
    for output, output_format in ((lake, "delta"), (str(local), "parquet")):
        nightly(as_of=NEXT, input_location=str(inputs), output_dir=output, output_format=output_format)

    store = DeltaStore(lake)
    manifests = store.manifests()
    assert [m["flow"] for m in manifests] == ["backfill", "nightly"]
    versions = manifests[-1]["delta_versions"]
    assert set(versions) == {d.name for d in DATASETS}
    assert versions["snapshots"] == first["snapshots"] + 1  # one transaction per table per run
    expected = _parquet(local)
    for dataset in DATASETS:
        uri = store.uri(dataset)
        table = DeltaTable(uri)
        assert table.version() == versions[dataset.name]
        _assert_same_rows(pl.from_arrow(table.to_pyarrow_table()), expected[dataset.name], dataset.name)
        _assert_same_rows(pl.scan_delta(uri).collect(), expected[dataset.name], dataset.name)
    pinned = pl.scan_delta(store.uri(SNAPSHOTS), version=first["snapshots"]).collect()
    _assert_same_rows(pinned, backfilled, "snapshots as of the backfill")
    assert sorted(pinned["snapshot_date"].unique()) == pl.date_range(START, AS_OF, eager=True).to_list()

    objects = _objects("runs-a/")
    assert any(k.startswith("runs-a/report/as_of=2026-10-29/") for k in objects)
    assert not any(s3["AWS_SECRET_ACCESS_KEY"].encode() in body for body in objects.values())


@pytest.mark.usefixtures("prefect_server")
def test_crash_between_table_commits_leaves_old_or_new_versions_and_the_last_manifest(
        s3: dict[str, str], inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run dying after its second table commit: tables at the old or new version, readers' manifest untouched.

    The next run restores the tables that moved and publishes what a run on a clean location publishes.
    """
    from flows.pipeline import nightly

    lake, local = f"s3://{BUCKET}/runs-b", tmp_path / "local"
    nightly(as_of=AS_OF, input_location=str(inputs), output_dir=lake, output_format="delta")
    store = DeltaStore(lake)
    before = store.manifests()
    committed = DeltaStore.commit_table
    calls: list[str] = []

    def dies_after_two(self: DeltaStore, dataset: object, parts: Path, published: bool) -> int:
        if len(calls) == 2:
            raise RuntimeError("killed between two table commits")
        calls.append(getattr(dataset, "name", ""))
        return committed(self, dataset, parts, published)  # type: ignore[arg-type]

    monkeypatch.setattr(DeltaStore, "commit_table", dies_after_two)
    with pytest.raises(RuntimeError, match="killed between"):
        nightly(as_of=NEXT, input_location=str(inputs), output_dir=lake, output_format="delta")
    monkeypatch.setattr(DeltaStore, "commit_table", committed)

    assert DeltaStore(lake).manifests() == before  # a fresh reader's view
    old = before[-1]["delta_versions"]
    now = {d.name: DeltaTable(store.uri(d)).version() for d in DATASETS}
    assert {n for n in now if now[n] == old[n] + 1} == set(calls)
    assert all(now[n] == old[n] for n in now if n not in calls)

    nightly(as_of=NEXT, input_location=str(inputs), output_dir=lake, output_format="delta")
    for output in (AS_OF, NEXT):
        nightly(as_of=output, input_location=str(inputs), output_dir=str(local))
    expected = _parquet(local)
    for dataset in DATASETS:
        _assert_same_rows(pl.scan_delta(store.uri(dataset)).collect(), expected[dataset.name], dataset.name)
    restored = [h["operation"] for h in DeltaTable(store.uri(next(d for d in DATASETS if d.name == calls[0])))
                .history()]
    assert "RESTORE" in restored


@pytest.mark.usefixtures("prefect_server")
def test_object_store_failures_are_one_line_without_a_secret(
        s3: dict[str, str], inputs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing bucket, a wrong secret and Parquet on S3 each fail with one line naming the cause, no credential."""
    from flows.cli import main

    def run(output: str, output_format: str) -> str:
        code = main(["run", "--as-of", str(AS_OF), "--input", str(inputs), "--output", output,
                     "--format", output_format])
        err = capsys.readouterr().err
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1, err
        assert "\x1b[" not in err
        return err

    assert "--format delta" in run(f"s3://{BUCKET}/parquet", "parquet")
    assert "bucket does not exist" in run("s3://no-such-funnel-bucket/lake", "delta")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    err = run(f"s3://{BUCKET}/runs-c", "delta")
    assert "signature" in err.lower()
    assert "wrong-secret-value" not in err and s3["AWS_SECRET_ACCESS_KEY"] not in err
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3["AWS_SECRET_ACCESS_KEY"])
    assert "credential" in run("s3://AKIA:secret@funnel-lake/x", "delta")


@pytest.mark.usefixtures("prefect_server")
def test_vacuum_refuses_a_short_retention_and_keeps_time_travel(
        inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`funnel vacuum` compacts and vacuums every table; below 168 h it needs --force; old versions stay readable."""
    from flows.cli import main
    from flows.pipeline import nightly

    out = tmp_path / "lake"
    for day in (AS_OF, NEXT):
        nightly(as_of=day, input_location=str(inputs), output_dir=str(out), output_format="delta")
    assert main(["vacuum", "--output", str(out), "--format", "delta", "--retention-hours", "0"]) == 2
    assert "--force" in capsys.readouterr().err
    first = pl.scan_delta(str(out / SNAPSHOTS.name), version=0).collect()
    assert main(["vacuum", "--output", str(out), "--format", "delta"]) == 0
    assert "12 tables" in capsys.readouterr().out
    assert_frame_equal(pl.scan_delta(str(out / SNAPSHOTS.name), version=0).collect(), first)
    assert main(["vacuum", "--output", str(out)]) == 2  # Parquet has nothing to vacuum
    assert "--format delta" in capsys.readouterr().err
