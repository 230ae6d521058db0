"""Who on the team has each lead (FUNNEL_SPEC.md section 6): SCD2 owner intervals.

Ownership is not a stage: an assignment sets the owner whatever the stage, terminal ones
included, so the owner after any event is the owner_id of the lead's latest assignment at or
before it in replay order. Merged by SEQ with one entry row per lead (null owner), the
assignments that change the owner (null-aware, against the row before) are the interval starts,
each closed by the lead's next one. The owner at any event is then a backward as-of lookup of
its SEQ in those intervals: the entry row guarantees the lookup never leaves the lead.
"""

from __future__ import annotations

import polars as pl

from transforms.transitions import ASSIGNS, KEY, SEQ

OWNER = "owner_id"


def assignments(marked: pl.LazyFrame) -> pl.LazyFrame:
    """Assignment activities in replay order with the owner they set (trimmed; empty or missing: null).

    `marked` holds scored activities (in replay order, with their SEQ); a frame without an
    owner_id column has only unassignments.
    """
    has_owner = OWNER in marked.collect_schema().names()
    owner = pl.col(OWNER).cast(pl.String).str.strip_chars() if has_owner else pl.lit(None, pl.String)
    return marked.filter(pl.col(ASSIGNS)).select(
        KEY, "lead_id", SEQ, "occurred_at", "activity_id",
        pl.when(owner != "").then(owner).alias(OWNER),
    )


def owner_intervals(transitions: pl.LazyFrame, assigned: pl.LazyFrame) -> pl.LazyFrame:
    """Keyed owner intervals (with the SEQ that opened each), in replay order."""
    entries = transitions.filter(pl.col("from_rank").is_null()).select(
        KEY, "lead_id", SEQ, "transitioned_at",
        pl.lit(None, pl.String).alias("activity_id"), pl.lit(None, pl.String).alias(OWNER),
    )
    events = pl.concat([
        entries,
        assigned.select(KEY, "lead_id", SEQ, pl.col("occurred_at").alias("transitioned_at"), "activity_id", OWNER),
    ]).sort(SEQ)
    # An entry row always opens an interval, so comparing with the row before never crosses leads.
    changes = events.filter(pl.col("activity_id").is_null() | pl.col(OWNER).ne_missing(pl.col(OWNER).shift(1)))
    same_lead_next = pl.col(KEY).shift(-1) == pl.col(KEY)
    return changes.select(
        KEY, "lead_id", SEQ, OWNER,
        pl.col("transitioned_at").alias("valid_from"),
        pl.when(same_lead_next).then(pl.col("transitioned_at").shift(-1)).alias("valid_to"),
        "activity_id",
    )


def owner_at(events: pl.LazyFrame, intervals: pl.LazyFrame) -> pl.LazyFrame:
    """`events` (in SEQ order) with the owner after each of them: the interval holding at its SEQ."""
    return events.join_asof(
        intervals.select(pl.col(SEQ).alias("_owner_seq"), OWNER),
        left_on=SEQ, right_on="_owner_seq", strategy="backward",
    ).drop("_owner_seq")


def owner_history(intervals: pl.LazyFrame) -> pl.LazyFrame:
    """The published owner_history dataset, in natural-key (lead_id, valid_from, activity_id) order."""
    return intervals.select("lead_id", OWNER, "valid_from", "valid_to", "activity_id")
