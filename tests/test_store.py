"""The output store: whole-directory replacement, staged commits, and the fallback without exchange."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import flows.io
from flows.io import STAGED_INPUT, OutputStore

DAY = date(2026, 10, 31)


def _frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({"lead_id": [f"L{i}" for i in range(n)]})


@pytest.mark.parametrize("exchange", [True, False])
def test_commit_replaces_each_dataset_directory_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      exchange: bool) -> None:
    """Old parts never survive a new version; staged input is not published; staging is removed."""
    if not exchange:  # a file system without renameat2's exchange: rename away, then in
        monkeypatch.setattr(flows.io, "_exchange", lambda _a, _b: False)
    store = OutputStore(tmp_path / "out")
    staged = store.staging("r1")
    for part in range(3):
        staged.write_part(_frame(part + 1), staged.dataset_dir("transitions"), part)
        staged.write_part(_frame(2), staged.dataset_dir("snapshots", DAY), part)
    staged.write_part(_frame(5), staged.shard_input_dir("leads", 0))
    (staged.dataset_dir("transitions") / ".part-1.parquet.0123abcd").write_bytes(b"torn")  # a dead writer's
    committed = store.commit(staged)
    assert sorted(p.name for p in committed) == ["snapshot_date=2026-10-31", "transitions"]
    assert pl.read_parquet(store.dataset_dir("transitions")).height == 6
    assert not list(store.dataset_dir("transitions").glob(".part-*"))
    assert not staged.root.exists() and not (store.root / STAGED_INPUT).exists()

    store.write_frame(_frame(4), store.dataset_dir("transitions"))  # one process after three shards
    assert [p.name for p in store.dataset_dir("transitions").iterdir()] == ["part-0.parquet"]
    assert_frame_equal(pl.read_parquet(store.dataset_dir("transitions")), _frame(4))
    assert pl.read_parquet(store.dataset_dir("snapshots", DAY)).height == 6
    assert not [p for p in (store.root / ".tmp").iterdir() if p.is_dir()]  # old versions removed


def test_exchange_swaps_two_directories(tmp_path: Path) -> None:
    """On this machine's file system the atomic exchange is available and used."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "x").write_text("first")
    (second / "x").write_text("second")
    assert flows.io._exchange(first, second)
    assert ((first / "x").read_text(), (second / "x").read_text()) == ("second", "first")
