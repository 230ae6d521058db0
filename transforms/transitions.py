"""The stage replay (FUNNEL_SPEC.md section 3) and the transitions it produces.

Each event is a clamp on the stage (max with a promotion, min with a demotion, max with the
score target), and clamps compose: for every stage rank k, "stage >= k" is the value written by
the latest event that writes it. With one entry row per lead writing every indicator, a plain
forward fill over the frame sorted by (lead, time, order) is the whole replay: no loop, no
per-lead window.

That frame's row number, SEQ, is replay order across all leads as one integer (each lead's entry,
then its activities by (occurred_at, activity_id)), so per-lead questions about "the next" or
"the latest" event of some kind (owners, SLA clocks) are as-of lookups on SEQ with no `by`.

The sorted frame is kept narrow: integer keys and codes plus the activity_id that breaks ties.
The lead's id and source are joined back by key where a dataset needs them, the activity type is
a code into the catalogue, and the few rows that need more of their activity (owners, SLA
answers) find it by their position in the validated activities (ACT).
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from transforms.rules import FunnelConfig

KEY = "lead_key"
SEQ = "_seq"
ACT = "_act"  # an activity's row in the validated activities
TYPE = "_type"  # an activity type's position in the catalogue
ASSIGNS, ANSWERS = "_assigns", "_answers"  # the activity type assigns an owner / answers some SLA
# Order of events at one instant: the entry first, then activities by activity_id.
ENTRY, ACTIVITY = 0, 1


def keyed_leads(leads: pl.LazyFrame, config: FunnelConfig, boundary: datetime) -> pl.LazyFrame:
    """Leads visible at the boundary, with an integer key in lead_id order and their fit."""
    fit = pl.sql_expr(config.fit).fill_null(False)
    return (
        leads.filter(pl.col("created_at") < boundary)
        .sort("lead_id")
        .with_row_index(KEY)
        .select(KEY, "lead_id", "source", "created_at", fit.alias("fit"))
    )


def _rules_table(config: FunnelConfig) -> pl.LazyFrame:
    """Per activity type of the catalogue: points, promotion and demotion rank, owner and SLA roles.

    The two roles (assigns an owner, answers some SLA) let the few rows that matter to owners and
    SLA clocks be found without comparing strings.
    """
    types = list(config.catalogue)
    answers = {t for rule in config.slas for t in rule.met_by}
    return pl.LazyFrame(
        {
            "activity_type": types,
            TYPE: list(range(len(types))),
            "points": [config.points.get(t, 0) for t in types],
            "_promo": [config.rank(config.promotions[t]) if t in config.promotions else None for t in types],
            "_demo": [config.rank(config.demotions[t]) if t in config.demotions else None for t in types],
            ASSIGNS: [t in config.assignment_types for t in types],
            ANSWERS: [t in answers for t in types],
        },
        schema={"activity_type": pl.String, TYPE: pl.UInt16, "points": pl.Int32, "_promo": pl.Int8, "_demo": pl.Int8,
                ASSIGNS: pl.Boolean, ANSWERS: pl.Boolean},
    )


def scored_activities(activities: pl.LazyFrame, leads: pl.LazyFrame, config: FunnelConfig,
                      boundary: datetime) -> pl.LazyFrame:
    """Activities before the boundary, keyed, in replay order, with points and their rules.

    Narrow: ACT (the row in `activities`), the lead's key and fit, the time, the activity_id and
    the type's code and rules; no text but the activity_id, which orders activities at one instant.
    """
    return (
        activities.with_row_index(ACT)
        .filter(pl.col("occurred_at") < boundary)
        .select(ACT, "lead_id", "occurred_at", "activity_id", "activity_type")
        .join(leads.select(KEY, "lead_id", "fit"), on="lead_id", how="inner")
        .join(_rules_table(config), on="activity_type", how="left")
        .drop("lead_id", "activity_type")
        .sort(KEY, "occurred_at", "activity_id")
    )


def type_name(config: FunnelConfig) -> pl.Expr:
    """The activity type of a TYPE code."""
    types = list(config.catalogue)
    return pl.col(TYPE).replace_strict(list(range(len(types))), types, return_dtype=pl.String)


def activity_details(marked: pl.DataFrame, activities: pl.DataFrame, leads: pl.DataFrame,
                     config: FunnelConfig) -> pl.DataFrame:
    """Rows of the scored activities with their lead_id, activity_type and owner_id (when the input has one)."""
    if "owner_id" in activities.columns:
        marked = marked.hstack(activities.select("owner_id")[marked[ACT]])
    return (
        marked.with_columns(type_name(config).alias("activity_type"))
        .join(leads.select(KEY, "lead_id"), on=KEY, how="left", maintain_order="left")
    )


def replay_position() -> pl.Expr:
    """SEQ of the rows of scored_activities: row j, of lead k, follows j activities and k + 1 entries."""
    return (pl.int_range(pl.len(), dtype=pl.Int64) + pl.col(KEY).cast(pl.Int64) + 1).alias(SEQ)


def score_hits(scored: pl.LazyFrame, config: FunnelConfig) -> pl.LazyFrame:
    """Row positions (in `scored`) where step 2 of the replay promotes by score.

    The lead is fit, the activity has points, and the score at its instant, points in
    (t - window, t] with every activity at that instant included, reaches the threshold. The
    window is window_days local calendar days in the configured timezone. Only fit leads'
    scoring rows can hit, so the rolling sum runs on those alone.
    """
    at = pl.col("occurred_at")
    local = at if config.timezone == "UTC" else at.dt.convert_time_zone(config.timezone)
    window = f"{config.window_days}d"
    return (
        scored.with_row_index("_i")
        .filter(pl.col("fit") & (pl.col("points") > 0))
        .select("_i", KEY, "points", local.alias("_local"))
        .filter(pl.col("points").rolling_sum_by("_local", window, closed="right").over(KEY) >= config.mql_threshold)
        .select("_i")
    )


def replay(leads: pl.LazyFrame, activities: pl.LazyFrame, config: FunnelConfig) -> pl.LazyFrame:
    """Every event (entries and scored activities) with the stage rank before and after it."""
    ranks = {s: config.rank(s) for s in config.stage_names}
    target = ranks[config.score_target]
    entries = leads.select(
        KEY, pl.col("created_at").alias("occurred_at"),
        pl.lit(None, pl.String).alias("activity_id"), pl.lit(None, pl.UInt16).alias(TYPE),
        pl.lit(ENTRY, pl.Int8).alias("_ord"),
    )
    # Activities are already in (lead, time, activity_id) order and never precede their lead's
    # entry, so a stable sort on (lead, entry-first) merges without comparing times or ids again.
    events = pl.concat(
        [entries, activities.select(KEY, "occurred_at", "activity_id", TYPE,
                                    pl.lit(ACTIVITY, pl.Int8).alias("_ord"), "_promo", "_demo", "_hit")],
        how="diagonal",
    ).sort(KEY, "_ord", maintain_order=True).with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(SEQ))

    entry = pl.col("_ord") == ENTRY
    hit = pl.col("_hit").fill_null(False)  # entries have none
    indicators = []
    for k in range(1, len(ranks)):
        write = (
            pl.when(entry).then(False)
            .when((pl.col("_promo") >= k) | (hit & (target >= k))).then(True)
            .when(pl.col("_demo") < k).then(False)
            .otherwise(None)
        )
        indicators.append(write.forward_fill().cast(pl.Int8))
    unfrozen = pl.sum_horizontal(indicators).cast(pl.Int8) if indicators else pl.lit(0, pl.Int8)
    terminal = [ranks[s] for s in config.terminal]

    is_term = pl.col("_stage_unfrozen").is_in(terminal).cast(pl.Int32)
    seen = is_term.cum_sum() - is_term
    seen_before = seen - pl.when(entry).then(seen).otherwise(None).forward_fill()
    stage = pl.when(seen_before > 0).then(None).otherwise(pl.col("_stage_unfrozen")).forward_fill()
    before = pl.when(~entry).then(pl.col("stage").shift(1))
    after_own_rule = (
        pl.when(pl.col("_promo").is_not_null()).then(pl.max_horizontal(pl.col("stage_before"), pl.col("_promo")))
        .when(pl.col("_demo").is_not_null()).then(pl.min_horizontal(pl.col("stage_before"), pl.col("_demo")))
        .otherwise(pl.col("stage_before"))
    )
    return (
        events.with_columns(_stage_unfrozen=unfrozen)
        .with_columns(stage=stage.cast(pl.Int8))
        .with_columns(stage_before=before.cast(pl.Int8))
        .with_columns(_own_rule_changed=after_own_rule != pl.col("stage_before"))
    )


def transitions(events: pl.LazyFrame, leads: pl.LazyFrame, config: FunnelConfig) -> pl.LazyFrame:
    """One row per stage change plus one entry row per lead, keyed, with stage ranks."""
    entry = pl.col("_ord") == ENTRY
    changed = events.filter(entry | (pl.col("stage") != pl.col("stage_before")))
    moved = pl.col("to_rank") - pl.col("from_rank")
    prev_at = pl.col("transitioned_at").shift(1)  # rows are in lead order; entries have no from
    return (
        changed.select(
            KEY,
            pl.col("stage_before").alias("from_rank"),
            pl.col("stage").alias("to_rank"),
            pl.col("occurred_at").alias("transitioned_at"),
            pl.when(entry).then(pl.lit("created"))
            .when(pl.col("_own_rule_changed")).then(type_name(config))
            .otherwise(pl.lit("score")).alias("trigger"),
            "activity_id", SEQ,
        )
        .with_columns(
            direction=pl.when(pl.col("from_rank").is_null()).then(pl.lit("entry"))
            .when(moved > 0).then(pl.lit("forward")).otherwise(pl.lit("backward")),
            stages_moved=moved.cast(pl.Int32),
            hours_in_from_stage=pl.when(pl.col("from_rank").is_not_null()).then(
                (pl.col("transitioned_at") - prev_at).dt.total_microseconds() / 3_600_000_000
            ),
        )
        .join(leads.select(KEY, "lead_id", "source"), on=KEY, how="left", maintain_order="left")
        .select(KEY, "lead_id", "from_rank", "to_rank", "transitioned_at", "trigger", "activity_id", SEQ,
                "direction", "stages_moved", "hours_in_from_stage", "source")
    )


def stage_name(rank: str, config: FunnelConfig) -> pl.Expr:
    """Stage rank column as its configured name."""
    names = config.stage_names
    return pl.col(rank).replace_strict(list(range(len(names))), names, return_dtype=pl.String)


def owner_team(rank: str, config: FunnelConfig) -> pl.Expr:
    """The team that owns a lead in the stage of this rank."""
    teams = [s.owner_team for s in config.stages]
    return pl.col(rank).replace_strict(list(range(len(teams))), teams, return_dtype=pl.String)


def transitions_output(keyed: pl.LazyFrame, config: FunnelConfig) -> pl.LazyFrame:
    """The published transitions dataset (spec section 4 columns, natural-key order)."""
    return keyed.select(
        "lead_id",
        stage_name("from_rank", config).alias("from_stage"),
        stage_name("to_rank", config).alias("to_stage"),
        "direction", "stages_moved", "transitioned_at", "trigger", "activity_id", "hours_in_from_stage",
    )
