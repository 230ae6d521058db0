"""Published sla: one row per handoff SLA clock, with its status at the as-of boundary."""

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData
from pandera.engines import polars_engine as pe

from schemas._types import UTC_US
from schemas.owner_history import OWNER_PATTERN
from schemas.rules import NAME_PATTERN, TEAMS

STATUSES = ("met", "breached", "open")


class SlaModel(pa.DataFrameModel):
    """Every entry into an SLA stage before T(D), what stopped its clock, and whether in time."""

    lead_id: str = pa.Field(description="The lead")
    stage: str = pa.Field(str_matches=NAME_PATTERN, description="The SLA's stage, entered at entered_at")
    owner_team: str = pa.Field(isin=list(TEAMS), description="Team owning the lead in that stage")
    owner_id: str | None = pa.Field(nullable=True, str_matches=OWNER_PATTERN,
                                    description="Owner at entry (after the entering activity's own assignment)")
    entered_at: pe.DateTime = pa.Field(dtype_kwargs=UTC_US, description="When the lead entered the stage (UTC)")
    due_at: pe.DateTime = pa.Field(dtype_kwargs=UTC_US, description="entered_at + within_hours real hours (UTC)")
    stopped_at: pe.DateTime | None = pa.Field(
        dtype_kwargs=UTC_US, nullable=True,
        description="First met_by activity after entry, or the exit from the stage (UTC); null while running")
    stopped_by: str | None = pa.Field(
        nullable=True, str_matches=NAME_PATTERN,
        description="Type of the answering activity, or stage_exit; null while running")
    status: str = pa.Field(
        isin=list(STATUSES),
        description="At T(D): met if stopped by due_at; breached if stopped later, or running past due_at; else open")
    hours_to_stop: float | None = pa.Field(nullable=True, ge=0,
                                           description="Real hours from entered_at to stopped_at; null while running")

    @pa.dataframe_check
    @classmethod
    def due_after_entry(cls, data: PolarsData) -> pl.LazyFrame:
        """A clock is due strictly after it starts (within_hours > 0)."""
        return data.lazyframe.select(pl.col("due_at") > pl.col("entered_at"))

    @pa.dataframe_check
    @classmethod
    def stopped_consistently(cls, data: PolarsData) -> pl.LazyFrame:
        """stopped_at, stopped_by and hours_to_stop are set together, and a clock never stops before it starts."""
        stopped = pl.col("stopped_at").is_not_null()
        return data.lazyframe.select(
            (stopped == pl.col("stopped_by").is_not_null())
            & (stopped == pl.col("hours_to_stop").is_not_null())
            & (~stopped | (pl.col("stopped_at") >= pl.col("entered_at")))
        )

    @pa.dataframe_check
    @classmethod
    def status_matches_stop(cls, data: PolarsData) -> pl.LazyFrame:
        """A stopped clock is met exactly when it stopped by due_at; a running one is never met."""
        stopped, status = pl.col("stopped_at"), pl.col("status")
        in_time = pl.when(stopped <= pl.col("due_at")).then(pl.lit("met")).otherwise(pl.lit("breached"))
        return data.lazyframe.select(pl.when(stopped.is_null()).then(status != "met").otherwise(status == in_time))

    class Config:
        # No unique key: a lead that leaves and re-enters a stage at one instant starts two clocks with
        # the same (lead_id, stage, entered_at); rows are in replay order.
        strict = True
