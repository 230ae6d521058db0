"""Aggregates behind the HTML funnel report, computed from the published datasets."""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from transforms.metrics import combine_cohort_conversion
from transforms.rules import FunnelConfig


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


TOP_SOURCES = 12
LABEL_CHARS = 40


def label(column: str, chars: int = LABEL_CHARS) -> pl.Expr:
    """A data value shortened to `chars` characters for a chart label (an ellipsis marks the cut)."""
    text = pl.col(column)
    return pl.when(text.str.len_chars() > chars).then(text.str.slice(0, chars - 1) + "…").otherwise(text)


def by_source(daily_funnel: pl.DataFrame, as_of: date, config: FunnelConfig, top: int = TOP_SOURCES) -> pl.DataFrame:
    """Leads per source and stage at T(D): the `top` largest sources by name, the rest as "other"."""
    today = daily_funnel.filter(pl.col("date") == as_of)
    largest = (
        today.group_by("source").agg(pl.col("in_stage").sum()).sort("in_stage", "source", descending=[True, False])
        .head(top)["source"]
    )
    kept = pl.col("source").is_in(largest.implode())
    named = pl.when(kept).then(label("source")).otherwise(pl.lit(f"other ({today['source'].n_unique() - top})"))
    return (
        today.with_columns(named.alias("source"), (~kept).alias("_other"))
        .group_by("_other", "source", "stage").agg(pl.col("in_stage").sum())
        .sort("_other", "source", _stage_order(config))
        .select("source", "stage", "in_stage")
    )


def all_sources_cohorts(parts: list[pl.LazyFrame], as_of: date, config: FunnelConfig) -> pl.DataFrame:
    """cohort_conversion over all sources at once (exact medians, not medians of medians).

    From `cohort_conversion_parts` of disjoint sets of leads: a run's shards' parts, or one part
    of the published milestones.
    """
    return combine_cohort_conversion([part.with_columns(source=pl.lit("all")) for part in parts], as_of,
                                     config).collect()


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


def sla_weekly(sla: pl.DataFrame, as_of: date, config: FunnelConfig, weeks: int = 26) -> pl.DataFrame:
    """Per local week (Monday) a lead entered an SLA stage: clocks met on time, answered late, still overdue or open."""
    entered = pl.col("entered_at").dt.convert_time_zone(config.timezone).dt.date()
    running = pl.col("stopped_at").is_null()
    return (
        sla.with_columns(day=entered)
        .filter(pl.col("day").is_between(as_of - timedelta(weeks=weeks), as_of))
        .group_by(pl.col("day").dt.truncate("1w").alias("week"), "stage")
        .agg(met_on_time=(pl.col("status") == "met").sum(),
             stopped_late=(~running & (pl.col("status") == "breached")).sum(),
             overdue=(running & (pl.col("status") == "breached")).sum(),
             open=(pl.col("status") == "open").sum())
        .sort("week", _stage_order(config))
    )


def pickup_hours_weekly(sla: pl.DataFrame, as_of: date, config: FunnelConfig, weeks: int = 26) -> pl.DataFrame:
    """Median real hours from entering an SLA stage to the clock stopping, per local week it stopped in."""
    stopped_day = pl.col("stopped_at").dt.convert_time_zone(config.timezone).dt.date()
    return (
        sla.filter(pl.col("stopped_at").is_not_null())
        .with_columns(day=stopped_day)
        .filter(pl.col("day").is_between(as_of - timedelta(weeks=weeks), as_of))
        .group_by(pl.col("day").dt.truncate("1w").alias("week"), "stage")
        .agg(median_hours=pl.col("hours_to_stop").median(), clocks=pl.len())
        .sort("week", _stage_order(config))
    )


def overdue_by_owner(sla: pl.DataFrame, owner_history: pl.DataFrame, top: int = 10) -> pl.DataFrame:
    """The current owners with the most clocks running past due at the as-of boundary ("unassigned" for none)."""
    current = owner_history.filter(pl.col("valid_to").is_null()).select("lead_id", current_owner="owner_id")
    return (
        sla.filter(pl.col("stopped_at").is_null() & (pl.col("status") == "breached"))
        .join(current, on="lead_id", how="left")
        .with_columns(label("current_owner").fill_null("unassigned").alias("owner"))
        .group_by("owner")
        .agg(overdue=pl.len(), stages=pl.col("stage").unique().sort().str.join(", "),
             oldest_due=pl.col("due_at").min())
        .sort("overdue", "owner", descending=[True, False])
        .head(top)
    )


def restatements(manifests: list[dict[str, object]], as_of: date, days: int = 30) -> pl.DataFrame:
    """Past dates rewritten by the runs of the last `days` days, and why (late rows, rules changed, catch-up)."""
    rows = []
    for manifest in manifests:
        run_date = date.fromisoformat(str(manifest["as_of"]))
        written = manifest.get("dates_written")
        if not isinstance(written, dict) or run_date < as_of - timedelta(days=days) or run_date > as_of:
            continue
        for reason in ("late_rows", "rules_changed", "catch_up"):
            dates = written.get(reason) or []
            if dates:
                rows.append((str(manifest["run_id"]), run_date, reason, len(dates), min(dates), max(dates)))
    schema = {"run_id": pl.String, "run_date": pl.Date, "reason": pl.String, "dates": pl.Int64,
              "first": pl.String, "last": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row").sort("run_date", "reason")
