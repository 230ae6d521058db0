"""Validation rules, duplicate policy, CSV quirks and the accounting identity."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from flows.io import InputError, read_table
from schemas.leads import LeadsModel
from schemas.quarantine import ActivitiesQuarantineSchema, LeadsQuarantineSchema
from transforms.generate import generate
from transforms.staging import stage_activities, stage_leads

RUN_START = datetime(2026, 1, 1, tzinfo=UTC)
CATALOGUE = ("page_view", "form_submit", "sales_accepted")


def _leads(**columns: list[str | None]) -> pl.DataFrame:
    n = len(next(iter(columns.values())))
    base: dict[str, list[str | None]] = {"lead_id": [f"L{i}" for i in range(n)],
                                         "created_at": ["2025-01-01 00:00:00"] * n}
    return pl.DataFrame(base | columns, schema_overrides=dict.fromkeys(base | columns, pl.String))


def _reasons(frame: pl.DataFrame) -> list[list[str]]:
    return stage_leads(frame, RUN_START).quarantine["reasons"].to_list()


@pytest.mark.parametrize(("column", "good", "bad", "reason"), [
    ("lead_id", " L9 ", "   ", "lead_id_missing"),
    ("created_at", "2025-03-01T10:00:00.123456+02:00", "2025-02-30 10:00:00", "created_at_invalid"),
    ("created_at", "2025-03-01 10:00:00Z", "2025-03-01 25:00:00", "created_at_invalid"),
    ("created_at", "2025-12-31 23:59:59", "2026-01-01 00:00:01", "created_at_in_future"),
    ("created_at", "2025-12-31T23:59:59+01:00", None, "created_at_missing"),
    ("updated_at", "2025-03-01 10:00:00", "yesterday", "updated_at_invalid"),
    ("email", "a.b@example.com", "a b@example.com", "email_invalid"),
    ("country", " de ", "DEU", "country_invalid"),
    ("employee_count", "+250", "12.5", "employee_count_invalid"),
    ("employee_count", " 0 ", "-4", "employee_count_invalid"),
    ("employee_count", "7", "many", "employee_count_invalid"),
    ("job_level", " Director ", "intern", "job_level_invalid"),
])
def test_each_row_rule_valid_and_invalid_side_by_side(column: str, good: str, bad: str | None, reason: str) -> None:
    """The good value passes, the bad one quarantines its row with exactly that reason."""
    staged = stage_leads(_leads(**{column: [good, bad]}), RUN_START)
    assert staged.valid.height == 1
    assert staged.quarantine["reasons"].to_list() == [[reason]]
    LeadsModel.validate(staged.valid)


def test_normalisation_of_valid_leads() -> None:
    """source/country/job_level trimmed and cased; empty source becomes unknown; offsets to UTC."""
    raw = _leads(created_at=["2025-03-01T10:00:00+02:00", "2025-03-01 10:00:00"], source=[" News Letter ", ""],
                 country=[" de", None], employee_count=["+250", None], job_level=["VP ", None])
    valid = stage_leads(raw, RUN_START).valid
    expected = pl.DataFrame({
        "created_at": [datetime(2025, 3, 1, 8, tzinfo=UTC), datetime(2025, 3, 1, 10, tzinfo=UTC)],
        "source": ["news letter", "unknown"], "country": ["DE", None], "employee_count": [250, None],
        "job_level": ["vp", None],
    }, schema_overrides={"created_at": pl.Datetime("us", "UTC")})
    assert_frame_equal(valid.select(expected.columns), expected)


def test_every_reason_of_a_row_is_listed() -> None:
    """One row breaking three rules lists three reasons; other rows are untouched."""
    raw = _leads(email=["bad", "ok@x.de"], country=["Germany", "DE"], job_level=["intern", "vp"])
    assert _reasons(raw) == [["email_invalid", "country_invalid", "job_level_invalid"]]


def test_duplicate_policy_for_leads() -> None:
    """Exact copies collapse; the single latest updated_at wins; ties or missing quarantine all."""
    raw = pl.DataFrame({
        "lead_id": ["A", "A", "B", "B", "C", "C", "D", "D"],
        "created_at": ["2025-01-01 00:00:00"] * 8,
        "updated_at": ["2025-01-02 00:00:00", "2025-01-02 00:00:00",  # exact duplicate
                       "2025-01-02 00:00:00", "2025-01-03 00:00:00",  # superseded
                       "2025-01-05 00:00:00", "2025-01-05 00:00:00",  # tie
                       "2025-01-05 00:00:00", None],                  # missing
        "source": ["x", "x", "old", "new", "c1", "c2", "d1", "d2"],
    })
    staged = stage_leads(raw, RUN_START)
    assert staged.valid.select("lead_id", "source").rows() == [("A", "x"), ("B", "new")]
    assert staged.quarantine.select("lead_id", "source", "reasons").rows() == [
        ("B", "old", ["duplicate_lead_id_superseded"]),
        ("C", "c1", ["duplicate_lead_id_conflict"]), ("C", "c2", ["duplicate_lead_id_conflict"]),
        ("D", "d1", ["duplicate_lead_id_conflict"]), ("D", "d2", ["duplicate_lead_id_conflict"]),
    ]
    assert staged.counts.as_dict() == {"read": 8, "valid": 2, "quarantined": 5, "collapsed": 1}


def test_activity_rules_duplicates_and_references() -> None:
    """Row rules first, then conflicting ids, then orphans and activities before their lead."""
    leads = stage_leads(_leads(lead_id=["L1", "BAD"], created_at=["2025-01-01 00:00:00", "nope"]), RUN_START)
    raw = pl.DataFrame({
        "activity_id": ["a1", "a1", "a2", "a2", "a3", "a4", "a5", "", "a6"],
        "lead_id": ["L1", "L1", "L1", "L1", "BAD", "L1", "L1", "L1", "L1"],
        "occurred_at": ["2025-01-02 00:00:00", "2025-01-02 00:00:00", "2025-01-02 00:00:00",
                        "2025-01-03 00:00:00", "2025-01-02 00:00:00", "2024-12-31 23:59:59",
                        "2027-01-01 00:00:00", "2025-01-02 00:00:00", "2025-01-02 00:00:00"],
        "activity_type": [" Page_View", " Page_View", "page_view", "page_view", "page_view", "page_view",
                          "page_view", "page_view", "fax"],
    })
    staged = stage_activities(raw, leads.valid, CATALOGUE, RUN_START)
    assert staged.valid.rows() == [("a1", "L1", datetime(2025, 1, 2, tzinfo=UTC), "page_view")]
    assert staged.quarantine.select("activity_id", "reasons").rows() == [
        ("a2", ["duplicate_activity_id"]), ("a2", ["duplicate_activity_id"]), ("a3", ["lead_not_valid"]),
        ("a4", ["before_lead_created"]), ("a5", ["occurred_at_in_future"]), ("", ["activity_id_missing"]),
        ("a6", ["activity_type_unknown"]),
    ]
    assert staged.counts.as_dict() == {"read": 9, "valid": 1, "quarantined": 7, "collapsed": 1}
    ActivitiesQuarantineSchema.validate(staged.quarantine)


def test_csv_quirks_round_trip(tmp_path: Path) -> None:
    """Quoted commas, quotes, umlauts, offsets and naive timestamps read and parse per value."""
    (tmp_path / "leads.csv").write_text(
        'lead_id,created_at,company,source,extra\n'
        'L1,2025-03-01 10:00:00,"Müller, Söhne & ""Partner""",Newsletter,x\n'
        'L2,2025-03-01T10:00:00+01:00,Zürich,blog,y\n'
        'L3,2025-02-29 10:00:00,Köln,blog,z\n', encoding="utf-8")
    staged = stage_leads(read_table(tmp_path, "leads"), RUN_START)
    assert staged.valid.select("lead_id", "created_at", "company").rows() == [
        ("L1", datetime(2025, 3, 1, 10, tzinfo=UTC), 'Müller, Söhne & "Partner"'),
        ("L2", datetime(2025, 3, 1, 9, tzinfo=UTC), "Zürich"),
    ]
    assert staged.quarantine.select("lead_id", "created_at", "reasons").rows() == [
        ("L3", "2025-02-29 10:00:00", ["created_at_invalid"])]
    LeadsQuarantineSchema.validate(staged.quarantine)


def test_parquet_with_real_timestamps(tmp_path: Path) -> None:
    """Parquet inputs may carry typed timestamps: naive means UTC, aware ones are converted."""
    pl.DataFrame({"lead_id": ["L1", "L2"],
                  "created_at": [datetime(2025, 3, 1, 10), datetime(2025, 3, 1, 11)]}).write_parquet(
        tmp_path / "leads.parquet")
    valid = stage_leads(read_table(tmp_path, "leads"), RUN_START).valid
    assert valid["created_at"].to_list() == [datetime(2025, 3, 1, 10, tzinfo=UTC), datetime(2025, 3, 1, 11, tzinfo=UTC)]


def test_missing_column_and_missing_file_name_file_and_column(tmp_path: Path) -> None:
    """One clear line naming the file and the column; both formats present is refused too."""
    (tmp_path / "leads.csv").write_text("lead_id,source\nL1,blog\n")
    with pytest.raises(InputError, match=r"leads\.csv: missing required column 'created_at'"):
        read_table(tmp_path, "leads")
    with pytest.raises(InputError, match=r"activities\.csv: missing"):
        read_table(tmp_path, "activities")
    pl.DataFrame({"lead_id": ["L1"]}).write_parquet(tmp_path / "leads.parquet")
    with pytest.raises(InputError, match=r"both leads\.csv and leads\.parquet"):
        read_table(tmp_path, "leads")


def test_accounting_identity_on_generated_dirty_data(tmp_path: Path) -> None:
    """Read = valid + quarantined + collapsed for both tables, and every fault family shows up."""
    data = generate(3000, seed=11, dirty=True)
    leads = stage_leads(data.leads, RUN_START)
    acts = stage_activities(data.activities, leads.valid, (
        "page_view", "email_open", "email_click", "pricing_page_view", "content_download", "form_submit",
        "webinar_attended", "demo_request", "meeting_held", "sales_accepted", "sales_rejected",
        "opportunity_created", "closed_won", "closed_lost", "unsubscribed"), RUN_START)
    for staged, raw in ((leads, data.leads), (acts, data.activities)):
        c = staged.counts
        assert c.read == raw.height == c.valid + c.quarantined + c.collapsed
        assert c.collapsed > 0
    lead_reasons = set(leads.quarantine["reasons"].explode().to_list())
    assert lead_reasons >= {"lead_id_missing", "created_at_missing", "created_at_invalid", "created_at_in_future",
                            "updated_at_invalid", "email_invalid", "country_invalid", "employee_count_invalid",
                            "job_level_invalid", "duplicate_lead_id_superseded", "duplicate_lead_id_conflict"}
    act_reasons = set(acts.quarantine["reasons"].explode().to_list())
    assert act_reasons >= {"activity_id_missing", "lead_id_missing", "occurred_at_invalid", "occurred_at_in_future",
                           "activity_type_unknown", "duplicate_activity_id", "lead_not_valid",
                           "before_lead_created"}
    LeadsModel.validate(leads.valid)
