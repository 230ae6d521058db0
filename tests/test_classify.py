"""Hand-written cases for each rule of spec section 3, compared as whole frames."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.example import example_activities, example_leads, ts
from transforms.classify import classify
from transforms.rules import FunnelConfig

UTC_US = pl.Datetime("us", "UTC")


def _lead(lead_id: str = "L1", created: str = "2025-01-01 00:00", employees: int = 50) -> dict[str, object]:
    return {"lead_id": lead_id, "created_at": ts(created), "source": "blog", "employee_count": employees,
            "job_level": "director"}


def _run(leads: list[dict[str, object]], acts: list[tuple[str, str, str, str]], config: FunnelConfig,
         as_of: date = date(2025, 12, 31)) -> pl.DataFrame:
    lf = pl.DataFrame(leads, schema_overrides={"created_at": UTC_US}).lazy()
    af = pl.DataFrame(
        {"activity_id": [a[0] for a in acts], "lead_id": [a[1] for a in acts],
         "occurred_at": [ts(a[2]) for a in acts], "activity_type": [a[3] for a in acts]},
        schema={"activity_id": pl.String, "lead_id": pl.String, "occurred_at": UTC_US, "activity_type": pl.String},
    ).lazy()
    return classify(lf, af, config, as_of).transitions_dataset().collect()


def _moves(rows: list[tuple[str | None, str, str, str, str | None]]) -> pl.DataFrame:
    """Expected (from, to, at, trigger, activity_id) rows of lead L1."""
    return pl.DataFrame(
        {"from_stage": [r[0] for r in rows], "to_stage": [r[1] for r in rows],
         "transitioned_at": [ts(r[2]) for r in rows], "trigger": [r[3] for r in rows],
         "activity_id": [r[4] for r in rows]},
        schema={"from_stage": pl.String, "to_stage": pl.String, "transitioned_at": UTC_US,
                "trigger": pl.String, "activity_id": pl.String},
    )


COLS = ["from_stage", "to_stage", "transitioned_at", "trigger", "activity_id"]


def test_worked_example_transitions(default_config: FunnelConfig) -> None:
    """Spec section 5, row for row, including hours_in_from_stage and stages_moved."""
    history = classify(example_leads().lazy(), example_activities().lazy(), default_config, date(2025, 7, 31))
    expected = pl.DataFrame({
        "lead_id": ["L1"] * 7 + ["L2"] * 3,
        "from_stage": [None, "lead", "mql", "sal", "mql", "sal", "sql", None, "lead", "sal"],
        "to_stage": ["lead", "mql", "sal", "mql", "sal", "sql", "closed_won", "lead", "sal", "mql"],
        "direction": ["entry", "forward", "forward", "backward", "forward", "forward", "forward",
                      "entry", "forward", "backward"],
        "stages_moved": [None, 1, 1, -1, 1, 1, 1, None, 2, -1],
        "transitioned_at": [ts(t) for t in (
            "2025-03-01 09:00", "2025-03-05 10:00", "2025-03-10 08:00", "2025-04-01 12:00", "2025-05-20 09:00",
            "2025-06-02 15:00", "2025-06-30 15:00", "2025-03-03 12:00", "2025-03-20 16:00", "2025-04-15 11:00")],
        "trigger": ["created", "score", "sales_accepted", "sales_rejected", "sales_accepted",
                    "opportunity_created", "closed_won", "created", "sales_accepted", "closed_lost"],
        "activity_id": [None, "a2", "a4", "a5", "a6", "a7", "a8", None, "b3", "b4"],
        "hours_in_from_stage": [None, 97.0, 118.0, 532.0, 1173.0, 318.0, 672.0, None, 412.0, 619.0],
    }, schema_overrides={"stages_moved": pl.Int32, "transitioned_at": UTC_US})
    assert_frame_equal(history.transitions_dataset().collect(), expected)


def test_worked_example_milestones(default_config: FunnelConfig) -> None:
    """A skip reaches every stage it jumps over; the terminal stage ignores a later loss."""
    history = classify(example_leads().lazy(), example_activities().lazy(), default_config, date(2025, 7, 31))
    expected = pl.DataFrame({
        "lead_id": ["L1", "L2"], "source": ["newsletter", "linkedin_ads"],
        "created_at": [ts("2025-03-01 09:00"), ts("2025-03-03 12:00")],
        "current_stage": ["closed_won", "mql"], "backward_moves": [1, 1],
        "first_mql_at": [ts("2025-03-05 10:00"), ts("2025-03-20 16:00")],
        "first_sal_at": [ts("2025-03-10 08:00"), ts("2025-03-20 16:00")],
        "first_sql_at": [ts("2025-06-02 15:00"), None],
        "first_closed_won_at": [ts("2025-06-30 15:00"), None],
    }, schema_overrides={"backward_moves": pl.Int32, "created_at": UTC_US, "first_mql_at": UTC_US,
                         "first_sal_at": UTC_US, "first_sql_at": UTC_US, "first_closed_won_at": UTC_US})
    assert_frame_equal(history.milestones_dataset().collect(), expected)


def test_worked_example_snapshot(default_config: FunnelConfig) -> None:
    """Snapshot of 2025-04-01 from a history as of 2025-07-31 equals the spec's."""
    history = classify(example_leads().lazy(), example_activities().lazy(), default_config, date(2025, 7, 31))
    expected = pl.DataFrame({
        "snapshot_date": [date(2025, 4, 1)] * 2, "lead_id": ["L1", "L2"], "source": ["newsletter", "linkedin_ads"],
        "stage": ["mql", "sal"], "owner_team": ["marketing", "sales"], "owner_id": [None, None],
        "stage_entered_at": [ts("2025-04-01 12:00"), ts("2025-03-20 16:00")],
        "days_in_stage": [0, 12], "engagement_score": [45, 50],
    }, schema_overrides={"owner_id": pl.String, "stage_entered_at": UTC_US, "days_in_stage": pl.Int32,
                         "engagement_score": pl.Int32})
    assert_frame_equal(history.snapshots_dataset(date(2025, 4, 1), date(2025, 4, 1)).collect(), expected)


def test_activity_exactly_on_window_edge_has_left_the_window(default_config: FunnelConfig) -> None:
    """score(t) counts t - 90 days < occurred_at: 90 days back is out, one minute less is in."""
    acts = [("a1", "L1", "2025-01-01 00:00", "demo_request"), ("a2", "L1", "2025-04-01 00:00", "demo_request"),
            ("a3", "L1", "2025-06-30 00:01", "demo_request"), ("a4", "L1", "2025-09-28 00:00", "demo_request")]
    got = _run([_lead()], acts, default_config).select(COLS)
    expected = _moves([(None, "lead", "2025-01-01 00:00", "created", None),
                       ("lead", "mql", "2025-09-28 00:00", "score", "a4")])
    assert_frame_equal(got, expected)


def test_fit_null_is_not_fit(default_config: FunnelConfig) -> None:
    """A lead with unknown company size never reaches MQL by score."""
    lead = _lead() | {"employee_count": None}
    acts = [("a1", "L1", "2025-01-02 00:00", "demo_request"), ("a2", "L1", "2025-01-02 00:00", "demo_request")]
    got = _run([lead], acts, default_config).select(COLS)
    assert_frame_equal(got, _moves([(None, "lead", "2025-01-01 00:00", "created", None)]))


@pytest.mark.parametrize(("path", "before"), [
    (["sales_accepted"], "sal"),
    (["opportunity_created"], "sql"),
    (["sales_accepted", "opportunity_created"], "sql"),
])
def test_demotion_from_every_sales_stage_goes_back_to_mql(path: list[str], before: str,
                                                         default_config: FunnelConfig) -> None:
    """sales_rejected clamps any higher stage down to mql; a skip forward is allowed."""
    acts = [(f"a{i}", "L1", f"2025-02-0{i + 1} 00:00", kind) for i, kind in enumerate(path)]
    acts.append(("z9", "L1", "2025-03-01 00:00", "sales_rejected"))
    got = _run([_lead()], acts, default_config).filter(pl.col("trigger") == "sales_rejected")
    assert got.select("from_stage", "to_stage", "direction").rows() == [(before, "mql", "backward")]


def test_demotion_below_target_changes_nothing_when_lower(default_config: FunnelConfig) -> None:
    """A demotion to mql of a lead still in `lead` is min(lead, mql) = lead: no transition."""
    got = _run([_lead()], [("a1", "L1", "2025-02-01 00:00", "closed_lost")], default_config)
    assert got.height == 1


def test_terminal_stage_freezes_the_lead(default_config: FunnelConfig) -> None:
    """After closed_won, neither demotions nor promotions move the lead."""
    acts = [("a1", "L1", "2025-02-01 00:00", "closed_won"), ("a2", "L1", "2025-02-01 00:00", "sales_rejected"),
            ("a3", "L1", "2025-03-01 00:00", "closed_lost")]
    got = _run([_lead()], acts, default_config).select(COLS)
    expected = _moves([(None, "lead", "2025-01-01 00:00", "created", None),
                       ("lead", "closed_won", "2025-02-01 00:00", "closed_won", "a1")])
    assert_frame_equal(got, expected)


def test_same_instant_events_are_ordered_by_activity_id(default_config: FunnelConfig) -> None:
    """Two events at one instant: both transitions, in activity_id order, the later zero hours after."""
    acts = [("b", "L1", "2025-02-01 00:00", "sales_rejected"), ("a", "L1", "2025-02-01 00:00", "sales_accepted")]
    got = _run([_lead()], acts, default_config)
    assert got.select("activity_id", "from_stage", "to_stage", "hours_in_from_stage").rows() == [
        (None, None, "lead", None), ("a", "lead", "sal", 744.0), ("b", "sal", "mql", 0.0)]


def test_lead_without_activities_and_lead_created_after_boundary(default_config: FunnelConfig) -> None:
    """A quiet lead has its entry row only; a lead created after T(D) is not seen at all."""
    got = _run([_lead("L1"), _lead("L2", "2026-01-01 00:00")], [], default_config)
    assert got.select("lead_id", "direction").rows() == [("L1", "entry")]


def test_local_midnight_in_berlin(custom_config: FunnelConfig) -> None:
    """An event at local midnight belongs to the new day: T(D) is exclusive."""
    leads = [_lead("L1", "2025-06-01 10:00")]
    acts = [("a1", "L1", "2025-06-09 22:00", "sales_accepted")]  # 2025-06-10 00:00 in Berlin (CEST)
    lf = pl.DataFrame(leads, schema_overrides={"created_at": UTC_US}).lazy()
    af = pl.DataFrame({"activity_id": ["a1"], "lead_id": ["L1"], "occurred_at": [ts(acts[0][2])],
                       "activity_type": ["sales_accepted"]}, schema_overrides={"occurred_at": UTC_US}).lazy()
    history = classify(lf, af, custom_config, date(2025, 6, 10))
    snap = history.snapshots_dataset(date(2025, 6, 9), date(2025, 6, 10)).collect()
    assert snap.select("snapshot_date", "stage", "days_in_stage").rows() == [
        (date(2025, 6, 9), "lead", 8), (date(2025, 6, 10), "sal", 1)]
