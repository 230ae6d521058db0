"""Which published dates a new input may have changed (FUNNEL_SPEC.md section 4, "published dates stay true").

A dated partition of date d depends only on events before T(d) (the replay is causal), so a
change that first shows at instant t can alter the partitions of dates whose boundary lies after
t and no earlier ones. The earliest such instant is found by comparing what the last published
run and this one say about the time before the last published boundary:
- the lead-grain datasets that both runs publish whole (transitions, milestones, owner_history,
  sla), cut to rows that start before the boundary, with every field that can still move after
  it (an open interval's end, a running clock's stop) cut too;
- the engagement points, which no published dataset keeps row by row: a fingerprint per local
  date (two sums of 32-bit halves of a row hash, and a count), additive over shards.
Dates from the local date of that instant on are candidates; the caller computes them and
keeps only the partitions whose rows actually differ, so an unchanged date is never rewritten.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime

import polars as pl

from transforms.calendar import day_start, local_date
from transforms.rules import FunnelConfig
from transforms.transitions import KEY

FINGERPRINT = ("_lo", "_hi", "_n")
_HALF = 1 << 32

# Per dataset compared: the column each row starts at, and columns that can change after the
# boundary while the row itself started before it (cut to null at the boundary).
STARTS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "transitions": ("transitioned_at", ()),
    "milestones": ("created_at", ()),
    "owner_history": ("valid_from", ("valid_to",)),
    "sla": ("entered_at", ("stopped_at",)),
}
# Columns of a dataset that depend on the as-of date itself, not on events before the boundary.
AS_OF_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "milestones": ("created_at", "source"),  # the rest summarises the whole history: keep only what dates use
    "sla": ("lead_id", "stage", "owner_team", "owner_id", "entered_at", "due_at", "stopped_at", "stopped_by"),
}


def _before(frame: pl.LazyFrame, name: str, cut: datetime) -> pl.LazyFrame:
    """Rows that start before the boundary, with later-moving fields cut at it."""
    start, moving = STARTS[name]
    kept = AS_OF_COLUMNS.get(name)
    if kept is not None:
        frame = frame.select("lead_id", *[c for c in kept if c != "lead_id"])
    boundary = pl.lit(cut)
    frame = frame.filter(pl.col(start) < boundary)
    cut_columns = [pl.when(pl.col(c) < boundary).then(pl.col(c)).alias(c) for c in moving]
    if name == "sla":  # a stop after the boundary is no stop yet, nor is its cause
        cut_columns.append(pl.when(pl.col("stopped_at") < boundary).then(pl.col("stopped_by")).alias("stopped_by"))
    return frame.with_columns(cut_columns) if cut_columns else frame


def earliest_change(old: Mapping[str, pl.LazyFrame], new: Mapping[str, pl.LazyFrame], cut: datetime) -> datetime | None:
    """The earliest start of a row that one run has before `cut` and the other has not (or not alike)."""
    found: list[datetime] = []
    for name, (start, _) in STARTS.items():
        if name not in old or name not in new:
            continue
        before_old, before_new = _before(old[name], name, cut), _before(new[name], name, cut)
        columns = before_new.collect_schema().names()
        before_old = before_old.select(columns)
        gone = before_old.join(before_new, on=columns, how="anti", nulls_equal=True)
        added = before_new.join(before_old, on=columns, how="anti", nulls_equal=True)
        first = pl.concat([gone.select(start), added.select(start)]).select(pl.col(start).min()).collect().item()
        if first is not None:
            found.append(first)
    return min(found) if found else None


def points_fingerprint(points: pl.LazyFrame, leads: pl.LazyFrame, first: date, config: FunnelConfig) -> pl.LazyFrame:
    """Per local date from `first` on: a fingerprint of the scoring activities (lead, instant, points) that day."""
    row = pl.struct("lead_id", "occurred_at", "points").hash(0x5EED)
    return (
        points.filter(pl.col("occurred_at") >= day_start(first, config.timezone))
        .join(leads.select(KEY, "lead_id"), on=KEY, how="left")
        .with_columns(local_date("occurred_at", config.timezone).alias("date"), row.alias("_h"))
        .group_by("date")
        .agg(_lo=(pl.col("_h") % _HALF).cast(pl.Int64).sum(), _hi=(pl.col("_h") // _HALF).cast(pl.Int64).sum(),
             _n=pl.len().cast(pl.Int64))
    )


def combine_fingerprints(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """The fingerprint of all leads from those of disjoint sets of leads (shards), by date."""
    empty = pl.DataFrame(schema={"date": pl.Date, **dict.fromkeys(FINGERPRINT, pl.Int64)})
    return pl.concat([empty, *parts]).group_by("date").agg(pl.col(FINGERPRINT).sum()).sort("date")


def first_changed_date(old: pl.DataFrame, new: pl.DataFrame, until: date) -> date | None:
    """The earliest date up to `until` whose fingerprint differs between two runs."""
    joined = old.join(new, on="date", how="full", coalesce=True, suffix="_new").filter(pl.col("date") <= until)
    differs = pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}_new")) for c in FINGERPRINT])
    first = joined.filter(differs).select(pl.col("date").min()).item()
    return first if isinstance(first, date) else None
