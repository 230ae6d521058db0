"""The output store: whole-directory replacement, one commit per run, recovery of an interrupted commit."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import flows.store
from flows.catalog import SNAPSHOTS, TRANSITIONS
from flows.store import SCRATCH, NotAtomicError, OutputStore, check_atomic

DAY = date(2026, 10, 31)


def _frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({"lead_id": [f"L{i}" for i in range(n)]})


def _pending_run(store: OutputStore, run_id: str, rows: int) -> OutputStore:
    pending = store.pending(run_id)
    for part in range(3):
        pending.write_dataset(TRANSITIONS, _frame(rows), part)
        pending.write_dataset(SNAPSHOTS, _frame(rows).with_columns(snapshot_date=pl.lit(DAY)), part, DAY)
    pending.write_part(_frame(5), pending.shard_input("leads", 0))
    pending.write_manifest(run_id, {"run_id": run_id, "ended_at": run_id})
    return pending


def test_commit_replaces_each_dataset_directory_whole(tmp_path: Path) -> None:
    """Old parts never survive a new version; shard input is not published; the pending area is removed."""
    store = OutputStore(tmp_path / "out")
    pending = _pending_run(store, "r1", 2)
    (pending.path(TRANSITIONS) / ".part-1.parquet.0123abcd").write_bytes(b"torn")  # a dead writer's
    committed = store.commit(pending)
    assert sorted(p.name for p in committed) == ["r1.json", "snapshot_date=2026-10-31", "transitions"]
    assert pl.read_parquet(store.path(TRANSITIONS)).height == 6
    assert not list(store.path(TRANSITIONS).glob(".part-*"))
    assert not pending.root.exists() and not (store.root / SCRATCH).exists()

    single = store.pending("r2")
    single.write_dataset(TRANSITIONS, _frame(4))
    store.commit(single)
    assert [p.name for p in store.path(TRANSITIONS).iterdir()] == ["part-0.parquet"]
    assert_frame_equal(pl.read_parquet(store.path(TRANSITIONS)), _frame(4))
    assert pl.read_parquet(store.path(SNAPSHOTS, DAY)).height == 6  # not in the second run: kept
    assert [m["run_id"] for m in store.manifests()] == ["r1"]


@pytest.mark.parametrize("crash_after", [0, 1])
def test_an_interrupted_commit_is_completed_by_the_next_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            crash_after: int) -> None:
    """A crash after any number of swaps: recovery publishes the whole new run, manifest last."""
    store = OutputStore(tmp_path / "out")
    store.commit(_pending_run(store, "r1", 2))
    swap = flows.store._swap_in
    done: list[Path] = []

    def crashing(staged: Path, target: Path) -> None:
        if len(done) == crash_after:
            raise KeyboardInterrupt("killed mid-commit")
        swap(staged, target)
        done.append(target)

    monkeypatch.setattr(flows.store, "_swap_in", crashing)
    with pytest.raises(KeyboardInterrupt):
        store.commit(_pending_run(store, "r2", 3))
    assert [m["run_id"] for m in store.manifests()] == ["r1"]  # readers still trust the old run
    assert json.loads((store.root / ".tmp" / "commit.json").read_text())["pending"] == "run-r2"
    monkeypatch.setattr(flows.store, "_swap_in", swap)
    store.clear_tmp()  # what the next run does first
    assert [m["run_id"] for m in store.manifests()] == ["r1", "r2"]
    assert pl.read_parquet(store.path(TRANSITIONS)).height == 9
    assert pl.read_parquet(store.path(SNAPSHOTS, DAY)).height == 9
    assert not (store.root / ".tmp").exists()


def test_a_file_system_without_exchange_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where directories cannot be swapped atomically (NFS), the run is refused, not silently torn."""
    check_atomic(tmp_path)  # this machine's file system can
    monkeypatch.setattr(flows.store, "_exchange", lambda _a, _b: False)
    with pytest.raises(NotAtomicError, match="cannot exchange two directories atomically"):
        check_atomic(tmp_path)


def test_exchange_swaps_two_directories(tmp_path: Path) -> None:
    """On this machine's file system the atomic exchange is available and used."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "x").write_text("first")
    (second / "x").write_text("second")
    assert flows.store._exchange(first, second)
    assert ((first / "x").read_text(), (second / "x").read_text()) == ("second", "first")
