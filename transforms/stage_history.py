"""SCD2 stage history: one row per interval a lead spent in a stage."""

from __future__ import annotations

import polars as pl

from transforms.rules import FunnelConfig
from transforms.transitions import KEY, owner_team, stage_name


def stage_intervals(transitions: pl.LazyFrame) -> pl.LazyFrame:
    """Keyed intervals: each transition opens one, the lead's next transition closes it."""
    nxt = pl.col("transitioned_at").shift(-1)
    return transitions.select(
        KEY, "lead_id", "source",
        pl.col("to_rank").alias("rank"),
        pl.col("transitioned_at").alias("valid_from"),
        pl.when(pl.col(KEY).shift(-1) == pl.col(KEY)).then(nxt).alias("valid_to"),
        pl.col("trigger").alias("entered_by"),
        "activity_id",
    )


def stage_history(intervals: pl.LazyFrame, config: FunnelConfig) -> pl.LazyFrame:
    """The published stage_history dataset (contiguous intervals, zero-length ones included)."""
    return intervals.select(
        "lead_id",
        stage_name("rank", config).alias("stage"),
        owner_team("rank", config).alias("owner_team"),
        "valid_from", "valid_to", "entered_by", "activity_id",
    )
