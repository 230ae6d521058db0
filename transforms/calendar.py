"""Local days of the configured timezone, as UTC instants and as dates."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import polars as pl

US_PER_DAY = 86_400_000_000


def day_start(day: date, timezone: str) -> datetime:
    """Local midnight starting `day`, as a UTC instant (DST days are 23 or 25 hours long)."""
    return datetime.combine(day, time(), ZoneInfo(timezone)).astimezone(UTC)


def boundary(as_of: date, timezone: str) -> datetime:
    """T(D): the start of day D+1 in the timezone, as a UTC instant."""
    return day_start(as_of + timedelta(days=1), timezone)


def local_date(column: str | pl.Expr, timezone: str) -> pl.Expr:
    """The local calendar date of a UTC timestamp column."""
    expr = pl.col(column) if isinstance(column, str) else column
    return expr.dt.convert_time_zone(timezone).dt.date()
