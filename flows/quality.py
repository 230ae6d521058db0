"""Data-quality signals of a published run: the `funnel.run.completed` Prefect event and the `[quality]` checks.

The `[guard]` refuses a collapsed input and publishes nothing; `[quality]` is for a bad night
that is still published: the manifest records the violations, and the flow run ends Failed
(QualityError) so that a Prefect automation on the Failed state, or on this event, alerts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flows.settings import QualityConfig

EVENT = "funnel.run.completed"
TABLES = ("leads", "activities")


class QualityError(RuntimeError):
    """The run published its outputs, but a `[quality]` threshold was crossed: the flow run ends Failed."""

    def __init__(self, violations: list[str]) -> None:
        super().__init__(f"data quality: {'; '.join(violations)} (outputs published)")
        self.violations = violations


def quarantine_rates(manifest: Mapping[str, Any]) -> dict[str, float]:
    """Per input table, the share of rows read that went to quarantine."""
    tables: Mapping[str, Mapping[str, int]] = manifest["tables"]
    return {name: (counts["quarantined"] / counts["read"] if counts["read"] else 0.0)
            for name, counts in tables.items()}


def quality_violations(manifest: Mapping[str, Any], quality: QualityConfig) -> list[str]:
    """One line per `[quality]` threshold the run's counts cross; empty when none is set or crossed."""
    rates = quarantine_rates(manifest)
    violations = []
    for table in TABLES:
        counts, limits = manifest["tables"][table], quality.limits(table)
        if limits.max_quarantine_rate is not None and rates[table] > limits.max_quarantine_rate:
            violations.append(f"{table}: {counts['quarantined']} of {counts['read']} rows quarantined "
                              f"({rates[table]:.1%}), above quality.max_quarantine_rate "
                              f"{limits.max_quarantine_rate:.1%}")
        if limits.min_rows is not None and counts["valid"] < limits.min_rows:
            violations.append(f"{table}: {counts['valid']} valid rows, fewer than quality.min_rows {limits.min_rows}")
    return violations


def run_counts(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The event payload: rows read, quarantine rates, dates written by reason, rows written."""
    dates: Mapping[str, list[str]] = manifest["dates_written"]
    return {
        "run_id": manifest["run_id"], "flow": manifest["flow"], "as_of": manifest["as_of"],
        "rows_read": {name: counts["read"] for name, counts in manifest["tables"].items()},
        "rows_valid": {name: counts["valid"] for name, counts in manifest["tables"].items()},
        "quarantine_rate": quarantine_rates(manifest),
        "dates_written": dict(dates),
        "restated_dates": sorted({d for reason, days in dates.items() if reason != "asked" for d in days}),
        "rows_written": dict(manifest["rows_written"]),
        "quality_violations": list(manifest.get("quality_violations", [])),
    }


def resource_id(output: Path | str) -> str:
    """The event resource of one output location: an absolute path, or the object-store URI as given."""
    text = str(output)
    return f"funnel.output.{text if '://' in text else Path(text).resolve()}"


def emit_run_completed(manifest: Mapping[str, Any], output: Path | str) -> None:
    """Emit `funnel.run.completed` for the output location, labelled by flow and quality outcome.

    The labels are on the resource because an automation's trigger matches resource labels,
    not the payload: `{"funnel.quality": "failed"}` selects the bad nights.
    """
    from prefect.events import emit_event

    failed = bool(manifest.get("quality_violations"))
    emit_event(
        EVENT,
        resource={"prefect.resource.id": resource_id(output), "prefect.resource.name": str(output).rstrip("/"),
                  "funnel.flow": str(manifest["flow"]), "funnel.quality": "failed" if failed else "passed"},
        payload=run_counts(manifest),
    )
