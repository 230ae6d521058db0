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
SAMPLE_RULES = Path(__file__).resolve().parent.parent / "data" / "sample" / "funnel.toml"  # defaults + two SLAs
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
    summary = backfill(start=date(2026, 9, 1), end=AS_OF, input_location=str(inputs), output_dir=str(out),
                       config_path=str(SAMPLE_RULES))
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

    assert dom.count('class="main-svg"') >= 2 * 8  # plotly draws two SVG layers per chart, eight charts
    for title in ("Leads per stage today", "Conversion by cohort month", "Leads in each stage over time",
                  "Leads sent backwards per week", "Leads per stage by source today", "Input rows of run",
                  "Handoffs into mql", "Leads entering mql: answered within 48 h or not, per week",
                  "Handoffs into sal", "Leads entering sal: answered within 72 h or not, per week",
                  "median hours to pick up", "Overdue leads by owner", "Rewritten dates"):
        assert title in dom, title
    text = re.sub(r"<[^>]+>", " ", dom)
    today = pl.read_parquet(out / "metrics" / "daily_funnel" / f"date={AS_OF}")
    for stage, leads in today.group_by("stage").agg(pl.col("in_stage").sum()).rows():
        assert f"{leads:,} leads" in text, stage
    for counts in summary.tables.values():
        assert f"{counts['valid']:,}" in text
        assert f"{counts['quarantined']:,}" in text
    sla = pl.read_parquet(out / "sla")
    owners = pl.read_parquet(out / "owner_history").filter(pl.col("valid_to").is_null())
    overdue = (sla.filter(pl.col("stopped_at").is_null() & (pl.col("status") == "breached"))
               .join(owners.select("lead_id", now="owner_id"), on="lead_id", how="left").group_by("now").len()
               .sort("len", "now", descending=[True, False], nulls_last=True))
    assert overdue.height > 0, "the generated data should have overdue leads"
    owner, count = overdue.row(0)
    assert re.search(rf"{re.escape(owner or 'unassigned')}\s+{count:,}\b", text)  # the top owner and its count


@pytest.mark.usefixtures("prefect_server")
def test_report_escapes_data_and_stays_readable_on_a_first_run(tmp_path: Path) -> None:
    """Markup in data is text, huge labels are cut, many sources fold into "other", one date is explained.

    A first run has one date: the chart of stages over time says how to get a history instead
    of drawing an empty axis.
    """
    from flows.pipeline import nightly

    inputs, out = tmp_path / "in", tmp_path / "out"
    data = generate(600, seed=23, dirty=False, days=120)
    markup = '<span style="font-size:200px;color:red">big</span>'
    sources = [markup, "x" * 10_000, *[f"partner_{i}" for i in range(40)]]
    leads = data.leads.with_columns(
        source=pl.Series([sources[i % len(sources)] for i in range(data.leads.height)]))
    write_inputs(inputs, leads, data.activities, "csv")
    nightly(as_of=AS_OF, input_location=str(inputs), output_dir=str(out))
    page = out / "report" / "latest.html"
    assert page.stat().st_size < 6_000_000  # plotly.js is ~4.6 MB; the data adds little
    dom = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=5000", page.as_uri()).stdout
    assert '<span style="font-size:200px' not in dom  # no element made from data
    assert "font-size:200px;color:red" in dom  # the text itself is shown
    assert "x" * 40 not in dom and "x" * 39 + "…" in dom
    assert re.search(r"other \(\d+\)", dom)
    assert "one day computed so far" in dom
