"""PostgreSQL input: same outputs as Parquet, column mapping, queries, errors, a dropped connection."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import psycopg
import pytest
from polars.testing import assert_frame_equal

from flows.inputs import InputError, TransientInputError, read_database_table
from flows.settings import SourceConfig, parse_settings_text, parse_source
from synthetic.generate import generate, write_inputs
from transforms.rules import ConfigError
from transforms.validation import validate_leads

PG = os.environ.get("FUNNEL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = f"funnel_test_{os.getpid()}"
AS_OF = date(2026, 10, 31)


def _load(conn: psycopg.Connection, table: str, frame: pl.DataFrame) -> None:
    cols = ", ".join(f'"{c}" text' for c in frame.columns)
    conn.execute(f"CREATE TABLE {SCHEMA}.{table} ({cols})")
    with conn.cursor().copy(f"COPY {SCHEMA}.{table} FROM STDIN WITH (FORMAT csv, HEADER true)") as copy:
        copy.write(frame.write_csv())


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Generated dirty data as text tables in a fresh schema, and the same data as Parquet."""
    data = generate(800, seed=21, dirty=True, days=200)
    parquet = tmp_path_factory.mktemp("parquet")
    write_inputs(parquet, data.leads, data.activities, "parquet")
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        _load(conn, "leads", data.leads)
        _load(conn, "activities", data.activities)
        renamed = data.leads.rename({"lead_id": "id", "created_at": "created"})
        _load(conn, "crm_leads", renamed)
    yield parquet
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")


def _source(**keys: str) -> SourceConfig:
    base = {"leads_table": f"{SCHEMA}.leads", "activities_table": f"{SCHEMA}.activities"}
    return parse_source(base | keys)


@pytest.mark.usefixtures("prefect_server")
def test_database_and_parquet_give_identical_outputs(database: Path, tmp_path: Path) -> None:
    """Every dataset, row for row, whether read from PostgreSQL or from a Parquet copy."""
    from flows.pipeline import nightly

    config = tmp_path / "funnel.toml"
    default = (Path(__file__).parent.parent / "flows" / "default_config.toml").read_text()
    tables = f'leads_table = "{SCHEMA}.leads"\nactivities_table = "{SCHEMA}.activities"\n'
    config.write_text(f"{default}\n[source]\n{tables}")
    nightly(as_of=AS_OF, input_location=str(database), output_dir=str(tmp_path / "files"), config_path=str(config))
    summary = nightly(as_of=AS_OF, input_location=PG, output_dir=str(tmp_path / "db"), config_path=str(config))
    assert summary.tables["activities"]["quarantined"] > 0
    for name in ("transitions", "stage_history", "milestones", "snapshots", "metrics/daily_funnel",
                 "metrics/transitions_daily", "metrics/cohort_conversion", "quarantine/leads",
                 "quarantine/activities"):
        assert_frame_equal(pl.read_parquet(tmp_path / "db" / name), pl.read_parquet(tmp_path / "files" / name))


def test_column_mapping_and_custom_query(database: Path) -> None:
    """Source names mapped to contract names; a whole query instead of a table."""
    direct = read_database_table(PG, "leads", _source())
    mapped = read_database_table(PG, "leads", parse_source({
        "leads_table": f"{SCHEMA}.crm_leads", "leads_columns": {"lead_id": "id", "created_at": "created"}}))
    assert_frame_equal(mapped, direct)
    query = parse_source({"leads_query": f"SELECT * FROM {SCHEMA}.leads WHERE source = 'blog'"})
    blog = read_database_table(PG, "leads", query)
    assert blog.height == direct.filter(pl.col("source") == "blog").height > 0


def test_missing_table_wrong_user_and_password_in_uri(database: Path) -> None:
    """One clear line naming what is wrong; a password in the URI is refused outright."""
    with pytest.raises(InputError, match=r'relation "funnel_test_\d+\.nope" does not exist'):
        read_database_table(PG, "leads", _source(leads_table=f"{SCHEMA}.nope"))
    with pytest.raises(InputError, match='role "nobody_here" does not exist'):
        read_database_table("postgresql://nobody_here@127.0.0.1:5432/test", "leads", _source())
    with pytest.raises(ConfigError, match="holds a credential"):
        read_database_table("postgresql://postgres:secret@127.0.0.1:5432/test", "leads", _source())
    with pytest.raises(ConfigError, match="holds a credential"):
        parse_settings_text((Path(__file__).parent.parent / "flows" / "default_config.toml").read_text()
                          + '\n[source]\nuri = "postgresql://u:pw@localhost/db"\n')
    with pytest.raises(InputError, match="missing required column 'lead_id'"):
        read_database_table(PG, "leads", parse_source({"leads_table": f"{SCHEMA}.crm_leads"}))


def test_typed_columns_numeric_uuid_and_infinity(database: Path) -> None:
    """Numeric becomes a decimal (Float64 where NaN), uuid its text; -infinity and 0001 are invalid rows."""
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"""CREATE TABLE {SCHEMA}.typed AS SELECT * FROM (VALUES
            ('00000000-0000-0000-0000-000000000001'::uuid, '2025-01-01 10:00+02'::timestamptz,
             12.00::numeric(10, 2), 12::numeric, 'NaN'::numeric, 'a'::text),
            ('0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0', '-infinity', 12.5, 5, 1, 'b'),
            ('0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f1', '0001-01-01 00:00+00', NULL, NULL, 2, 'c'))
            AS t(lead_id, created_at, employee_count, whole, with_nan, source)""")
    frame = read_database_table(PG, "leads", _source(leads_query=f"SELECT * FROM {SCHEMA}.typed"))
    assert frame.schema["created_at"] == pl.Datetime("us", "UTC")
    assert frame.schema["employee_count"] == pl.Decimal(38, 2)
    assert frame["lead_id"].to_list() == ["00000000-0000-0000-0000-000000000001",
                                          "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
                                          "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f1"]
    assert frame["employee_count"].to_list() == [Decimal("12.00"), Decimal("12.50"), None]
    staged = validate_leads(frame, datetime(2026, 1, 1, tzinfo=UTC))
    expected = pl.DataFrame({"lead_id": ["00000000-0000-0000-0000-000000000001"],
                             "created_at": [datetime(2025, 1, 1, 8, tzinfo=UTC)], "employee_count": [12]},
                            schema_overrides={"created_at": pl.Datetime("us", "UTC")})
    assert_frame_equal(staged.valid.select(expected.columns), expected)
    assert staged.quarantine.select("created_at", "employee_count", "reasons").rows() == [
        ("-infinity", "12.50", ["created_at_invalid", "employee_count_invalid"]),
        ("0001-01-01 00:00:00.000000+00:00", None, ["created_at_invalid"])]
    whole = read_database_table(PG, "leads", _source(
        leads_query=f"SELECT lead_id, created_at, whole AS employee_count FROM {SCHEMA}.typed"))
    assert whole.schema["employee_count"] == pl.Decimal(38, 0)
    nan = read_database_table(PG, "leads", _source(
        leads_query=f"SELECT lead_id, created_at, with_nan AS employee_count FROM {SCHEMA}.typed"))
    assert nan.schema["employee_count"] == pl.Float64
    assert validate_leads(nan, datetime(2026, 1, 1, tzinfo=UTC)).quarantine["reasons"].to_list()[0] == [
        "employee_count_invalid"]


def test_wrong_column_type_in_database_fails_in_one_line(database: Path) -> None:
    """A boolean email from a query fails before anything is written, naming table, column and type."""
    with pytest.raises(InputError, match=r"leads\.email has type Boolean, which cannot hold text"):
        read_database_table(PG, "leads", _source(
            leads_query=f"SELECT lead_id, created_at, true AS email FROM {SCHEMA}.leads"))


def test_silent_server_fails_within_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts TCP and never answers fails in about connect_timeout_s, one line, no password."""
    monkeypatch.setenv("FUNNEL_DB_PASSWORD", "s3cret-Pa55")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # the kernel accepts the connection; nobody ever reads or answers
        uri = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/test"
        started = time.monotonic()
        with pytest.raises(TransientInputError, match="timeout expired") as err:
            read_database_table(uri, "leads", parse_source({"connect_timeout_s": 2}))
        elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 5
    message = str(err.value)
    assert "\n" not in message and "s3cret" not in message and "Pa55" not in message
    assert message.startswith(f"{uri} (leads): ")


@pytest.mark.usefixtures("prefect_server")
def test_connection_dropped_mid_read_is_retried(database: Path, tmp_path: Path) -> None:
    """The backend is terminated during the first read; the extract task retries and succeeds."""
    from flows.pipeline import extract

    slow = parse_source({"leads_table": f"{SCHEMA}.leads",
                         "activities_query": f"SELECT a.* FROM {SCHEMA}.activities a, pg_sleep(1.5)"})
    killed: list[int] = []

    def kill_first_read() -> None:
        with psycopg.connect(PG, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while not killed and time.monotonic() < deadline:
                rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE query LIKE '%pg_sleep(1.5)%' "
                                    "AND pid <> pg_backend_pid() AND state = 'active'").fetchall()
                for (pid,) in rows:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    killed.append(pid)
                time.sleep(0.05)

    killer = threading.Thread(target=kill_first_read)
    killer.start()
    inputs = extract(PG, slow, str(tmp_path))
    killer.join()
    assert len(killed) >= 1
    expected = read_database_table(PG, "activities", _source())
    assert_frame_equal(inputs["activities"].collect().frame, expected)
