"""Validated leads: one row per lead, every rule of the input contract holding."""


import pandera.polars as pa
from pandera.engines import polars_engine as pe

from schemas._types import UTC_US
from schemas.rules import COUNTRY_PATTERN, EMAIL_PATTERN, JOB_LEVELS


class LeadsModel(pa.DataFrameModel):
    """Leads that passed row rules, duplicate policy and are usable by the funnel."""

    lead_id: str = pa.Field(unique=True, str_length={"min_value": 1},
                            description="CRM lead identifier, trimmed; unique")
    created_at: pe.DateTime = pa.Field(dtype_kwargs=UTC_US, description="When the lead entered the funnel (UTC)")
    updated_at: pe.DateTime | None = pa.Field(dtype_kwargs=UTC_US, nullable=True,
                                                 description="Last CRM update (UTC); decides between duplicates")
    email: str | None = pa.Field(nullable=True, str_matches=EMAIL_PATTERN,
                                    description="Contact e-mail; personal, never written out")
    source: str = pa.Field(str_length={"min_value": 1},
                           description="Acquisition source, trimmed and lower-cased; 'unknown' if empty")
    company: str | None = pa.Field(nullable=True, description="Company name; personal, never written out")
    industry: str | None = pa.Field(nullable=True, description="Industry, free text")
    country: str | None = pa.Field(nullable=True, str_matches=COUNTRY_PATTERN,
                                      description="ISO 3166 alpha-2 country, upper-cased")
    employee_count: int | None = pa.Field(nullable=True, ge=0, description="Company size, integer >= 0")
    job_level: str | None = pa.Field(nullable=True, isin=list(JOB_LEVELS),
                                        description="Seniority of the contact, lower-cased")

    class Config:
        strict = True
