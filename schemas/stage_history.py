"""Published stage_history: SCD2 intervals of each lead's stage."""


import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData
from pandera.engines import polars_engine as pe

from schemas._types import UTC_US
from schemas.rules import NAME_PATTERN, TEAMS


class StageHistoryModel(pa.DataFrameModel):
    """Contiguous stage intervals per lead, zero-length ones included."""

    lead_id: str = pa.Field(description="The lead")
    stage: str = pa.Field(str_matches=NAME_PATTERN, description="Stage held during the interval")
    owner_team: str = pa.Field(isin=list(TEAMS), description="Team owning the lead in that stage")
    valid_from: pe.DateTime = pa.Field(dtype_kwargs=UTC_US, description="Interval start (UTC), inclusive")
    valid_to: pe.DateTime | None = pa.Field(dtype_kwargs=UTC_US, nullable=True,
                                               description="Interval end (UTC), exclusive; null while current")
    entered_by: str = pa.Field(description="Trigger of the transition that opened the interval")
    activity_id: str | None = pa.Field(nullable=True, description="Activity that opened it; null for entry")

    @pa.dataframe_check
    @classmethod
    def ends_after_start(cls, data: PolarsData) -> pl.LazyFrame:
        """An interval never ends before it starts."""
        return data.lazyframe.select(pl.col("valid_to").is_null() | (pl.col("valid_to") >= pl.col("valid_from")))

    class Config:
        strict = True
        unique = ["lead_id", "valid_from", "activity_id"]
