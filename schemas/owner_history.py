"""Published owner_history: SCD2 intervals of who on the team has each lead."""

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData
from pandera.engines import polars_engine as pe

from schemas._types import UTC_US

# A trimmed, non-empty owner id (an empty one means unassigned and is stored as null).
OWNER_PATTERN = r"^\S(?:.*\S)?$"


class OwnerHistoryModel(pa.DataFrameModel):
    """Contiguous owner intervals per lead from its creation; a new one only when the owner changes."""

    lead_id: str = pa.Field(description="The lead")
    owner_id: str | None = pa.Field(nullable=True, str_matches=OWNER_PATTERN,
                                    description="Owner during the interval (trimmed); null while unassigned")
    valid_from: pe.DateTime = pa.Field(dtype_kwargs=UTC_US,
                                       description="Interval start (UTC), inclusive: created_at or the assignment")
    valid_to: pe.DateTime | None = pa.Field(dtype_kwargs=UTC_US, nullable=True,
                                            description="Interval end (UTC), exclusive; null while current")
    activity_id: str | None = pa.Field(nullable=True,
                                       description="Assignment activity that opened it; null for the first interval")

    @pa.dataframe_check
    @classmethod
    def ends_after_start(cls, data: PolarsData) -> pl.LazyFrame:
        """An interval never ends before it starts (zero-length ones exist: several assignments at one instant)."""
        return data.lazyframe.select(pl.col("valid_to").is_null() | (pl.col("valid_to") >= pl.col("valid_from")))

    @pa.dataframe_check
    @classmethod
    def first_interval_unassigned(cls, data: PolarsData) -> pl.LazyFrame:
        """The interval opened by the lead's creation (no activity) has no owner."""
        return data.lazyframe.select(pl.col("activity_id").is_not_null() | pl.col("owner_id").is_null())

    class Config:
        strict = True
        unique = ["lead_id", "valid_from", "activity_id"]
