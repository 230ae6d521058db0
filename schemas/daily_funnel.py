"""Published metrics/daily_funnel: stock and flow per (date, source, stage)."""

import pandera.polars as pa
from pandera.engines import polars_engine as pe

from schemas.rules import NAME_PATTERN


class DailyFunnelModel(pa.DataFrameModel):
    """Leads in each stage at T(D) and moves during D, zero rows included."""

    date: pe.Date = pa.Field(description="The local date D")
    source: str = pa.Field(description="Acquisition source with a lead created before T(D)")
    stage: str = pa.Field(str_matches=NAME_PATTERN, description="Funnel stage")
    in_stage: int = pa.Field(ge=0, description="Leads in the stage at T(D)")
    entered: int = pa.Field(ge=0, description="Transitions into the stage during D (entries count for the first)")
    exited_forward: int = pa.Field(ge=0, description="Forward transitions out of the stage during D")
    exited_backward: int = pa.Field(ge=0, description="Backward transitions out of the stage during D")

    class Config:
        strict = True
        unique = ["date", "source", "stage"]
