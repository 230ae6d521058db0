"""Funnel metrics by source: daily stock and flow, daily transitions, cohort conversion.

All three are driven by the configured stage list, so an extra stage gives its own rows.
Daily metrics take a date range and are computed for all of it at once.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from transforms.calendar import US_PER_DAY, local_date
from transforms.rules import FunnelConfig
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


def combine_daily_funnel(parts: list[pl.DataFrame], config: FunnelConfig) -> pl.DataFrame:
    """daily_funnel of all leads from the daily_funnel of disjoint sets of leads (shards).

    Every count is additive, and each part's (date, source) rows are those with a lead of the
    source created by the date, so their union is the whole grid.
    """
    rank = pl.col("stage").replace_strict(config.stage_names, list(range(len(config.stages))))
    return (
        pl.concat(parts)
        .group_by("date", "source", "stage")
        .agg(pl.col(c).sum() for c in COUNTS)
        .sort("date", "source", rank)
        .select("date", "source", "stage", *COUNTS)
    )


TRANSITION_KEYS = ["date", "source", "from_rank", "to_rank", "direction"]


def transitions_daily_parts(transitions: pl.LazyFrame, start: date, end: date, config: FunnelConfig) -> pl.LazyFrame:
    """Per (date, source, from, to, direction): the count and every hours_in_from_stage value.

    The values, not their median, so that parts of disjoint leads combine into exact medians.
    """
    day = local_date("transitioned_at", config.timezone).alias("date")
    return (
        transitions.filter(pl.col("direction") != "entry")
        .with_columns(day)
        .filter(pl.col("date").is_between(start, end))
        .group_by(TRANSITION_KEYS)
        .agg(transitions=pl.len().cast(pl.Int64), hours=pl.col("hours_in_from_stage"))
    )


def transitions_daily(transitions: pl.LazyFrame, start: date, end: date, config: FunnelConfig) -> pl.LazyFrame:
    """Non-entry transitions per (date, source, from, to, direction) with median time in from."""
    return combine_transitions_daily([transitions_daily_parts(transitions, start, end, config)], config)


def combine_transitions_daily(parts: list[pl.LazyFrame], config: FunnelConfig) -> pl.LazyFrame:
    """transitions_daily from the parts of one or more disjoint sets of leads."""
    keys = TRANSITION_KEYS
    return (
        pl.concat(parts)
        .group_by(keys)
        .agg(pl.col("transitions").sum(), median_hours_in_from_stage=pl.col("hours").explode().median())
        .sort(keys)
        .select(
            "date", "source",
            stage_name("from_rank", config).alias("from_stage"),
            stage_name("to_rank", config).alias("to_stage"),
            "direction", "transitions", "median_hours_in_from_stage",
        )
    )


def cohort_conversion_parts(milestones: pl.LazyFrame, config: FunnelConfig) -> pl.LazyFrame:
    """Per (cohort month, source, stage pair): counts and every days-to-convert value.

    The values, not their median, so that parts of disjoint leads combine into exact medians.
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
                days=((end_at - start_at).dt.total_microseconds() / US_PER_DAY).drop_nulls(),
            )
            .with_columns(_pair=pl.lit(i))
        )
    return pl.concat(pairs)


def cohort_conversion(milestones: pl.LazyFrame, as_of: date, config: FunnelConfig) -> pl.LazyFrame:
    """Conversion of each adjacent stage pair by local cohort month and source.

    Of the leads that first reached `from` in a month, how many first reached `to` by the
    as-of boundary, and how fast (median days).
    """
    return combine_cohort_conversion([cohort_conversion_parts(milestones, config)], as_of, config)


def combine_cohort_conversion(parts: list[pl.LazyFrame], as_of: date, config: FunnelConfig) -> pl.LazyFrame:
    """cohort_conversion from the parts of one or more disjoint sets of leads."""
    names = config.stage_names
    # Mature once T(D) >= (end of cohort month) + maturity days, both local midnights.
    matures_on = pl.col("_month").dt.offset_by("1mo") + pl.duration(days=config.cohort_maturity_days)
    return (
        pl.concat(parts)
        .group_by("_month", "source", "_pair")
        .agg(pl.col("entered", "converted").sum(), median_days_to_convert=pl.col("days").explode().median())
        .sort("_month", "source", "_pair")
        .select(
            pl.col("_month").dt.strftime("%Y-%m").alias("cohort_month"),
            "source",
            pl.col("_pair").replace_strict(list(range(len(names) - 1)), names[:-1]).alias("from_stage"),
            pl.col("_pair").replace_strict(list(range(len(names) - 1)), names[1:]).alias("to_stage"),
            "entered", "converted",
            (pl.col("converted") / pl.col("entered")).alias("conversion_rate"),
            "median_days_to_convert",
            (pl.lit(as_of) + pl.duration(days=1) >= matures_on).alias("is_mature"),
        )
    )

