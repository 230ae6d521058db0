"""The output store: where every dataset lives under one output location, and how a run publishes.

Every dataset and date partition is a directory of part files (`part-<shard>.parquet`). A run
writes everything it publishes, report and manifest included, into its own pending area
(`.tmp/run-<id>/`, the same layout) and then commits: each directory is swapped in with one
atomic exchange (Linux `renameat2`), each file with one rename, the manifest last. A journal
written before the first swap lets the next run (or `funnel recover`) finish a commit that a
crash interrupted, so readers trust the manifest of the last complete commit. Partition columns
live in the directory names (`snapshot_date=...`), as polars, DuckDB, pyarrow and Spark expect.
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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from flows.catalog import REPORT, RUNS, Dataset, Grain

SCRATCH = "scratch"  # a pending area's work files (the input split by shard, replayed histories); never published
JOURNAL = "commit.json"
TMP = ".tmp"


class RunLockedError(RuntimeError):
    """Another run holds the output location."""


@dataclass(frozen=True)
class OutputStore:
    """Every path under one output location, and how a run's pending area is committed."""

    root: Path
    # The committed manifests, read once: a run asks for them several times, and each holds the
    # points fingerprint of every published date.
    _manifests: list[list[dict[str, Any]]] = field(default_factory=list, compare=False, repr=False)

    def path(self, dataset: Dataset, day: date | None = None) -> Path:
        """Directory of a dataset, or of one date partition of it."""
        base = self.root / dataset.name
        if dataset.grain is Grain.WHOLE:
            return base
        if day is None:
            raise ValueError(f"{dataset.name} is partitioned by {dataset.partition}: a date is needed")
        return base / f"{dataset.partition}={day.isoformat()}"

    @property
    def location(self) -> str:
        """The output location as given to readers (the directory)."""
        return str(self.root)

    def has(self, dataset: Dataset) -> bool:
        """Whether the dataset has been published here."""
        return (self.root / dataset.name).exists()

    def scan(self, dataset: Dataset) -> pl.LazyFrame:
        """A published whole dataset, lazily."""
        return pl.scan_parquet(self.path(dataset))

    def read_day(self, dataset: Dataset, day: date) -> pl.DataFrame:
        """One published date partition, without its partition column (as part files hold it)."""
        return pl.read_parquet(self.path(dataset, day))

    def report_location(self, as_of: date | None = None) -> Path:
        """Where a report page is once published."""
        return self.report_path(as_of)

    def publish_text(self, text: str, relative: str) -> None:
        """Write a text file straight under the output location (a report rendered again)."""
        self.write_text(text, self.root / relative)

    def publish(self, pending: OutputStore) -> dict[str, Any]:
        """Commit a run's pending area; nothing to add to its manifest."""
        self.commit(pending)
        return {}

    def prepare(self) -> None:
        """Before a run, under the lock: finish an interrupted commit, drop leftovers, refuse a non-atomic FS."""
        self.clear_tmp()
        check_atomic(self.root)

    def manifest_path(self, run_id: str) -> Path:
        """The JSON manifest of one run."""
        return self.root / RUNS / f"{run_id}.json"

    def report_path(self, as_of: date | None = None) -> Path:
        """The report page of one as-of date, or the latest one."""
        return self.root / report_relative(as_of)

    def shard_inputs(self, table: str) -> Path:
        """Where a pending area keeps an input table split by lead shard, one `_shard=<k>` folder each."""
        return self.root / SCRATCH / "input" / table

    def shard_input(self, table: str, shard: int) -> Path:
        """Where a pending area keeps one shard's raw rows of an input table."""
        return self.shard_inputs(table) / f"_shard={shard}"

    def shard_history(self, shard: int) -> Path:
        """Where a pending area keeps one shard's replayed history between the run's two steps."""
        return self.root / SCRATCH / "history" / f"shard={shard}"

    def pending(self, run_id: str) -> OutputStore:
        """A run's pending area: the same layout under `.tmp/`, published by `commit`."""
        return OutputStore(self.root / TMP / f"run-{run_id}")

    def write_part(self, frame: pl.DataFrame, directory: Path, part: int = 0) -> int:
        """Write one part file into a directory that is not yet published (a pending area).

        Written under a temporary name and renamed, so a shard that is rerun while a lost
        worker may still be writing the same part never leaves a torn file.
        """
        path = directory / f"part-{part}.parquet"
        tmp = directory / f".{path.name}.{uuid.uuid4().hex}"
        with _naming(directory):
            directory.mkdir(parents=True, exist_ok=True)
            frame.write_parquet(tmp, compression="zstd", statistics=True)
            _fsync_file(tmp)
            tmp.replace(path)
        return frame.height

    def write_dataset(self, dataset: Dataset, frame: pl.DataFrame, part: int = 0, day: date | None = None) -> int:
        """One part of a dataset (or of one date partition) in a pending area; the date lives in the path."""
        if dataset.partition is not None and dataset.partition in frame.columns:
            frame = frame.drop(dataset.partition)
        return self.write_part(frame, self.path(dataset, day), part)

    def write_text(self, text: str, target: Path) -> Path:
        """Write a text file (in a pending area; published by the commit)."""
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        with _naming(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            _fsync_file(tmp)
            tmp.replace(target)
        return target

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> Path:
        """Write a run manifest as runs/<run_id>.json."""
        text = json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
        return self.write_text(text, self.manifest_path(run_id))

    def manifests(self) -> list[dict[str, Any]]:
        """Every committed run manifest, oldest first (read once until the next commit)."""
        if not self._manifests:
            found = [json.loads(p.read_text()) for p in (self.root / RUNS).glob("*.json")]
            self._manifests.append(sorted(found, key=lambda m: str(m["ended_at"])))
        return self._manifests[0]

    def published_dates(self, dataset: Dataset) -> list[date]:
        """The dates with a published partition of a dated dataset."""
        base = self.root / dataset.name
        prefix = f"{dataset.partition}="
        return sorted(date.fromisoformat(p.name[len(prefix):]) for p in base.glob(f"{prefix}*") if p.is_dir())

    def commit(self, pending: OutputStore) -> list[Path]:
        """Publish everything written in `pending`: directories swapped whole, files renamed, manifests last.

        A journal naming every entry (and the inode of its new version) is written first, so a
        commit interrupted at any instant is completed by `recover`. Returns what was replaced.
        """
        leaves = sorted({p.parent for p in pending.root.rglob("part-*.parquet")
                         if p.relative_to(pending.root).parts[0] != SCRATCH})
        files = sorted(p for p in pending.root.rglob("*") if p.is_file() and p.suffix in (".html", ".json")
                       and p.relative_to(pending.root).parts[0] != SCRATCH)
        files.sort(key=lambda p: p.relative_to(pending.root).parts[0] == RUNS)  # manifests last
        for leaf in leaves:
            for stray in leaf.glob(".part-*"):  # a write that died before its rename
                stray.unlink()
        entries = [{"path": str(p.relative_to(pending.root)), "inode": p.stat().st_ino, "dir": p.is_dir()}
                   for p in [*leaves, *files]]
        journal = self.root / TMP / JOURNAL
        self.write_text(json.dumps({"pending": pending.root.name, "entries": entries}), journal)
        _fsync_dir(journal.parent)
        self._finish(pending.root, entries)
        journal.unlink()
        with contextlib.suppress(OSError):  # other runs' leftovers keep it; they are cleared next time
            journal.parent.rmdir()
        return [self.root / str(e["path"]) for e in entries]

    def _finish(self, pending_root: Path, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            source = pending_root / str(entry["path"])
            target = self.root / str(entry["path"])
            # After an exchange the old version sits at `source`: its inode tells them apart.
            if source.exists() and source.stat().st_ino == entry["inode"]:
                if entry["dir"]:
                    _swap_in(source, target)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source.replace(target)
                    _fsync_dir(target.parent)
            elif source.exists():
                shutil.rmtree(source) if source.is_dir() else source.unlink()
        shutil.rmtree(pending_root, ignore_errors=True)
        self._manifests.clear()  # a manifest was published

    def recover(self) -> bool:
        """Complete a commit that a crash interrupted; True if there was one."""
        journal = self.root / TMP / JOURNAL
        if not journal.exists():
            return False
        plan = json.loads(journal.read_text())
        self._finish(self.root / TMP / plan["pending"], plan["entries"])
        journal.unlink()
        return True

    def clear_tmp(self) -> None:
        """Remove what crashed runs left behind, after completing an interrupted commit."""
        self.recover()
        shutil.rmtree(self.root / TMP, ignore_errors=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the output location for one run; a second run is refused at once."""
        with flock(self.root / ".lock", str(self.root)):
            yield


@contextlib.contextmanager
def flock(lock_file: Path, location: str) -> Iterator[None]:
    """Hold an exclusive lock on a local file for one run; a second run is refused at once."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RunLockedError(f"{location}: another funnel run is writing here; try again when it ends") from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ParquetOnObjectStoreError(ValueError):
    """Parquet directories need atomic renames, which an object store does not have."""


def open_store(location: str | Path, output_format: str) -> Store:
    """The store of an output location in a format: Parquet directories (local only) or Delta tables."""
    from flows.settings import is_object_store

    text = str(location)
    if output_format == "delta":
        from flows.delta import DeltaStore

        return DeltaStore(text.rstrip("/") if is_object_store(text) else str(Path(text).resolve()))
    if is_object_store(text):
        raise ParquetOnObjectStoreError(f"{text}: Parquet outputs need a local file system (object stores have no "
                                        "atomic rename); use --format delta")
    return OutputStore(Path(text))


def report_relative(as_of: date | None = None) -> str:
    """The report page of one as-of date (or the latest one), relative to the output location."""
    if as_of is None:
        return f"{REPORT}/latest.html"
    return f"{REPORT}/as_of={as_of.isoformat()}/index.html"


class Store(Protocol):
    """The published side of an output location: Parquet directories or Delta tables, local or on an object store.

    A run writes into a local pending area (`pending`) and hands it to `publish`; everything it
    reads of earlier runs (restatement, the report) goes through the other methods.
    """

    @property
    def location(self) -> str:
        """The output location, as a reader opens it."""

    def pending(self, run_id: str) -> OutputStore:
        """A run's local pending area."""

    def manifests(self) -> list[dict[str, Any]]:
        """Every committed run manifest, oldest first."""

    def published_dates(self, dataset: Dataset) -> list[date]:
        """The published dates of a dated dataset."""

    def has(self, dataset: Dataset) -> bool:
        """Whether the dataset has been published."""

    def scan(self, dataset: Dataset) -> pl.LazyFrame:
        """A published whole dataset, lazily."""

    def read_day(self, dataset: Dataset, day: date) -> pl.DataFrame:
        """One published date partition, without its partition column."""

    def report_location(self, as_of: date | None = None) -> Path | str:
        """Where a report page is once published."""

    def publish_text(self, text: str, relative: str) -> None:
        """Write a text file straight under the output location."""

    def publish(self, pending: OutputStore) -> dict[str, Any]:
        """Commit a pending area, manifest last; what the committed manifest gained."""

    def prepare(self) -> None:
        """Before a run, under the lock: recover from a crashed run and refuse an unsafe location."""

    def recover(self) -> bool:
        """Complete or undo a commit a crash interrupted; True if there was one."""

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the output location for one run."""


class OutputWriteError(OSError):
    """A write under the output location failed (a full disk, a read-only mount); the message names where."""


@contextlib.contextmanager
def _naming(where: Path) -> Iterator[None]:
    """Errors of a write (Python's or Polars' own) as one line naming the path written."""
    try:
        yield
    except (OSError, pl.exceptions.PolarsError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        raise OutputWriteError(f"{where}: cannot write: {reason}") from exc


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


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


class NotAtomicError(OSError):
    """The output file system cannot swap two directories in one step (NFS, for one)."""


NOT_ATOMIC = ("cannot exchange two directories atomically (renameat2 RENAME_EXCHANGE; NFS and some "
              "network file systems lack it), so readers could see a dataset missing mid-commit; "
              "use a local file system for --output")


def check_atomic(root: Path) -> None:
    """Refuse, before any data is read, an output file system where a commit would not be atomic."""
    probe = root / TMP / f"probe-{uuid.uuid4().hex}"
    first, second = probe / "a", probe / "b"
    first.mkdir(parents=True)
    second.mkdir()
    try:
        if not _exchange(first, second):
            raise NotAtomicError(f"{root}: {NOT_ATOMIC}")
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def _swap_in(staged: Path, target: Path) -> None:
    """Make the directory `staged` the directory `target` in one atomic exchange; the old one is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        staged.rename(target)
    elif _exchange(staged, target):
        shutil.rmtree(staged)
    else:
        raise NotAtomicError(f"{target}: {NOT_ATOMIC}")
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


