"""The split into lead shards, in memory or into files, and the cross-shard duplicate pre-pass."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from flows.inputs import scan_table
from flows.settings import load_config
from flows.shard import TABLES, ShardJob, read_raw_shard, repeated_ids, shard_files, split_in_memory, split_inputs
from flows.store import OutputStore
from transforms.validation import RepeatedIds, validate_activities, validate_leads

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
RUN_START = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize("shard_rows", [10**9, 500])
def test_repeated_ids_equal_whole_input_duplicates_even_for_an_export_written_twice(tmp_path: Path,
                                                                                     shard_rows: int) -> None:
    """Every activity twice (exact copies collapse), plus ids repeated across leads, split into 5 shards.

    The pre-pass finds exactly the ids a whole-input validation quarantines as
    duplicate_activity_id, also when the candidates are checked in many groups (shard_rows=500).
    """
    config = load_config(SAMPLE / "funnel.toml", None)
    activities = pl.read_csv(SAMPLE / "activities.csv", infer_schema=False)
    first = activities.head(40)
    other = pl.read_csv(SAMPLE / "leads.csv", infer_schema=False).filter(
        ~pl.col("lead_id").is_in(first["lead_id"].implode()))["lead_id"][0]
    crossed = first.with_columns(lead_id=pl.lit(other))  # the same ids on another lead: another shard
    doubled = pl.concat([activities, activities, crossed])
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "leads.csv").write_bytes((SAMPLE / "leads.csv").read_bytes())
    doubled.write_csv(inputs / "activities.csv")
    sources = {table: scan_table(inputs, table, tmp_path) for table in TABLES}
    pending = OutputStore(tmp_path / "pending")
    split_inputs(sources, pending, 5)

    found = repeated_ids(pl.scan_parquet(shard_files(pending, "activities")), config, RUN_START, doubled.height,
                         shard_rows)
    got = found.ids
    in_memory = split_in_memory({table: source.collect() for table, source in sources.items()}, 5)
    every = pl.concat([part["activities"].frame for part in in_memory]).lazy()
    assert repeated_ids(every, config, RUN_START, doubled.height, shard_rows).ids.to_list() == got.to_list()

    leads = validate_leads(sources["leads"].collect(), RUN_START, config.personal_columns)
    whole = validate_activities(sources["activities"].collect(), leads.valid, config.catalogue, RUN_START)
    quarantined = whole.quarantine.filter(pl.col("reasons").list.contains("duplicate_activity_id"))
    want = quarantined["activity_id"].str.strip_chars().unique().sort()
    assert len(want) > 30
    assert got.to_list() == want.to_list()
    # Each shard's rows: every raw row is in exactly one shard.
    job = ShardJob(pending_root=str(pending.root), shards=5, config=config, as_of=RUN_START.date(),
                   run_start=RUN_START, fingerprint_from=RUN_START.date(),
                   schemas={t: dict(s.frame.collect_schema()) for t, s in sources.items()})
    assert sum(read_raw_shard(job, "activities", s).frame.height for s in range(5)) == doubled.height
    # A shard validated with the pre-pass's hashes (no sort of its own) equals one validated without.
    assert found.hashes is not None and found.hashes.len() > activities.height // 2  # (about) every id repeats
    shard_leads = [validate_leads(read_raw_shard(job, "leads", s), RUN_START, config.personal_columns)
                   for s in range(5)]
    collapsed = 0
    for s in range(5):
        with_hashes, without = (
            validate_activities(read_raw_shard(job, "activities", s), shard_leads[s].valid, config.catalogue,
                                RUN_START, given) for given in (found, RepeatedIds(found.ids)))
        assert with_hashes.counts == without.counts
        assert_frame_equal(with_hashes.valid, without.valid)
        assert_frame_equal(with_hashes.quarantine, without.quarantine)
        collapsed += with_hashes.counts.collapsed
    assert collapsed >= activities.height - 100  # the export written twice: (about) every row a copy
    # The split in memory makes the same shards as the split into files.
    for table in TABLES:
        for s in range(5):
            on_disk = read_raw_shard(job, table, s).frame
            assert_frame_equal(in_memory[s][table].frame.sort(pl.all()), on_disk.sort(pl.all()))


@pytest.mark.usefixtures("prefect_server")
def test_shards_side_by_side_return_in_order_and_a_failure_waits_for_the_others() -> None:
    """Shard steps two at a time return in shard order; a failure waits for the shard still running.

    That shard may be writing into the pending area, which the run deletes once it has failed.
    """
    import time

    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from flows.pipeline import _side_by_side

    finished: list[int] = []

    @task(cache_policy=NO_CACHE)
    def step(shard: int, seconds: float, fail: bool) -> int:
        time.sleep(seconds)
        if fail:
            raise ValueError(f"shard {shard} failed")
        finished.append(shard)
        return shard * 10

    @flow
    def shards(calls: list[tuple[int, float, bool]]) -> list[int]:
        return _side_by_side(step, calls, 2)

    assert shards([(0, 0.3, False), (1, 0.0, False), (2, 0.1, False), (3, 0.0, False)]) == [0, 10, 20, 30]
    assert sorted(finished) == [0, 1, 2, 3]
    finished.clear()
    with pytest.raises(ValueError, match="shard 0 failed"):
        shards([(0, 0.0, True), (1, 1.0, False), (2, 0.0, False)])
    assert finished == [1]  # shard 1 ran to its end before the error surfaced; shard 2 never started
