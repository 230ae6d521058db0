"""Data-quality thresholds: a published run over `[quality]` ends Failed, says why, and emits its counts."""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from flows.quality import EVENT, QualityError, quality_violations, resource_id, run_counts
from flows.settings import DEFAULT_CONFIG, QualityConfig, QualityLimits, parse_settings_text
from synthetic.generate import generate, write_inputs

AS_OF = date(2026, 10, 31)


def _manifest(leads: tuple[int, int, int], activities: tuple[int, int, int]) -> dict[str, Any]:
    """A manifest with (read, valid, quarantined) per table."""
    def table(counts: tuple[int, int, int]) -> dict[str, Any]:
        return {"read": counts[0], "valid": counts[1], "quarantined": counts[2], "collapsed": 0,
                "quarantine_reasons": {}}

    return {"run_id": "r1", "flow": "nightly", "as_of": "2026-10-31",
            "tables": {"leads": table(leads), "activities": table(activities)},
            "dates_written": {"asked": ["2026-10-31"], "catch_up": ["2026-10-30"], "rules_changed": [],
                              "late_rows": ["2026-10-12", "2026-10-30"]},
            "rows_written": {"transitions": 7, "snapshots": 3}}


def test_no_thresholds_no_violations() -> None:
    assert quality_violations(_manifest((10, 1, 9), (10, 0, 10)), QualityConfig()) == []


def test_quarantine_rate_and_min_rows_per_table() -> None:
    quality = QualityConfig(leads=QualityLimits(max_quarantine_rate=0.1, min_rows=5),
                            activities=QualityLimits(max_quarantine_rate=0.25))
    assert quality_violations(_manifest((100, 90, 10), (100, 75, 25)), quality) == []  # at the line is fine
    assert quality_violations(_manifest((100, 4, 11), (100, 70, 30)), quality) == [
        "leads: 11 of 100 rows quarantined (11.0%), above quality.max_quarantine_rate 10.0%",
        "leads: 4 valid rows, fewer than quality.min_rows 5",
        "activities: 30 of 100 rows quarantined (30.0%), above quality.max_quarantine_rate 25.0%",
    ]


def test_config_global_threshold_with_table_override() -> None:
    settings = parse_settings_text(DEFAULT_CONFIG.read_text() + "\n[quality]\nmax_quarantine_rate = 0.05\n"
                                   "min_rows = 1\n[quality.activities]\nmax_quarantine_rate = 0.3\n")
    assert settings.run.quality == QualityConfig(leads=QualityLimits(0.05, 1), activities=QualityLimits(0.3, 1))


def test_event_payload_counts() -> None:
    payload = run_counts({**_manifest((10, 9, 1), (8, 6, 2)), "quality_violations": ["x"]})
    assert payload == {
        "run_id": "r1", "flow": "nightly", "as_of": "2026-10-31",
        "rows_read": {"leads": 10, "activities": 8}, "rows_valid": {"leads": 9, "activities": 6},
        "quarantine_rate": {"leads": 0.1, "activities": 0.25},
        "dates_written": {"asked": ["2026-10-31"], "catch_up": ["2026-10-30"], "rules_changed": [],
                          "late_rows": ["2026-10-12", "2026-10-30"]},
        "restated_dates": ["2026-10-12", "2026-10-30"],
        "rows_written": {"transitions": 7, "snapshots": 3}, "quality_violations": ["x"],
    }


def _bad_night(directory: Path) -> Path:
    """Clean generated input, then every third activity given a type outside the catalogue (~33% quarantined)."""
    data = generate(200, seed=2, days=40)
    activities = data.activities.with_row_index("_n").with_columns(
        pl.when(pl.col("_n") % 3 == 0).then(pl.lit("not_in_catalogue")).otherwise(pl.col("activity_type"))
        .alias("activity_type")).drop("_n")
    write_inputs(directory, data.leads, activities, "parquet")
    return directory


def _events(api: str, resource: str) -> list[dict[str, Any]]:
    """The `funnel.run.completed` events of one output, read back from the server (persisted in batches)."""
    body = {"filter": {"event": {"name": [EVENT]}, "resource": {"id": [resource]}}, "limit": 10}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        events: list[dict[str, Any]] = httpx.post(f"{api}/events/filter", json=body, timeout=10).json()["events"]
        if events:
            return events
        time.sleep(0.5)
    return []


@pytest.mark.usefixtures("prefect_server")
def test_quarantine_over_threshold_publishes_then_fails_with_event(tmp_path: Path) -> None:
    """Published outputs, a manifest naming the violation, a Failed flow run, the event on the server.

    Expects run_pipeline to call quality_violations before the manifest is written, then after the
    commit emit_run_completed(manifest, output_dir) and raise QualityError.
    """
    from prefect.settings import PREFECT_API_URL

    from flows.pipeline import nightly

    config = tmp_path / "quality.toml"
    config.write_text(DEFAULT_CONFIG.read_text() + "\n[quality.activities]\nmax_quarantine_rate = 0.2\n")
    output = tmp_path / "output"
    state = nightly(as_of=AS_OF, input_location=str(_bad_night(tmp_path / "input")), output_dir=str(output),
                    config_path=str(config), return_state=True)

    assert state.is_failed()
    assert state.message is not None and "above quality.max_quarantine_rate 20.0% (outputs published)" in state.message
    with pytest.raises(QualityError):
        state.result()
    assert (output / "snapshots" / f"snapshot_date={AS_OF}").is_dir()
    [manifest] = [json.loads(p.read_text()) for p in (output / "runs").glob("*.json")]
    [violation] = manifest["quality_violations"]
    assert violation.startswith("activities: ") and "rows quarantined (3" in violation

    api = PREFECT_API_URL.value()
    [event] = _events(api, resource_id(output))
    assert event["resource"]["funnel.quality"] == "failed"
    payload = event["payload"]
    counts = manifest["tables"]["activities"]
    assert payload["rows_read"]["activities"] == counts["read"]
    assert payload["quarantine_rate"]["activities"] == pytest.approx(counts["quarantined"] / counts["read"])
    assert payload["quarantine_rate"]["activities"] > 0.3
    assert payload["dates_written"] == manifest["dates_written"]
    assert payload["rows_written"] == manifest["rows_written"]
    assert payload["quality_violations"] == [violation]
