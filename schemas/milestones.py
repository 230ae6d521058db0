"""Published milestones: one row per lead."""

import pandera.polars as pa
import polars as pl
from pandera.engines import polars_engine as pe

from schemas._types import UTC_US
from schemas.rules import NAME_PATTERN


class MilestonesModel(pa.DataFrameModel):
    """Current stage and first arrivals per lead; first_<stage>_at columns follow the config."""

    lead_id: str = pa.Field(unique=True, description="The lead")
    source: str = pa.Field(description="Acquisition source, normalised")
    created_at: pe.DateTime = pa.Field(dtype_kwargs=UTC_US, description="When the lead entered (UTC)")
    current_stage: str = pa.Field(str_matches=NAME_PATTERN, description="Stage at the as-of boundary")
    backward_moves: pe.Int32 = pa.Field(ge=0, description="How often the lead was sent backwards")

    class Config:
        strict = True


def milestones_schema(first_columns: list[str]) -> pa.DataFrameSchema:
    """MilestonesModel plus one nullable UTC first_<stage>_at column per stage above entry."""
    schema = MilestonesModel.to_schema()
    extra = {
        c: pa.Column(pl.Datetime("us", "UTC"), nullable=True,
                     description=f"First time the stage {c[6:-3]!r} or higher was reached (UTC)")
        for c in first_columns
    }
    return schema.add_columns(extra)

