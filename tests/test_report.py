"""The HTML report renders in a real headless Chromium and shows the numbers of the Parquet outputs."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from synthetic.generate import generate, write_inputs

AS_OF = date(2026, 10, 31)
CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "Debian's chromium is needed (scripts/test installs it)"
    return subprocess.run([binary, *CHROMIUM, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.usefixtures("prefect_server")
def test_report_renders_every_chart_with_the_output_numbers(tmp_path: Path) -> None:
    """Every chart draws an SVG, the console stays clean, and the shown numbers are the outputs'."""
    from flows.pipeline import backfill

    inputs, out = tmp_path / "in", tmp_path / "out"
    data = generate(1500, seed=17, dirty=True, days=300)
    write_inputs(inputs, data.leads, data.activities, "csv")
    summary = backfill(start=date(2026, 9, 1), end=AS_OF, input_location=str(inputs), output_dir=str(out))
    page = out / "report" / "latest.html"
    assert summary.report == out / "report" / f"as_of={AS_OF}" / "index.html"
    assert page.read_text() == summary.report.read_text()
    assert "<script src=" not in page.read_text()  # self-contained: plotly.js is inlined

    shot = tmp_path / "report.png"
    logged = _chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--window-size=1300,3600",
                       f"--screenshot={shot}", page.as_uri())
    assert shot.stat().st_size > 50_000
    console_errors = [line for line in logged.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line]
    assert console_errors == []
    dom = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=5000", page.as_uri()).stdout

    assert dom.count('class="main-svg"') >= 2 * 6  # plotly draws two SVG layers per chart, six charts
    for title in ("Leads per stage today", "Conversion by cohort month", "Leads in each stage over time",
                  "Leads sent backwards per week", "Leads per stage by source today", "Input rows of run"):
        assert title in dom
    text = re.sub(r"<[^>]+>", " ", dom)
    today = pl.read_parquet(out / "metrics" / "daily_funnel" / f"date={AS_OF}")
    for stage, leads in today.group_by("stage").agg(pl.col("in_stage").sum()).rows():
        assert f"{leads:,} leads" in text, stage
    for counts in summary.tables.values():
        assert f"{counts['valid']:,}" in text
        assert f"{counts['quarantined']:,}" in text
