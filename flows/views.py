"""Analyst hooks over an output location: DuckDB views and a dbt sources file, both derived from the catalog.

One view (and one dbt source table) per dataset, named after the catalog's dataset name; the
columns and their descriptions come from the pandera schemas, so they cannot drift from the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandera.polars as pa
import yaml

from flows.catalog import DATASETS, Dataset
from flows.settings import is_object_store
from transforms.rules import FunnelConfig

SOURCE_NAME = "funnel"


def view_name(dataset: Dataset) -> str:
    """A SQL name for a dataset: metrics/daily_funnel -> daily_funnel, quarantine/leads -> quarantine_leads."""
    return dataset.name.removeprefix("metrics/").replace("/", "_")


def scan_sql(dataset: Dataset, location: str, output_format: str) -> str:
    """The DuckDB table function reading one dataset at a location in a format."""
    where = f"{location.rstrip('/')}/{dataset.name}".replace("'", "''")
    if output_format == "delta":
        return f"delta_scan('{where}')"
    if dataset.partition is None:
        return f"read_parquet('{where}/*.parquet')"
    return f"read_parquet('{where}/*/*.parquet', hive_partitioning = true)"


def duckdb_views(location: str, output_format: str) -> str:
    """A DuckDB SQL script creating one view per dataset over the location."""
    lines = [f"-- Funnel outputs at {location} ({output_format}): one view per dataset.",
             "-- Open with: duckdb -init funnel_views.sql  (or: duckdb my.db < funnel_views.sql)"]
    if output_format == "delta":
        lines += ["INSTALL delta;", "LOAD delta;"]
    if is_object_store(location):
        # Credentials stay in the environment; DuckDB's credential chain reads the same AWS_* variables.
        lines += ["INSTALL httpfs;", "LOAD httpfs;", "INSTALL aws;", "LOAD aws;",
                  "CREATE SECRET IF NOT EXISTS funnel_store (TYPE s3, PROVIDER credential_chain);"]
    for dataset in DATASETS:
        lines += [f"-- {dataset.description}",
                  f"CREATE OR REPLACE VIEW {view_name(dataset)} AS SELECT * FROM "
                  f"{scan_sql(dataset, location, output_format)};"]
    return "\n".join(lines) + "\n"


_SQL_TYPES = {"String": "VARCHAR", "Int32": "INTEGER", "Int64": "BIGINT", "Float64": "DOUBLE", "Boolean": "BOOLEAN",
              "Date": "DATE", "List(String)": "VARCHAR[]"}


def sql_type(dtype: str) -> str:
    """The DuckDB type of a schema's polars dtype, as dbt's `data_type` expects a warehouse type."""
    if dtype.startswith("Datetime"):
        return "TIMESTAMPTZ" if "time_zone=" in dtype and "time_zone=None" not in dtype else "TIMESTAMP"
    return _SQL_TYPES.get(dtype, dtype)


def _columns(dataset: Dataset, config: FunnelConfig) -> list[dict[str, Any]]:
    model = dataset.schema(config)
    schema = model if isinstance(model, pa.DataFrameSchema) else model.to_schema()
    columns = [{"name": name, "description": column.description or "", "data_type": sql_type(str(column.dtype))}
               for name, column in schema.columns.items()]
    if dataset.partition is not None and dataset.partition not in schema.columns:
        columns.append({"name": dataset.partition, "data_type": "DATE",
                        "description": "As-of date of the run that wrote these rows (the partition)"})
    return columns


def dbt_sources(location: str, output_format: str, config: FunnelConfig) -> dict[str, Any]:
    """A dbt `sources.yml` document: every dataset a source table, every column described (dbt-duckdb reads them)."""
    tables = [{
        "name": view_name(dataset),
        "description": dataset.description,
        "meta": {"dataset": dataset.name, "partition": dataset.partition,
                 "external_location": scan_sql(dataset, location, output_format)},
        "columns": _columns(dataset, config),
    } for dataset in DATASETS]
    return {"version": 2, "sources": [{
        "name": SOURCE_NAME,
        "description": f"Lead funnel outputs ({output_format}) at {location}",
        "meta": {"location": location, "format": output_format},
        "tables": tables,
    }]}


def write_catalog(location: str, output_format: str, config: FunnelConfig, directory: Path) -> list[Path]:
    """Write funnel_views.sql and sources.yml into a directory; the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    views = directory / "funnel_views.sql"
    views.write_text(duckdb_views(location, output_format), encoding="utf-8")
    sources = directory / "sources.yml"
    sources.write_text(yaml.safe_dump(dbt_sources(location, output_format, config), sort_keys=False, width=120),
                       encoding="utf-8")
    return [views, sources]
