"""Published metrics/sla_daily: handoff SLA clocks per day and SLA stage."""

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData
from pandera.engines import polars_engine as pe

from schemas.rules import NAME_PATTERN, TEAMS


class SlaDailyModel(pa.DataFrameModel):
    """One row per (date, SLA stage) every date, zeros included."""

    date: pe.Date = pa.Field(description="Local date D; counts are over [T(D-1), T(D)) or at T(D)")
    stage: str = pa.Field(str_matches=NAME_PATTERN, description="The SLA's stage")
    owner_team: str = pa.Field(isin=list(TEAMS), description="Team owning leads in that stage")
    started: int = pa.Field(ge=0, description="Clocks started (stage entered) during D")
    met_on_time: int = pa.Field(ge=0, description="Clocks stopped during D at or before due_at")
    stopped_late: int = pa.Field(ge=0, description="Clocks stopped during D after due_at")
    overdue: int = pa.Field(ge=0, description="Clocks not stopped before T(D) with due_at < T(D)")
    median_hours_to_stop: float | None = pa.Field(
        nullable=True, ge=0, description="Median hours_to_stop of the clocks stopped during D; null if none")

    @pa.dataframe_check
    @classmethod
    def median_only_with_stops(cls, data: PolarsData) -> pl.LazyFrame:
        """There is a median exactly when some clock stopped that day."""
        stops = pl.col("met_on_time") + pl.col("stopped_late")
        return data.lazyframe.select((stops > 0) == pl.col("median_hours_to_stop").is_not_null())

    class Config:
        strict = True
        unique = ["date", "stage"]
