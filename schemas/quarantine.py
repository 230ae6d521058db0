"""Quarantined input rows: original values as text plus every reason they were refused."""

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

from schemas.rules import ACTIVITY_COLUMNS, LEAD_COLUMNS


def _has_reason(data: PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(pl.col(data.key).list.len() > 0)


def quarantine_schema(table: str, columns: tuple[str, ...]) -> pa.DataFrameSchema:
    """Schema of one table's quarantine: its contract columns as text, plus reasons."""
    cols = {c: pa.Column(str, nullable=True, description=f"Original {table}.{c} as text") for c in columns}
    cols["reasons"] = pa.Column(
        pl.List(pl.String),
        checks=pa.Check(_has_reason, name="has_reason"),
        description="Machine-readable reason codes, one per failed rule; never empty",
    )
    return pa.DataFrameSchema(cols, strict=True, name=f"quarantine_{table}")


LeadsQuarantineSchema = quarantine_schema("leads", LEAD_COLUMNS)
ActivitiesQuarantineSchema = quarantine_schema("activities", ACTIVITY_COLUMNS)
