"""Aggregates behind the HTML funnel report, computed from the published datasets."""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from transforms.config import FunnelConfig
from transforms.metrics import cohort_conversion


def _stage_order(config: FunnelConfig) -> pl.Expr:
    names = config.stage_names
    return pl.col("stage").replace_strict(names, list(range(len(names))), return_dtype=pl.Int32)


def funnel_today(daily_funnel: pl.DataFrame, cohorts_all: pl.DataFrame, as_of: date,
                 config: FunnelConfig) -> pl.DataFrame:
    """Per stage: owner, leads in it at T(D), and conversion to the next stage (all cohorts)."""
    cohorts = cohorts_all
    owners = pl.DataFrame({"stage": config.stage_names, "owner_team": [s.owner_team for s in config.stages]})
    conversion = cohorts.group_by(pl.col("from_stage").alias("stage")).agg(
        pl.col("entered").sum(), pl.col("converted").sum()
    ).with_columns(conversion_to_next=pl.col("converted") / pl.col("entered"))
    return (
        owners.join(daily_funnel.filter(pl.col("date") == as_of).group_by("stage").agg(pl.col("in_stage").sum()),
                    on="stage", how="left")
        .join(conversion.select("stage", "conversion_to_next"), on="stage", how="left")
        .with_columns(pl.col("in_stage").fill_null(0))
        .sort(_stage_order(config))
    )


def stage_series(daily_funnel: pl.DataFrame, as_of: date, days: int, config: FunnelConfig) -> pl.DataFrame:
    """Leads in each stage per date over the last `days` days present (all sources)."""
    first = as_of - timedelta(days=days - 1)
    return (
        daily_funnel.filter(pl.col("date").is_between(first, as_of))
        .group_by("date", "stage").agg(pl.col("in_stage").sum())
        .sort("date", _stage_order(config))
    )


def backward_weekly(transitions: pl.DataFrame, as_of: date, config: FunnelConfig) -> pl.DataFrame:
    """Backward moves per local ISO week (Monday) and stage left, over the last 26 weeks."""
    local_day = pl.col("transitioned_at").dt.convert_time_zone(config.timezone).dt.date()
    first = as_of - timedelta(weeks=26)
    return (
        transitions.filter(pl.col("direction") == "backward")
        .with_columns(day=local_day)
        .filter(pl.col("day").is_between(first, as_of))
        .group_by(pl.col("day").dt.truncate("1w").alias("week"), pl.col("from_stage").alias("stage"))
        .agg(moves=pl.len())
        .sort("week", _stage_order(config))
    )


def by_source(daily_funnel: pl.DataFrame, as_of: date, config: FunnelConfig) -> pl.DataFrame:
    """Leads per source and stage at T(D)."""
    return daily_funnel.filter(pl.col("date") == as_of).select("source", "stage", "in_stage").sort(
        "source", _stage_order(config))


def all_sources_cohorts(milestones: pl.DataFrame, as_of: date, config: FunnelConfig) -> pl.DataFrame:
    """cohort_conversion over all sources at once (exact medians, not medians of medians)."""
    return cohort_conversion(milestones.lazy().with_columns(source=pl.lit("all")), as_of, config).collect()


def cohort_matrix(cohorts_all: pl.DataFrame, months: int = 12) -> pl.DataFrame:
    """Conversion and median days per cohort month and stage pair, the latest `months` months."""
    recent = cohorts_all.select(pl.col("cohort_month").unique().sort().tail(months))
    return (
        cohorts_all.join(recent, on="cohort_month")
        .with_columns(pair=pl.concat_str("from_stage", pl.lit(" → "), "to_stage"))
        .select("cohort_month", "pair", "entered", "converted", "conversion_rate", "median_days_to_convert",
                "is_mature")
        .sort("cohort_month")
    )
