"""Funnel metrics by source: daily stock and flow, daily transitions, cohort conversion.

All three are driven by the configured stage list, so an extra stage gives its own rows.
Daily metrics take a date range and are computed for all of it at once.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from transforms.calendar import US_PER_DAY, local_date
from transforms.config import FunnelConfig
from transforms.snapshots import stage_days
from transforms.transitions import stage_name

COUNTS = ("in_stage", "entered", "exited_forward", "exited_backward")


def _source_days(leads: pl.LazyFrame, start: date, end: date, config: FunnelConfig) -> pl.LazyFrame:
    """(date, source) for every date in range and every source with a lead created by then."""
    first = leads.group_by("source").agg(local_date("created_at", config.timezone).min().alias("_first"))
    days = pl.LazyFrame({"date": pl.date_range(start, end, eager=True)})
    return days.join(first, how="cross").filter(pl.col("_first") <= pl.col("date")).select("date", "source")


def daily_funnel(transitions: pl.LazyFrame, intervals: pl.LazyFrame, leads: pl.LazyFrame,
                 start: date, end: date, config: FunnelConfig) -> pl.LazyFrame:
    """Leads per (date, source, stage) at T(D), and the moves into and out of it during D."""
    ranks = pl.LazyFrame({"rank": list(range(len(config.stages)))}, schema={"rank": pl.Int8})
    grid = _source_days(leads, start, end, config).join(ranks, how="cross")

    spans = stage_days(intervals, config)
    moves_in = spans.select("source", "rank", pl.col("from_date").alias("date"), pl.lit(1).alias("delta"))
    moves_out = spans.filter(pl.col("to_date").is_not_null()).select(
        "source", "rank", (pl.col("to_date") + pl.duration(days=1)).alias("date"), pl.lit(-1).alias("delta"))
    # Changes before the range are lumped onto its first day, so a cumulative sum over the
    # range starts from the stock at the start.
    deltas = (
        pl.concat([moves_in, moves_out])
        .filter(pl.col("date") <= end)
        .with_columns(pl.max_horizontal("date", pl.lit(start)).alias("date"))
        .group_by("source", "rank", "date").agg(pl.col("delta").sum())
    )
    day = local_date("transitioned_at", config.timezone).alias("date")
    moved = transitions.with_columns(day).filter(pl.col("date").is_between(start, end))
    entered = moved.group_by("date", "source", pl.col("to_rank").alias("rank")).agg(entered=pl.len())
    exited = (
        moved.filter(pl.col("direction") != "entry")
        .group_by("date", "source", pl.col("from_rank").alias("rank"))
        .agg(
            exited_forward=(pl.col("direction") == "forward").sum(),
            exited_backward=(pl.col("direction") == "backward").sum(),
        )
    )
    keys = ["date", "source", "rank"]
    return (
        grid.join(deltas, on=keys, how="left")
        .join(entered, on=keys, how="left")
        .join(exited, on=keys, how="left")
        .with_columns(pl.col("delta", "entered", "exited_forward", "exited_backward").fill_null(0))
        .sort("source", "rank", "date")
        .with_columns(in_stage=pl.col("delta").cum_sum().over("source", "rank"))
        .sort("date", "source", "rank")
        .select(
            "date", "source", stage_name("rank", config).alias("stage"),
            *[pl.col(c).cast(pl.Int64) for c in COUNTS],
        )
    )


def transitions_daily(transitions: pl.LazyFrame, start: date, end: date, config: FunnelConfig) -> pl.LazyFrame:
    """Non-entry transitions per (date, source, from, to, direction) with median time in from."""
    day = local_date("transitioned_at", config.timezone).alias("date")
    keys = ["date", "source", "from_rank", "to_rank", "direction"]
    return (
        transitions.filter(pl.col("direction") != "entry")
        .with_columns(day)
        .filter(pl.col("date").is_between(start, end))
        .group_by(keys)
        .agg(transitions=pl.len().cast(pl.Int64), median_hours_in_from_stage=pl.col("hours_in_from_stage").median())
        .sort(keys)
        .select(
            "date", "source",
            stage_name("from_rank", config).alias("from_stage"),
            stage_name("to_rank", config).alias("to_stage"),
            "direction", "transitions", "median_hours_in_from_stage",
        )
    )


def cohort_conversion(milestones: pl.LazyFrame, as_of: date, config: FunnelConfig) -> pl.LazyFrame:
    """Conversion of each adjacent stage pair by local cohort month and source.

    Of the leads that first reached `from` in a month, how many first reached `to` by the
    as-of boundary, and how fast (median days).
    """
    names = config.stage_names
    firsts = ["created_at"] + [f"first_{s}_at" for s in names[1:]]
    pairs = []
    for i in range(len(names) - 1):
        start_at, end_at = pl.col(firsts[i]), pl.col(firsts[i + 1])
        month_start = local_date(start_at, config.timezone).dt.truncate("1mo")
        pairs.append(
            milestones.filter(start_at.is_not_null())
            .group_by(month_start.alias("_month"), "source")
            .agg(
                entered=pl.len().cast(pl.Int64),
                converted=end_at.is_not_null().sum().cast(pl.Int64),
                median_days_to_convert=((end_at - start_at).dt.total_microseconds() / US_PER_DAY).median(),
            )
            .with_columns(from_stage=pl.lit(names[i]), to_stage=pl.lit(names[i + 1]), _pair=pl.lit(i))
        )
    # Mature once T(D) >= (end of cohort month) + maturity days, both local midnights.
    matures_on = pl.col("_month").dt.offset_by("1mo") + pl.duration(days=config.cohort_maturity_days)
    return (
        pl.concat(pairs)
        .sort("_month", "source", "_pair")
        .select(
            pl.col("_month").dt.strftime("%Y-%m").alias("cohort_month"),
            "source", "from_stage", "to_stage", "entered", "converted",
            (pl.col("converted") / pl.col("entered")).alias("conversion_rate"),
            "median_days_to_convert",
            (pl.lit(as_of) + pl.duration(days=1) >= matures_on).alias("is_mature"),
        )
    )

