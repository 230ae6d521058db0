"""Milestones: one row per lead with its current stage and the first time it reached each stage."""

from __future__ import annotations

import polars as pl

from transforms.rules import FunnelConfig
from transforms.transitions import KEY, stage_name


def milestone_columns(config: FunnelConfig) -> list[str]:
    """first_<stage>_at for every stage above the entry stage."""
    return [f"first_{s}_at" for s in config.stage_names[1:]]


def milestones(transitions: pl.LazyFrame, leads: pl.LazyFrame, config: FunnelConfig) -> pl.LazyFrame:
    """First time each stage or higher was reached (a skip reaches every stage it jumps over)."""
    firsts = [
        pl.col("transitioned_at").filter(pl.col("to_rank") >= k).min().alias(name)
        for k, name in enumerate(milestone_columns(config), start=1)
    ]
    per_lead = transitions.group_by(KEY).agg(
        pl.col("to_rank").last().alias("_current"),
        (pl.col("direction") == "backward").sum().cast(pl.Int32).alias("backward_moves"),
        *firsts,
    )
    return (
        leads.select(KEY, "lead_id", "source", "created_at")
        .join(per_lead, on=KEY, how="left")
        .sort(KEY)
        .select(
            "lead_id", "source", "created_at",
            stage_name("_current", config).alias("current_stage"),
            "backward_moves",
            *milestone_columns(config),
        )
    )
