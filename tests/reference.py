"""A deliberately naive replay, written straight from FUNNEL_SPEC.md section 3 with plain loops."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from transforms.calendar import boundary
from transforms.config import FunnelConfig


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


def reference_moves(leads: list[dict[str, Any]], activities: list[dict[str, Any]], config: FunnelConfig,
                    as_of: date, is_fit: Callable[[dict[str, Any]], bool]) -> list[Move]:
    """Replay each lead event by event, exactly as the spec words it."""
    cut = boundary(as_of, config.timezone)
    names = config.stage_names
    moves: list[Move] = []
    for lead in sorted(leads, key=lambda r: r["lead_id"]):
        if lead["created_at"] >= cut:
            continue
        acts = sorted((a for a in activities if a["lead_id"] == lead["lead_id"] and a["occurred_at"] < cut),
                      key=lambda a: (a["occurred_at"], a["activity_id"]))
        fit = is_fit(lead)
        stage = 0
        moves.append(Move(lead["lead_id"], None, names[0], lead["created_at"], "created", None))
        for e in acts:
            if names[stage] in config.terminal:
                break
            before = stage
            kind = e["activity_type"]
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
            if stage != before:
                trigger = kind if own_rule_changed else "score"
                moves.append(Move(lead["lead_id"], names[before], names[stage], e["occurred_at"], trigger,
                                  e["activity_id"]))
    return moves


def reference_snapshot(moves: list[Move], activities: list[dict[str, Any]], config: FunnelConfig,
                       day: date) -> dict[str, tuple[str, datetime, int, int]]:
    """lead_id -> (stage, stage_entered_at, days_in_stage, engagement_score) at T(day)."""
    cut = boundary(day, config.timezone)
    low = window_start(cut, config.window_days, config.timezone)
    out: dict[str, tuple[str, datetime, int, int]] = {}
    for m in moves:  # in replay order, so the last one before the cut wins
        if m.at < cut:
            score = sum(config.points.get(a["activity_type"], 0) for a in activities
                        if a["lead_id"] == m.lead_id and low <= a["occurred_at"] < cut)
            out[m.lead_id] = (m.to_stage, m.at, int((cut - m.at) // timedelta(hours=24)), score)
    return out
