"""The worked example of FUNNEL_SPEC.md section 5, as validated frames."""

from datetime import UTC, datetime

import polars as pl


def ts(text: str) -> datetime:
    """A UTC instant from 'YYYY-MM-DD HH:MM'."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def example_leads() -> pl.DataFrame:
    """L1 (fit, newsletter) and L2 (not fit, linkedin_ads)."""
    return pl.DataFrame({
        "lead_id": ["L1", "L2"],
        "created_at": [ts("2025-03-01 09:00"), ts("2025-03-03 12:00")],
        "updated_at": [None, None],
        "email": [None, None],
        "source": ["newsletter", "linkedin_ads"],
        "company": [None, None],
        "industry": [None, None],
        "country": [None, None],
        "employee_count": [50, 5],
        "job_level": ["director", "vp"],
    }, schema_overrides={"created_at": pl.Datetime("us", "UTC"), "updated_at": pl.Datetime("us", "UTC"),
                         "email": pl.String, "company": pl.String, "industry": pl.String, "country": pl.String})


def example_activities() -> pl.DataFrame:
    """The thirteen activities of the worked example."""
    rows = [
        ("a1", "L1", "2025-03-02 10:00", "form_submit"),
        ("a2", "L1", "2025-03-05 10:00", "demo_request"),
        ("a3", "L1", "2025-03-05 10:00", "webinar_attended"),
        ("a4", "L1", "2025-03-10 08:00", "sales_accepted"),
        ("a5", "L1", "2025-04-01 12:00", "sales_rejected"),
        ("a6", "L1", "2025-05-20 09:00", "sales_accepted"),
        ("a7", "L1", "2025-06-02 15:00", "opportunity_created"),
        ("a8", "L1", "2025-06-30 15:00", "closed_won"),
        ("a9", "L1", "2025-07-15 10:00", "closed_lost"),
        ("b1", "L2", "2025-03-04 09:00", "demo_request"),
        ("b2", "L2", "2025-03-04 09:30", "demo_request"),
        ("b3", "L2", "2025-03-20 16:00", "sales_accepted"),
        ("b4", "L2", "2025-04-15 11:00", "closed_lost"),
    ]
    return pl.DataFrame(
        {"activity_id": [r[0] for r in rows], "lead_id": [r[1] for r in rows],
         "occurred_at": [ts(r[2]) for r in rows], "activity_type": [r[3] for r in rows]},
        schema_overrides={"occurred_at": pl.Datetime("us", "UTC")},
    )
