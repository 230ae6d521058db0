"""Published metrics/transitions_daily: flows between stages per day."""

import pandera.polars as pa
from pandera.engines import polars_engine as pe

from schemas.rules import NAME_PATTERN


class TransitionsDailyModel(pa.DataFrameModel):
    """Non-entry transitions per (date, source, from_stage, to_stage, direction)."""

    date: pe.Date = pa.Field(description="Local date of the transitions")
    source: str = pa.Field(description="Acquisition source")
    from_stage: str = pa.Field(str_matches=NAME_PATTERN, description="Stage left")
    to_stage: str = pa.Field(str_matches=NAME_PATTERN, description="Stage entered")
    direction: str = pa.Field(isin=["forward", "backward"], description="forward or backward")
    transitions: int = pa.Field(ge=1, description="Number of transitions")
    median_hours_in_from_stage: float = pa.Field(ge=0, description="Median hours spent in from_stage")

    class Config:
        strict = True
        unique = ["date", "source", "from_stage", "to_stage", "direction"]
