"""The published frames of a history, each checked against its schema before anything is written.

Shared by the single-process run and the shards of a Dask run, so both publish the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pandera.polars as pa
import polars as pl

from schemas.cohort_conversion import CohortConversionModel
from schemas.daily_funnel import DailyFunnelModel
from schemas.milestones import milestones_schema
from schemas.snapshots import SnapshotsModel
from schemas.stage_history import StageHistoryModel
from schemas.transitions import TransitionsModel
from schemas.transitions_daily import TransitionsDailyModel
from transforms.classify import History
from transforms.milestones import milestone_columns

Validator = Callable[[pl.DataFrame], pl.DataFrame]


def checked(validator: Validator, frame: pl.DataFrame, name: str) -> pl.DataFrame:
    """The frame if it holds to its schema; otherwise an error naming the dataset."""
    try:
        return validator(frame)
    except (pa.errors.SchemaError, pa.errors.SchemaErrors) as exc:
        raise RuntimeError(f"output {name} breaks its schema, nothing written for it: {exc}") from exc


def history_frames(history: History) -> dict[str, pl.DataFrame]:
    """transitions, stage_history and milestones of a history, checked."""
    milestones_check = milestones_schema(milestone_columns(history.config)).validate
    frames: list[tuple[str, pl.LazyFrame, Validator]] = [
        ("transitions", history.transitions_dataset(), TransitionsModel.validate),
        ("stage_history", history.stage_history_dataset(), StageHistoryModel.validate),
        ("milestones", history.milestones_dataset(), milestones_check),
    ]
    return {name: checked(check, frame.collect(), name) for name, frame, check in frames}


def cohort_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """cohort_conversion, checked."""
    return checked(CohortConversionModel.validate, frame, "metrics/cohort_conversion")


def snapshot_frame(history: History, states: pl.DataFrame, day: date) -> pl.DataFrame:
    """The snapshot of one date, checked."""
    return checked(SnapshotsModel.validate, history.snapshot_day(states, day).collect(), "snapshots")


def metric_day_frames(daily_funnel: pl.DataFrame, transitions_daily: pl.DataFrame,
                      day: date) -> dict[str, pl.DataFrame]:
    """The daily_funnel and transitions_daily rows of one date, checked."""
    return {
        "metrics/daily_funnel": checked(DailyFunnelModel.validate, daily_funnel.filter(pl.col("date") == day),
                                        "metrics/daily_funnel"),
        "metrics/transitions_daily": checked(TransitionsDailyModel.validate,
                                             transitions_daily.filter(pl.col("date") == day),
                                             "metrics/transitions_daily"),
    }
