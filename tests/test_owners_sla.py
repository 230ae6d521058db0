"""Hand-written cases for each rule of spec section 6 (owners, SLA clocks, sla_daily), as whole frames."""

from __future__ import annotations

from datetime import date

import pandera.errors
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from flows.settings import DEFAULT_CONFIG, parse_settings_text
from schemas.owner_history import OwnerHistoryModel
from schemas.sla import SlaModel
from schemas.sla_daily import SlaDailyModel
from schemas.snapshots import SnapshotsModel
from tests.example import ts
from transforms.classify import History, classify
from transforms.rules import FunnelConfig
from transforms.sla import combine_sla_daily

SLAS = """
[[sla]]
stage = "mql"
within_hours = 48
met_by = ["sales_accepted", "sales_rejected", "meeting_held"]

[[sla]]
stage = "sal"
within_hours = 24
met_by = ["meeting_held", "opportunity_created"]

[[sla]]
stage = "closed_won"
within_hours = 72
met_by = ["owner_assigned"]
"""
RULES = parse_settings_text(DEFAULT_CONFIG.read_text() + SLAS).rules
# Accepting a lead assigns it: the entering activity's own assignment is the owner at entry.
ACCEPT_ASSIGNS = parse_settings_text(DEFAULT_CONFIG.read_text().replace(
    'assignment_types = ["owner_assigned"]', 'assignment_types = ["owner_assigned", "sales_accepted"]') + SLAS).rules
UTC_US = pl.Datetime("us", "UTC")
STR, F64, I64 = pl.String(), pl.Float64(), pl.Int64()
SLA_SCHEMA: dict[str, pl.DataType] = {
    "lead_id": STR, "stage": STR, "owner_team": STR, "owner_id": STR, "entered_at": UTC_US, "due_at": UTC_US,
    "stopped_at": UTC_US, "stopped_by": STR, "status": STR, "hours_to_stop": F64, "activity_id": STR}
OWNER_SCHEMA: dict[str, pl.DataType] = {
    "lead_id": STR, "owner_id": STR, "valid_from": UTC_US, "valid_to": UTC_US, "activity_id": STR}
DAILY_SCHEMA: dict[str, pl.DataType] = {
    "date": pl.Date(), "stage": STR, "owner_team": STR, "started": I64, "met_on_time": I64, "stopped_late": I64,
    "overdue": I64, "median_hours_to_stop": F64}
# Two demo requests at one instant: a fit lead reaches mql by score at the first of them.
TO_MQL = [("a1", "2025-02-01 10:00", "demo_request"), ("a2", "2025-02-01 10:00", "demo_request")]

Activity = tuple[str, str, str] | tuple[str, str, str, str | None]


def _history(acts: list[Activity], config: FunnelConfig = RULES, as_of: date = date(2025, 2, 10),
             leads: tuple[str, ...] = ("L1",), owner_column: bool = True) -> History:
    """Replay fit leads created 2025-01-01 with activities (id, at, type[, owner_id]).

    An activity belongs to L1, or to the lead its id names before a colon ("L2:a1").
    """
    lf = pl.DataFrame({"lead_id": list(leads), "created_at": [ts("2025-01-01 00:00")] * len(leads),
                       "source": ["blog"] * len(leads), "employee_count": [50] * len(leads),
                       "job_level": ["director"] * len(leads)}, schema_overrides={"created_at": UTC_US})
    frame: dict[str, list[object]] = {
        "activity_id": [a[0] for a in acts],
        "lead_id": [a[0].split(":")[0] if ":" in a[0] else "L1" for a in acts],
        "occurred_at": [ts(a[1]) for a in acts],
        "activity_type": [a[2] for a in acts],
    }
    schema: dict[str, pl.DataType] = {"activity_id": pl.String(), "lead_id": pl.String(), "occurred_at": UTC_US,
                                      "activity_type": pl.String()}
    if owner_column:
        frame["owner_id"] = [a[3] if len(a) > 3 else None for a in acts]
        schema["owner_id"] = pl.String()
    return classify(lf.lazy(), pl.DataFrame(frame, schema=schema).lazy(), config, as_of)


def _clocks(rows: list[tuple[object, ...]], lead: str = "L1") -> pl.DataFrame:
    """Expected sla rows: (stage, team, owner, entered, due, stopped, stopped_by, status, hours, activity)."""
    return pl.DataFrame(
        [(lead, r[0], r[1], r[2], ts(str(r[3])), ts(str(r[4])), ts(str(r[5])) if r[5] else None, *r[6:])
         for r in rows],
        schema=SLA_SCHEMA, orient="row",
    ).drop("activity_id")  # kept in the cases to name the entering activity; not a published column


def _owners(rows: list[tuple[str | None, str, str | None, str | None]], lead: str = "L1") -> pl.DataFrame:
    """Expected owner_history rows: (owner, valid_from, valid_to, activity)."""
    return pl.DataFrame([(lead, r[0], ts(r[1]), ts(r[2]) if r[2] else None, r[3]) for r in rows],
                        schema=OWNER_SCHEMA, orient="row")


def test_clock_met_by_a_met_by_activity() -> None:
    """A meeting 23 hours after the lead became MQL answers the 48-hour handoff; the lead stays mql."""
    history = _history([*TO_MQL, ("a3", "2025-02-02 09:00", "meeting_held")])
    expected = _clocks([("mql", "marketing", None, "2025-02-01 10:00", "2025-02-03 10:00", "2025-02-02 09:00",
                         "meeting_held", "met", 23.0, "a1")])
    assert_frame_equal(history.sla_dataset().collect(), expected)


def test_clock_met_by_leaving_the_stage() -> None:
    """An opportunity (not a met_by type of mql) moves the lead on: the clock stops by stage_exit."""
    history = _history([*TO_MQL, ("a3", "2025-02-02 09:00", "opportunity_created")])
    expected = _clocks([("mql", "marketing", None, "2025-02-01 10:00", "2025-02-03 10:00", "2025-02-02 09:00",
                         "stage_exit", "met", 23.0, "a1")])
    assert_frame_equal(history.sla_dataset().collect(), expected)


def test_breach_stopped_late() -> None:
    """An answer 72 hours after entry stops a 48-hour clock late."""
    history = _history([*TO_MQL, ("a3", "2025-02-04 10:00", "meeting_held")])
    expected = _clocks([("mql", "marketing", None, "2025-02-01 10:00", "2025-02-03 10:00", "2025-02-04 10:00",
                         "meeting_held", "breached", 72.0, "a1")])
    assert_frame_equal(history.sla_dataset().collect(), expected)


def test_open_clock_and_one_due_exactly_at_the_boundary() -> None:
    """Both running clocks are open at T(02-02), one being due exactly then; a day later both are overdue."""
    acts: list[Activity] = [*TO_MQL, ("L2:a1", "2025-02-01 00:00", "demo_request"),
                            ("L2:a2", "2025-02-01 00:00", "demo_request")]
    early = _history(acts, as_of=date(2025, 2, 2), leads=("L1", "L2"))
    expected = pl.concat([
        _clocks([("mql", "marketing", None, "2025-02-01 10:00", "2025-02-03 10:00", None, None, "open", None,
                  "a1")]),
        _clocks([("mql", "marketing", None, "2025-02-01 00:00", "2025-02-03 00:00", None, None, "open", None,
                  "L2:a1")], lead="L2"),
    ])
    assert_frame_equal(early.sla_dataset().collect(), expected)
    late = _history(acts, as_of=date(2025, 2, 3), leads=("L1", "L2"))
    assert late.sla_dataset().collect()["status"].to_list() == ["breached", "breached"]
    daily = late.sla_daily(date(2025, 2, 1), date(2025, 2, 3)).filter(pl.col("stage") == "mql").collect()
    assert_frame_equal(daily, pl.DataFrame(
        [(date(2025, 2, d), "mql", "marketing", started, 0, 0, overdue, None)
         for d, started, overdue in ((1, 2, 0), (2, 0, 0), (3, 0, 2))], schema=DAILY_SCHEMA, orient="row"))


def test_reentry_starts_a_second_clock() -> None:
    """mql, accepted (answering it), rejected back to mql (the sal clock stops by exit, late), answered again."""
    history = _history([*TO_MQL, ("a3", "2025-02-02 10:00", "sales_accepted"),
                        ("a4", "2025-02-05 10:00", "sales_rejected"), ("a5", "2025-02-06 10:00", "meeting_held")])
    expected = _clocks([
        ("mql", "marketing", None, "2025-02-01 10:00", "2025-02-03 10:00", "2025-02-02 10:00", "sales_accepted",
         "met", 24.0, "a1"),
        ("mql", "marketing", None, "2025-02-05 10:00", "2025-02-07 10:00", "2025-02-06 10:00", "meeting_held",
         "met", 24.0, "a4"),
        ("sal", "sales", None, "2025-02-02 10:00", "2025-02-03 10:00", "2025-02-05 10:00", "stage_exit",
         "breached", 72.0, "a3"),
    ])
    assert_frame_equal(history.sla_dataset().collect(), expected)


def test_met_by_activity_before_entry_does_not_count() -> None:
    """A meeting before the lead became MQL answers nothing: the clock runs on and is overdue."""
    history = _history([("a0", "2025-01-20 10:00", "meeting_held"), *TO_MQL])
    expected = _clocks([("mql", "marketing", None, "2025-02-01 10:00", "2025-02-03 10:00", None, None,
                         "breached", None, "a1")])
    assert_frame_equal(history.sla_dataset().collect(), expected)


def test_assignment_on_a_terminal_lead_applies_and_answers_its_clock() -> None:
    """closed_won freezes the stage, not the owner; an assignment there answers the closed_won clock."""
    history = _history([("a1", "2025-02-01 10:00", "closed_won"),
                        ("a2", "2025-02-05 10:00", "owner_assigned", "rep-9")])
    assert_frame_equal(history.owner_history_dataset().collect(), _owners([
        (None, "2025-01-01 00:00", "2025-02-05 10:00", None), ("rep-9", "2025-02-05 10:00", None, "a2")]))
    expected = _clocks([("closed_won", "sales", None, "2025-02-01 10:00", "2025-02-04 10:00", "2025-02-05 10:00",
                         "owner_assigned", "breached", 96.0, "a1")])
    assert_frame_equal(history.sla_dataset().collect(), expected)
    snap = history.snapshots_dataset(date(2025, 2, 4), date(2025, 2, 5)).collect()
    assert snap.select("snapshot_date", "stage", "owner_id").rows() == [
        (date(2025, 2, 4), "closed_won", None), (date(2025, 2, 5), "closed_won", "rep-9")]


def test_unassignment_and_unchanged_owner() -> None:
    """Blank and null owner_id unassign; re-assigning the same (trimmed) owner opens no interval."""
    acts: list[Activity] = [("a1", "2025-01-10 00:00", "owner_assigned", "rep-1"),
                            ("a2", "2025-01-15 00:00", "owner_assigned", " rep-1 "),
                            ("a3", "2025-01-20 00:00", "owner_assigned", "   "),
                            ("a4", "2025-01-25 00:00", "owner_assigned", None),
                            ("a5", "2025-01-30 00:00", "owner_assigned", "rep-2 ")]
    history = _history(acts)
    assert_frame_equal(history.owner_history_dataset().collect(), _owners([
        (None, "2025-01-01 00:00", "2025-01-10 00:00", None),
        ("rep-1", "2025-01-10 00:00", "2025-01-20 00:00", "a1"),
        (None, "2025-01-20 00:00", "2025-01-30 00:00", "a3"),
        ("rep-2", "2025-01-30 00:00", None, "a5"),
    ]))
    snap = history.snapshots_dataset(date(2025, 1, 9), date(2025, 1, 30)).collect()
    by_day = dict(snap.select("snapshot_date", "owner_id").rows())
    assert [by_day[date(2025, 1, d)] for d in (9, 10, 19, 20, 29, 30)] == [None, "rep-1", "rep-1", None, None, "rep-2"]


def test_activities_without_owner_column_leave_leads_unassigned() -> None:
    """Before validation carries owner_id, every assignment unassigns: one interval per lead."""
    history = _history([("a1", "2025-01-10 00:00", "owner_assigned", "rep-1")], owner_column=False)
    assert_frame_equal(history.owner_history_dataset().collect(),
                       _owners([(None, "2025-01-01 00:00", None, None)]))


def test_dst_inside_a_clock_counts_real_hours() -> None:
    """Berlin moves to CEST on 2025-03-30: a 48-hour clock is due 48 real hours (49 wall hours) later."""
    berlin = RULES.with_timezone("Europe/Berlin")
    acts: list[Activity] = [("a1", "2025-03-29 12:00", "demo_request"), ("a2", "2025-03-29 12:00", "demo_request"),
                            ("a3", "2025-03-31 11:30", "meeting_held")]
    history = _history(acts, berlin, date(2025, 3, 31))
    expected = _clocks([("mql", "marketing", None, "2025-03-29 12:00", "2025-03-31 12:00", "2025-03-31 11:30",
                         "meeting_held", "met", 47.5, "a1")])
    assert_frame_equal(history.sla_dataset().collect(), expected)
    daily = history.sla_daily(date(2025, 3, 29), date(2025, 3, 31)).filter(pl.col("stage") == "mql").collect()
    assert_frame_equal(daily, pl.DataFrame(
        [(date(2025, 3, 29), "mql", "marketing", 1, 0, 0, 0, None),
         (date(2025, 3, 30), "mql", "marketing", 0, 0, 0, 0, None),
         (date(2025, 3, 31), "mql", "marketing", 0, 1, 0, 0, 47.5)], schema=DAILY_SCHEMA, orient="row"))


def test_entering_activity_never_answers_its_own_clock() -> None:
    """At one instant: b0 answers the sal clock (due exactly then: met), b1 enters mql, b2 answers it."""
    history = _history([("a1", "2025-02-01 10:00", "sales_accepted"), ("b2", "2025-02-02 10:00", "sales_rejected"),
                        ("b1", "2025-02-02 10:00", "sales_rejected"), ("b0", "2025-02-02 10:00", "meeting_held")])
    expected = _clocks([
        ("mql", "marketing", None, "2025-02-02 10:00", "2025-02-04 10:00", "2025-02-02 10:00", "sales_rejected",
         "met", 0.0, "b1"),
        ("sal", "sales", None, "2025-02-01 10:00", "2025-02-02 10:00", "2025-02-02 10:00", "meeting_held",
         "met", 24.0, "a1"),
    ])
    assert_frame_equal(history.sla_dataset().collect(), expected)


def test_met_by_activity_that_moves_the_lead_out() -> None:
    """sales_accepted answers the mql clock and moves the lead on: stopped_by is its type, not stage_exit.

    The sal clock it starts has the owner of the assignment sorting before it at that instant,
    not of the one after.
    """
    history = _history([*TO_MQL, ("a5", "2025-02-02 10:00", "owner_assigned", "rep-2"),
                        ("a6", "2025-02-02 10:00", "sales_accepted"),
                        ("a7", "2025-02-02 10:00", "owner_assigned", "rep-3")])
    expected = _clocks([
        ("mql", "marketing", None, "2025-02-01 10:00", "2025-02-03 10:00", "2025-02-02 10:00", "sales_accepted",
         "met", 24.0, "a1"),
        ("sal", "sales", "rep-2", "2025-02-02 10:00", "2025-02-03 10:00", None, None, "breached", None, "a6"),
    ])
    assert_frame_equal(history.sla_dataset().collect(), expected)


def test_owner_at_entry_includes_the_entering_assignment() -> None:
    """Where sales_accepted assigns, the owner of the sal clock it starts is its own owner_id."""
    history = _history([("a0", "2025-01-05 00:00", "owner_assigned", "mkt-01"),
                        ("a1", "2025-02-01 10:00", "sales_accepted", "sales-07")], ACCEPT_ASSIGNS)
    expected = _clocks([("sal", "sales", "sales-07", "2025-02-01 10:00", "2025-02-02 10:00", None, None,
                         "breached", None, "a1")])
    assert_frame_equal(history.sla_dataset().collect(), expected)


def test_sla_daily_parts_of_disjoint_leads_combine_exactly() -> None:
    """Shards' parts (one without any clock) combine into the whole; no part at all still gives zero rows."""
    acts: list[Activity] = [*TO_MQL, ("a3", "2025-02-02 09:00", "meeting_held"),
                            ("L2:a1", "2025-02-01 00:00", "sales_accepted"),
                            ("L2:a2", "2025-02-03 00:00", "meeting_held")]
    start, end = date(2025, 1, 30), date(2025, 2, 5)
    whole = _history(acts, leads=("L1", "L2", "L3")).sla_daily(start, end).collect()
    parts = [_history([a for a in acts if a[0].startswith(prefix) == keep], leads=leads).sla_daily_parts(start, end)
             for prefix, keep, leads in (("L2:", False, ("L1",)), ("L2:", True, ("L2",)), ("L", False, ("L3",)))]
    assert_frame_equal(combine_sla_daily(parts, start, end, RULES).collect(), whole)
    assert whole.filter(pl.col("date") == date(2025, 2, 3)).rows() == [
        (date(2025, 2, 3), "mql", "marketing", 0, 0, 0, 0, None),
        (date(2025, 2, 3), "sal", "sales", 0, 0, 1, 0, 48.0),
        (date(2025, 2, 3), "closed_won", "sales", 0, 0, 0, 0, None),
    ]
    zeros = combine_sla_daily([], start, end, RULES).collect()
    assert zeros.height == 7 * 3
    assert zeros.select(pl.sum_horizontal("started", "met_on_time", "stopped_late", "overdue").sum()).item() == 0


def test_outputs_pass_their_schemas() -> None:
    """owner_history, sla, sla_daily and snapshots (with owner_id) validate; an inconsistent status does not."""
    history = _history([*TO_MQL, ("a3", "2025-02-01 10:00", "owner_assigned", "rep-1"),
                        ("a4", "2025-02-02 10:00", "sales_accepted"), ("a5", "2025-02-06 10:00", "closed_won")])
    OwnerHistoryModel.validate(history.owner_history_dataset().collect())
    clocks = SlaModel.validate(history.sla_dataset().collect())
    SlaDailyModel.validate(history.sla_daily(date(2025, 1, 25), date(2025, 2, 10)).collect())
    SnapshotsModel.validate(history.snapshots_dataset(date(2025, 2, 1), date(2025, 2, 10)).collect())
    with pytest.raises(pandera.errors.SchemaError):
        SlaModel.validate(clocks.with_columns(status=pl.lit("open")))
