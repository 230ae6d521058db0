"""`funnel catalog`: DuckDB views that open and count every dataset's rows, and a dbt sources file fully described."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import duckdb
import polars as pl
import pytest
import yaml

from flows.catalog import DATASETS
from flows.views import view_name
from tests.conftest import dirty_input

AS_OF = "2026-10-31"
# dbt's documented source properties (docs.getdbt.com, "Source properties"); anything else fails `dbt parse`.
SOURCE_KEYS = {"name", "description", "database", "schema", "loader", "meta", "tags", "config", "tables",
               "freshness", "loaded_at_field", "quoting", "overrides"}
TABLE_KEYS = {"name", "description", "identifier", "meta", "tags", "config", "columns", "data_tests", "tests",
              "freshness", "loaded_at_field", "quoting", "external"}
COLUMN_KEYS = {"name", "description", "data_type", "meta", "tags", "quote", "data_tests", "tests", "config"}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One nightly run's outputs in each format, written by the `funnel` command."""
    from flows.cli import main

    inputs = dirty_input(tmp_path_factory.mktemp("input"), 300, seed=3, days=90)
    found = {}
    for output_format in ("parquet", "delta"):
        out = tmp_path_factory.mktemp(output_format)
        assert main(["run", "--as-of", AS_OF, "--input", str(inputs), "--output", str(out),
                     "--format", output_format]) == 0
        found[output_format] = out
    return found


def _catalog(output: Path, output_format: str, to: Path) -> tuple[str, dict[str, object]]:
    from flows.cli import main

    assert main(["catalog", "--output", str(output), "--format", output_format, "--to", str(to)]) == 0
    return (to / "funnel_views.sql").read_text(), yaml.safe_load((to / "sources.yml").read_text())


@pytest.mark.usefixtures("prefect_server")
def test_duckdb_views_count_every_dataset(outputs: dict[str, Path], tmp_path: Path) -> None:
    """The Parquet view file opens in DuckDB and each view has its dataset's rows and columns."""
    sql, _ = _catalog(outputs["parquet"], "parquet", tmp_path)
    con = duckdb.connect()
    con.execute(sql)
    for dataset in DATASETS:
        expected = pl.read_parquet(outputs["parquet"] / dataset.name, hive_partitioning=dataset.partition is not None)
        relation = con.sql(f"SELECT * FROM {view_name(dataset)}")
        assert relation.columns == expected.columns, dataset.name
        assert con.execute(f"SELECT count(*) FROM {view_name(dataset)}").fetchone() == (expected.height,), dataset.name


@pytest.mark.usefixtures("prefect_server")
def test_delta_views_scan_every_table(outputs: dict[str, Path], tmp_path: Path) -> None:
    """The Delta view file names one delta_scan per table, and each names a Delta table with the dataset's rows.

    DuckDB's delta extension is downloaded by INSTALL, which this offline machine cannot do, so
    the tables the views name are read with Polars' Delta reader instead.
    """
    sql, _ = _catalog(outputs["delta"], "delta", tmp_path)
    for dataset in DATASETS:
        assert f"VIEW {view_name(dataset)} AS SELECT * FROM delta_scan('{outputs['delta'] / dataset.name}')" in sql
        rows = pl.scan_delta(str(outputs["delta"] / dataset.name)).select(pl.len()).collect().item()
        expected = pl.read_parquet(outputs["parquet"] / dataset.name, hive_partitioning=dataset.partition is not None)
        assert rows == expected.height, dataset.name


@pytest.mark.usefixtures("prefect_server")
def test_dbt_sources_describe_every_table_and_column(outputs: dict[str, Path], tmp_path: Path) -> None:
    """sources.yml follows dbt's source schema; every table and column has its schema's description."""
    _, sources = _catalog(outputs["parquet"], "parquet", tmp_path)
    assert isinstance(sources, dict)
    assert sources["version"] == 2
    [source] = sources["sources"]
    assert set(source) <= SOURCE_KEYS
    assert [t["name"] for t in source["tables"]] == [view_name(d) for d in DATASETS]
    for table, dataset in zip(source["tables"], DATASETS, strict=True):
        assert set(table) <= TABLE_KEYS and table["description"] == dataset.description
        columns = pl.read_parquet_schema(next((outputs["parquet"] / dataset.name).rglob("*.parquet")))
        described = {c["name"]: c for c in table["columns"]}
        assert set(columns) | ({dataset.partition} if dataset.partition else set()) == set(described), dataset.name
        for column in table["columns"]:
            assert set(column) <= COLUMN_KEYS and column["description"].strip(), (dataset.name, column["name"])
    if shutil.which("dbt") is None:
        return
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text("name: funnel_check\nversion: '1.0'\nprofile: funnel_check\n")
    (project / "profiles.yml").write_text("funnel_check:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
                                          f"      path: {tmp_path / 'dbt.duckdb'}\n")
    shutil.copy(tmp_path / "sources.yml", project / "models" / "sources.yml")
    done = subprocess.run(["dbt", "parse", "--project-dir", str(project), "--profiles-dir", str(project)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:]
