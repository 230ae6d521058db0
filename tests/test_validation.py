"""Validation rules, typed inputs, duplicate policy, redaction, CSV quirks and the accounting identity."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from flows.inputs import InputError, read_table
from schemas.activities import ActivitiesModel
from schemas.leads import LeadsModel
from schemas.quarantine import ActivitiesQuarantineSchema, LeadsQuarantineSchema
from synthetic.generate import generate
from transforms.validation import RawTable, validate_activities, validate_leads

RUN_START = datetime(2026, 1, 1, tzinfo=UTC)
CATALOGUE = ("page_view", "form_submit", "sales_accepted")


def _leads(**columns: list[str | None]) -> pl.DataFrame:
    n = len(next(iter(columns.values())))
    base: dict[str, list[str | None]] = {"lead_id": [f"L{i}" for i in range(n)],
                                         "created_at": ["2025-01-01 00:00:00"] * n}
    return pl.DataFrame(base | columns, schema_overrides=dict.fromkeys(base | columns, pl.String))


def _reasons(frame: pl.DataFrame) -> list[list[str]]:
    return validate_leads(frame, RUN_START).quarantine["reasons"].to_list()


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
    staged = validate_leads(_leads(**{column: [good, bad]}), RUN_START)
    assert staged.valid.height == 1
    assert staged.quarantine["reasons"].to_list() == [[reason]]
    LeadsModel.validate(staged.valid)


def test_normalisation_of_valid_leads() -> None:
    """source/country/job_level trimmed and cased; empty source becomes unknown; offsets to UTC."""
    raw = _leads(created_at=["2025-03-01T10:00:00+02:00", "2025-03-01 10:00:00"], source=[" News Letter ", ""],
                 country=[" de", None], employee_count=["+250", None], job_level=["VP ", None])
    valid = validate_leads(raw, RUN_START).valid
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
    staged = validate_leads(raw, RUN_START)
    assert staged.valid.select("lead_id", "source").rows() == [("A", "x"), ("B", "new")]
    assert staged.quarantine.select("lead_id", "source", "reasons").rows() == [
        ("B", "old", ["duplicate_lead_id_superseded"]),
        ("C", "c1", ["duplicate_lead_id_conflict"]), ("C", "c2", ["duplicate_lead_id_conflict"]),
        ("D", "d1", ["duplicate_lead_id_conflict"]), ("D", "d2", ["duplicate_lead_id_conflict"]),
    ]
    assert staged.counts.as_dict() == {"read": 8, "valid": 2, "quarantined": 5, "collapsed": 1}


def test_activity_rules_duplicates_and_references() -> None:
    """Row rules first, then conflicting ids, then orphans and activities before their lead."""
    leads = validate_leads(_leads(lead_id=["L1", "BAD"], created_at=["2025-01-01 00:00:00", "nope"]), RUN_START)
    raw = pl.DataFrame({
        "activity_id": ["a1", "a1", "a2", "a2", "a3", "a4", "a5", "", "a6"],
        "lead_id": ["L1", "L1", "L1", "L1", "BAD", "L1", "L1", "L1", "L1"],
        "occurred_at": ["2025-01-02 00:00:00", "2025-01-02 00:00:00", "2025-01-02 00:00:00",
                        "2025-01-03 00:00:00", "2025-01-02 00:00:00", "2024-12-31 23:59:59",
                        "2027-01-01 00:00:00", "2025-01-02 00:00:00", "2025-01-02 00:00:00"],
        "activity_type": [" Page_View", " Page_View", "page_view", "page_view", "page_view", "page_view",
                          "page_view", "page_view", "fax"],
    })
    staged = validate_activities(raw, leads.valid, CATALOGUE, RUN_START)
    assert staged.valid.rows() == [("a1", "L1", datetime(2025, 1, 2, tzinfo=UTC), "page_view", None)]
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
    staged = validate_leads(read_table(tmp_path, "leads"), RUN_START)
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
    valid = validate_leads(read_table(tmp_path, "leads"), RUN_START).valid
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
    leads = validate_leads(data.leads, RUN_START)
    acts = validate_activities(data.activities, leads.valid, (
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


def _reasons_by_id(staged_quarantine: pl.DataFrame) -> dict[str, list[str]]:
    return dict(staged_quarantine.select("lead_id", "reasons").iter_rows())


@pytest.mark.parametrize("dtype", [pl.Datetime("ns"), pl.Datetime("ms", "Europe/Berlin"),
                                   pl.Datetime("us", "America/New_York"), pl.Date()])
def test_typed_timestamps_taken_as_is(dtype: pl.DataType) -> None:
    """A typed created_at of any unit and zone (naive = UTC) or a date is its UTC instant, not re-parsed text."""
    instants = [datetime(2025, 3, 1, 10, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)]
    if isinstance(dtype, pl.Date):
        instants = [datetime(2025, 3, 1, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)]
    column = pl.Series(instants).dt.convert_time_zone(getattr(dtype, "time_zone", None) or "UTC")
    typed = column.dt.replace_time_zone(None) if getattr(dtype, "time_zone", "x") is None else column
    raw = pl.DataFrame({"lead_id": ["L1", "L2"], "created_at": typed.cast(dtype)})
    staged = validate_leads(raw, RUN_START)
    expected = pl.DataFrame({"lead_id": ["L1", "L2"], "created_at": instants},
                            schema={"lead_id": pl.String, "created_at": pl.Datetime("us", "UTC")})
    assert_frame_equal(staged.valid.select("lead_id", "created_at"), expected)
    LeadsModel.validate(staged.valid)


@pytest.mark.parametrize(("values", "dtype", "valid"), [
    ([12, 0, -4, None], pl.Int64, [12, 0, None]),
    ([12, 0, 255, None], pl.UInt8, [12, 0, 255, None]),
    ([12.0, 0.0, 12.5, float("nan"), float("inf"), -4.0, 1e19, None], pl.Float64, [12, 0, None]),
    ([Decimal("12.00"), Decimal("0"), Decimal("12.50"), Decimal("-4"), None], pl.Decimal(10, 2), [12, 0, None]),
])
def test_typed_employee_count_valid_where_whole_and_not_negative(values: list[object], dtype: pl.DataType,
                                                                 valid: list[int | None]) -> None:
    """12.0 is 12; 12.5, NaN, inf, -4 and 1e19 quarantine their row with the value as text; null stays valid."""
    raw = pl.DataFrame({"lead_id": [f"L{i}" for i in range(len(values))],
                        "created_at": ["2025-01-01 00:00:00"] * len(values),
                        "employee_count": pl.Series("employee_count", values, dtype=dtype, strict=False)})
    staged = validate_leads(raw, RUN_START)
    assert_frame_equal(staged.valid.select("employee_count"),
                       pl.DataFrame({"employee_count": valid}, schema={"employee_count": pl.Int64}))
    good = staged.valid["lead_id"].implode()
    expected = raw.filter(~pl.col("lead_id").is_in(good)).select(
        "lead_id", pl.col("employee_count").cast(pl.String), reasons=pl.lit(["employee_count_invalid"]))
    assert_frame_equal(staged.quarantine.select("lead_id", "employee_count", "reasons"), expected)


def test_integer_lead_id_in_leads_and_text_in_activities() -> None:
    """An integer id is its digits, so typed leads and text activities still meet."""
    leads = validate_leads(pl.DataFrame({"lead_id": [7, 8], "created_at": [datetime(2025, 1, 1)] * 2}), RUN_START)
    assert leads.valid["lead_id"].to_list() == ["7", "8"]
    acts = validate_activities(pl.DataFrame({
        "activity_id": [1, 2], "lead_id": [" 7", "9"], "occurred_at": ["2025-01-02 00:00:00"] * 2,
        "activity_type": ["page_view"] * 2}), leads.valid, CATALOGUE, RUN_START)
    assert acts.valid.select("activity_id", "lead_id").rows() == [("1", "7")]
    assert acts.quarantine.select("activity_id", "reasons").rows() == [("2", ["lead_not_valid"])]


def test_typed_wrong_type_is_refused_not_coerced() -> None:
    """A column whose type cannot hold its field is refused by name, whoever calls validation."""
    raw = pl.DataFrame({"lead_id": ["L1"], "created_at": [1_700_000_000]})
    with pytest.raises(TypeError, match=r"leads\.created_at: type Int64 cannot hold a timestamp"):
        validate_leads(raw, RUN_START)


@pytest.mark.parametrize("text", ["0001-01-01 00:00:00", "0001-01-01T00:30:00+01:00", "1969-12-31T23:59:59Z",
                                  "1970-01-01T00:30:00+01:00", "1969-12-31T23:59:59.999999"])
def test_text_timestamps_before_1970_are_invalid(text: str) -> None:
    """CRM sentinels such as 0001-01-01 are not instants: created_at_invalid / occurred_at_invalid."""
    staged = validate_leads(_leads(created_at=["1970-01-01 00:00:00", text]), RUN_START)
    assert staged.quarantine.select("lead_id", "created_at", "reasons").rows() == [
        ("L1", text, ["created_at_invalid"])]
    acts = validate_activities(pl.DataFrame({"activity_id": ["a1"], "lead_id": ["L0"], "occurred_at": [text],
                                             "activity_type": ["page_view"]}), staged.valid, CATALOGUE, RUN_START)
    assert acts.quarantine["reasons"].to_list() == [["occurred_at_invalid"]]


def test_typed_timestamps_before_1970_and_infinities_are_invalid_rows() -> None:
    """-infinity (near the int64 minimum), int64 extremes and 1969 are invalid rows, rendered without a panic."""
    physical = [0, -1, -9222425352054775808, -(2**63), 2**63 - 1, 1_735_689_600_000_000]
    raw = pl.DataFrame({"lead_id": [f"L{i}" for i in range(6)],
                        "created_at": pl.Series(physical).cast(pl.Datetime("us", "UTC")),
                        "updated_at": pl.Series(physical[::-1]).cast(pl.Datetime("ns"))})
    staged = validate_leads(raw, RUN_START)
    assert staged.valid.select("lead_id", "created_at").rows() == [
        ("L0", datetime(1970, 1, 1, tzinfo=UTC)), ("L5", datetime(2025, 1, 1, tzinfo=UTC))]
    expected = pl.DataFrame({
        "lead_id": ["L1", "L2", "L3", "L4"],
        "created_at": ["1969-12-31 23:59:59.999999+00:00", "-infinity", "-infinity", "infinity"],
        "updated_at": ["2262-04-11 23:47:16.854775807", "-infinity", "1677-10-01 23:10:47.945224192",
                       "1969-12-31 23:59:59.999999999"],
        "reasons": [["created_at_invalid"], ["created_at_invalid", "updated_at_invalid"],
                    ["created_at_invalid", "updated_at_invalid"], ["created_at_invalid", "updated_at_invalid"]],
    })
    assert_frame_equal(staged.quarantine.select(expected.columns), expected)


def test_typed_dates_before_1970_and_minus_infinity_are_invalid() -> None:
    """A PostgreSQL -infinity date (near the int32 minimum) is an invalid row, not an overflow."""
    raw = pl.DataFrame({"lead_id": ["L1", "L2", "L3"],
                        "created_at": pl.Series("created_at", [-2147472691, -1, 20000], pl.Int32).cast(pl.Date)})
    staged = validate_leads(raw, RUN_START)
    assert staged.valid.select("lead_id", "created_at").rows() == [("L3", datetime(2024, 10, 4, tzinfo=UTC))]
    assert _reasons_by_id(staged.quarantine) == {"L1": ["created_at_invalid"], "L2": ["created_at_invalid"]}


def test_personal_columns_redacted_in_quarantine() -> None:
    """Email and company (or the configured columns) are <redacted> in quarantine; null stays null."""
    raw = _leads(created_at=["nope", "nope", "2025-01-01 00:00:00"], email=["a@b.de", None, "x@y.de"],
                 company=["Müller GmbH", "Acme", None], industry=["retail", "energy", None])
    staged = validate_leads(raw, RUN_START)
    expected = pl.DataFrame({"lead_id": ["L0", "L1"], "email": ["<redacted>", None],
                             "company": ["<redacted>", "<redacted>"], "industry": ["retail", "energy"]})
    assert_frame_equal(staged.quarantine.select(expected.columns), expected)
    assert staged.valid.select("email", "company").rows() == [("x@y.de", None)]
    custom = validate_leads(raw, RUN_START, personal_columns=("industry",)).quarantine
    assert custom.select("email", "company", "industry").rows() == [
        ("a@b.de", "Müller GmbH", "<redacted>"), (None, "Acme", "<redacted>")]
    assert staged.counts.as_dict() == {"read": 3, "valid": 1, "quarantined": 2, "collapsed": 0}


def test_owner_id_trimmed_case_kept_empty_is_null_never_a_reason() -> None:
    """owner_id is optional free text: trimmed, case kept, empty -> null; carried to quarantine as text."""
    leads = validate_leads(_leads(lead_id=["L1"]), RUN_START)
    raw = pl.DataFrame({"activity_id": ["a1", "a2", "a3", "a4"], "lead_id": ["L1", "L1", "L1", "L1"],
                        "occurred_at": ["2025-01-02 00:00:00"] * 3 + ["later"],
                        "activity_type": ["owner_assigned"] * 4, "owner_id": [" Anna.K ", "   ", None, " x "]})
    staged = validate_activities(raw, leads.valid, ("owner_assigned",), RUN_START)
    expected = pl.DataFrame({"activity_id": ["a1", "a2", "a3"], "owner_id": ["Anna.K", None, None]})
    assert_frame_equal(staged.valid.select("activity_id", "owner_id"), expected)
    assert staged.quarantine.select("activity_id", "owner_id").rows() == [("a4", " x ")]
    ActivitiesModel.validate(staged.valid)
    ActivitiesQuarantineSchema.validate(staged.quarantine)
    absent = validate_activities(raw.drop("owner_id"), leads.valid, ("owner_assigned",), RUN_START).valid
    assert absent.schema["owner_id"] == pl.String
    assert absent["owner_id"].null_count() == absent.height == 3


def test_malformed_lines_quarantined_as_field_count() -> None:
    """Lines set aside by the reader count as read and quarantined, with reason field_count only."""
    raw = RawTable(_leads(lead_id=["L1"]), pl.DataFrame(
        {"lead_id": ["L2", "L3"], "created_at": ["2025-01-01 00:00:00", None], "email": ["a@b.de", None],
         "line": [3, 4]}, schema_overrides={"line": pl.Int64}))
    staged = validate_leads(raw, RUN_START)
    assert staged.valid["lead_id"].to_list() == ["L1"]
    expected = pl.DataFrame({"lead_id": ["L2", "L3"], "email": ["<redacted>", None],
                             "reasons": [["field_count"], ["field_count"]]})
    assert_frame_equal(staged.quarantine.select(expected.columns), expected)
    assert staged.counts.as_dict() == {"read": 3, "valid": 1, "quarantined": 2, "collapsed": 0}
    LeadsQuarantineSchema.validate(staged.quarantine)
