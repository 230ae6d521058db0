"""Handoff SLA clocks (FUNNEL_SPEC.md section 6) and their daily metrics.

A clock is a transition into an SLA stage, and the lead's next transition is necessarily its
exit from that stage. The first met_by activity after the entering event is a forward as-of
lookup of the entering SEQ, strictly after it (the entering activity never answers its own
clock), and it answers the clock if it sorts no later than the exit: at the exit itself it is a
met_by activity that also moves the lead out. So a clock stops at the answer, else at the exit,
else it is running. A terminal stage has no exit, and only an answer stops its clocks.

sla_daily is partial aggregates plus a combine step, like transforms/metrics.py: counts and
overdue changes by date are additive over disjoint sets of leads, and parts carry every
hours_to_stop value so that medians combine exactly.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from transforms.calendar import boundary, local_date
from transforms.owners import OWNER, owner_at
from transforms.rules import FunnelConfig, SlaRule
from transforms.transitions import ANSWERS, KEY, SEQ, owner_team, stage_name

US_PER_HOUR = 3_600_000_000
STAGE_EXIT = "stage_exit"
DAILY_COUNTS = ("started", "met_on_time", "stopped_late", "overdue")
_PART_SCHEMA: dict[str, pl.DataType] = {
    "date": pl.Date(), "rank": pl.Int8(), "started": pl.Int64(), "met_on_time": pl.Int64(),
    "stopped_late": pl.Int64(), "overdue_change": pl.Int64(), "hours": pl.List(pl.Float64()),
}


def _rule_clocks(moves: pl.LazyFrame, marked: pl.LazyFrame, owners: pl.LazyFrame, rank: int,
                 rule: SlaRule) -> pl.LazyFrame:
    """The clocks of one SLA: entries into its stage, stopped by the first answer or the exit."""
    answers = marked.filter(pl.col(ANSWERS) & pl.col("activity_type").is_in(rule.met_by)).select(
        pl.col(SEQ).alias("_answer_seq"), pl.col(KEY).alias("_answer_key"),
        pl.col("occurred_at").alias("_answer_at"), pl.col("activity_type").alias("_answer_type"),
    )
    answered = (pl.col("_answer_key") == pl.col(KEY)) & (
        pl.col("_exit_seq").is_null() | (pl.col("_answer_seq") <= pl.col("_exit_seq")))
    exited = pl.col("_exit_seq").is_not_null()
    clocks = (
        moves.filter(pl.col("to_rank") == rank)
        .join_asof(answers, left_on=SEQ, right_on="_answer_seq", strategy="forward", allow_exact_matches=False)
        .select(
            KEY, "lead_id", SEQ, "activity_id",
            pl.col("to_rank").alias("rank"),
            pl.col("transitioned_at").alias("entered_at"),
            (pl.col("transitioned_at") + pl.duration(microseconds=round(rule.within_hours * US_PER_HOUR)))
            .alias("due_at"),
            pl.when(answered).then(pl.col("_answer_at")).when(exited).then(pl.col("_exit_at")).alias("stopped_at"),
            pl.when(answered).then(pl.col("_answer_type")).when(exited).then(pl.lit(STAGE_EXIT))
            .alias("stopped_by"),
        )
    )
    return owner_at(clocks, owners)


def sla_clocks(transitions: pl.LazyFrame, marked: pl.LazyFrame, owners: pl.LazyFrame,
               config: FunnelConfig) -> pl.LazyFrame:
    """Keyed clocks of every configured SLA, in (lead, stage rank, replay) order.

    `transitions` are keyed transitions with SEQ, `marked` the activities (in replay order, with
    SEQ) of every met_by type, `owners` the keyed owner intervals.
    """
    same_lead_next = pl.col(KEY).shift(-1) == pl.col(KEY)
    moves = transitions.select(
        KEY, "lead_id", SEQ, "to_rank", "transitioned_at", "activity_id",
        pl.when(same_lead_next).then(pl.col("transitioned_at").shift(-1)).alias("_exit_at"),
        pl.when(same_lead_next).then(pl.col(SEQ).shift(-1)).alias("_exit_seq"),
    )
    parts = [_rule_clocks(moves, marked, owners, config.rank(rule.stage), rule) for rule in config.slas]
    if not parts:  # no SLA configured: no clocks, with the same columns and types
        parts = [_rule_clocks(moves.clear(), marked.clear(), owners, 0, SlaRule(config.stage_names[0], 1.0, ()))]
    return pl.concat(parts).sort(KEY, "rank", SEQ).select(
        KEY, "lead_id", "rank", OWNER, "entered_at", "due_at", "stopped_at", "stopped_by", "activity_id")


def hours_between(start: str, end: str) -> pl.Expr:
    """Real hours (3600 s) from one timestamp column to another."""
    return (pl.col(end) - pl.col(start)).dt.total_microseconds() / US_PER_HOUR


def sla(clocks: pl.LazyFrame, as_of: date, config: FunnelConfig) -> pl.LazyFrame:
    """The published sla dataset: each clock with its status at T(as_of)."""
    cut = boundary(as_of, config.timezone)
    stopped, due = pl.col("stopped_at"), pl.col("due_at")
    status = (
        pl.when(stopped.is_not_null()).then(pl.when(stopped <= due).then(pl.lit("met")).otherwise(pl.lit("breached")))
        .when(pl.lit(cut) > due).then(pl.lit("breached"))
        .otherwise(pl.lit("open"))
    )
    return clocks.select(
        "lead_id",
        stage_name("rank", config).alias("stage"),
        owner_team("rank", config).alias("owner_team"),
        OWNER, "entered_at", "due_at", "stopped_at", "stopped_by",
        status.alias("status"),
        hours_between("entered_at", "stopped_at").alias("hours_to_stop"),
    )


def sla_daily_parts(clocks: pl.LazyFrame, start: date, end: date, config: FunnelConfig) -> pl.LazyFrame:
    """Per (date, stage rank): clocks started, stopped on time and late, overdue changes, stop hours.

    A clock is overdue on the local dates from that of due_at (due_at < T(D)) up to the day
    before that of stopped_at (not stopped before T(D)); that span is a +1 and a -1, and changes
    before `start` are lumped onto it so that a cumulative sum over the range is the count.
    """
    tz = config.timezone
    in_range = pl.col("date") <= end
    started = clocks.select(local_date("entered_at", tz).alias("date"), "rank", pl.lit(1).alias("started"))
    stopped = clocks.filter(pl.col("stopped_at").is_not_null()).select(
        local_date("stopped_at", tz).alias("date"), "rank",
        (pl.col("stopped_at") <= pl.col("due_at")).cast(pl.Int64).alias("met_on_time"),
        (pl.col("stopped_at") > pl.col("due_at")).cast(pl.Int64).alias("stopped_late"),
        hours_between("entered_at", "stopped_at").alias("hours"),
    )
    spans = clocks.select(
        "rank", local_date("due_at", tz).alias("_from"), local_date("stopped_at", tz).alias("_until"),
    ).filter(pl.col("_until").is_null() | (pl.col("_from") < pl.col("_until")))
    overdue = pl.concat([
        spans.select(pl.col("_from").alias("date"), "rank", pl.lit(1).alias("overdue_change")),
        spans.filter(pl.col("_until").is_not_null()).select(
            pl.col("_until").alias("date"), "rank", pl.lit(-1).alias("overdue_change")),
    ]).filter(in_range).with_columns(pl.max_horizontal("date", pl.lit(start)).alias("date"))
    return (
        pl.concat([started.filter(pl.col("date") >= start), stopped.filter(pl.col("date") >= start), overdue],
                  how="diagonal")
        .filter(in_range)
        .group_by("date", "rank")
        .agg(pl.col("started", "met_on_time", "stopped_late", "overdue_change").sum(),
             pl.col("hours").drop_nulls())
        .select(pl.col(name).cast(dtype) for name, dtype in _PART_SCHEMA.items())
    )


def combine_sla_daily(parts: list[pl.LazyFrame], start: date, end: date, config: FunnelConfig) -> pl.LazyFrame:
    """sla_daily from the parts of one or more disjoint sets of leads: every date and SLA stage, zeros included."""
    ranks = sorted(config.rank(rule.stage) for rule in config.slas)
    grid = pl.LazyFrame({"date": pl.date_range(start, end, eager=True)}).join(
        pl.LazyFrame({"rank": ranks}, schema={"rank": pl.Int8}), how="cross")
    sums = (
        pl.concat([pl.LazyFrame(schema=_PART_SCHEMA), *parts])
        .group_by("date", "rank")
        .agg(pl.col("started", "met_on_time", "stopped_late", "overdue_change").sum(),
             median_hours_to_stop=pl.col("hours").explode().median())
    )
    return (
        grid.join(sums, on=["date", "rank"], how="left")
        .with_columns(pl.col("started", "met_on_time", "stopped_late", "overdue_change").fill_null(0))
        .sort("rank", "date")
        .with_columns(overdue=pl.col("overdue_change").cum_sum().over("rank"))
        .sort("date", "rank")
        .select(
            "date",
            stage_name("rank", config).alias("stage"),
            owner_team("rank", config).alias("owner_team"),
            *DAILY_COUNTS, "median_hours_to_stop",
        )
    )


def sla_daily(clocks: pl.LazyFrame, start: date, end: date, config: FunnelConfig) -> pl.LazyFrame:
    """Clocks started, stopped on time or late, and overdue, per date and SLA stage."""
    return combine_sla_daily([sla_daily_parts(clocks, start, end, config)], start, end, config)
