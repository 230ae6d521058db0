"""Reading input directories: malformed CSV lines, wrong delimiters and line ends, column types, UUIDs."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from flows.inputs import InputError, RawTable, check_column_types, read_input, read_table
from flows.settings import parse_source
from schemas.quarantine import LeadsQuarantineSchema
from transforms.validation import validate_activities, validate_leads

RUN_START = datetime(2026, 1, 1, tzinfo=UTC)
HEADER = "lead_id,created_at,email,source\n"


def test_csv_lines_with_wrong_field_count_are_quarantined_by_line(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Too few and too many fields: set aside with their line number, quarantined as field_count, counted."""
    (tmp_path / "leads.csv").write_text(
        HEADER
        + 'L1,2025-01-01 00:00:00,a@b.de,"blog, news"\n'
        + "L2,2025-01-01 00:00:00,secret@x.de\n"
        + "L3,2025-01-01 00:00:00,c@d.de,blog,surplus\n"
        + "L4,2025-01-01 00:00:00,,ads\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="flows.inputs"):
        raw = read_table(tmp_path, "leads")
    expected = pl.DataFrame({"lead_id": ["L2", "L3"], "created_at": ["2025-01-01 00:00:00"] * 2,
                             "email": ["secret@x.de", "c@d.de"], "source": [None, "blog"], "line": [3, 4]},
                            schema_overrides={"line": pl.Int64})
    assert_frame_equal(raw.malformed, expected)
    assert raw.frame["lead_id"].to_list() == ["L1", "L4"]
    assert "line 3, 4" in caplog.text
    assert "secret" not in caplog.text

    staged = validate_leads(raw, RUN_START)
    assert staged.counts.as_dict() == {"read": 4, "valid": 2, "quarantined": 2, "collapsed": 0}
    assert staged.quarantine.select("lead_id", "email", "source", "reasons").rows() == [
        ("L2", "<redacted>", None, ["field_count"]), ("L3", "<redacted>", "blog", ["field_count"])]
    LeadsQuarantineSchema.validate(staged.quarantine)


@pytest.mark.parametrize(("delimiter", "called"), [(";", "semicolons"), ("\t", "tabs")])
def test_csv_wrong_delimiter_named_in_one_line(tmp_path: Path, delimiter: str, called: str) -> None:
    """A file split by ; or tabs says so, instead of reporting a missing column."""
    (tmp_path / "activities.csv").write_text(
        delimiter.join(["activity_id", "lead_id", "occurred_at", "activity_type"]) + "\n"
        + delimiter.join(["a1", "L1", "2025-01-01 00:00:00", "page_view"]) + "\n")
    with pytest.raises(InputError, match=rf"activities\.csv: fields are separated by {called}, not commas") as err:
        read_table(tmp_path, "activities")
    assert "\n" not in str(err.value)


def test_csv_cr_only_line_endings_named(tmp_path: Path) -> None:
    """Old-Mac line ends (CR only) are named, instead of a header swallowing the whole file."""
    (tmp_path / "leads.csv").write_bytes(b"lead_id,created_at\rL1,2025-01-01 00:00:00\r")
    with pytest.raises(InputError, match=r"leads\.csv: lines end in CR only"):
        read_table(tmp_path, "leads")


def test_csv_unreadable_bytes_named_without_content(tmp_path: Path) -> None:
    """A value that is not UTF-8 fails with where it is, never with the row's content."""
    (tmp_path / "leads.csv").write_bytes(HEADER.encode() + b"L1,2025-01-01 00:00:00,se\xffcret@x.de,blog\n")
    with pytest.raises(InputError, match=r"leads\.csv: unreadable: .*Row #2") as err:
        read_table(tmp_path, "leads")
    assert "cret" not in str(err.value)


def test_csv_values_read_as_polars_would(tmp_path: Path) -> None:
    """Quoted commas and quotes, an empty field (null) and a quoted empty one ("") as Polars reads them."""
    (tmp_path / "leads.csv").write_text(
        'lead_id,created_at,company,industry,extra\n'
        'L1,2025-03-01 10:00:00,"Müller, Söhne & ""Partner""",,x\n'
        'L2,2025-03-01 10:00:00,"",retail,y\n', encoding="utf-8")
    raw = read_table(tmp_path, "leads")
    expected = pl.read_csv(tmp_path / "leads.csv", infer_schema=False).select("lead_id", "created_at", "company",
                                                                              "industry")
    assert_frame_equal(raw.frame, expected)
    assert raw.malformed.height == 0


def _parquet(path: Path, **columns: pa.Array) -> None:
    pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize(("column", "values", "type_name"), [
    ("created_at", pa.array([1_700_000_000], pa.int64()), "Int64"),
    ("created_at", pa.array([1.7e9], pa.float64()), "Float64"),
    ("email", pa.array([True], pa.bool_()), "Boolean"),
    ("company", pa.array([["a", "b"]], pa.list_(pa.string())), "List"),
    ("industry", pa.array([{"x": 1}], pa.struct([("x", pa.int64())])), "Struct"),
    ("lead_id", pa.array([b"\x01" * 16], pa.binary()), "Binary"),
])
def test_parquet_column_of_wrong_type_fails_in_one_line(tmp_path: Path, column: str, values: pa.Array,
                                                        type_name: str) -> None:
    """An integer created_at, a boolean email, a list, a struct, non-UUID bytes: table, column and type named."""
    base = {"lead_id": pa.array(["L1"]), "created_at": pa.array(["2025-01-01 00:00:00"])}
    _parquet(tmp_path / "leads.parquet", **(base | {column: values}))
    with pytest.raises(InputError, match=rf"leads\.parquet: leads\.{column} has type {type_name}.*cannot hold") as e:
        read_input(str(tmp_path), "leads", parse_source({}))
    assert "\n" not in str(e.value)


def test_check_column_types_accepts_every_type_that_holds_its_field() -> None:
    """Text, integer ids, timestamps and dates, numbers for counts, all-null columns: accepted as they are."""
    frame = pl.DataFrame({
        "lead_id": pl.Series([1], dtype=pl.UInt32), "created_at": [datetime(2025, 1, 1)],
        "updated_at": pl.Series([datetime(2025, 1, 1).date()]), "email": [None],
        "source": pl.Series(["blog"], dtype=pl.Categorical), "employee_count": pl.Series([1], dtype=pl.Decimal(5, 2)),
    })
    check_column_types("leads", frame)
    with pytest.raises(InputError, match=r"^activities\.activity_id has type Decimal\(precision=5, scale=2\)"):
        check_column_types("activities", pl.DataFrame({"activity_id": frame["employee_count"]}))


def test_parquet_uuid_ids_are_canonical_text_and_meet_text_ids(tmp_path: Path) -> None:
    """UUID ids read as 8-4-4-4-12 text; integer lead ids in one table meet text ones in the other."""
    ids = [uuid.UUID(int=1), uuid.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")]
    _parquet(tmp_path / "leads.parquet", lead_id=pa.array([7, 8], pa.int64()),
             created_at=pa.array([datetime(2025, 1, 1), datetime(2025, 1, 1)], pa.timestamp("ms")))
    _parquet(tmp_path / "activities.parquet", activity_id=pa.array([u.bytes for u in ids], pa.uuid()),
             lead_id=pa.array(["7", "8"]), occurred_at=pa.array([datetime(2025, 1, 2)] * 2, pa.timestamp("s", "UTC")),
             activity_type=pa.array(["page_view", "page_view"]))
    leads = read_input(str(tmp_path), "leads", parse_source({}))
    acts = read_input(str(tmp_path), "activities", parse_source({}))
    assert isinstance(acts, RawTable)
    assert acts.frame["activity_id"].to_list() == [str(u) for u in ids]
    assert leads.frame.schema["created_at"] == pl.Datetime("ms")  # typed inputs stay typed
    valid_leads = validate_leads(leads, RUN_START).valid
    staged = validate_activities(acts, valid_leads, ("page_view",), RUN_START)
    expected = pl.DataFrame({"activity_id": [str(u) for u in ids], "lead_id": ["7", "8"],
                             "occurred_at": [datetime(2025, 1, 2, tzinfo=UTC)] * 2,
                             "activity_type": ["page_view"] * 2, "owner_id": [None, None]},
                            schema_overrides={"occurred_at": pl.Datetime("us", "UTC"), "owner_id": pl.String})
    assert_frame_equal(staged.valid, expected)
