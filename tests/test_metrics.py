"""Daily funnel, daily transitions and cohort conversion: hand cases and the stock-flow identity."""

from __future__ import annotations

from datetime import date

import polars as pl
from polars.testing import assert_frame_equal

from synthetic.generate import generate
from tests.example import example_activities, example_leads
from transforms.classify import classify
from transforms.metrics import cohort_conversion, daily_funnel, transitions_daily
from transforms.rules import FunnelConfig
from transforms.validation import validate_activities, validate_leads


def test_daily_funnel_of_the_worked_example(default_config: FunnelConfig) -> None:
    """Spec section 5: the non-zero rows of 2025-04-01 (a backward move from sal)."""
    h = classify(example_leads().lazy(), example_activities().lazy(), default_config, date(2025, 4, 1))
    got = daily_funnel(h.transitions.lazy(), h.intervals.lazy(), h.leads.lazy(), date(2025, 4, 1),
                       date(2025, 4, 1), default_config).collect()
    assert got.height == 2 * 5  # both sources, every stage, zeros included
    nonzero = got.filter(pl.sum_horizontal("in_stage", "entered", "exited_forward", "exited_backward") > 0)
    expected = pl.DataFrame({
        "date": [date(2025, 4, 1)] * 3, "source": ["linkedin_ads", "newsletter", "newsletter"],
        "stage": ["sal", "mql", "sal"], "in_stage": [1, 1, 0], "entered": [0, 1, 0],
        "exited_forward": [0, 0, 0], "exited_backward": [0, 0, 1],
    })
    assert_frame_equal(nonzero, expected)


def test_transitions_daily_counts_backward_moves(default_config: FunnelConfig) -> None:
    """Backward rows are visible per day, with the median hours in the stage left."""
    h = classify(example_leads().lazy(), example_activities().lazy(), default_config, date(2025, 7, 31))
    got = transitions_daily(h.transitions.lazy(), date(2025, 4, 1), date(2025, 4, 30), default_config).collect()
    expected = pl.DataFrame({
        "date": [date(2025, 4, 1), date(2025, 4, 15)], "source": ["newsletter", "linkedin_ads"],
        "from_stage": ["sal", "sal"], "to_stage": ["mql", "mql"], "direction": ["backward", "backward"],
        "transitions": [1, 1], "median_hours_in_from_stage": [532.0, 619.0],
    })
    assert_frame_equal(got, expected)


def test_cohort_conversion_counts_skips_and_maturity(custom_config: FunnelConfig) -> None:
    """A lead created on the last day of a month in Berlin belongs to the next local month.

    Feb matures when T(D) >= 2025-03-01 + 30 days, i.e. from as-of 2025-03-30 on.
    """
    from tests.example import ts

    leads = pl.DataFrame({
        "lead_id": ["A", "B"], "created_at": [ts("2025-01-31 23:30"), ts("2025-01-15 12:00")],
        "source": ["blog", "blog"], "employee_count": [50, 50],
    }, schema_overrides={"created_at": pl.Datetime("us", "UTC")})
    acts = pl.DataFrame({
        "activity_id": ["a1", "b1"], "lead_id": ["A", "B"],
        "occurred_at": [ts("2025-02-02 00:00"), ts("2025-01-16 12:00")],
        "activity_type": ["sales_accepted", "demo_request"],
    }, schema_overrides={"occurred_at": pl.Datetime("us", "UTC")})
    h = classify(leads.lazy(), acts.lazy(), custom_config, date(2025, 3, 29))
    got = cohort_conversion(h.milestones_dataset(), date(2025, 3, 29), custom_config).collect()
    rows = got.filter(pl.col("from_stage").is_in(["lead", "mql"])).select(
        "cohort_month", "from_stage", "to_stage", "entered", "converted", "median_days_to_convert", "is_mature")
    assert rows.rows() == [
        ("2025-01", "lead", "mql", 1, 0, None, True),   # B: 10 points < 12, never mql
        ("2025-02", "lead", "mql", 1, 1, 1.0208333333333333, False),  # A: local 2025-02-01 00:30; skip to sal
        ("2025-02", "mql", "sal", 1, 1, 0.0, False),
    ]


def test_stock_and_flow_agree_across_dst_with_snapshots(custom_config: FunnelConfig) -> None:
    """in_stage(D) = in_stage(D-1) + entered - exited, and equals the snapshot of D, every source and stage."""
    from datetime import UTC, datetime

    data = generate(400, seed=3, dirty=False, end=date(2025, 11, 15), days=120)
    run_start = datetime(2026, 1, 1, tzinfo=UTC)
    leads = validate_leads(data.leads, run_start).valid
    acts = validate_activities(data.activities.with_columns(
        pl.col("activity_type").replace({"opportunity_created": "proposal_sent", "pricing_page_view": "page_view",
                                         "email_open": "page_view", "email_click": "form_submit",
                                         "content_download": "form_submit", "webinar_attended": "demo_request",
                                         "meeting_held": "page_view"})),
        leads, custom_config.catalogue, run_start).valid
    start, end = date(2025, 10, 15), date(2025, 11, 10)  # Berlin DST ends 2025-10-26
    h = classify(leads.lazy(), acts.lazy(), custom_config, end)
    funnel = daily_funnel(h.transitions.lazy(), h.intervals.lazy(), h.leads.lazy(), start, end, custom_config).collect()
    check = funnel.sort("source", "stage", "date").with_columns(
        prev=pl.col("in_stage").shift(1).over("source", "stage"))
    flows = check.filter(pl.col("prev").is_not_null())
    assert flows.height > 0
    assert (flows["in_stage"] == flows["prev"] + flows["entered"] - flows["exited_forward"]
            - flows["exited_backward"]).all()
    assert funnel["entered"].sum() > 0 and funnel["exited_backward"].sum() > 0
    snaps = h.snapshots_dataset(start, end).collect().group_by(
        pl.col("snapshot_date").alias("date"), "source", "stage").agg(pl.len().cast(pl.Int64).alias("in_stage"))
    joined = funnel.filter(pl.col("in_stage") > 0).select("date", "source", "stage", "in_stage").sort(
        "date", "source", "stage")
    assert_frame_equal(joined, snaps.sort("date", "source", "stage"))


def test_lead_sent_back_twice_and_a_skip(default_config: FunnelConfig) -> None:
    """Daily stock and flow, daily transitions and milestones for two backward moves and a skip."""
    from tests.example import ts

    leads = pl.DataFrame({
        "lead_id": ["L1", "L2"], "created_at": [ts("2025-05-01 09:00"), ts("2025-05-02 20:00")],
        "source": ["blog", "blog"], "employee_count": [50, 50], "job_level": ["vp", "vp"],
    }, schema_overrides={"created_at": pl.Datetime("us", "UTC")})
    rows = [("a1", "L1", "2025-05-02 10:00", "sales_accepted"), ("a2", "L1", "2025-05-02 15:00", "sales_rejected"),
            ("a3", "L1", "2025-05-03 10:00", "sales_accepted"), ("a4", "L1", "2025-05-03 12:00", "closed_lost"),
            ("b1", "L2", "2025-05-03 08:00", "opportunity_created")]
    acts = pl.DataFrame({"activity_id": [r[0] for r in rows], "lead_id": [r[1] for r in rows],
                         "occurred_at": [ts(r[2]) for r in rows], "activity_type": [r[3] for r in rows]},
                        schema_overrides={"occurred_at": pl.Datetime("us", "UTC")})
    h = classify(leads.lazy(), acts.lazy(), default_config, date(2025, 5, 3))
    funnel = daily_funnel(h.transitions.lazy(), h.intervals.lazy(), h.leads.lazy(), date(2025, 5, 1),
                          date(2025, 5, 3), default_config).collect()
    stages = ["lead", "mql", "sal", "sql", "closed_won"]
    expected = pl.DataFrame({
        "date": [date(2025, 5, d) for d in (1, 2, 3) for _ in stages],
        "source": ["blog"] * 15, "stage": stages * 3,
        "in_stage": [1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0],
        "entered": [1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0],
        "exited_forward": [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0],
        "exited_backward": [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0],
    })
    assert_frame_equal(funnel, expected)
    moves = transitions_daily(h.transitions.lazy(), date(2025, 5, 3), date(2025, 5, 3), default_config).collect()
    assert moves.select("from_stage", "to_stage", "direction", "transitions", "median_hours_in_from_stage").rows() == [
        ("lead", "sql", "forward", 1, 12.0), ("mql", "sal", "forward", 1, 19.0), ("sal", "mql", "backward", 1, 2.0)]
    assert h.milestones_dataset().select("lead_id", "current_stage", "backward_moves").collect().rows() == [
        ("L1", "mql", 2), ("L2", "sql", 0)]


def test_the_report_cohorts_of_all_sources_are_the_same_from_shard_parts(default_config: FunnelConfig) -> None:
    """Cohorts over all sources from two disjoint sets of leads' parts equal those of every lead at once."""
    from datetime import UTC, datetime

    from transforms.metrics import cohort_conversion_parts
    from transforms.report import all_sources_cohorts

    data = generate(600, seed=5, dirty=False, end=date(2025, 11, 15), days=200)
    run_start = datetime(2026, 1, 1, tzinfo=UTC)
    leads = validate_leads(data.leads, run_start).valid
    acts = validate_activities(data.activities, leads, default_config.catalogue, run_start).valid
    milestones = classify(leads.lazy(), acts.lazy(), default_config, date(2025, 11, 15)).milestones_dataset()
    odd = pl.col("lead_id").hash(1) % 2 == 1
    parts = [cohort_conversion_parts(milestones.filter(half), default_config) for half in (odd, ~odd)]
    whole = all_sources_cohorts([cohort_conversion_parts(milestones, default_config)], date(2025, 11, 15),
                                default_config)
    assert whole["converted"].sum() > 0 and whole["median_days_to_convert"].drop_nulls().len() > 0
    assert set(whole["source"]) == {"all"}
    assert_frame_equal(all_sources_cohorts(parts, date(2025, 11, 15), default_config), whole)
    assert_frame_equal(whole.drop("source"), cohort_conversion(milestones.with_columns(source=pl.lit("x")),
                                                               date(2025, 11, 15), default_config)
                       .collect().drop("source"))
