"""Published transitions: one row per stage change plus one entry row per lead."""


import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData
from pandera.engines import polars_engine as pe

from schemas._types import UTC_US
from schemas.rules import DIRECTIONS, NAME_PATTERN


class TransitionsModel(pa.DataFrameModel):
    """Every move of every lead between stages, in (lead_id, transitioned_at) order."""

    lead_id: str = pa.Field(description="The lead that moved")
    from_stage: str | None = pa.Field(nullable=True, str_matches=NAME_PATTERN,
                                         description="Stage before the move; null for the entry row")
    to_stage: str = pa.Field(str_matches=NAME_PATTERN, description="Stage after the move")
    direction: str = pa.Field(isin=list(DIRECTIONS), description="entry, forward or backward")
    stages_moved: pe.Int32 | None = pa.Field(nullable=True,
                                                description="to rank - from rank; null for entry")
    transitioned_at: pe.DateTime = pa.Field(dtype_kwargs=UTC_US, description="When the move happened (UTC)")
    trigger: str = pa.Field(description="created, score, or the activity type that moved the lead")
    activity_id: str | None = pa.Field(nullable=True, description="The activity at the move; null for entry")
    hours_in_from_stage: float | None = pa.Field(nullable=True, ge=0,
                                                    description="Hours spent in from_stage; null for entry")

    @pa.dataframe_check
    @classmethod
    def entry_rows_have_no_origin(cls, data: PolarsData) -> pl.LazyFrame:
        """Entry rows and only entry rows lack from_stage, stages_moved, activity_id and hours."""
        entry = pl.col("direction") == "entry"
        nulls = [pl.col(c).is_null() for c in ("from_stage", "stages_moved", "activity_id", "hours_in_from_stage")]
        return data.lazyframe.select(
            pl.when(entry).then(pl.all_horizontal(nulls) & (pl.col("trigger") == "created"))
            .otherwise(~pl.any_horizontal(nulls) & (pl.col("stages_moved") != 0)
                       & ((pl.col("direction") == "forward") == (pl.col("stages_moved") > 0)))
        )

    class Config:
        strict = True
        unique = ["lead_id", "transitioned_at", "activity_id"]
