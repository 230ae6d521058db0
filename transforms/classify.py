"""One replay of history as of a date, materialised once for every dataset derived from it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

import polars as pl

from transforms.calendar import boundary
from transforms.milestones import milestones
from transforms.owners import assignments, owner_history, owner_intervals
from transforms.rules import FunnelConfig
from transforms.sla import combine_sla_daily, sla, sla_clocks, sla_daily_parts
from transforms.snapshots import snapshot_day, snapshot_states, snapshots
from transforms.stage_history import stage_history, stage_intervals
from transforms.transitions import (
    ANSWERS,
    ASSIGNS,
    activity_details,
    keyed_leads,
    replay,
    replay_position,
    score_hits,
    scored_activities,
    transitions,
    transitions_output,
)

ENGINE: Literal["in-memory"] = "in-memory"


@dataclass(frozen=True)
class History:
    """The funnel history as of one date: keyed frames that every output is derived from."""

    as_of: date
    config: FunnelConfig
    leads: pl.DataFrame
    transitions: pl.DataFrame
    intervals: pl.DataFrame
    points: pl.DataFrame
    owners: pl.DataFrame
    clocks: pl.DataFrame

    def transitions_dataset(self) -> pl.LazyFrame:
        """Published transitions."""
        return transitions_output(self.transitions.lazy(), self.config)

    def stage_history_dataset(self) -> pl.LazyFrame:
        """Published stage_history."""
        return stage_history(self.intervals.lazy(), self.config)

    def milestones_dataset(self) -> pl.LazyFrame:
        """Published milestones."""
        return milestones(self.transitions.lazy(), self.leads.lazy(), self.config)

    def owner_history_dataset(self) -> pl.LazyFrame:
        """Published owner_history."""
        return owner_history(self.owners.lazy())

    def sla_dataset(self) -> pl.LazyFrame:
        """Published sla: every clock, its status at T(as_of)."""
        return sla(self.clocks.lazy(), self.as_of, self.config)

    def sla_daily_parts(self, start: date, end: date) -> pl.LazyFrame:
        """The part of sla_daily for start..end (end <= as_of) from this history's leads, to combine with others'."""
        self._check_date(end)
        return sla_daily_parts(self.clocks.lazy(), start, end, self.config)

    def sla_daily(self, start: date, end: date) -> pl.LazyFrame:
        """Published sla_daily rows for every date from start to end (end <= as_of)."""
        return combine_sla_daily([self.sla_daily_parts(start, end)], start, end, self.config)

    def snapshot_states(self, start: date, end: date | None = None) -> pl.DataFrame:
        """Per-lead step functions of stage, owner and engagement from `start` on (see snapshots.py)."""
        return snapshot_states(self.intervals.lazy(), self.points.lazy(), self.owners.lazy(), start,
                               self.config, end).collect(engine=ENGINE)

    def snapshot_day(self, states: pl.DataFrame, day: date) -> pl.LazyFrame:
        """Published snapshot of one date, from states computed from a start on or before it."""
        self._check_date(day)
        return snapshot_day(states.lazy(), self.leads.lazy(), day, self.config)

    def snapshots_dataset(self, start: date, end: date) -> pl.LazyFrame:
        """Published snapshots for every date from start to end (end <= as_of)."""
        self._check_date(end)
        return snapshots(self.snapshot_states(start, end), self.leads.lazy(), start, end, self.config)

    def _check_date(self, day: date) -> None:
        if day > self.as_of:
            raise ValueError(f"date {day} is after the history's as-of date {self.as_of}")


def classify(leads: pl.LazyFrame, activities: pl.LazyFrame, config: FunnelConfig, as_of: date) -> History:
    """Replay validated leads and activities up to the boundary of `as_of`."""
    cut = boundary(as_of, config.timezone)
    # The in-memory engine: these are sort- and window-heavy plans on frames that fit in
    # memory, where it measured ~25% faster than the streaming default (1M leads).
    keyed = keyed_leads(leads, config, cut).collect(engine=ENGINE)
    valid = activities.collect(engine=ENGINE)
    scored = scored_activities(valid.lazy(), keyed.lazy(), config, cut).collect(engine=ENGINE)
    hits = score_hits(scored.lazy(), config).collect(engine=ENGINE)["_i"]
    scored = scored.with_columns(_hit=pl.repeat(False, scored.height, eager=True).scatter(hits, True))
    events = replay(keyed.lazy(), scored.lazy(), config)
    moves = transitions(events, keyed.lazy(), config).collect(engine=ENGINE)
    intervals = stage_intervals(moves.lazy()).collect(engine=ENGINE)
    points = scored.filter(pl.col("points") > 0).select("lead_key", "occurred_at", "points")
    # Owners and SLA clocks need only the few activities of assignment and met_by types.
    marked = activity_details(
        scored.lazy().with_columns(replay_position()).filter(pl.col(ASSIGNS) | pl.col(ANSWERS)).collect(engine=ENGINE),
        valid, keyed, config)
    owners = owner_intervals(moves.lazy(), assignments(marked.lazy())).collect(engine=ENGINE)
    clocks = sla_clocks(moves.lazy(), marked.lazy(), owners.lazy(), config).collect(engine=ENGINE)
    return History(as_of=as_of, config=config, leads=keyed, transitions=moves, intervals=intervals,
                   points=points, owners=owners, clocks=clocks)
