"""Published dates stay true: late rows restate exactly the dates they change, missed nights are caught up."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from flows import catalog
from synthetic.generate import generate, write_inputs
from synthetic.late import nightly_inputs

TZ = "Europe/Berlin"
FIRST, LAST = date(2026, 10, 22), date(2026, 10, 31)


def _read(out: Path, dataset: catalog.Dataset) -> pl.DataFrame:
    frame = pl.read_parquet(out / dataset.name, hive_partitioning=dataset.partition is not None)
    return frame.sort(frame.columns)


def _assert_equals_backfill(out: Path, inputs: Path, tmp: Path, night: date) -> None:
    """Every dataset of `out` equals a backfill of the same input over the published dates."""
    from flows.pipeline import backfill

    published = sorted(p.name for p in (out / catalog.SNAPSHOTS.name).iterdir())
    first = date.fromisoformat(published[0].split("=")[1])
    reference = tmp / f"backfill-{night}"
    backfill(start=first, end=night, input_location=str(inputs), output_dir=str(reference), timezone=TZ, force=True)
    for dataset in catalog.DATASETS:
        if dataset.grain is catalog.Grain.RUN:
            continue
        assert_frame_equal(_read(out, dataset), _read(reference, dataset), check_exact=True), (night, dataset.name)
    assert sorted(p.name for p in (out / catalog.SNAPSHOTS.name).iterdir()) == published


def _manifest(out: Path) -> dict[str, list[str]]:
    runs = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    return dict(max(runs, key=lambda m: m["ended_at"])["dates_written"])


@pytest.mark.usefixtures("prefect_server")
def test_ten_nights_of_late_rows_keep_every_published_date_true(tmp_path: Path) -> None:
    """One row in eight arrives 1-9 days late; a lead after its activities; a lead later refused."""
    from flows.pipeline import nightly

    data = generate(400, seed=11, dirty=True, end=LAST, days=40)
    leads = data.leads
    late_lead = leads.filter(pl.col("lead_id").str.strip_chars() != "").row(-1, named=True)["lead_id"]
    nights = [FIRST + timedelta(days=i) for i in range(10)]
    out = tmp_path / "out"
    restated = 0
    for i, night in enumerate(nightly_inputs(leads, data.activities, nights, seed=3)):
        tonight_leads = night.leads
        if i < 3:  # this lead's row arrives three nights after its activities
            tonight_leads = tonight_leads.filter(pl.col("lead_id") != late_lead)
        if i >= 6:  # a conflicting copy of an early lead arrives: from now on both rows are refused
            victim = tonight_leads.row(0, named=True)
            clash = {**victim, "source": "clash"}
            tonight_leads = pl.concat([tonight_leads, pl.DataFrame([clash], schema=tonight_leads.schema)])
        inputs = tmp_path / f"in-{night.night}"
        write_inputs(inputs, tonight_leads, night.activities, "parquet")
        nightly(as_of=night.night, input_location=str(inputs), output_dir=str(out), timezone=TZ)
        written = _manifest(out)
        assert written["asked"] == [night.night.isoformat()]
        restated += len(written["late_rows"])
        assert all(d < night.night.isoformat() for d in written["late_rows"])
        _assert_equals_backfill(out, inputs, tmp_path, night.night)
    assert restated > 0  # late rows did restate earlier dates


@pytest.mark.usefixtures("prefect_server")
def test_a_night_without_late_rows_rewrites_no_past_partition(tmp_path: Path) -> None:
    """The same input twice, and an input with only rows of the new day: nothing earlier is rewritten."""
    from flows.pipeline import backfill, nightly

    data = generate(300, seed=12, dirty=False, end=LAST, days=40)
    inputs = tmp_path / "in"
    write_inputs(inputs, data.leads, data.activities, "parquet")
    out = tmp_path / "out"
    backfill(start=FIRST, end=LAST - timedelta(days=1), input_location=str(inputs), output_dir=str(out), timezone=TZ)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "snapshots").rglob("*.parquet")}
    nightly(as_of=LAST, input_location=str(inputs), output_dir=str(out), timezone=TZ)
    assert _manifest(out) == {"asked": [LAST.isoformat()], "catch_up": [], "rules_changed": [], "late_rows": []}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.usefixtures("prefect_server")
def test_missed_nights_are_caught_up_and_a_rules_change_restates_all(tmp_path: Path) -> None:
    """A run after three missed nights writes them too; changed rules restate every published date."""
    from flows.pipeline import nightly

    data = generate(300, seed=13, dirty=True, end=LAST, days=40)
    inputs = tmp_path / "in"
    write_inputs(inputs, data.leads, data.activities, "parquet")
    out = tmp_path / "out"
    nightly(as_of=LAST - timedelta(days=4), input_location=str(inputs), output_dir=str(out), timezone=TZ)
    nightly(as_of=LAST, input_location=str(inputs), output_dir=str(out), timezone=TZ)
    missed = [(LAST - timedelta(days=d)).isoformat() for d in (3, 2, 1)]
    assert _manifest(out)["catch_up"] == missed
    _assert_equals_backfill(out, inputs, tmp_path, LAST)

    rules = tmp_path / "rules.toml"
    default = (Path(__file__).parent.parent / "flows" / "default_config.toml").read_text()
    rules.write_text(default.replace("mql_threshold = 40", "mql_threshold = 20"))
    nightly(as_of=LAST, input_location=str(inputs), output_dir=str(out), timezone=TZ, config_path=str(rules))
    written = _manifest(out)
    assert written["rules_changed"] == [(LAST - timedelta(days=d)).isoformat() for d in (4, 3, 2, 1)]

    refuse = tmp_path / "refuse.toml"
    refuse.write_text(default + '\n[run]\non_rules_change = "refuse"\n')
    with pytest.raises(ValueError, match="funnel backfill --start 2026-10-27 --end 2026-10-31"):
        nightly(as_of=LAST, input_location=str(inputs), output_dir=str(out), timezone=TZ, config_path=str(refuse))


@pytest.mark.usefixtures("prefect_server")
def test_a_year_long_catch_up_needs_a_backfill(tmp_path: Path) -> None:
    """A run after a long gap is refused with the backfill command, not started by accident."""
    from flows.pipeline import nightly

    data = generate(200, seed=14, dirty=False, end=LAST, days=400)
    inputs = tmp_path / "in"
    write_inputs(inputs, data.leads, data.activities, "parquet")
    out = tmp_path / "out"
    nightly(as_of=LAST - timedelta(days=200), input_location=str(inputs), output_dir=str(out))
    with pytest.raises(ValueError, match=r"exceed run.max_catch_up_days \(31\); run `funnel backfill"):
        nightly(as_of=LAST, input_location=str(inputs), output_dir=str(out))
