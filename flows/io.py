"""The only module that knows where inputs and datasets live and how they are read and written.

Every dataset and partition is a directory of part files (`part-0.parquet`, and one per shard
when a run is sharded). A new version is written as a whole directory beside it (under `.tmp/`)
and swapped in with one atomic exchange of the two directories: a reader, or a crash, sees the
old version or the new one, never a mix of parts. Partition columns live in the directory name
(`snapshot_date=...`), as polars, DuckDB, pyarrow and Spark expect.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlsplit, urlunsplit

import polars as pl

from schemas.rules import ACTIVITY_COLUMNS, ACTIVITY_REQUIRED, LEAD_COLUMNS, LEAD_REQUIRED
from transforms.config import (
    ConfigError,
    FunnelConfig,
    SourceConfig,
    database_uri_without_password,
    parse_config_text,
)

PART = "part-0.parquet"
STAGED_INPUT = "input"  # validated input of a sharded run, inside its staging area
TABLES = {"leads": (LEAD_COLUMNS, LEAD_REQUIRED), "activities": (ACTIVITY_COLUMNS, ACTIVITY_REQUIRED)}
# Dataset name -> partition column for the date-partitioned ones.
PARTITIONED = {
    "snapshots": "snapshot_date",
    "metrics/daily_funnel": "date",
    "metrics/transitions_daily": "date",
}
WHOLE = ("transitions", "stage_history", "milestones", "metrics/cohort_conversion")


class InputError(ValueError):
    """Input that cannot be read: a missing file or column, or both CSV and Parquet present."""


class RunLockedError(RuntimeError):
    """Another run holds the output location."""


def input_file(directory: Path, table: str) -> Path:
    """The one file holding `table`: <table>.csv or <table>.parquet, never both."""
    found = [p for p in (directory / f"{table}.csv", directory / f"{table}.parquet") if p.is_file()]
    if not found:
        raise InputError(f"{directory / table}.csv: missing (no {table}.csv or {table}.parquet in {directory})")
    if len(found) > 1:
        raise InputError(f"{found[0]}: both {found[0].name} and {found[1].name} present; keep one")
    return found[0]


def read_table(directory: Path, table: str) -> pl.DataFrame:
    """A raw input table with the contract's columns present in it (extra columns ignored).

    CSV is read entirely as text, so each value is parsed, and can fail, on its own.
    """
    path = input_file(directory, table)
    columns, required = TABLES[table]
    frame = pl.scan_csv(path, infer_schema=False, encoding="utf8") if path.suffix == ".csv" else pl.scan_parquet(path)
    try:
        present = frame.collect_schema().names()
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"{path}: unreadable: {str(exc).splitlines()[0]}") from exc
    missing = [c for c in required if c not in present]
    if missing:
        raise InputError(f"{path}: missing required column {missing[0]!r}")
    try:
        return frame.select([c for c in columns if c in present]).collect()
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"{path}: unreadable: {str(exc).splitlines()[0]}") from exc


def write_inputs(directory: Path, leads: pl.DataFrame, activities: pl.DataFrame, fmt: str) -> None:
    """Write generated input tables as <table>.csv or <table>.parquet (text columns)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in (("leads", leads), ("activities", activities)):
        for stale in (directory / f"{name}.csv", directory / f"{name}.parquet"):
            stale.unlink(missing_ok=True)
        if fmt == "csv":
            frame.write_csv(directory / f"{name}.csv")
        else:
            frame.write_parquet(directory / f"{name}.parquet", row_group_size=1_000_000)


@dataclass(frozen=True)
class OutputStore:
    """Where every output dataset lives under one output location, and how it is replaced."""

    root: Path

    def dataset_dir(self, name: str, partition: date | None = None) -> Path:
        """Directory of a dataset, or of one date partition of it."""
        if partition is None:
            return self.root / name
        return self.root / name / f"{PARTITIONED[name]}={partition.isoformat()}"

    def quarantine_dir(self, table: str, as_of: date) -> Path:
        """Directory of one table's quarantine for one run date."""
        return self.root / "quarantine" / table / f"as_of={as_of.isoformat()}"

    def _tmp(self, suffix: str) -> Path:
        tmp = self.root / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / f"{uuid.uuid4().hex}{suffix}"

    def _replace(self, tmp: Path, target: Path) -> None:
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.replace(target)

    def write_part(self, frame: pl.DataFrame, directory: Path, part: int = 0) -> int:
        """Write one part file into a directory that is not yet published (a staging area).

        Written under a temporary name and renamed, so a shard that is rerun while a lost
        worker may still be writing the same part never leaves a torn file.
        """
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"part-{part}.parquet"
        tmp = directory / f".{path.name}.{uuid.uuid4().hex}"
        frame.write_parquet(tmp, compression="zstd", statistics=True)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        tmp.replace(path)
        return frame.height

    def write_frame(self, frame: pl.DataFrame, directory: Path) -> int:
        """Atomically replace the dataset directory `directory` with one holding `frame` alone."""
        staged = self._tmp("")
        rows = self.write_part(frame, staged)
        _swap_in(staged, directory)
        return rows

    def staging(self, run_id: str) -> OutputStore:
        """A store with the same layout under `.tmp/`, for the parts of a sharded run."""
        return OutputStore(self.root / ".tmp" / f"run-{run_id}")

    def shard_input_dir(self, table: str, shard: int) -> Path:
        """Where a sharded run keeps one shard's validated rows of an input table."""
        return self.root / STAGED_INPUT / table / f"shard={shard}"

    def commit(self, staged: OutputStore) -> list[Path]:
        """Swap every dataset directory written in `staged` into place, each atomically.

        Called once every shard has written its parts, so a reader never sees some shards of a
        run and not others. Returns the directories replaced.
        """
        leaves = sorted({p.parent for p in staged.root.rglob("part-*.parquet")
                         if p.relative_to(staged.root).parts[0] != STAGED_INPUT})
        for leaf in leaves:
            for stray in leaf.glob(".part-*"):  # a write that died before its rename
                stray.unlink()
            _swap_in(leaf, self.root / leaf.relative_to(staged.root))
        shutil.rmtree(staged.root, ignore_errors=True)
        return [self.root / leaf.relative_to(staged.root) for leaf in leaves]

    def write_dataset(self, name: str, frame: pl.DataFrame) -> int:
        """Replace a whole (unpartitioned) dataset."""
        return self.write_frame(frame, self.dataset_dir(name))

    def write_partition(self, name: str, day: date, frame: pl.DataFrame) -> int:
        """Replace one date partition; the partition column lives in the directory name."""
        return self.write_frame(frame.drop(PARTITIONED[name]), self.dataset_dir(name, day))

    def write_partition_part(self, name: str, day: date, frame: pl.DataFrame, part: int = 0) -> int:
        """One part of a date partition in a staging area (see write_part)."""
        return self.write_part(frame.drop(PARTITIONED[name]), self.dataset_dir(name, day), part)

    def write_text(self, text: str, target: Path) -> Path:
        """Atomically replace a text file under the output location."""
        tmp = self._tmp(target.suffix)
        tmp.write_text(text, encoding="utf-8")
        self._replace(tmp, target)
        return target

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> Path:
        """Write a run manifest as runs/<run_id>.json, atomically."""
        text = json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
        return self.write_text(text, self.root / "runs" / f"{run_id}.json")

    def clear_tmp(self) -> None:
        """Remove leftovers of a crashed run (they belong to no dataset)."""
        shutil.rmtree(self.root / ".tmp", ignore_errors=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the output location for one run; a second run is refused at once."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                message = f"{self.root}: another funnel run is writing here; try again when it ends"
                raise RunLockedError(message) from exc
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Any:
    """The C library's renameat2, looked up once; None where it has none."""
    return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where that is not supported."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _swap_in(staged: Path, target: Path) -> None:
    """Make the directory `staged` the directory `target`; the old version is removed after.

    An exchange of the two directories is atomic. Where the file system cannot exchange, the
    old directory is renamed away first, so for a moment the dataset is absent (never mixed).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        staged.rename(target)
    elif _exchange(staged, target):
        shutil.rmtree(staged)
    else:
        old = staged.with_name(staged.name + ".old")
        target.rename(old)
        staged.rename(target)
        shutil.rmtree(old)
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


DEFAULT_CONFIG = Path(__file__).with_name("default_config.toml")


def load_config(path: Path | None, timezone: str | None = None) -> FunnelConfig:
    """The funnel config from a TOML file (the shipped defaults when none is given)."""
    source = path or DEFAULT_CONFIG
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config: {exc.strerror}") from exc
    config = parse_config_text(text)
    return config.with_timezone(timezone) if timezone else config


class TransientInputError(InputError):
    """A database read that failed on the connection (refused, reset, terminated): worth a retry."""


# Messages of connection-level failures; anything else (a wrong table, column or password) is final.
_TRANSIENT = ("connection refused", "connection reset", "terminating connection", "connection closed",
              "server closed the connection", "broken pipe", "timed out", "unexpected eof",
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


def _read_batches(sql: str, uri: str) -> pl.DataFrame:
    """A query's rows, streamed as Arrow batches into a local Parquet file, then read from it.

    The database read then needs about what reading a Parquet input needs: one batch is in
    flight while writing, and the table is read once from the file (20M activities: 1.91 GB
    peak against 1.87 GB from Parquet; a whole-table read through connectorx took 3.95 GB).
    The file (about 1 GB per 20M activities) lives in the system temporary directory
    (TMPDIR) and is removed after.
    """
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow.parquet as pq

    with (adbc.connect(uri) as connection, connection.cursor() as cursor,
          tempfile.TemporaryDirectory(prefix="funnel-extract-") as spill):
        cursor.execute(sql)
        reader = cursor.fetch_record_batch()
        path = Path(spill) / "table.parquet"
        with pq.ParquetWriter(path, reader.schema, compression="none") as writer:
            for batch in reader:
                writer.write_batch(batch)
        return pl.read_parquet(path)


def read_database_table(uri: str, table: str, source: SourceConfig) -> pl.DataFrame:
    """One input table from PostgreSQL, columns mapped to contract names, straight into Arrow.

    The password comes from the environment (or a Prefect Secret block), never from the URI, so
    neither messages nor the manifest can carry it.
    """
    database_uri_without_password(uri)
    spec = source.leads if table == "leads" else source.activities
    columns, required = TABLES[table]
    where = f"{uri} ({spec.query or spec.table})"
    try:
        frame = _read_batches(spec.sql(), _with_password(uri, source))
    except Exception as exc:  # ADBC's errors carry the server's message
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        error = TransientInputError if any(t in first.lower() for t in _TRANSIENT) else InputError
        raise error(f"{where}: {first.strip()}") from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(f"{where}: missing required column {missing[0]!r}")
    return frame.select([c for c in columns if c in frame.columns])


def read_input(location: str, table: str, source: SourceConfig) -> pl.DataFrame:
    """An input table from a directory (CSV or Parquet) or a PostgreSQL URI."""
    if is_database(location):
        return read_database_table(location, table, source)
    return read_table(Path(location), table)
