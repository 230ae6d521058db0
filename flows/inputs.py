"""Input locations: the leads and activities tables from a directory (CSV or Parquet) or PostgreSQL.

Only this module knows how an input is found and read; validation gets the raw tables. Every
reader ends in `check_column_types`, so a column whose type cannot hold its field fails the
run before anything is written. Typed columns stay typed; only types Polars has no name for
are mapped here: a UUID becomes its canonical text, a PostgreSQL `numeric` a decimal.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import polars as pl

from flows.settings import SourceConfig, database_uri_without_password, redacted_location
from schemas.rules import ACTIVITY_COLUMNS, ACTIVITY_REQUIRED, LEAD_COLUMNS, LEAD_REQUIRED
from transforms.validation import LINE, RawTable, type_mismatch

__all__ = ["InputError", "RawTable", "Source", "TransientInputError", "check_column_types", "input_file",
           "is_database", "read_database_table", "read_input", "read_table", "scan_input", "scan_table"]

TABLES = {"leads": (LEAD_COLUMNS, LEAD_REQUIRED), "activities": (ACTIVITY_COLUMNS, ACTIVITY_REQUIRED)}
# Delimiters a CSV export is often saved with by mistake, with the name a message gives them.
_WRONG_DELIMITERS = {";": "semicolons", "\t": "tabs"}
_SAMPLE_BYTES = 1 << 16
_CSV_BLOCK_BYTES = 64 << 20  # text read per block
_MAX_LINES_NAMED = 10
# PostgreSQL numeric precision beyond which a column is read as Float64 instead of a decimal.
_MAX_DECIMAL_DIGITS = 38

log = logging.getLogger(__name__)


class InputError(ValueError):
    """Input that cannot be read: a missing file or column, both CSV and Parquet, a column of the wrong type."""


class TransientInputError(InputError):
    """A database read that failed on the connection (refused, reset, terminated, timed out): worth a retry."""


def check_column_types(table: str, frame: pl.DataFrame, where: str | None = None) -> None:
    """Refuse, in one line naming table, column and type, a contract column whose type cannot hold its field."""
    for column, dtype in frame.schema.items():
        needed = type_mismatch(column, dtype) if column in TABLES[table][0] else None
        if needed is not None:
            prefix = f"{where}: " if where else ""
            raise InputError(f"{prefix}{table}.{column} has type {dtype}, which cannot hold {needed}")


def input_file(directory: Path, table: str) -> Path:
    """The one file holding `table`: <table>.csv or <table>.parquet, never both."""
    found = [p for p in (directory / f"{table}.csv", directory / f"{table}.parquet") if p.is_file()]
    if not found:
        raise InputError(f"{directory / table}.csv: missing (no {table}.csv or {table}.parquet in {directory})")
    if len(found) > 1:
        raise InputError(f"{found[0]}: both {found[0].name} and {found[1].name} present; keep one")
    return found[0]


def _uuid_text(name: str) -> pl.Expr:
    """16 UUID bytes as canonical text, 8-4-4-4-12 lower-case hex digits."""
    hex_digits = pl.col(name).bin.encode("hex")
    parts = [hex_digits.str.slice(start, length) for start, length in ((0, 8), (8, 4), (12, 4), (16, 4), (20, 12))]
    return pl.concat_str(parts, separator="-").alias(name)


def _uuid_columns(schema: Any) -> list[str]:
    """Names of the fields an Arrow schema marks as UUIDs (Parquet's UUID type, PostgreSQL's uuid)."""
    import pyarrow as pa

    return [f.name for f in schema if isinstance(f.type, pa.UuidType)]


@dataclass(frozen=True)
class Source:
    """An input table ready to be read whole or in lead shards, never read whole before it must be.

    `frame` is a lazy scan of Parquet (the input itself, or a CSV or database table streamed
    into a local file) with the contract's columns, their types checked.
    `malformed` holds the CSV lines set aside for their field count; `rows` counts the rows.
    """

    frame: pl.LazyFrame
    rows: int
    where: str  # the input's location, for messages
    malformed: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema={LINE: pl.Int64}))

    def collect(self) -> RawTable:
        """The whole table in memory, as validation reads one shard."""
        try:
            return RawTable(self.frame.collect(), self.malformed)
        except pl.exceptions.PolarsError as exc:
            raise InputError(f"{self.where}: unreadable: {first_line(exc)}") from exc


def _scan_parquet(path: Path, table: str, where: str | None = None) -> Source:
    """A Parquet table as a lazy scan of its contract columns, types checked from its schema alone."""
    import pyarrow.parquet as pq

    columns, required = TABLES[table]
    where = where or str(path)
    frame = pl.scan_parquet(path)
    try:
        present = frame.collect_schema().names()
        uuids = _uuid_columns(pq.read_schema(path))
        rows = pq.ParquetFile(path).metadata.num_rows
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"{where}: unreadable: {first_line(exc)}") from exc
    missing = [c for c in required if c not in present]
    if missing:
        raise InputError(f"{where}: missing required column {missing[0]!r}")
    frame = frame.select([c for c in columns if c in present]).with_columns(
        _uuid_text(c) for c in uuids if c in columns)
    check_column_types(table, pl.DataFrame(schema=frame.collect_schema()), where)
    return Source(frame=frame, rows=rows, where=where)


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an error message (the rest may quote input rows)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _csv_header(path: Path, sample: bytes) -> tuple[str, list[str]]:
    """The header line and its field names; refuses CR-only line ends, which hide every line break."""
    if b"\r" in sample and b"\n" not in sample:
        raise InputError(f"{path}: lines end in CR only (old Mac format); save it with LF or CRLF line endings")
    try:
        line = sample.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: unreadable: header line 1 is not UTF-8") from exc
    return line, next(csv.reader([line]), [])


def _missing_column(path: Path, header: str, names: list[str], required: tuple[str, ...]) -> None:
    """Refuse a header without a required column; a file split by `;` or tabs is named as such."""
    missing = [c for c in required if c not in names]
    if not missing:
        return
    for delimiter, called in _WRONG_DELIMITERS.items():
        fields = next(csv.reader([header], delimiter=delimiter), [])
        if len(fields) > 1 and all(c in fields for c in required):
            raise InputError(f"{path}: fields are separated by {called}, not commas; save it as comma-separated")
    raise InputError(f"{path}: missing required column {missing[0]!r}")


def _malformed_frame(rows: list[tuple[int, str]], names: list[str], columns: tuple[str, ...]) -> pl.DataFrame:
    """The lines whose field count differs from the header, split as far as they go (missing fields null)."""
    kept = [(i, c) for i, c in enumerate(names) if c in columns]
    fields = [next(csv.reader([text]), []) for _, text in rows]  # only the malformed lines
    data: dict[str, list[Any]] = {c: [f[i] if i < len(f) else None for f in fields] for i, c in kept}
    data[LINE] = [number for number, _ in rows]
    return pl.DataFrame(data, schema={**dict.fromkeys(data, pl.String), LINE: pl.Int64})


def _named_lines(lines: Iterable[int]) -> str:
    numbers = sorted(lines)
    shown = ", ".join(str(n) for n in numbers[:_MAX_LINES_NAMED])
    return shown + (f" and {len(numbers) - _MAX_LINES_NAMED} more" if len(numbers) > _MAX_LINES_NAMED else "")


def _spill_csv(path: Path, table: str, spill: Path) -> Source:
    """A CSV table as text, streamed in blocks into a Parquet file in `spill` and scanned from there.

    Lines with more or fewer fields than the header are set aside with their number: pyarrow's
    streaming reader calls back for the malformed lines only, so well-formed lines never pass
    through Python, and only one block of text is in memory at a time. Single-threaded,
    because only then does it know their numbers (it counts records: a quoted value spanning
    lines counts once, and empty lines are skipped).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    columns, required = TABLES[table]
    with path.open("rb") as file:
        sample = file.read(_SAMPLE_BYTES)
    header, names = _csv_header(path, sample)
    _missing_column(path, header, names, required)
    malformed: list[tuple[int, str]] = []

    def set_aside(row: Any) -> str:
        malformed.append((int(row.number), str(row.text)))
        return "skip"

    wanted = [c for c in columns if c in names]
    target = spill / f"{table}.parquet"
    try:
        with pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False, block_size=_CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=set_aside),
            # As Polars reads CSV text: an empty field is null, a quoted empty one is "".
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()), include_columns=wanted,
                strings_can_be_null=True, null_values=[""], quoted_strings_can_be_null=False),
        ) as reader, pq.ParquetWriter(target, reader.schema, compression="lz4") as writer:
            for batch in reader:
                writer.write_batch(batch)
    except (pa.ArrowException, OSError) as exc:
        # Arrow's parse errors end in the offending row's text, which no message may carry.
        message = re.sub(r"(columns, got \d+):.*", r"\1", first_line(exc))
        raise InputError(f"{path}: unreadable: {message}") from exc
    rows = _malformed_frame(malformed, names, columns)
    if malformed:
        log.warning("%s: %d line(s) with more or fewer fields than the header, quarantined as field_count: "
                    "line %s", path, len(malformed), _named_lines(n for n, _ in malformed))
    return Source(frame=pl.scan_parquet(target), rows=pq.ParquetFile(target).metadata.num_rows + rows.height,
                  where=str(path), malformed=rows)


def scan_table(directory: Path, table: str, spill: Path) -> Source:
    """A raw input table with the contract's columns present in it (extra columns ignored).

    CSV is read as text (streamed into `spill`), so each value is parsed, and can fail, on its
    own; Parquet keeps its types, each checked to hold its field, and is only scanned here.
    """
    path = input_file(directory, table)
    return _scan_parquet(path, table) if path.suffix == ".parquet" else _spill_csv(path, table, spill)


def read_table(directory: Path, table: str) -> RawTable:
    """A raw input table, read whole (see `scan_table`)."""
    with tempfile.TemporaryDirectory(prefix="funnel-extract-") as spill:
        return scan_table(directory, table, Path(spill)).collect()


# Messages of connection-level failures; anything else (a wrong table, column or password) is final.
_TRANSIENT = ("connection refused", "connection reset", "terminating connection", "connection closed",
              "server closed the connection", "broken pipe", "timed out", "timeout expired", "unexpected eof",
              "the database system is")


def is_database(location: str) -> bool:
    """Whether an input location is a PostgreSQL URI rather than a directory."""
    return location.startswith(("postgresql://", "postgres://"))


def _with_password(uri: str, source: SourceConfig) -> str:
    password = os.environ.get(source.password_env)
    if password is None and source.password_secret:
        from prefect.blocks.system import Secret

        secret = cast(Secret[str], Secret.load(source.password_secret))  # sync context: not a coroutine
        password = str(secret.get())
    if not password:
        return uri
    parts = urlsplit(uri)
    netloc = f"{parts.username or ''}:{quote(password, safe='')}@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _with_connect_timeout(uri: str, seconds: int) -> str:
    """The URI with libpq's `connect_timeout`, unless it names one: a server that never answers fails in time."""
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "connect_timeout" for k, _ in query):
        return uri
    return urlunsplit(parts._replace(query=urlencode([*query, ("connect_timeout", str(seconds))])))


def _numeric_scale(field: Any) -> int | None:
    """The scale a PostgreSQL `numeric(p, s)` column declares, None when unconstrained."""
    typmod = int((field.metadata or {}).get(b"POSTGRESQL:typmod", b"-1"))
    return (typmod - 4) & 0xFFFF if typmod >= 4 else None  # typmod is ((p << 16) | s) + 4


def _decimal_or_float(column: pl.LazyFrame, name: str, scale: int | None) -> pl.Expr:
    """PostgreSQL numeric text as a decimal of its scale; as Float64 where a value does not fit one (NaN).

    One pass over the spilled column finds the widest value (and, for an unconstrained
    `numeric`, the scale); the conversion itself stays lazy.
    """
    text = pl.col(name)
    fraction, digits, nulls, fits = column.select(
        text.str.extract(r"\.([0-9]+)$", 1).str.len_chars().max().alias("fraction"),
        text.str.replace_all(r"[^0-9]", "").str.len_chars().max().alias("digits"),
        text.null_count().alias("nulls"),
        text.str.contains(r"^-?[0-9]*\.?[0-9]*$").sum().alias("fits"),
    ).collect().row(0)
    if scale is None:
        scale = int(fraction) if fraction is not None else 0
    present = column.select(pl.len()).collect().item() - nulls
    if scale <= _MAX_DECIMAL_DIGITS and (digits is None or digits <= _MAX_DECIMAL_DIGITS) and fits == present:
        return text.str.to_decimal(scale=scale).alias(name)
    return text.cast(pl.Float64, strict=False).alias(name)


def _read_batches(sql: str, uri: str, path: Path) -> pl.LazyFrame:
    """A query's rows, streamed as Arrow batches into a local Parquet file, then scanned from it.

    The database read holds one batch at a time, and the table is then read like a Parquet
    input: whole, or one lead shard at a time. `numeric` (an Arrow extension Polars cannot
    read) is spilled as its text and read back as a decimal; `uuid` as its bytes, read back as
    canonical text.
    """
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow as pa
    import pyarrow.parquet as pq

    with adbc.connect(uri) as connection, connection.cursor() as cursor:
        cursor.execute(sql)
        reader = cursor.fetch_record_batch()
        opaque = [i for i, f in enumerate(reader.schema) if isinstance(f.type, pa.OpaqueType)]
        numeric = {reader.schema.field(i).name: _numeric_scale(reader.schema.field(i)) for i in opaque
                   if reader.schema.field(i).type.type_name == "numeric"}
        schema = reader.schema
        for i in opaque:
            schema = schema.set(i, pa.field(schema.field(i).name, schema.field(i).type.storage_type))
        with pq.ParquetWriter(path, schema, compression="none") as writer:
            for batch in reader:
                arrays = [batch.column(i).storage if i in opaque else batch.column(i) for i in range(batch.num_columns)]
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
    frame = pl.scan_parquet(path)
    decimals = [_decimal_or_float(frame.select(c), c, scale) for c, scale in numeric.items()]
    return frame.with_columns(*(_uuid_text(c) for c in _uuid_columns(reader.schema)), *decimals)


def scan_database_table(uri: str, table: str, source: SourceConfig, spill: Path) -> Source:
    """One input table from PostgreSQL, columns mapped to contract names, straight into Arrow.

    The password comes from the environment (or a Prefect Secret block), never from the URI, so
    neither messages nor the manifest can carry it. Connecting gives up after
    `source.connect_timeout_s`, also against a server that accepts but never answers.
    """
    database_uri_without_password(uri)
    spec = source.leads if table == "leads" else source.activities
    columns, required = TABLES[table]
    where = f"{redacted_location(uri)} ({spec.query or spec.table})"
    path = spill / f"{table}.parquet"
    try:
        frame = _read_batches(spec.sql(), _with_connect_timeout(_with_password(uri, source), source.connect_timeout_s),
                              path)
        present = frame.collect_schema().names()
    except Exception as exc:  # ADBC's errors carry the server's message
        first = first_line(exc)
        error = TransientInputError if any(t in first.lower() for t in _TRANSIENT) else InputError
        raise error(f"{where}: {first}") from exc
    missing = [c for c in required if c not in present]
    if missing:
        raise InputError(f"{where}: missing required column {missing[0]!r}")
    frame = frame.select([c for c in columns if c in present])
    check_column_types(table, pl.DataFrame(schema=frame.collect_schema()), where)
    return Source(frame=frame, rows=pl.scan_parquet(path).select(pl.len()).collect().item(), where=where)


def scan_input(location: str, table: str, source: SourceConfig, spill: Path) -> Source:
    """An input table from a directory (CSV or Parquet) or a PostgreSQL URI, its column types checked.

    A database table is streamed into `spill` (a directory the caller keeps for the run).
    """
    if is_database(location):
        return scan_database_table(location, table, source, spill)
    return scan_table(Path(location), table, spill)


def read_database_table(uri: str, table: str, source: SourceConfig) -> pl.DataFrame:
    """One database table read whole (see `scan_database_table`)."""
    with tempfile.TemporaryDirectory(prefix="funnel-extract-") as spill:
        return scan_database_table(uri, table, source, Path(spill)).collect().frame


def read_input(location: str, table: str, source: SourceConfig) -> RawTable:
    """An input table read whole (tests and tools; a run reads through `scan_input`)."""
    with tempfile.TemporaryDirectory(prefix="funnel-extract-") as spill:
        return scan_input(location, table, source, Path(spill)).collect()
