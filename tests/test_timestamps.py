"""Timestamps agree with Python's datetime: generated text, valid and impossible, and typed values of any unit."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import polars as pl
from hypothesis import example, given, settings
from hypothesis import strategies as st

from transforms.validation import with_timestamp

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
END = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

LAYOUT = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?(Z|([+-])(\d{2}):(\d{2}))?$")


def reference(text: str) -> datetime | None:
    """The contract's rule, with Python's datetime deciding what is possible."""
    m = LAYOUT.match(text)
    if m is None:
        return None
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
    micros = int((m.group(7) or "0").ljust(6, "0"))
    tz = UTC
    if m.group(9):
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            return None
        sign = -1 if m.group(9) == "-" else 1
        tz = timezone(sign * timedelta(hours=oh, minutes=om))
    try:
        utc = datetime(y, mo, d, h, mi, s, micros, tzinfo=tz).astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return utc if utc >= EPOCH else None  # CRM sentinels such as 0001-01-01 are not instants


def two(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda v: f"{v:02d}")


texts = st.builds(
    lambda y, mo, d, sep, h, mi, s, frac, off: f"{y:04d}-{mo}-{d}{sep}{h}:{mi}:{s}{frac}{off}",
    st.integers(1, 9999), two(0, 13), two(0, 32), st.sampled_from(["T", " ", "t", "_"]),
    two(0, 25), two(0, 61), two(0, 61),
    st.one_of(st.just(""), st.integers(0, 10**6 - 1).map(lambda v: "." + str(v)),
              st.sampled_from([".", ".1234567"])),
    st.one_of(st.sampled_from(["", "Z", "z", "+00:00", "-23:59", "+24:00", "+02:60", "+0200"]),
              st.builds(lambda sg, h, m: f"{sg}{h}:{m}", st.sampled_from("+-"), two(0, 23), two(0, 59))),
) | st.text(max_size=30)


@settings(max_examples=500, deadline=None)
@given(st.lists(texts, min_size=1, max_size=50))
@example(["9999-12-31T00:01:00-23:59", "9999-12-31T23:59:59+00:00", "9999-12-31T23:59:59Z"])
def test_parse_matches_python(values: list[str]) -> None:
    """Every generated text parses exactly as the reference: same instant, or null for both."""
    frame = with_timestamp(pl.DataFrame({"raw": values}, schema={"raw": pl.String}), "raw", "parsed")
    assert frame["parsed"].to_list() == [reference(v) for v in values]


UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000}  # nanoseconds per unit
extreme = st.sampled_from([-(2**63), -(2**63) + 1, -9222425352054775808, -1, 0, 2**63 - 1])


def typed_reference(value: int | None, unit: str) -> datetime | None:
    """The contract's rule on a typed value: its instant, if from 1970 up to year 9999."""
    if value is None:
        return None
    micros = value * UNITS[unit] // 1_000
    if micros < 0 or micros > (END - EPOCH) // timedelta(microseconds=1):
        return None
    return EPOCH + timedelta(microseconds=micros)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(UNITS)), st.sampled_from([None, "UTC", "Europe/Berlin", "America/New_York"]),
       st.lists(st.none() | extreme | st.integers(-(2**63), 2**63 - 1) | st.integers(-(10**17), 10**17),
                min_size=1, max_size=30))
def test_typed_timestamps_any_unit_never_panic(unit: str, zone: str | None, values: list[int | None]) -> None:
    """Typed values of every unit and zone, int64 extremes included, are their instant or null; nothing panics."""
    raw = pl.Series("raw", values, pl.Int64).cast(pl.Datetime(unit, zone))
    frame = with_timestamp(pl.DataFrame([raw]), "raw", "parsed")
    assert frame.schema["parsed"] == pl.Datetime("us", "UTC")
    assert frame["parsed"].to_list() == [typed_reference(v, unit) for v in values]


@given(st.lists(st.none() | st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=30))
def test_typed_dates_are_midnight_utc_or_null(days: list[int | None]) -> None:
    """A date is its UTC midnight, from 1970 up to year 9999; beyond that (PostgreSQL -infinity) null."""
    raw = pl.Series("raw", days, pl.Int32).cast(pl.Date)
    frame = with_timestamp(pl.DataFrame([raw]), "raw", "parsed")
    assert frame["parsed"].to_list() == [None if d is None else typed_reference(d * 86_400_000_000, "us")
                                         for d in days]
