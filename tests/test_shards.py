"""The split into lead shards and the cross-shard duplicate pre-pass, against whole-input validation."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from flows.inputs import scan_table
from flows.settings import load_config
from flows.shard import TABLES, ShardJob, read_raw_shard, repeated_ids, split_inputs
from flows.store import OutputStore
from transforms.validation import validate_activities, validate_leads

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

    got = repeated_ids(pending, config, RUN_START, doubled.height, shard_rows)

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
