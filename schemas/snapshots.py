"""Published snapshots: one row per lead per snapshot date."""

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData
from pandera.engines import polars_engine as pe

from schemas._types import UTC_US
from schemas.owner_history import OWNER_PATTERN
from schemas.rules import NAME_PATTERN, TEAMS


class SnapshotsModel(pa.DataFrameModel):
    """Each lead created before T(D), its stage and engagement at T(D)."""

    snapshot_date: pe.Date = pa.Field(description="The local date D; the state is taken at T(D)")
    lead_id: str = pa.Field(description="The lead")
    source: str = pa.Field(description="Acquisition source, normalised")
    stage: str = pa.Field(str_matches=NAME_PATTERN, description="Stage of the latest transition before T(D)")
    owner_team: str = pa.Field(isin=list(TEAMS), description="Team owning the lead in that stage")
    owner_id: str | None = pa.Field(nullable=True, str_matches=OWNER_PATTERN,
                                    description="Who on the team has the lead at T(D); null while unassigned")
    stage_entered_at: pe.DateTime = pa.Field(dtype_kwargs=UTC_US, description="When that stage was entered (UTC)")
    days_in_stage: pe.Int32 = pa.Field(ge=0, description="floor((T(D) - stage_entered_at) / 24h)")
    engagement_score: pe.Int32 = pa.Field(ge=0, description="Points of activities in [T(D) - window, T(D))")

    @pa.dataframe_check
    @classmethod
    def strictly_in_natural_key_order(cls, data: PolarsData) -> pl.LazyFrame:
        """Rows strictly ascend by (snapshot_date, lead_id): sorted, and so the key is unique.

        Written as an order check because pandera's `unique` cost 0.6 s per 750k-row day,
        more than computing and writing the day (a year's backfill validates 365 of them).
        """
        day, lead = pl.col("snapshot_date"), pl.col("lead_id")
        prev_day, prev_lead = day.shift(1), lead.shift(1)
        return data.lazyframe.select(
            prev_day.is_null() | (day > prev_day) | ((day == prev_day) & (lead > prev_lead))
        )

    class Config:
        strict = True
