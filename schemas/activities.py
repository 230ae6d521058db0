"""Validated activities: one row per activity of a valid lead."""

import pandera.polars as pa
from pandera.engines import polars_engine as pe

from schemas._types import UTC_US
from schemas.rules import NAME_PATTERN


class ActivitiesModel(pa.DataFrameModel):
    """Activities that passed row rules, the duplicate policy and the reference to their lead."""

    activity_id: str = pa.Field(unique=True, str_length={"min_value": 1},
                                description="CRM activity identifier, trimmed; unique")
    lead_id: str = pa.Field(str_length={"min_value": 1}, description="The valid lead this activity belongs to")
    occurred_at: pe.DateTime = pa.Field(dtype_kwargs=UTC_US,
                                        description="When it happened (UTC), not before the lead's created_at")
    activity_type: str = pa.Field(str_matches=NAME_PATTERN,
                                  description="Trimmed, lower-cased type from the configured catalogue")
    owner_id: str | None = pa.Field(nullable=True, str_length={"min_value": 1},
                                    description="Who on the team has the lead, for an assignment activity: "
                                    "trimmed, case kept; null when absent or empty")

    class Config:
        strict = True
