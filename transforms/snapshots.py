"""Daily snapshots: each lead's stage and engagement at the boundary T(D) of any date D.

The stage, the owner and the engagement score are step functions of the local date, so one
history is turned once into per-lead "states" (from_date, to_date, stage, owner, score) and any
range of dates is a filter of those states: a year of snapshots never repeats the replay or a
join per date.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from transforms.calendar import US_PER_DAY, boundary, day_start, local_date
from transforms.owners import OWNER
from transforms.rules import FunnelConfig
from transforms.transitions import KEY, owner_team, stage_name


def stage_days(intervals: pl.LazyFrame, config: FunnelConfig) -> pl.LazyFrame:
    """Stage intervals as inclusive local-date ranges of the snapshots they hold in.

    The interval [valid_from, valid_to) is the state at T(D) exactly for the dates
    local_date(valid_from) <= D <= local_date(valid_to) - 1; intervals with no such date
    (both ends on one local day) never appear in a snapshot.
    """
    first = local_date("valid_from", config.timezone)
    last = local_date("valid_to", config.timezone) - pl.duration(days=1)
    return (
        intervals.select(KEY, "source", "rank", pl.col("valid_from").alias("entered_at"),
                         first.alias("from_date"), last.alias("to_date"))
        .filter(pl.col("to_date").is_null() | (pl.col("from_date") <= pl.col("to_date")))
    )


def _score_steps(activities: pl.LazyFrame, start: date, end: date | None, config: FunnelConfig) -> pl.LazyFrame:
    """Score changes by date: +points on the activity's local day, -points window days later.

    Points from days before start - window + 1 have left the window by `start` (their + and -
    both fall before it), so they are skipped, by instant before any local date is computed.
    Changes after `end` are lumped onto end + 1: no date after `end` is asked for, and every
    lead's changes still sum to zero.
    """
    first_day = start - timedelta(days=config.window_days - 1)
    daily = (
        activities.filter((pl.col("points") > 0) & (pl.col("occurred_at") >= day_start(first_day, config.timezone)))
        .with_columns(local_date("occurred_at", config.timezone).alias("date"))
        .group_by(KEY, "date")
        .agg(pl.col("points").sum().cast(pl.Int64).alias("delta"))
    )
    leaving = daily.select(KEY, pl.col("date") + pl.duration(days=config.window_days), -pl.col("delta"))
    # Points earned before `start` are lumped onto it: only the score from `start` on is asked for.
    entering = daily.with_columns(pl.max_horizontal("date", pl.lit(start)).alias("date"))
    steps = pl.concat([entering, leaving])
    if end is not None:
        steps = steps.with_columns(pl.min_horizontal("date", pl.lit(end + timedelta(days=1))).alias("date"))
    return steps.group_by(KEY, "date").agg(pl.col("delta").sum())


def _owner_days(owners: pl.LazyFrame, config: FunnelConfig) -> pl.LazyFrame:
    """Owner intervals as inclusive local-date ranges of the snapshots they hold in (see stage_days)."""
    first = local_date("valid_from", config.timezone)
    last = local_date("valid_to", config.timezone) - pl.duration(days=1)
    return (
        owners.select(KEY, OWNER, first.alias("from_date"), last.alias("to_date"))
        .filter(pl.col("to_date").is_null() | (pl.col("from_date") <= pl.col("to_date")))
    )


def snapshot_states(intervals: pl.LazyFrame, activities: pl.LazyFrame, owners: pl.LazyFrame, start: date,
                    config: FunnelConfig, end: date | None = None) -> pl.LazyFrame:
    """Per lead, date ranges from `start` over which stage, entry time, owner and engagement are constant.

    With `end`, nothing after it is asked for: later changes are dropped or lumped onto end + 1,
    so a nightly run sorts a few rows per lead rather than every future score change.
    """
    holds_from_start = pl.col("to_date").is_null() | (pl.col("to_date") >= start)
    if end is not None:
        holds_from_start = holds_from_start & (pl.col("from_date") <= end)
    from_start = pl.max_horizontal("from_date", pl.lit(start)).alias("date")
    stages = stage_days(intervals, config).filter(holds_from_start).select(
        KEY, from_start, "rank", "entered_at", pl.lit(0, pl.Int8).alias("_kind"))
    scores = _score_steps(activities, start, end, config).with_columns(_kind=pl.lit(1, pl.Int8))
    # Unassigned is the empty string while filling forward: a trimmed owner_id is never empty.
    held = _owner_days(owners, config).filter(holds_from_start).select(
        KEY, from_start, pl.col(OWNER).fill_null("").alias("_owner"), pl.lit(2, pl.Int8).alias("_kind"))
    same_lead_next = (pl.col(KEY).shift(-1) == pl.col(KEY)).fill_null(False)
    # Every lead's deltas sum to zero, and its first date (start, or its creation day) holds a
    # stage row first and an owner row (the intervals holding then, moved to that date), so a
    # global cumulative sum and forward fill stay within the lead on every row that is kept.
    return (
        pl.concat([stages, scores, held], how="diagonal")
        .sort(KEY, "date", "_kind")
        .with_columns(
            pl.col("delta").fill_null(0).cum_sum().alias("score"),
            pl.col("rank").forward_fill(),
            pl.col("entered_at").forward_fill(),
            pl.col("_owner").forward_fill(),
        )
        .filter(~same_lead_next | (pl.col("date").shift(-1) != pl.col("date")))
        .with_columns(
            to_date=pl.when(same_lead_next).then(pl.col("date").shift(-1) - pl.duration(days=1))
        )
        .select(KEY, pl.col("date").alias("from_date"), "to_date", "rank", "entered_at",
                pl.when(pl.col("_owner") != "").then(pl.col("_owner")).alias(OWNER), "score")
    )


def snapshot_day(states: pl.LazyFrame, leads: pl.LazyFrame, day: date, config: FunnelConfig) -> pl.LazyFrame:
    """The published snapshot rows of one date, in lead_id order (states are in lead order)."""
    cut = boundary(day, config.timezone)
    covering = (pl.col("from_date") <= day) & (pl.col("to_date").is_null() | (pl.col("to_date") >= day))
    return (
        states.filter(covering)
        .join(leads.select(KEY, "lead_id", "source"), on=KEY, how="left", maintain_order="left")
        .select(
            pl.lit(day).alias("snapshot_date"), "lead_id", "source",
            stage_name("rank", config).alias("stage"),
            owner_team("rank", config).alias("owner_team"),
            OWNER,
            pl.col("entered_at").alias("stage_entered_at"),
            ((pl.lit(cut) - pl.col("entered_at")).dt.total_microseconds() // US_PER_DAY)
            .cast(pl.Int32).alias("days_in_stage"),
            pl.col("score").cast(pl.Int32).alias("engagement_score"),
        )
    )


def snapshots(states: pl.DataFrame, leads: pl.LazyFrame, start: date, end: date,
              config: FunnelConfig) -> pl.LazyFrame:
    """The published snapshot rows of every date from start to end, in (date, lead_id) order.

    One filter of the states per date: no explode and no sort of the (large) result.
    """
    days = pl.date_range(start, end, eager=True).to_list()
    return pl.concat([snapshot_day(states.lazy(), leads, day, config) for day in days])
