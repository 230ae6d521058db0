"""Which published dates a new input may have changed (FUNNEL_SPEC.md section 4, "published dates stay true").

A dated partition of date d depends only on events before T(d) (the replay is causal), so a
change that first shows at instant t can alter the partitions of dates whose boundary lies after
t and no earlier ones. The earliest such instant is found by comparing what the last published
run and this one say about the time before the last published boundary:
- the lead-grain datasets that both runs publish whole (the catalog says how each is compared),
  cut to rows that start before the boundary, with every field that can still move after it
  (an open interval's end, a running clock's stop) cut too;
- the engagement points, which no published dataset keeps row by row: a fingerprint per local
  date (two sums of 32-bit halves of a row hash, and a count), additive over shards.
Dates from the local date of that instant on are candidates; the caller computes them and
keeps only the partitions whose rows actually differ, so an unchanged date is never rewritten.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime

import polars as pl

from transforms.calendar import day_start, local_date
from transforms.rules import FunnelConfig
from transforms.transitions import KEY

FINGERPRINT = ("_lo", "_hi", "_n")
_HALF = 1 << 32
_SEED = 0x5EED



@dataclass(frozen=True)
class RowTimes:
    """How the rows of one lead-grain dataset are compared before a boundary.

    `start` is the instant a row starts mattering; `moving` columns can still change after the
    boundary while the row started before it (cut to null at the boundary), each with the
    columns that follow it (a clock's `stopped_by` with its `stopped_at`); `columns`, if given,
    are the only ones dated partitions use (the rest summarise the whole history).
    """

    start: str
    moving: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    columns: tuple[str, ...] | None = None

    def before(self, frame: pl.LazyFrame, cut: datetime) -> pl.LazyFrame:
        """Rows that start before the boundary, with later-moving fields cut at it."""
        if self.columns is not None:
            frame = frame.select(self.columns)
        boundary = pl.lit(cut)
        cut_columns = [pl.when(pl.col(moving) < boundary).then(pl.col(c)).alias(c)
                       for moving, followers in self.moving.items() for c in (moving, *followers)]
        frame = frame.filter(pl.col(self.start) < boundary)
        return frame.with_columns(cut_columns) if cut_columns else frame


def earliest_change(old: Mapping[str, pl.LazyFrame], new: Mapping[str, pl.LazyFrame],
                    times: Mapping[str, RowTimes], cut: datetime) -> datetime | None:
    """The earliest start of a row that one run has before `cut` and the other has not (or not alike)."""
    found: list[datetime] = []
    for name, rows in times.items():
        before_old, before_new = rows.before(old[name], cut), rows.before(new[name], cut)
        columns = before_new.collect_schema().names()
        # Rows are compared by a 64-bit hash of all their columns: one integer join instead of
        # a join on every column (strings included).
        hashed_old, hashed_new = (frame.select(rows.start, _h=pl.struct(columns).hash(_SEED))
                                  for frame in (before_old.select(columns), before_new))
        gone = hashed_old.join(hashed_new, on="_h", how="anti")
        added = hashed_new.join(hashed_old, on="_h", how="anti")
        first = pl.concat([gone.select(rows.start), added.select(rows.start)]).select(
            pl.col(rows.start).min()).collect().item()
        if first is not None:
            found.append(first)
    return min(found) if found else None


def points_fingerprint(points: pl.LazyFrame, leads: pl.LazyFrame, first: date, config: FunnelConfig) -> pl.LazyFrame:
    """Per local date from `first` on: a fingerprint of the scoring activities (lead, instant, points) that day."""
    row = pl.struct("lead_id", "occurred_at", "points").hash(_SEED)
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


def same_rows(first: pl.DataFrame, second: pl.DataFrame) -> bool:
    """Whether two frames hold the same rows in any order.

    Two versions of a partition written with the same shard layout hold their rows in the same
    order, and are compared as they are. Only when the order differs (another number of shards)
    are sums of row hashes compared, which needs no sort.
    """
    if first.schema != second.schema or first.height != second.height:
        return False
    if first.equals(second):
        return True
    if first.get_column(first.columns[0]).equals(second.get_column(second.columns[0])):
        return False  # same rows in the same order up to the key: a value differs
    sums = [frame.select(_h=pl.struct(frame.columns).hash(_SEED)).select(
        lo=(pl.col("_h") % _HALF).cast(pl.Int64).sum(), hi=(pl.col("_h") // _HALF).cast(pl.Int64).sum()).row(0)
        for frame in (first, second)]
    return sums[0] == sums[1]
