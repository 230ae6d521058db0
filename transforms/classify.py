"""One replay of history as of a date, materialised once for every dataset derived from it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import polars as pl

from transforms.calendar import boundary
from transforms.config import FunnelConfig
from transforms.milestones import milestones
from transforms.snapshots import snapshot_states, snapshots
from transforms.stage_history import stage_history, stage_intervals
from transforms.transitions import keyed_leads, replay, scored_activities, transitions, transitions_output


@dataclass(frozen=True)
class History:
    """The funnel history as of one date: keyed frames that every output is derived from."""

    as_of: date
    config: FunnelConfig
    leads: pl.DataFrame
    transitions: pl.DataFrame
    intervals: pl.DataFrame
    states: pl.DataFrame

    def transitions_dataset(self) -> pl.LazyFrame:
        """Published transitions."""
        return transitions_output(self.transitions.lazy(), self.config)

    def stage_history_dataset(self) -> pl.LazyFrame:
        """Published stage_history."""
        return stage_history(self.intervals.lazy(), self.config)

    def milestones_dataset(self) -> pl.LazyFrame:
        """Published milestones."""
        return milestones(self.transitions.lazy(), self.leads.lazy(), self.config)

    def snapshots_dataset(self, start: date, end: date) -> pl.LazyFrame:
        """Published snapshots for every date from start to end (end <= as_of)."""
        if end > self.as_of:
            raise ValueError(f"snapshot date {end} is after the history's as-of date {self.as_of}")
        return snapshots(self.states.lazy(), self.leads.lazy(), start, end, self.config)


def classify(leads: pl.LazyFrame, activities: pl.LazyFrame, config: FunnelConfig, as_of: date) -> History:
    """Replay validated leads and activities up to the boundary of `as_of`."""
    cut = boundary(as_of, config.timezone)
    keyed = keyed_leads(leads, config, cut).collect()
    scored = scored_activities(activities, keyed.lazy(), config, cut).collect()
    events = replay(keyed.lazy(), scored.lazy(), config)
    moves = transitions(events, keyed.lazy(), config).collect()
    intervals = stage_intervals(moves.lazy()).collect()
    states = snapshot_states(intervals.lazy(), scored.lazy(), config).collect()
    return History(as_of=as_of, config=config, leads=keyed, transitions=moves, intervals=intervals,
                   states=states)
