"""The vectorised replay agrees with the naive reference on generated histories."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reference import reference_moves, reference_snapshot
from transforms.classify import classify
from transforms.config import FunnelConfig

BASE = datetime(2025, 3, 20, tzinfo=UTC)  # a week before the end of CET (Europe/Berlin DST starts 03-30)
MINUTE = timedelta(minutes=1)


def _offsets(window_days: int) -> st.SearchStrategy[int]:
    """Minutes after creation, biased to ties, window edges and whole days."""
    day = 24 * 60
    return st.one_of(
        st.integers(0, 60 * day),
        st.sampled_from([0, 1, 60, day, window_days * day, window_days * day + 1, window_days * day - 1]),
        st.integers(0, 40).map(lambda d: d * day),
    )


@st.composite
def histories(draw: st.DrawFn, config: FunnelConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]], date]:
    n_leads = draw(st.integers(1, 4))
    leads = []
    for i in range(n_leads):
        created = BASE + draw(st.integers(0, 20 * 24 * 60).map(lambda m: m * MINUTE) | st.sampled_from(
            [timedelta(days=d, hours=h) for d in range(0, 15) for h in (-1, 0, 22, 23)]))
        leads.append({
            "lead_id": f"L{i}", "created_at": created,
            "employee_count": draw(st.sampled_from([None, 5, 10, 50])),
            "job_level": draw(st.sampled_from([None, "vp", "manager", "individual_contributor"])),
            "source": draw(st.sampled_from(["newsletter", "blog"])),
        })
    n_acts = draw(st.integers(0, 30))
    ids = draw(st.permutations(list(range(n_acts))))
    types = list(config.catalogue)
    weights = st.sampled_from(types)
    activities = []
    for j in range(n_acts):
        lead = draw(st.sampled_from(leads))
        activities.append({
            "activity_id": f"a{ids[j]:02d}", "lead_id": lead["lead_id"],
            "occurred_at": lead["created_at"] + draw(_offsets(config.window_days)) * MINUTE,
            "activity_type": draw(weights),
        })
    as_of = draw(st.sampled_from([date(2025, 4, 1), date(2025, 4, 20), date(2025, 6, 30)]))
    return leads, activities, as_of


def _frames(leads: list[dict[str, Any]], acts: list[dict[str, Any]]) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    lf = pl.DataFrame(leads, schema={"lead_id": pl.String, "created_at": pl.Datetime("us", "UTC"),
                                     "employee_count": pl.Int64, "job_level": pl.String, "source": pl.String})
    af = pl.DataFrame(acts, schema={"activity_id": pl.String, "lead_id": pl.String,
                                    "occurred_at": pl.Datetime("us", "UTC"), "activity_type": pl.String})
    return lf.lazy(), af.lazy()


def _check(config: FunnelConfig, data: tuple[list[dict[str, Any]], list[dict[str, Any]], date],
           fit: Any) -> None:
    leads, acts, as_of = data
    history = classify(*_frames(leads, acts), config, as_of)
    got = history.transitions_dataset().select(
        "lead_id", "from_stage", "to_stage", "transitioned_at", "trigger", "activity_id").collect().rows()
    moves = reference_moves(leads, acts, config, as_of, fit)
    assert got == [(m.lead_id, m.from_stage, m.to_stage, m.at, m.trigger, m.activity_id) for m in moves]
    whole_range = history.snapshots_dataset(as_of - timedelta(days=3), as_of).collect()
    for day in (as_of - timedelta(days=3), as_of):
        snap = history.snapshots_dataset(day, day).collect()
        assert snap.equals(whole_range.filter(pl.col("snapshot_date") == day))
        want = reference_snapshot(moves, acts, config, day)
        assert {r[0]: r[1:] for r in snap.select(
            "lead_id", "stage", "stage_entered_at", "days_in_stage", "engagement_score").rows()} == want


def _default_fit(lead: dict[str, Any]) -> bool:
    count, level = lead["employee_count"], lead["job_level"]
    return count is not None and level is not None and count >= 10 and level in (
        "c_level", "vp", "director", "manager")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_replay_matches_reference_default_config(data: st.DataObject, default_config: FunnelConfig) -> None:
    """Default rules, UTC: ties, skips, demotions, terminal freeze, window edges."""
    _check(default_config, data.draw(histories(default_config)), _default_fit)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_replay_matches_reference_custom_config(data: st.DataObject, custom_config: FunnelConfig) -> None:
    """Extra stage, recycling to lead, a 7-day window, Berlin midnights across the DST start."""
    _check(custom_config, data.draw(histories(custom_config)),
           lambda lead: lead["employee_count"] is not None and lead["employee_count"] >= 10)
