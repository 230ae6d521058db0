"""Published metrics/cohort_conversion: conversion between adjacent stages by cohort month."""


import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

from schemas.rules import NAME_PATTERN


class CohortConversionModel(pa.DataFrameModel):
    """Of the leads that first reached from_stage in a month, how many reached to_stage."""

    cohort_month: str = pa.Field(str_matches=r"^[0-9]{4}-[0-9]{2}$",
                                 description="Local month (YYYY-MM) of first reaching from_stage")
    source: str = pa.Field(description="Acquisition source")
    from_stage: str = pa.Field(str_matches=NAME_PATTERN, description="Lower stage of the pair")
    to_stage: str = pa.Field(str_matches=NAME_PATTERN, description="Next stage up")
    entered: int = pa.Field(ge=1, description="Leads that first reached from_stage in the month")
    converted: int = pa.Field(ge=0, description="Of those, first reached to_stage by the as-of boundary")
    conversion_rate: float = pa.Field(ge=0, le=1, description="converted / entered")
    median_days_to_convert: float | None = pa.Field(nullable=True, ge=0,
                                                       description="Median days from from_stage to to_stage")
    is_mature: bool = pa.Field(description="T(D) >= end of cohort month + cohort_maturity_days")

    @pa.dataframe_check
    @classmethod
    def converted_within_entered(cls, data: PolarsData) -> pl.LazyFrame:
        """Converted never exceeds entered; a median exists exactly when someone converted."""
        return data.lazyframe.select(
            (pl.col("converted") <= pl.col("entered"))
            & ((pl.col("converted") > 0) == pl.col("median_days_to_convert").is_not_null())
        )

    class Config:
        strict = True
        unique = ["cohort_month", "source", "from_stage", "to_stage"]
