"""The funnel's company-specific rules (FUNNEL_SPEC.md sections 2 and 6) as one typed, checked object.

Only the rules live here: what a stage is, how leads score and move, who owns them, the SLAs,
which columns are personal. Where a run reads from, where it executes and when it is
scheduled are run settings (`flows/settings.py`); they share the TOML file but not this module.
"""

from __future__ import annotations

import hashlib
import json
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.rules import LEAD_COLUMNS, NAME_PATTERN, TEAMS

# Types of the validated leads table: the columns a fit predicate may use.
LEAD_COLUMN_TYPES: dict[str, pl.DataType] = {
    "lead_id": pl.String(),
    "created_at": pl.Datetime("us", "UTC"),
    "updated_at": pl.Datetime("us", "UTC"),
    "email": pl.String(),
    "source": pl.String(),
    "company": pl.String(),
    "industry": pl.String(),
    "country": pl.String(),
    "employee_count": pl.Int64(),
    "job_level": pl.String(),
}
# The top-level keys of a config file that hold rules; the others are run settings.
RULE_KEYS = frozenset({"timezone", "stages", "activities", "scoring", "promotions", "demotions", "terminal",
                       "cohorts", "owners", "sla", "privacy"})
MAX_DAYS = 36_600  # a century: larger windows overflow date arithmetic and mean a typo


class ConfigError(ValueError):
    """A config that cannot describe a funnel; raised before any data is read."""


@dataclass(frozen=True)
class Stage:
    """One funnel stage and the team that owns leads in it."""

    name: str
    owner_team: str


@dataclass(frozen=True)
class SlaRule:
    """A handoff SLA: every entry into `stage` must be answered within `within_hours`."""

    stage: str
    within_hours: float
    met_by: tuple[str, ...]


@dataclass(frozen=True)
class FunnelConfig:
    """Every rule of the funnel, loaded once and passed down."""

    timezone: str
    stages: tuple[Stage, ...]
    catalogue: tuple[str, ...]
    window_days: int
    mql_threshold: int
    score_target: str
    fit: str
    points: Mapping[str, int]
    promotions: Mapping[str, str]
    demotions: Mapping[str, str]
    terminal: tuple[str, ...]
    cohort_maturity_days: int
    assignment_types: tuple[str, ...]
    slas: tuple[SlaRule, ...]
    personal_columns: tuple[str, ...]
    source_text: str

    @property
    def stage_names(self) -> list[str]:
        """Stage names, lowest first."""
        return [s.name for s in self.stages]

    def rank(self, stage: str) -> int:
        """Position of a stage in the funnel, 0 for the lowest."""
        return self.stage_names.index(stage)

    @property
    def config_hash(self) -> str:
        """A stable hash of the effective rules, recorded in every run manifest."""
        return hashlib.sha256(self.source_text.encode()).hexdigest()[:16]

    def with_timezone(self, timezone: str) -> FunnelConfig:
        """The same rules in another timezone (the CLI's --timezone)."""
        data = json.loads(self.source_text)
        data["timezone"] = timezone
        return parse_rules(data)


class _Strict(BaseModel):
    """No unknown keys, no silent conversions (1.7 is not an integer, "40" is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _StageIn(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    owner_team: Literal["marketing", "sales"]


class _ActivitiesIn(_Strict):
    catalogue: list[str] = Field(min_length=1)


class _ScoringIn(_Strict):
    window_days: int = Field(default=90, gt=0, le=MAX_DAYS)
    mql_threshold: int = Field(default=40, ge=0)
    target_stage: str = "mql"
    fit: str = "true"
    points: dict[str, int] = Field(default_factory=dict)


class _TerminalIn(_Strict):
    stages: list[str] = Field(default_factory=list)


class _CohortsIn(_Strict):
    maturity_days: int = Field(default=90, ge=0, le=MAX_DAYS)


class _OwnersIn(_Strict):
    assignment_types: list[str] | None = None


class _SlaIn(_Strict):
    stage: str
    within_hours: float = Field(gt=0, le=MAX_DAYS * 24)
    met_by: list[str] = Field(default_factory=list)


class _PrivacyIn(_Strict):
    personal_columns: list[str] = Field(default_factory=lambda: ["email", "company"])


class _RulesIn(_Strict):
    timezone: str = "UTC"
    stages: list[_StageIn] = Field(min_length=2)
    activities: _ActivitiesIn
    scoring: _ScoringIn = Field(default_factory=lambda: _ScoringIn())
    promotions: dict[str, str] = Field(default_factory=dict)
    demotions: dict[str, str] = Field(default_factory=dict)
    terminal: _TerminalIn = Field(default_factory=lambda: _TerminalIn())
    cohorts: _CohortsIn = Field(default_factory=lambda: _CohortsIn())
    owners: _OwnersIn = Field(default_factory=lambda: _OwnersIn())
    sla: list[_SlaIn] = Field(default_factory=list)
    privacy: _PrivacyIn = Field(default_factory=lambda: _PrivacyIn())


def model_error(exc: ValidationError, prefix: str) -> ConfigError:
    """The first problem of a pydantic error as one line naming the key."""
    # A typo shows as an unknown key and, often, a missing one: name the typo.
    first = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    if first["type"] == "missing":
        message = "required key missing"
    return ConfigError(f"{prefix}: {key}: {message}")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _check_fit(fit: str) -> None:
    try:
        expr = pl.sql_expr(fit)
        out = pl.DataFrame(schema=LEAD_COLUMN_TYPES).select(expr)
    except Exception as exc:  # polars raises several error types for a bad predicate
        first = str(exc).splitlines()[0]
        raise ConfigError(f"config: scoring.fit {fit!r} does not parse: {first}") from exc
    dtype = out.to_series().dtype
    _require(dtype == pl.Boolean, f"config: scoring.fit {fit!r} is {dtype}, not a boolean predicate")


def parse_rules(data: Mapping[str, Any], where: str = "config") -> FunnelConfig:
    """Check a parsed TOML mapping (its rule keys) into a FunnelConfig, or raise ConfigError."""
    rules = {k: v for k, v in data.items() if k in RULE_KEYS}
    try:
        raw = _RulesIn.model_validate(rules)
    except ValidationError as exc:
        raise model_error(exc, where) from exc

    try:
        zoneinfo.ZoneInfo(raw.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"{where}: timezone {raw.timezone!r} is not an IANA zone") from exc

    names = [s.name for s in raw.stages]
    _require(len(set(names)) == len(names), f"{where}: duplicate stage names in {names}")

    def stage(name: str, key: str) -> str:
        _require(name in names, f"{where}: {key} names unknown stage {name!r} (stages: {names})")
        return name

    catalogue = tuple(a.strip().lower() for a in raw.activities.catalogue)
    _require(len(set(catalogue)) == len(catalogue), f"{where}: activities.catalogue lists a type twice")

    def activity(name: str, key: str) -> str:
        _require(name in catalogue, f"{where}: {key} names unknown activity type {name!r}")
        return name

    points = {activity(k, "scoring.points"): v for k, v in raw.scoring.points.items()}
    _require(all(v >= 0 for v in points.values()), f"{where}: scoring.points must be >= 0")
    _check_fit(raw.scoring.fit)
    promotions = {activity(k, "promotions"): stage(v, f"promotions.{k}") for k, v in raw.promotions.items()}
    demotions = {activity(k, "demotions"): stage(v, f"demotions.{k}") for k, v in raw.demotions.items()}
    both = sorted(set(promotions) & set(demotions))
    _require(not both, f"{where}: {both} both promote and demote")
    terminal = tuple(stage(s, "terminal.stages") for s in raw.terminal.stages)

    if raw.owners.assignment_types is None:
        # The default assignment type is part of the default catalogue; a company's own
        # catalogue without it simply has no assignments.
        assignment_types = tuple(t for t in ("owner_assigned",) if t in catalogue)
    else:
        assignment_types = tuple(activity(t, "owners.assignment_types") for t in raw.owners.assignment_types)

    slas = tuple(
        SlaRule(stage=stage(s.stage, f"sla[{i}].stage"), within_hours=float(s.within_hours),
                met_by=tuple(activity(t, f"sla[{i}].met_by") for t in s.met_by))
        for i, s in enumerate(raw.sla)
    )
    sla_stages = [s.stage for s in slas]
    _require(len(set(sla_stages)) == len(sla_stages), f"{where}: two [[sla]] entries for one stage in {sla_stages}")

    personal = tuple(raw.privacy.personal_columns)
    unknown = sorted(set(personal) - set(LEAD_COLUMNS))
    _require(not unknown, f"{where}: privacy.personal_columns names unknown column(s) {unknown}")
    _require("lead_id" not in personal, f"{where}: privacy.personal_columns cannot hold lead_id (the row's key)")

    return FunnelConfig(
        timezone=raw.timezone,
        stages=tuple(Stage(s.name, s.owner_team) for s in raw.stages),
        catalogue=catalogue,
        window_days=raw.scoring.window_days,
        mql_threshold=raw.scoring.mql_threshold,
        score_target=stage(raw.scoring.target_stage, "scoring.target_stage"),
        fit=raw.scoring.fit,
        points=points,
        promotions=promotions,
        demotions=demotions,
        terminal=terminal,
        cohort_maturity_days=raw.cohorts.maturity_days,
        assignment_types=assignment_types,
        slas=slas,
        personal_columns=personal,
        source_text=json.dumps(rules, sort_keys=True, default=str),
    )


__all__ = ["TEAMS", "ConfigError", "FunnelConfig", "SlaRule", "Stage", "model_error", "parse_rules"]
