"""Delta Lake outputs: every dataset a Delta table under a local path or an object-store URI.

A run still writes Parquet part files into a local pending area (shards and Dask workers need no
shared volume with the lake); `publish` then writes each table from its pending parts in one
Delta transaction: whole datasets with a full overwrite, dated ones with a predicate overwrite of
exactly the dates written. The report follows, and the run manifest last, naming each table's
version; a reader pins a run with `DeltaTable(uri, version=N)`.

Crash semantics: the manifest of the last complete run is the published state. A crash between
two table commits leaves some tables one version ahead of it; the next run (or `funnel recover`)
restores those tables to the versions the manifest names before it reads or writes anything, and
every read of earlier runs (restatement, the report) uses those pinned versions.

Credentials come from the standard environment only (delta-rs and pyarrow read `AWS_*`); every
error from the object store is reduced to one line with no credential in it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from deltalake import DeltaTable, write_deltalake

from flows.catalog import DATASETS, RUNS, Dataset, Grain
from flows.settings import is_object_store
from flows.store import SCRATCH, TMP, OutputStore, flock, report_relative

# Delta's own default for `delta.deletedFileRetentionDuration`: a shorter vacuum can delete
# files that a reader pinned to a recent version (or a running query) still needs.
SAFE_RETENTION_HOURS = 168
# Operations after a manifest's version that leave a table's rows as they were.
_SAME_ROWS = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END", "RESTORE"})
_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "AZURE_STORAGE_ACCOUNT_KEY",
                     "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_SECRET", "GOOGLE_SERVICE_ACCOUNT_KEY")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Table commits run side by side (delta-rs releases the GIL): each is still its own transaction.
COMMIT_THREADS = 4


class OutputStoreError(OSError):
    """The output location refused an operation (missing bucket, wrong credentials); one line, no secret."""


def one_line(where: str, exc: BaseException) -> str:
    """An object-store error (delta-rs' are multi-line and coloured) as one line naming where, no credential."""
    text = _ANSI.sub("", str(exc))
    code = re.search(r"<Code>([^<]+)</Code>", text)
    message = re.search(r"<Message>([^<]+)</Message>", text)
    if message:
        reason = f"{message.group(1)} ({code.group(1)})" if code else message.group(1)
    else:
        lines = [line.strip(" ↳") for line in text.splitlines() if line.strip(" ↳")]
        reason = lines[-1] if lines else type(exc).__name__
    for variable in _SECRET_VARIABLES:
        secret = os.environ.get(variable)
        if secret:
            reason = reason.replace(secret, "***")
    return f"{where}: {reason}"


@contextlib.contextmanager
def _remote(where: str) -> Iterator[None]:
    """Errors of the object store or delta-rs as one OutputStoreError line."""
    try:
        yield
    except OutputStoreError:
        raise
    except Exception as exc:
        if isinstance(exc, (KeyboardInterrupt, MemoryError)):
            raise
        raise OutputStoreError(one_line(where, exc)) from None  # the chained text would repeat the secret-free line


@dataclass(frozen=True)
class DeltaStore:
    """An output location whose datasets are Delta tables; runs, report and manifests beside them."""

    location: str  # an absolute local path or scheme://bucket/prefix, no trailing slash
    # The committed manifests, read once: restatement and the report ask for them per date.
    _manifests: list[list[dict[str, Any]]] = field(default_factory=list, compare=False, repr=False)

    @property
    def remote(self) -> bool:
        """Whether the location is an object store."""
        return is_object_store(self.location)

    def uri(self, dataset: Dataset) -> str:
        """The table URI of one dataset."""
        return f"{self.location}/{dataset.name}"

    @cached_property
    def _filesystem(self) -> tuple[pafs.FileSystem, str]:
        """The file system of runs/ and report/: pyarrow's, whose S3 client reads the same AWS_* variables."""
        with _remote(self.location):
            found: tuple[pafs.FileSystem, str] = pafs.FileSystem.from_uri(self.location)
        return found

    @property
    def _local_base(self) -> Path:
        """Where pending areas and the run lock live: under a local location, else in the temp directory."""
        if not self.remote:
            return Path(self.location) / TMP
        key = hashlib.sha256(self.location.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / "funnel-pending" / key

    def pending(self, run_id: str) -> OutputStore:
        """A run's local pending area of Parquet part files."""
        return OutputStore(self._local_base / f"run-{run_id}")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the location for one run: a lock file beside it, or on this machine for an object store.

        Object stores have no lock; each table commit is still one conditional PUT, so two
        runs on different machines cannot tear a table, but their tables could interleave.
        """
        base = Path(self.location) if not self.remote else self._local_base.parent
        with flock(base / (".lock" if not self.remote else f"{self._local_base.name}.lock"), self.location):
            yield

    def manifests(self) -> list[dict[str, Any]]:
        """Every committed run manifest, oldest first."""
        if not self._manifests:
            self._manifests.append(self._read_manifests())
        return self._manifests[0]

    def _read_manifests(self) -> list[dict[str, Any]]:
        fs, base = self._filesystem
        with _remote(f"{self.location}/{RUNS}"):
            found = fs.get_file_info(pafs.FileSelector(f"{base}/{RUNS}", allow_not_found=True))
            texts = [fs.open_input_stream(info.path).read() for info in found
                     if info.type == pafs.FileType.File and info.path.endswith(".json")]
        return sorted((json.loads(t) for t in texts), key=lambda m: str(m["ended_at"]))

    def versions(self) -> dict[str, int]:
        """The table versions the last complete run names: the published state."""
        manifests = self.manifests()
        return {str(k): int(v) for k, v in manifests[-1].get("delta_versions", {}).items()} if manifests else {}

    def has(self, dataset: Dataset) -> bool:
        """Whether the last complete run names a version of this table."""
        return dataset.name in self.versions()

    def published_dates(self, dataset: Dataset) -> list[date]:
        """The dates written by complete runs (a date with no rows has no Delta partition, so the log cannot say)."""
        if dataset.grain is not Grain.DATED or not self.has(dataset):
            return []
        days = {day for m in self.manifests() for written in m.get("dates_written", {}).values() for day in written}
        return sorted(date.fromisoformat(d) for d in days)

    def scan(self, dataset: Dataset) -> pl.LazyFrame:
        """A whole table at the version the last complete run names."""
        with _remote(self.uri(dataset)):
            return pl.scan_delta(self.uri(dataset), version=self.versions()[dataset.name])

    def read_day(self, dataset: Dataset, day: date) -> pl.DataFrame:
        """One date of a table at the last complete run's version, without the partition column."""
        column = str(dataset.partition)
        with _remote(self.uri(dataset)):
            return self.scan(dataset).filter(pl.col(column) == day).drop(column).collect()

    def report_location(self, as_of: date | None = None) -> str:
        """Where a report page is once published."""
        return f"{self.location}/{report_relative(as_of)}"

    def publish_text(self, text: str, relative: str) -> None:
        """Write a text file under the location: one PUT on an object store, a rename on a local disk."""
        fs, base = self._filesystem
        target = f"{base}/{relative}"
        with _remote(f"{self.location}/{relative}"):
            if self.remote:
                with fs.open_output_stream(target) as stream:
                    stream.write(text.encode())
                return
            fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            tmp = f"{target}.{uuid.uuid4().hex}.tmp"
            with fs.open_output_stream(tmp) as stream:
                stream.write(text.encode())
            fs.move(tmp, target)

    def prepare(self) -> None:
        """Before a run, under the lock: drop pending leftovers and restore tables a crashed run left ahead."""
        shutil.rmtree(self._local_base, ignore_errors=True)
        self.recover()

    def recover(self) -> bool:
        """Restore every table whose rows changed after the last complete run's version; True if one did."""
        restored = False
        for name, version in self.versions().items():
            uri = f"{self.location}/{name}"
            with _remote(uri):
                table = DeltaTable(uri)
                later = [h for h in table.history() if int(h.get("version", -1)) > version]
                if any(h.get("operation") not in _SAME_ROWS for h in later):
                    table.restore(version)
                    restored = True
        return restored

    def publish(self, pending: OutputStore) -> dict[str, Any]:
        """One Delta transaction per table written, then the report, then the manifest naming every version."""
        pinned = self.versions()
        written = [d for d in DATASETS if any((pending.root / d.name).rglob("part-*.parquet"))]
        with ThreadPoolExecutor(COMMIT_THREADS) as pool:
            new = pool.map(lambda d: self.commit_table(d, pending.root / d.name, d.name in pinned), written)
            versions = {**pinned, **{d.name: v for d, v in zip(written, new, strict=True)}}
        files = sorted(p for p in pending.root.rglob("*") if p.is_file() and p.suffix in (".html", ".json")
                       and p.relative_to(pending.root).parts[0] not in (SCRATCH, RUNS))
        for path in files:
            self.publish_text(path.read_text(encoding="utf-8"), path.relative_to(pending.root).as_posix())
        added = {"delta_versions": dict(sorted(versions.items()))}
        for path in sorted((pending.root / RUNS).glob("*.json")):
            manifest = {**json.loads(path.read_text(encoding="utf-8")), **added}
            self.publish_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n",
                              f"{RUNS}/{path.name}")
        shutil.rmtree(pending.root, ignore_errors=True)
        self._manifests.clear()
        return added

    def commit_table(self, dataset: Dataset, parts: Path, published: bool) -> int:
        """Write one table from its pending part files in one transaction; its new version.

        Dated tables already published replace exactly the dates in `parts`; everything else
        (and a table a crashed first run left behind) is overwritten whole.
        """
        predicate = None
        if dataset.partition is None:
            data = pads.dataset(parts, format="parquet")
        else:
            layout = pads.partitioning(pa.schema([(dataset.partition, pa.date32())]), flavor="hive")
            data = pads.dataset(parts, format="parquet", partitioning=layout)
            if published:
                days = sorted(p.name.split("=", 1)[1] for p in parts.iterdir() if p.is_dir())
                predicate = f"{dataset.partition} IN ({', '.join(repr(d) for d in days)})"
        uri = self.uri(dataset)
        with _remote(uri):
            write_deltalake(uri, data.scanner().to_reader(), mode="overwrite", predicate=predicate,
                            partition_by=[dataset.partition] if dataset.partition else None,
                            schema_mode=None if predicate else "overwrite")
            return DeltaTable(uri).version()

    def vacuum(self, retention_hours: int, force: bool) -> dict[str, tuple[int, int]]:
        """Compact every table's small files, then delete files unreferenced for `retention_hours`.

        The versions the last complete run names are always kept. Returns, per table, the files
        compaction removed and the files vacuum deleted.
        """
        if retention_hours < SAFE_RETENTION_HOURS and not force:
            raise ValueError(f"--retention-hours {retention_hours} is shorter than {SAFE_RETENTION_HOURS}: readers "
                             "pinned to a recent version (or time travel to the previous run) would lose files; "
                             "--force vacuums anyway")
        pinned = self.versions()
        done: dict[str, tuple[int, int]] = {}
        for name, version in pinned.items():
            uri = f"{self.location}/{name}"
            with _remote(uri):
                table = DeltaTable(uri)
                compacted = table.optimize.compact()
                deleted = table.vacuum(retention_hours=retention_hours, dry_run=False,
                                       enforce_retention_duration=False, keep_versions=[version])
            done[name] = (int(compacted.get("numFilesRemoved", 0)), len(deleted))
        return done
