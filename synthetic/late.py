"""A season of nightly inputs where rows arrive late, as CRMs deliver them (offline imports, sync lag).

Each row of a generated export gets an arrival date: the local date of its own event (a lead's
created_at, an activity's occurred_at) for most rows, one to `max_delay` days later for a
`late_share` of them. Night N's input holds every row that arrived by N.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

import numpy as np
import polars as pl


@dataclass(frozen=True)
class Night:
    """One night's input: what the CRM export holds at the end of that day."""

    night: date
    leads: pl.DataFrame
    activities: pl.DataFrame


def _event_date(column: str) -> pl.Expr:
    """The event's date from contract text (its first ten characters), or null when unreadable."""
    return pl.col(column).cast(pl.String).str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)


def with_arrival(frame: pl.DataFrame, column: str, late_share: float, max_delay: int, seed: int) -> pl.DataFrame:
    """The frame with `_arrives`: its event's date, plus 1..max_delay days for a late_share of rows."""
    rng = np.random.default_rng(seed)
    late = rng.random(frame.height) < late_share
    delay = np.where(late, rng.integers(1, max_delay + 1, frame.height), 0)
    arrives = _event_date(column) + pl.duration(days=pl.lit(pl.Series(delay)))
    return frame.with_columns(arrives.fill_null(date(1970, 1, 1)).alias("_arrives"))


def nightly_inputs(leads: pl.DataFrame, activities: pl.DataFrame, nights: list[date], late_share: float = 0.125,
                   max_delay: int = 9, seed: int = 0) -> Iterator[Night]:
    """Every night's input, rows arriving on their event's date or up to max_delay days late."""
    timed_leads = with_arrival(leads, "created_at", late_share, max_delay, seed)
    timed_activities = with_arrival(activities, "occurred_at", late_share, max_delay, seed + 1)
    for night in nights:
        yield Night(night,
                    timed_leads.filter(pl.col("_arrives") <= night).drop("_arrives"),
                    timed_activities.filter(pl.col("_arrives") <= night).drop("_arrives"))
