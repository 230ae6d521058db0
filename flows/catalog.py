"""The dataset catalog: every published dataset once, with its schema and its shape.

The output store derives every path from here, and the output checks, the report, the CLI,
the analyst views and the tests read it. No dataset name is written anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import pandera.polars as pa
import polars as pl

from schemas.cohort_conversion import CohortConversionModel
from schemas.daily_funnel import DailyFunnelModel
from schemas.milestones import milestones_schema
from schemas.owner_history import OwnerHistoryModel
from schemas.quarantine import ActivitiesQuarantineSchema, LeadsQuarantineSchema
from schemas.sla import SlaModel
from schemas.sla_daily import SlaDailyModel
from schemas.snapshots import SnapshotsModel
from schemas.stage_history import StageHistoryModel
from schemas.transitions import TransitionsModel
from schemas.transitions_daily import TransitionsDailyModel
from transforms.classify import History
from transforms.milestones import milestone_columns
from transforms.restatement import RowTimes
from transforms.rules import FunnelConfig


class Grain(Enum):
    """How a dataset is replaced by a run."""

    WHOLE = "whole"  # one directory, replaced by every run
    DATED = "dated"  # one directory per date, each replaced when its date is computed
    RUN = "run"  # one directory per run's as-of date (quarantine)


@dataclass(frozen=True)
class Dataset:
    """One published dataset: where it lives, how it is partitioned, what it must hold."""

    name: str  # its path under the output location
    grain: Grain
    partition: str | None  # the date column named in its partition directories
    description: str
    schema: Callable[[FunnelConfig], pa.DataFrameSchema | type[pa.DataFrameModel]]
    # For the lead-grain datasets a shard writes whole: its rows, from the shard's history.
    rows: Callable[[History], pl.LazyFrame] | None = None
    times: RowTimes | None = None  # lead-grain datasets: how their rows tell which dates may have changed

    def frame(self, history: History) -> pl.LazyFrame:
        """The rows of a history that make up this dataset (lead-grain datasets only)."""
        if self.rows is None:
            raise TypeError(f"{self.name} is not derived from one shard's history")
        return self.rows(history)

    def check(self, frame: pl.DataFrame, config: FunnelConfig) -> pl.DataFrame:
        """The frame if it holds to this dataset's schema; otherwise an error naming the dataset."""
        try:
            return self.schema(config).validate(frame)
        except (pa.errors.SchemaError, pa.errors.SchemaErrors) as exc:
            raise RuntimeError(f"output {self.name} breaks its schema, nothing published: {exc}") from exc


def _fixed(model: pa.DataFrameSchema | type[pa.DataFrameModel]) -> Callable[[FunnelConfig],
                                                                          pa.DataFrameSchema | type[pa.DataFrameModel]]:
    return lambda _config: model


TRANSITIONS = Dataset("transitions", Grain.WHOLE, None,
                      "One row per stage change plus one entry row per lead", _fixed(TransitionsModel),
                      History.transitions_dataset, times=RowTimes("transitioned_at"))
STAGE_HISTORY = Dataset("stage_history", Grain.WHOLE, None,
                        "SCD2 stage intervals per lead (valid_from, valid_to)", _fixed(StageHistoryModel),
                        History.stage_history_dataset)
MILESTONES = Dataset("milestones", Grain.WHOLE, None,
                     "One row per lead: current stage, backward moves, first time at each stage",
                     lambda config: milestones_schema(milestone_columns(config)), History.milestones_dataset,
                     times=RowTimes("created_at", columns=("lead_id", "created_at", "source")))
OWNER_HISTORY = Dataset("owner_history", Grain.WHOLE, None,
                        "SCD2 owner intervals per lead: who on the team has it (valid_from, valid_to)",
                        _fixed(OwnerHistoryModel), History.owner_history_dataset,
                        times=RowTimes("valid_from", moving={"valid_to": ()}))
SLA = Dataset("sla", Grain.WHOLE, None,
              "One row per handoff SLA clock: entered, due, stopped, status as of the run's date",
              _fixed(SlaModel), History.sla_dataset,
              # a stop after the boundary is no stop yet, nor is its cause; status and hours follow the as-of
              times=RowTimes("entered_at", moving={"stopped_at": ("stopped_by",)},
                             columns=("lead_id", "stage", "owner_team", "owner_id", "entered_at", "due_at",
                                      "stopped_at", "stopped_by")))
COHORT_CONVERSION = Dataset("metrics/cohort_conversion", Grain.WHOLE, None,
                            "Per cohort month, source and adjacent stage pair: entered, converted, rate",
                            _fixed(CohortConversionModel))
SNAPSHOTS = Dataset("snapshots", Grain.DATED, "snapshot_date",
                    "One row per lead per date: stage, owner team, days in stage, engagement",
                    _fixed(SnapshotsModel))
DAILY_FUNNEL = Dataset("metrics/daily_funnel", Grain.DATED, "date",
                       "Per date, source and stage: in stage, entered, exited forward and backward",
                       _fixed(DailyFunnelModel))
TRANSITIONS_DAILY = Dataset("metrics/transitions_daily", Grain.DATED, "date",
                            "Per date, source, from, to and direction: transitions and median hours",
                            _fixed(TransitionsDailyModel))
SLA_DAILY = Dataset("metrics/sla_daily", Grain.DATED, "date",
                    "Per date, SLA stage and owner team: clocks started, met on time, stopped late, overdue",
                    _fixed(SlaDailyModel))
QUARANTINE_LEADS = Dataset("quarantine/leads", Grain.RUN, "as_of",
                           "Refused leads rows: original values as text (personal columns redacted), reasons",
                           _fixed(LeadsQuarantineSchema))
QUARANTINE_ACTIVITIES = Dataset("quarantine/activities", Grain.RUN, "as_of",
                                "Refused activities rows: original values as text, reasons",
                                _fixed(ActivitiesQuarantineSchema))

DATASETS: tuple[Dataset, ...] = (
    TRANSITIONS, STAGE_HISTORY, MILESTONES, OWNER_HISTORY, SLA, COHORT_CONVERSION, SNAPSHOTS, DAILY_FUNNEL,
    TRANSITIONS_DAILY, SLA_DAILY, QUARANTINE_LEADS, QUARANTINE_ACTIVITIES,
)
LEAD_GRAIN = tuple(d for d in DATASETS if d.rows is not None)
DATED = tuple(d for d in DATASETS if d.grain is Grain.DATED)
QUARANTINE = {"leads": QUARANTINE_LEADS, "activities": QUARANTINE_ACTIVITIES}
BY_NAME = {d.name: d for d in DATASETS}

# Not datasets: the run manifests and the HTML report, also under the output location.
RUNS = "runs"
REPORT = "report"
