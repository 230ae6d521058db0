"""The vectorised replay, owners and SLA clocks agree with the naive reference on generated histories."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from flows.settings import DEFAULT_CONFIG, parse_settings_text
from tests.conftest import CUSTOM_CONFIG
from tests.reference import (
    reference_moves,
    reference_owner_history,
    reference_sla,
    reference_sla_daily,
    reference_snapshot,
    reference_steps,
)
from transforms.calendar import boundary
from transforms.classify import classify
from transforms.rules import FunnelConfig
from transforms.sla import combine_sla_daily

BASE = datetime(2025, 3, 20, tzinfo=UTC)  # a week before the end of CET (Europe/Berlin DST starts 03-30)
MINUTE = timedelta(minutes=1)
# Two handoff SLAs on the default rules: sales_accepted both answers the mql clock and moves out.
DEFAULT_WITH_SLAS = DEFAULT_CONFIG.read_text() + """
[[sla]]
stage = "mql"
within_hours = 48
met_by = ["sales_accepted", "sales_rejected", "meeting_held"]

[[sla]]
stage = "sal"
within_hours = 30
met_by = ["meeting_held", "opportunity_created", "owner_assigned"]
"""
# Another company: sales_accepted and proposal_sent assign an owner (proposal_sent also promotes,
# answers and moves out of sal), a clock on the entry stage and one on the terminal stage.
CUSTOM_WITH_SLAS = CUSTOM_CONFIG + """
[owners]
assignment_types = ["sales_accepted", "proposal_sent"]

[[sla]]
stage = "lead"
within_hours = 30
met_by = ["form_submit", "page_view"]

[[sla]]
stage = "sal"
within_hours = 20.5
met_by = ["proposal_sent"]

[[sla]]
stage = "closed_won"
within_hours = 2
met_by = ["closed_lost", "page_view"]
"""
DEFAULT_SLA_RULES = parse_settings_text(DEFAULT_WITH_SLAS).rules
CUSTOM_SLA_RULES = parse_settings_text(CUSTOM_WITH_SLAS).rules
OWNERS = [None, "", "  ", "rep-1", " rep-1 ", "rep-2"]


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
    leads: list[dict[str, Any]] = []
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
            "owner_id": draw(st.sampled_from(OWNERS)),
        })
    if draw(st.booleans()):  # inputs without the optional column: every assignment unassigns
        activities = [{k: v for k, v in a.items() if k != "owner_id"} for a in activities]
    as_of = draw(st.sampled_from([date(2025, 4, 1), date(2025, 4, 20), date(2025, 6, 30)]))
    return leads, activities, as_of


def _frames(leads: list[dict[str, Any]], acts: list[dict[str, Any]]) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    lf = pl.DataFrame(leads, schema={"lead_id": pl.String, "created_at": pl.Datetime("us", "UTC"),
                                     "employee_count": pl.Int64, "job_level": pl.String, "source": pl.String})
    schema: dict[str, pl.DataType] = {"activity_id": pl.String(), "lead_id": pl.String(),
                                      "occurred_at": pl.Datetime("us", "UTC"), "activity_type": pl.String()}
    if any("owner_id" in a for a in acts):
        schema["owner_id"] = pl.String()
    af = pl.DataFrame(acts, schema=schema)
    return lf.lazy(), af.lazy()


def _check(config: FunnelConfig, data: tuple[list[dict[str, Any]], list[dict[str, Any]], date],
           fit: Any) -> None:
    leads, acts, as_of = data
    history = classify(*_frames(leads, acts), config, as_of)
    got = history.transitions_dataset().select(
        "lead_id", "from_stage", "to_stage", "transitioned_at", "trigger", "activity_id").collect().rows()
    moves = reference_moves(leads, acts, config, as_of, fit)
    assert got == [(m.lead_id, m.from_stage, m.to_stage, m.at, m.trigger, m.activity_id) for m in moves]
    steps = reference_steps(leads, acts, config, as_of, fit)
    whole_range = history.snapshots_dataset(as_of - timedelta(days=3), as_of).collect()
    for day in (as_of - timedelta(days=3), as_of):
        snap = history.snapshots_dataset(day, day).collect()
        assert snap.equals(whole_range.filter(pl.col("snapshot_date") == day))
        want = reference_snapshot(moves, acts, config, day, steps)
        assert {r[0]: r[1:] for r in snap.select(
            "lead_id", "stage", "owner_id", "stage_entered_at", "days_in_stage", "engagement_score").rows()} == want
    _check_owners_and_slas(config, history, steps, leads, acts, as_of)


def _check_owners_and_slas(config: FunnelConfig, history: Any, steps: Any, leads: list[dict[str, Any]],
                           acts: list[dict[str, Any]], as_of: date) -> None:
    """owner_history, sla and sla_daily equal the reference; sla_daily parts of two lead sets combine exactly."""
    owners = history.owner_history_dataset().collect()
    assert_frame_equal(owners, pl.DataFrame(reference_owner_history(steps, config), schema=owners.schema,
                                            orient="row"))
    cut = boundary(as_of, config.timezone)
    clocks = reference_sla(steps, config)
    got = history.sla_dataset().collect()
    # Floats compare with a tolerance: polars divides a column by a constant as a multiplication.
    assert_frame_equal(got, pl.DataFrame(
        [(c.lead_id, c.stage, c.owner_team, c.owner_id, c.entered_at, c.due_at, c.stopped_at, c.stopped_by,
          c.status(cut), c.hours_to_stop()) for c in clocks], schema=got.schema, orient="row"))
    start = as_of - timedelta(days=12)
    daily = history.sla_daily(start, as_of).collect()
    assert_frame_equal(daily, pl.DataFrame(reference_sla_daily(clocks, config, start, as_of), schema=daily.schema,
                                           orient="row"))
    halves = [[lead for i, lead in enumerate(leads) if i % 2 == side] for side in (0, 1)]
    parts = []
    for half in halves:
        ids = {lead["lead_id"] for lead in half}
        part = classify(*_frames(half, [a for a in acts if a["lead_id"] in ids]), config, as_of)
        parts.append(part.sla_daily_parts(start, as_of))
    assert_frame_equal(combine_sla_daily(parts, start, as_of, config).collect(), daily)


def _default_fit(lead: dict[str, Any]) -> bool:
    count, level = lead["employee_count"], lead["job_level"]
    return count is not None and level is not None and count >= 10 and level in (
        "c_level", "vp", "director", "manager")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_replay_matches_reference_default_config(data: st.DataObject) -> None:
    """Default rules with two SLAs, UTC: ties, skips, demotions, terminal freeze, window edges."""
    _check(DEFAULT_SLA_RULES, data.draw(histories(DEFAULT_SLA_RULES)), _default_fit)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_replay_matches_reference_custom_config(data: st.DataObject) -> None:
    """Extra stage, recycling to lead, a 7-day window, Berlin midnights across the DST start, three SLAs."""
    _check(CUSTOM_SLA_RULES, data.draw(histories(CUSTOM_SLA_RULES)),
           lambda lead: lead["employee_count"] is not None and lead["employee_count"] >= 10)
