"""A deliberately naive replay, written straight from FUNNEL_SPEC.md sections 3 and 6 with plain loops."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from transforms.calendar import boundary
from transforms.rules import FunnelConfig


@dataclass
class Move:
    """One row of the transitions dataset."""

    lead_id: str
    from_stage: str | None
    to_stage: str
    at: datetime
    trigger: str
    activity_id: str | None


def window_start(t: datetime, days: int, timezone: str) -> datetime:
    """T minus `days` local calendar days (wall-clock arithmetic in the zone)."""
    local = t.astimezone(ZoneInfo(timezone))
    return (local - timedelta(days=days)).astimezone(t.tzinfo)


@dataclass
class Step:
    """One event of a lead's replay (its entry or an activity), terminal stages included."""

    lead_id: str
    at: datetime
    activity_id: str | None
    activity_type: str | None
    before: str | None  # null for the entry
    after: str
    trigger: str
    owner_id: str | None  # the owner after the event


def reference_steps(leads: list[dict[str, Any]], activities: list[dict[str, Any]], config: FunnelConfig,
                    as_of: date, is_fit: Callable[[dict[str, Any]], bool]) -> list[Step]:
    """Replay each lead event by event, exactly as the spec words it (sections 3 and 6)."""
    cut = boundary(as_of, config.timezone)
    names = config.stage_names
    steps: list[Step] = []
    for lead in sorted(leads, key=lambda r: r["lead_id"]):
        if lead["created_at"] >= cut:
            continue
        acts = sorted((a for a in activities if a["lead_id"] == lead["lead_id"] and a["occurred_at"] < cut),
                      key=lambda a: (a["occurred_at"], a["activity_id"]))
        fit = is_fit(lead)
        stage = 0
        owner: str | None = None
        steps.append(Step(lead["lead_id"], lead["created_at"], None, None, None, names[0], "created", None))
        for e in acts:
            kind = e["activity_type"]
            if kind in config.assignment_types:
                text = (e.get("owner_id") or "").strip()  # missing, null and empty all unassign
                owner = text if text else None
            before = stage
            own_rule_changed = False
            if names[stage] not in config.terminal:
                if kind in config.promotions:
                    stage = max(stage, config.rank(config.promotions[kind]))
                elif kind in config.demotions:
                    stage = min(stage, config.rank(config.demotions[kind]))
                own_rule_changed = stage != before
                if config.points.get(kind, 0) > 0 and fit:
                    low = window_start(e["occurred_at"], config.window_days, config.timezone)
                    score = sum(config.points.get(a["activity_type"], 0) for a in acts
                                if low < a["occurred_at"] <= e["occurred_at"])
                    if score >= config.mql_threshold:
                        stage = max(stage, config.rank(config.score_target))
            trigger = kind if own_rule_changed else "score"
            steps.append(Step(lead["lead_id"], e["occurred_at"], e["activity_id"], kind, names[before],
                              names[stage], trigger, owner))
    return steps


def reference_moves(leads: list[dict[str, Any]], activities: list[dict[str, Any]], config: FunnelConfig,
                    as_of: date, is_fit: Callable[[dict[str, Any]], bool]) -> list[Move]:
    """The transitions: the entry, and every event after which the stage differs from before it."""
    return [Move(s.lead_id, s.before, s.after, s.at, s.trigger, s.activity_id)
            for s in reference_steps(leads, activities, config, as_of, is_fit)
            if s.before is None or s.before != s.after]


def reference_owner_history(steps: list[Step], config: FunnelConfig
                            ) -> list[tuple[str, str | None, datetime, datetime | None, str | None]]:
    """(lead_id, owner_id, valid_from, valid_to, activity_id): a new interval whenever the owner changes."""
    rows: list[list[Any]] = []
    for s in steps:
        if s.before is None:
            rows.append([s.lead_id, None, s.at, None, None])
        elif s.activity_type in config.assignment_types and s.owner_id != rows[-1][1]:
            rows[-1][3] = s.at
            rows.append([s.lead_id, s.owner_id, s.at, None, s.activity_id])
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


@dataclass
class Clock:
    """One SLA clock: an entry into the SLA's stage and what stopped it."""

    lead_id: str
    stage: str
    owner_team: str
    owner_id: str | None
    entered_at: datetime
    due_at: datetime
    activity_id: str | None
    stopped_at: datetime | None = None
    stopped_by: str | None = None

    def status(self, cut: datetime) -> str:
        """met, breached or open at the instant `cut`."""
        if self.stopped_at is not None:
            return "met" if self.stopped_at <= self.due_at else "breached"
        return "breached" if cut > self.due_at else "open"

    def hours_to_stop(self) -> float | None:
        """Real hours from entry to stop."""
        return None if self.stopped_at is None else (self.stopped_at - self.entered_at) / timedelta(hours=1)


def reference_sla(steps: list[Step], config: FunnelConfig) -> list[Clock]:
    """Every clock, ordered by (lead_id, stage rank, replay order of its entry)."""
    team = {s.name: s.owner_team for s in config.stages}
    clocks: list[Clock] = []
    for lead_id in sorted({s.lead_id for s in steps}):
        for rule in sorted(config.slas, key=lambda r: config.rank(r.stage)):
            running: Clock | None = None
            for s in (s for s in steps if s.lead_id == lead_id):
                if running is not None:  # so the lead has been in the stage until this event
                    if s.activity_type in rule.met_by:
                        running.stopped_at, running.stopped_by, running = s.at, s.activity_type, None
                    elif s.after != rule.stage:
                        running.stopped_at, running.stopped_by, running = s.at, "stage_exit", None
                if s.after == rule.stage and s.before != rule.stage:
                    running = Clock(lead_id, rule.stage, team[rule.stage], s.owner_id, s.at,
                                    s.at + timedelta(seconds=rule.within_hours * 3600), s.activity_id)
                    clocks.append(running)
    return clocks


def reference_sla_daily(clocks: list[Clock], config: FunnelConfig, start: date, end: date
                        ) -> list[tuple[date, str, str, int, int, int, int, float | None]]:
    """(date, stage, owner_team, started, met_on_time, stopped_late, overdue, median_hours_to_stop)."""
    out = []
    day = start
    while day <= end:
        lo, hi = boundary(day - timedelta(days=1), config.timezone), boundary(day, config.timezone)
        for rule in sorted(config.slas, key=lambda r: config.rank(r.stage)):
            mine = [c for c in clocks if c.stage == rule.stage]
            started = sum(1 for c in mine if lo <= c.entered_at < hi)
            stopped = [c for c in mine if c.stopped_at is not None and lo <= c.stopped_at < hi]
            on_time = sum(1 for c in stopped if c.stopped_at is not None and c.stopped_at <= c.due_at)
            overdue = sum(1 for c in mine
                          if c.entered_at < hi and (c.stopped_at is None or c.stopped_at >= hi) and c.due_at < hi)
            hours = [h for c in stopped if (h := c.hours_to_stop()) is not None]
            out.append((day, rule.stage, config.stages[config.rank(rule.stage)].owner_team, started, on_time,
                        len(stopped) - on_time, overdue, statistics.median(hours) if hours else None))
        day += timedelta(days=1)
    return out


def reference_snapshot(moves: list[Move], activities: list[dict[str, Any]], config: FunnelConfig,
                       day: date, steps: list[Step] | None = None
                       ) -> dict[str, tuple[str, str | None, datetime, int, int]]:
    """lead_id -> (stage, owner_id, stage_entered_at, days_in_stage, engagement_score) at T(day)."""
    cut = boundary(day, config.timezone)
    low = window_start(cut, config.window_days, config.timezone)
    owners: dict[str, str | None] = {}
    for s in steps or []:  # in replay order, so the last event before the cut wins
        if s.at < cut:
            owners[s.lead_id] = s.owner_id
    out: dict[str, tuple[str, str | None, datetime, int, int]] = {}
    for m in moves:
        if m.at < cut:
            score = sum(config.points.get(a["activity_type"], 0) for a in activities
                        if a["lead_id"] == m.lead_id and low <= a["occurred_at"] < cut)
            out[m.lead_id] = (m.to_stage, owners.get(m.lead_id), m.at, int((cut - m.at) // timedelta(hours=24)),
                              score)
    return out
