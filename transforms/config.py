"""The funnel's company-specific rules as one typed, validated object."""

from __future__ import annotations

import hashlib
import json
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import polars as pl

from schemas.rules import ACTIVITY_COLUMNS, LEAD_COLUMNS

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

TEAMS = ("marketing", "sales")


class ConfigError(ValueError):
    """A config that cannot describe a funnel; raised before any data is read."""


@dataclass(frozen=True)
class Stage:
    """One funnel stage and the team that owns leads in it."""

    name: str
    owner_team: str


@dataclass(frozen=True)
class TableSource:
    """Where one input table comes from in a database: a table (or view) or a whole query."""

    table: str
    query: str | None
    columns: Mapping[str, str]  # contract column -> source column, where the names differ

    def sql(self) -> str:
        """The SELECT that reads the table with contract column names."""
        if self.query is not None:
            base = f"({self.query}) AS source"
        else:
            base = ".".join(f'"{part}"' for part in self.table.split("."))
        renames = ", ".join(f'"{src}" AS "{dst}"' for dst, src in self.columns.items())
        return f"SELECT *{', ' + renames if renames else ''} FROM {base}"


@dataclass(frozen=True)
class SourceConfig:
    """A database input: its URI without password, and how each table is read."""

    uri: str | None
    password_env: str
    password_secret: str | None
    leads: TableSource
    activities: TableSource


@dataclass(frozen=True)
class DaskConfig:
    """Where a run's shards execute.

    One process (workers 0, no address), a local Dask cluster of `workers` processes, or an
    existing cluster at `address`. `shards` 0 means one per local worker, or
    DEFAULT_REMOTE_SHARDS on an existing cluster.
    """

    workers: int = 0
    address: str | None = None
    shards: int = 0

    @property
    def enabled(self) -> bool:
        """Whether the run is sharded on Dask at all."""
        return self.workers > 0 or self.address is not None

    @property
    def shard_count(self) -> int:
        """How many shards the leads are split into."""
        if self.shards > 0:
            return self.shards
        return self.workers if self.address is None else DEFAULT_REMOTE_SHARDS

    def overridden(self, workers: int | None, address: str | None) -> DaskConfig:
        """These settings with the command line's --workers / --dask-address, which replace them."""
        _require(workers is None or address is None, "give either --workers or --dask-address, not both")
        if workers is not None:
            _require(workers >= 0, f"--workers {workers}: must be >= 0")
            return DaskConfig(workers=workers, address=None, shards=self.shards)
        if address is not None:
            return DaskConfig(workers=0, address=_dask_address(address, "--dask-address"), shards=self.shards)
        return self


DEFAULT_REMOTE_SHARDS = 8


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
    schedule_cron: str
    dask: DaskConfig
    source: SourceConfig
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
        return parse_config(data)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"config: [{key}] must be a table")
    return value


def _check_fit(fit: str) -> None:
    try:
        expr = pl.sql_expr(fit)
        out = pl.DataFrame(schema=LEAD_COLUMN_TYPES).select(expr)
    except Exception as exc:  # polars raises several error types for a bad predicate
        first = str(exc).splitlines()[0]
        raise ConfigError(f"config: scoring.fit {fit!r} does not parse: {first}") from exc
    dtype = out.to_series().dtype
    _require(dtype == pl.Boolean, f"config: scoring.fit {fit!r} is {dtype}, not a boolean predicate")


def parse_config(data: Mapping[str, Any]) -> FunnelConfig:
    """Validate a parsed TOML mapping into a FunnelConfig, or raise ConfigError."""
    known = {"timezone", "stages", "activities", "scoring", "promotions", "demotions",
             "terminal", "cohorts", "schedule", "source", "dask"}
    unknown = sorted(set(data) - known)
    _require(not unknown, f"config: unknown key(s) {unknown}")

    timezone = str(data.get("timezone", "UTC"))
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"config: timezone {timezone!r} is not an IANA zone") from exc

    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or len(raw_stages) < 2:
        raise ConfigError("config: [[stages]] must list at least two stages")
    stages = []
    for item in raw_stages:
        _require(isinstance(item, Mapping) and "name" in item and "owner_team" in item,
                 "config: every stage needs name and owner_team")
        _require(item["owner_team"] in TEAMS,
                 f"config: stage {item['name']!r} has owner_team {item['owner_team']!r}, not one of {TEAMS}")
        stages.append(Stage(str(item["name"]), str(item["owner_team"])))
    names = [s.name for s in stages]
    _require(len(set(names)) == len(names), f"config: duplicate stage names in {names}")

    def stage(name: Any, where: str) -> str:
        _require(name in names, f"config: {where} names unknown stage {name!r} (stages: {names})")
        return str(name)

    catalogue = tuple(str(a).strip().lower() for a in _table(data, "activities").get("catalogue", []))
    _require(len(catalogue) > 0, "config: activities.catalogue is empty")

    def activity(name: str, where: str) -> str:
        _require(name in catalogue, f"config: {where} names unknown activity type {name!r}")
        return name

    scoring = _table(data, "scoring")
    points = {activity(k, "scoring.points"): int(v) for k, v in _table(scoring, "points").items()}
    _require(all(v >= 0 for v in points.values()), "config: scoring.points must be >= 0")
    window_days = int(scoring.get("window_days", 90))
    _require(window_days > 0, "config: scoring.window_days must be > 0")
    fit = str(scoring.get("fit", "true"))
    _check_fit(fit)

    promotions = {activity(k, "promotions"): stage(v, f"promotions.{k}")
                  for k, v in _table(data, "promotions").items()}
    demotions = {activity(k, "demotions"): stage(v, f"demotions.{k}")
                 for k, v in _table(data, "demotions").items()}
    both = sorted(set(promotions) & set(demotions))
    _require(not both, f"config: {both} both promote and demote")
    terminal = tuple(stage(s, "terminal.stages") for s in _table(data, "terminal").get("stages", []))

    maturity = int(_table(data, "cohorts").get("maturity_days", 90))
    _require(maturity >= 0, "config: cohorts.maturity_days must be >= 0")
    cron = str(_table(data, "schedule").get("cron", "0 2 * * *"))
    _require(len(cron.split()) == 5, f"config: schedule.cron {cron!r} is not a five-field cron")

    return FunnelConfig(
        dask=_dask(_table(data, "dask")),
        timezone=timezone,
        stages=tuple(stages),
        catalogue=catalogue,
        window_days=window_days,
        mql_threshold=int(scoring.get("mql_threshold", 40)),
        score_target=stage(scoring.get("target_stage", "mql"), "scoring.target_stage"),
        fit=fit,
        points=points,
        promotions=promotions,
        demotions=demotions,
        terminal=terminal,
        cohort_maturity_days=maturity,
        schedule_cron=cron,
        source=parse_source(_table(data, "source")),
        source_text=json.dumps(data, sort_keys=True, default=str),
    )


def _dask(raw: Mapping[str, Any]) -> DaskConfig:
    unknown = sorted(set(raw) - {"workers", "address", "shards"})
    _require(not unknown, f"config: unknown key(s) in [dask]: {unknown}")
    workers, shards = int(raw.get("workers", 0)), int(raw.get("shards", 0))
    _require(workers >= 0 and shards >= 0, "config: dask.workers and dask.shards must be >= 0")
    address = _dask_address(str(raw["address"]), "config: dask.address") if raw.get("address") else None
    return DaskConfig(workers=workers, address=address, shards=shards)


def _dask_address(address: str, where: str) -> str:
    _require(address.startswith(("tcp://", "tls://", "ws://", "wss://", "inproc://")),
             f"{where} {address!r} is not a Dask scheduler address (tcp://host:port)")
    return address


def database_uri_without_password(uri: str) -> str:
    """Refuse a URI that carries a password: credentials never live in config or command lines."""
    parsed = urlsplit(uri)
    _require(parsed.scheme in ("postgresql", "postgres"), f"source: {parsed.scheme!r} is not a postgresql:// URI")
    _require(parsed.password is None, "source: the database URI holds a password; put it in the environment "
             "variable named by source.password_env (default FUNNEL_DB_PASSWORD) or a Prefect Secret block")
    return uri


def _table_source(raw: Mapping[str, Any], name: str, contract: tuple[str, ...]) -> TableSource:
    columns = {str(k): str(v) for k, v in _table(raw, f"{name}_columns").items()}
    unknown = sorted(set(columns) - set(contract))
    _require(not unknown, f"config: source.{name}_columns names unknown column(s) {unknown} (known: {contract})")
    query = raw.get(f"{name}_query")
    return TableSource(table=str(raw.get(f"{name}_table", name)), query=str(query) if query else None,
                       columns=columns)


def parse_source(raw: Mapping[str, Any]) -> SourceConfig:
    """The [source] table: a database input and its table mapping (all optional)."""
    known = {"uri", "password_env", "password_secret", "leads_table", "leads_query", "leads_columns",
             "activities_table", "activities_query", "activities_columns"}
    unknown = sorted(set(raw) - known)
    _require(not unknown, f"config: unknown key(s) in [source]: {unknown}")
    uri = raw.get("uri")
    secret = raw.get("password_secret")
    return SourceConfig(
        uri=database_uri_without_password(str(uri)) if uri else None,
        password_env=str(raw.get("password_env", "FUNNEL_DB_PASSWORD")),
        password_secret=str(secret) if secret else None,
        leads=_table_source(raw, "leads", LEAD_COLUMNS),
        activities=_table_source(raw, "activities", ACTIVITY_COLUMNS),
    )


def parse_config_text(text: str) -> FunnelConfig:
    """Parse TOML text into a FunnelConfig, or raise ConfigError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: not valid TOML: {exc}") from exc
    return parse_config(data)
