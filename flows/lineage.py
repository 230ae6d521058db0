"""OpenLineage run events: what a run reads and writes, for Marquez, DataHub or OpenMetadata.

Off unless `[lineage] url` or OPENLINEAGE_URL names an endpoint. A run sends START, then
COMPLETE or FAIL, over HTTP with a short timeout and no retries. Lineage is a by-product: an
endpoint that is down or slow costs one warning and at most one timeout, never the run.
"""

from __future__ import annotations

import csv
import importlib.metadata
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import polars as pl

from flows.settings import LineageConfig, Settings, SourceConfig, lineage_url, redacted_location

if TYPE_CHECKING:
    from openlineage.client import OpenLineageClient
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.generated.base import DatasetFacet, RunFacet

log = logging.getLogger(__name__)

TABLES = ("leads", "activities")
FILE_NAMESPACE = "file"  # OpenLineage's naming for a local file system: namespace "file", name the absolute path


@dataclass(frozen=True)
class DatasetRef:
    """One dataset as OpenLineage names it, with its columns where known."""

    namespace: str
    name: str
    fields: tuple[tuple[str, str, str | None], ...] = ()  # name, type, description


def endpoint(config: LineageConfig) -> str | None:
    """The OpenLineage base URL: the config's, else OPENLINEAGE_URL, else None (lineage off)."""
    url = config.url or os.environ.get("OPENLINEAGE_URL") or None
    return lineage_url(url, "OPENLINEAGE_URL") if url and not config.url else url


def _file_fields(path: Path) -> tuple[tuple[str, str, str | None], ...]:
    """Columns of an input file from its footer (Parquet) or header (CSV, all text); no rows read."""
    if path.suffix == ".parquet":
        return tuple((name, str(dtype), None) for name, dtype in pl.read_parquet_schema(path).items())
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return tuple((name, "String", None) for name in next(csv.reader(handle), []))


def input_refs(location: str, source: SourceConfig) -> list[DatasetRef]:
    """The run's two input tables: files of a directory, or tables of a PostgreSQL database."""
    if location.startswith(("postgresql://", "postgres://")):
        parsed = urlsplit(location)
        namespace = f"postgres://{parsed.hostname}:{parsed.port or 5432}"
        database = parsed.path.lstrip("/")
        return [DatasetRef(namespace, f"{database}.{table.table}" if table.query is None else f"{database}.{name}")
                for name, table in (("leads", source.leads), ("activities", source.activities))]
    directory = Path(location).resolve()
    refs = []
    for table in TABLES:
        found = [p for p in (directory / f"{table}.parquet", directory / f"{table}.csv") if p.is_file()]
        path = found[0] if found else directory / table
        refs.append(DatasetRef(FILE_NAMESPACE, str(path), _file_fields(path) if found else ()))
    return refs


def _output_namespace(output: str) -> tuple[str, str]:
    """The namespace and the name prefix of an output location (a local directory or an object store URI)."""
    parsed = urlsplit(output)
    if parsed.scheme and len(parsed.scheme) > 1:
        return f"{parsed.scheme}://{parsed.hostname or ''}", parsed.path.strip("/")
    return FILE_NAMESPACE, str(Path(output).resolve())


def _catalog_fields(name: str, settings: Settings) -> tuple[tuple[str, str, str | None], ...]:
    """An output dataset's columns and their descriptions, from its schema in the catalog."""
    from flows.catalog import BY_NAME

    dataset = BY_NAME.get(name)
    if dataset is None:
        return ()
    import pandera.polars as pa

    model = dataset.schema(settings.rules)
    schema = model if isinstance(model, pa.DataFrameSchema) else model.to_schema()
    return tuple((column, str(spec.dtype), spec.description) for column, spec in schema.columns.items())


class Lineage:
    """One run's OpenLineage events; every method is a no-op when lineage is off or the endpoint failed."""

    def __init__(self, client: OpenLineageClient | None, settings: Settings, job_name: str, run_id: str = "",
                 inputs: tuple[DatasetRef, ...] = (), output: str = "", where: str = "") -> None:
        self._client = client
        self._settings = settings
        self._job_name = job_name
        self._run_id = run_id
        self._inputs = inputs
        self._output = output
        self._where = where
        self._completed = False

    @classmethod
    def start(cls, settings: Settings, job_name: str, location: str, output: str | Path) -> Lineage:
        """Send START for a run reading `location` and writing `output` (when lineage is on); the run's handle."""
        try:
            url = endpoint(settings.run.lineage)
            if url is None:
                return cls(None, settings, job_name)
            from openlineage.client import OpenLineageClient
            from openlineage.client.transport.http import HttpConfig, HttpTransport
            from openlineage.client.uuid import generate_new_uuid

            config = HttpConfig(url=url, timeout=settings.run.lineage.timeout_s, retry={"total": 0},
                                endpoint=os.environ.get("OPENLINEAGE_ENDPOINT", "api/v1/lineage"))
            api_key = os.environ.get("OPENLINEAGE_API_KEY")
            if api_key:
                from openlineage.client.transport.http import ApiKeyTokenProvider

                config.auth = ApiKeyTokenProvider({"apiKey": api_key})
            client = OpenLineageClient(transport=HttpTransport(config))
            lineage = cls(client, settings, job_name, str(generate_new_uuid()),
                          tuple(input_refs(location, settings.run.source)), str(output), redacted_location(url))
        except Exception as exc:  # lineage never fails a run
            log.warning("OpenLineage off for this run: %s", _one_line(exc))
            return cls(None, settings, job_name)
        lineage._emit("START")
        return lineage

    def __enter__(self) -> Lineage:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> None:
        """An error before `complete` sends FAIL; after it (outputs published) the run stays complete."""
        if error is not None and not self._completed:
            self.fail(error)

    @property
    def run_id(self) -> str | None:
        """The OpenLineage run id (a UUID), or None when lineage is off or its endpoint failed."""
        return self._run_id if self._client is not None else None

    def complete(self, manifest: Mapping[str, Any], read: Mapping[str, pl.Schema] | None = None) -> None:
        """Send COMPLETE with the outputs' row counts (and Delta versions); `read`: input schemas as read."""
        self._completed = True
        if self._client is None:
            return
        try:
            outputs = self._outputs(manifest)
            if read:
                self._inputs = tuple(
                    DatasetRef(ref.namespace, ref.name, tuple((n, str(t), None) for n, t in schema.items()))
                    for ref, schema in zip(self._inputs, (read[t] for t in TABLES), strict=True))
        except Exception as exc:  # a manifest this module does not understand still completes the run
            log.warning("OpenLineage: outputs not described: %s", _one_line(exc))
            outputs = []
        self._emit("COMPLETE", outputs)

    def fail(self, error: BaseException) -> None:
        """Send FAIL with the error's first line."""
        if self._client is None:
            return
        from openlineage.client.facet_v2 import error_message_run

        facet = error_message_run.ErrorMessageRunFacet(message=_one_line(error), programmingLanguage="PYTHON")
        self._emit("FAIL", [], {"errorMessage": facet})

    def _outputs(self, manifest: Mapping[str, Any]) -> list[OutputDataset]:
        from openlineage.client.event_v2 import OutputDataset
        from openlineage.client.facet_v2 import dataset_version_dataset, output_statistics_output_dataset

        namespace, prefix = _output_namespace(self._output)
        versions: Mapping[str, Any] = manifest.get("delta_versions") or {}
        outputs = []
        for name, rows in sorted(manifest["rows_written"].items()):
            facets: dict[str, DatasetFacet] = {}
            fields = _catalog_fields(name, self._settings)
            if fields:
                facets["schema"] = _schema_facet(fields)
            if name in versions:
                version = str(versions[name])
                facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=version)
            outputs.append(OutputDataset(
                namespace=namespace, name=f"{prefix}/{name}" if prefix else name, facets=facets,
                outputFacets={"outputStatistics":
                              output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=int(rows))}))
        return outputs

    def _emit(self, state: str, outputs: list[OutputDataset] | None = None,
              run_facets: Mapping[str, RunFacet] | None = None) -> None:
        """Send one run event; on the first failure warn once and send nothing more for this run."""
        if self._client is None:
            return
        try:
            from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
            from openlineage.client.facet_v2 import job_type_job

            event = RunEvent(
                eventType=RunState[state], eventTime=datetime.now(UTC).isoformat(),
                run=Run(runId=self._run_id, facets=dict(run_facets or {})),
                job=Job(namespace=self._settings.run.lineage.namespace, name=self._job_name,
                        facets={"jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="PREFECT",
                                                                        jobType="FLOW")}),
                inputs=self._input_datasets(), outputs=outputs or [], producer=_producer())
            self._client.emit(event)
        except Exception as exc:
            log.warning("OpenLineage endpoint %s unreachable (%s); no lineage for this run", self._where,
                        _one_line(exc))
            self._client = None

    def _input_datasets(self) -> list[InputDataset]:
        from openlineage.client.event_v2 import InputDataset

        return [InputDataset(namespace=ref.namespace, name=ref.name,
                             facets={"schema": _schema_facet(ref.fields)} if ref.fields else {})
                for ref in self._inputs]


def _schema_facet(fields: tuple[tuple[str, str, str | None], ...]) -> DatasetFacet:
    from openlineage.client.facet_v2 import schema_dataset

    return schema_dataset.SchemaDatasetFacet(fields=[
        schema_dataset.SchemaDatasetFacetFields(name=name, type=dtype, description=description)
        for name, dtype, description in fields])


def _producer() -> str:
    return f"urn:funnel:{importlib.metadata.version('funnel')}"


def _one_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
