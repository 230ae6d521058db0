"""Run settings: where a run reads from, where it executes, when it is scheduled, what it refuses.

They share the TOML config file with the funnel rules (`transforms/rules.py`) but not their
meaning: changing them never changes a published row, so they are not part of the rules' hash.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.rules import ACTIVITY_COLUMNS, LEAD_COLUMNS
from transforms.rules import RULE_KEYS, ConfigError, FunnelConfig, model_error, parse_rules

DEFAULT_CONFIG = Path(__file__).with_name("default_config.toml")
DEFAULT_REMOTE_SHARDS = 8
# libpq connection parameters that carry a secret; none may appear in a URI.
_SECRET_PARAMETERS = frozenset({"password", "passfile", "sslpassword", "sslkey", "sslcert"})


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
    connect_timeout_s: int = 30


@dataclass(frozen=True)
class DaskConfig:
    """Where a run's shards execute.

    In this process (workers 0, no address), on a local Dask cluster of `workers` processes,
    or on an existing cluster at `address`.
    """

    workers: int = 0
    address: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether the shards run on Dask at all."""
        return self.workers > 0 or self.address is not None

    def overridden(self, workers: int | None, address: str | None) -> DaskConfig:
        """These settings with the command line's --workers / --dask-address, which replace them."""
        if workers is not None and address is not None:
            raise ConfigError("give either --workers or --dask-address, not both")
        if workers is not None:
            if workers < 0:
                raise ConfigError(f"--workers {workers}: must be >= 0")
            return DaskConfig(workers=workers, address=None)
        if address is not None:
            return DaskConfig(workers=0, address=dask_address(address, "--dask-address"))
        return self


@dataclass(frozen=True)
class GuardConfig:
    """When a run publishes nothing: its input collapsed (FUNNEL_SPEC.md section 4)."""

    min_lead_ratio: float = 0.5  # of the last published run's valid leads
    max_quarantine_share: float = 0.5  # of a table's rows


@dataclass(frozen=True)
class QualityLimits:
    """When a published run still ends Failed: one input table's quarantine rate or size crossed a line."""

    max_quarantine_rate: float | None = None  # of the table's rows read
    min_rows: int | None = None  # valid rows


@dataclass(frozen=True)
class QualityConfig:
    """The `[quality]` thresholds per input table; none set by default."""

    leads: QualityLimits = QualityLimits()
    activities: QualityLimits = QualityLimits()

    def limits(self, table: str) -> QualityLimits:
        """The thresholds of one input table."""
        return self.leads if table == "leads" else self.activities


@dataclass(frozen=True)
class LineageConfig:
    """Where OpenLineage run events go: `url`, else the OPENLINEAGE_URL variable, else nowhere."""

    url: str | None = None
    namespace: str = "funnel"
    timeout_s: float = 5.0


OBJECT_STORE_SCHEMES = ("s3", "gs", "az", "abfs", "abfss")
OutputFormat = Literal["parquet", "delta"]


@dataclass(frozen=True)
class OutputConfig:
    """Where a run publishes (`[output]`): a local directory or an object-store URI, and the table format."""

    location: str | None = None  # None: data/output in the repository
    format: OutputFormat = "parquet"


@dataclass(frozen=True)
class RunSettings:
    """Everything about a run that is not a funnel rule."""

    source: SourceConfig
    dask: DaskConfig
    shards: int  # 0: chosen from the input's size and the memory budget
    memory_gb: float | None  # None: a share of the machine's (or cgroup's) memory
    schedule_cron: str
    guard: GuardConfig
    max_catch_up_days: int = 31
    on_rules_change: str = "restate"  # or "refuse": a nightly run names the backfill instead
    quality: QualityConfig = QualityConfig()
    lineage: LineageConfig = LineageConfig()
    output: OutputConfig = OutputConfig()


@dataclass(frozen=True)
class Settings:
    """A config file: the funnel rules and the run settings."""

    rules: FunnelConfig
    run: RunSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _SourceIn(_Strict):
    uri: str | None = None
    password_env: str = "FUNNEL_DB_PASSWORD"
    password_secret: str | None = None
    connect_timeout_s: int = Field(default=30, gt=0, le=3600)
    leads_table: str = "leads"
    leads_query: str | None = None
    leads_columns: dict[str, str] = Field(default_factory=dict)
    activities_table: str = "activities"
    activities_query: str | None = None
    activities_columns: dict[str, str] = Field(default_factory=dict)


class _DaskIn(_Strict):
    workers: int = Field(default=0, ge=0)
    address: str | None = None


class _RunIn(_Strict):
    shards: int = Field(default=0, ge=0)
    memory_gb: float | None = Field(default=None, gt=0)
    max_catch_up_days: int = Field(default=31, ge=0)
    on_rules_change: Literal["restate", "refuse"] = "restate"


class _ScheduleIn(_Strict):
    cron: str = "0 2 * * *"


class _GuardIn(_Strict):
    min_lead_ratio: float = Field(default=0.5, ge=0, le=1)
    max_quarantine_share: float = Field(default=0.5, ge=0, le=1)


class _QualityTableIn(_Strict):
    max_quarantine_rate: float | None = Field(default=None, ge=0, le=1)
    min_rows: int | None = Field(default=None, ge=0)


class _QualityIn(_Strict):
    max_quarantine_rate: float | None = Field(default=None, ge=0, le=1)  # every table, unless it sets its own
    min_rows: int | None = Field(default=None, ge=0)
    leads: _QualityTableIn = Field(default_factory=lambda: _QualityTableIn())
    activities: _QualityTableIn = Field(default_factory=lambda: _QualityTableIn())

    def limits(self, table: _QualityTableIn) -> QualityLimits:
        rate = table.max_quarantine_rate if table.max_quarantine_rate is not None else self.max_quarantine_rate
        return QualityLimits(max_quarantine_rate=rate,
                             min_rows=table.min_rows if table.min_rows is not None else self.min_rows)


class _LineageIn(_Strict):
    url: str | None = None
    namespace: str = Field(default="funnel", min_length=1)
    timeout_s: float = Field(default=5.0, gt=0, le=60)


class _OutputIn(_Strict):
    location: str | None = None
    format: Literal["parquet", "delta"] = "parquet"


class _SettingsIn(_Strict):
    source: _SourceIn = Field(default_factory=lambda: _SourceIn())
    dask: _DaskIn = Field(default_factory=lambda: _DaskIn())
    run: _RunIn = Field(default_factory=lambda: _RunIn())
    schedule: _ScheduleIn = Field(default_factory=lambda: _ScheduleIn())
    guard: _GuardIn = Field(default_factory=lambda: _GuardIn())
    quality: _QualityIn = Field(default_factory=lambda: _QualityIn())
    lineage: _LineageIn = Field(default_factory=lambda: _LineageIn())
    output: _OutputIn = Field(default_factory=lambda: _OutputIn())


def dask_address(address: str, where: str) -> str:
    """A Dask scheduler address, or ConfigError."""
    if not address.startswith(("tcp://", "tls://", "ws://", "wss://", "inproc://")):
        raise ConfigError(f"{where} {address!r} is not a Dask scheduler address (tcp://host:port)")
    return address


def lineage_url(url: str, where: str) -> str:
    """An OpenLineage endpoint's base URL without a credential, or ConfigError."""
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"{where} {redacted_location(url)!r} is not an http(s):// URL")
    if parsed.password is not None:
        raise ConfigError(f"{where}: the URL holds a credential; put the API key in OPENLINEAGE_API_KEY")
    return url


def is_object_store(location: str) -> bool:
    """Whether an output location is an object-store URI (s3://, gs://, az://) rather than a local path."""
    return urlsplit(location).scheme.lower() in OBJECT_STORE_SCHEMES


def output_location(location: str, where: str) -> str:
    """An output location without a credential: a local path or `scheme://bucket/prefix`, or ConfigError.

    Object-store credentials come from the standard environment only, so a URI that carries
    one (userinfo or a query) is refused before it reaches a log or a Prefect parameter.
    """
    parsed = urlsplit(location)
    scheme = parsed.scheme.lower()
    if not scheme or len(scheme) == 1 or scheme == "file":
        return location
    if scheme not in OBJECT_STORE_SCHEMES:
        raise ConfigError(f"{where}: {scheme}:// is not an output location (a path, s3://, gs:// or az://)")
    if parsed.username is not None or parsed.password is not None or parsed.query:
        raise ConfigError(f"{where}: the output URI holds a credential or options; give credentials in the "
                          "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...), never in the URI")
    if not parsed.hostname:
        raise ConfigError(f"{where}: {scheme}:// needs a bucket: {scheme}://bucket/prefix")
    return location.rstrip("/")


def database_uri_without_password(uri: str) -> str:
    """Refuse a URI that carries a credential anywhere: userinfo or a secret parameter."""
    parsed = urlsplit(uri)
    if parsed.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"source: {parsed.scheme!r} is not a postgresql:// URI")
    secrets = sorted({k.lower() for k, _ in parse_qsl(parsed.query, keep_blank_values=True)} & _SECRET_PARAMETERS)
    if parsed.password is not None or secrets:
        raise ConfigError("source: the database URI holds a credential; put the password in the environment "
                          "variable named by source.password_env (default FUNNEL_DB_PASSWORD) or a Prefect "
                          "Secret block")
    return uri


def redacted_location(location: str) -> str:
    """A location safe for logs, manifests and parameters: no userinfo password, no query secrets."""
    parsed = urlsplit(location)
    if not parsed.scheme or len(parsed.scheme) == 1:  # a path (or a Windows drive letter)
        return location
    netloc = parsed.hostname or ""
    if parsed.username:
        netloc = f"{parsed.username}@{netloc}"
    if parsed.port:
        netloc += f":{parsed.port}"
    query = "&".join(f"{k}={'***' if k.lower() in _SECRET_PARAMETERS else v}"
                     for k, v in parse_qsl(parsed.query, keep_blank_values=True))
    return parsed._replace(netloc=netloc, query=query).geturl()


def _table_source(raw: _SourceIn, name: str, contract: tuple[str, ...]) -> TableSource:
    columns: dict[str, str] = getattr(raw, f"{name}_columns")
    unknown = sorted(set(columns) - set(contract))
    if unknown:
        raise ConfigError(f"config: source.{name}_columns names unknown column(s) {unknown} (known: {contract})")
    return TableSource(table=getattr(raw, f"{name}_table"), query=getattr(raw, f"{name}_query"), columns=columns)


def parse_source(raw: Mapping[str, Any]) -> SourceConfig:
    """The [source] table: a database input and its table mapping (all optional)."""
    try:
        source = _SourceIn.model_validate(raw)
    except ValidationError as exc:
        raise model_error(exc, "config: source") from exc
    return SourceConfig(
        uri=database_uri_without_password(source.uri) if source.uri else None,
        password_env=source.password_env, password_secret=source.password_secret,
        leads=_table_source(source, "leads", LEAD_COLUMNS),
        activities=_table_source(source, "activities", ACTIVITY_COLUMNS),
        connect_timeout_s=source.connect_timeout_s,
    )


def parse_settings(data: Mapping[str, Any], where: str = "config") -> Settings:
    """Rules and run settings from a parsed TOML mapping, or ConfigError naming the key."""
    unknown = sorted(set(data) - RULE_KEYS - set(_SettingsIn.model_fields))
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown key")
    rules = parse_rules(data, where)
    try:
        raw = _SettingsIn.model_validate({k: v for k, v in data.items() if k not in RULE_KEYS})
    except ValidationError as exc:
        raise model_error(exc, where) from exc
    if len(raw.schedule.cron.split()) != 5:
        raise ConfigError(f"{where}: schedule.cron {raw.schedule.cron!r} is not a five-field cron")
    address = dask_address(raw.dask.address, f"{where}: dask.address") if raw.dask.address else None
    run = RunSettings(
        source=parse_source(raw.source.model_dump()),
        dask=DaskConfig(workers=raw.dask.workers, address=address),
        shards=raw.run.shards, memory_gb=raw.run.memory_gb,
        schedule_cron=raw.schedule.cron,
        guard=GuardConfig(min_lead_ratio=raw.guard.min_lead_ratio,
                          max_quarantine_share=raw.guard.max_quarantine_share),
        max_catch_up_days=raw.run.max_catch_up_days, on_rules_change=raw.run.on_rules_change,
        quality=QualityConfig(leads=raw.quality.limits(raw.quality.leads),
                              activities=raw.quality.limits(raw.quality.activities)),
        lineage=LineageConfig(url=lineage_url(raw.lineage.url, f"{where}: lineage.url") if raw.lineage.url else None,
                              namespace=raw.lineage.namespace, timeout_s=raw.lineage.timeout_s),
        output=OutputConfig(
            location=output_location(raw.output.location, f"{where}: output.location") if raw.output.location else None,
            format=raw.output.format),
    )
    return Settings(rules=rules, run=run)


def parse_settings_text(text: str, where: str = "config") -> Settings:
    """Parse TOML text into rules and run settings, or raise ConfigError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    return parse_settings(data, where)


def load_settings(path: Path | None, timezone: str | None = None) -> Settings:
    """Rules and run settings from a TOML file (the shipped defaults when none is given)."""
    source = path or DEFAULT_CONFIG
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config: {exc.strerror}") from exc
    settings = parse_settings_text(text, str(source))
    if timezone:
        settings = replace(settings, rules=settings.rules.with_timezone(timezone))
    return settings


def load_config(path: Path | None, timezone: str | None = None) -> FunnelConfig:
    """The funnel rules alone, from a TOML file (the shipped defaults when none is given)."""
    return load_settings(path, timezone).rules
