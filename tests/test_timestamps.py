"""Timestamp parsing agrees with Python's datetime on generated text, valid and impossible."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.staging import with_timestamp

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
        return datetime(y, mo, d, h, mi, s, micros, tzinfo=tz).astimezone(UTC)
    except ValueError:
        return None


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
def test_parse_matches_python(values: list[str]) -> None:
    """Every generated text parses exactly as the reference: same instant, or null for both."""
    frame = with_timestamp(pl.DataFrame({"raw": values}, schema={"raw": pl.String}), "raw", "parsed")
    assert frame["parsed"].to_list() == [reference(v) for v in values]
