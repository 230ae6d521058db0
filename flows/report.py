"""The funnel report: one self-contained HTML page per run, built from the Parquet outputs."""

from __future__ import annotations

import html
import json
from datetime import date
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import polars as pl

from flows.io import OutputStore
from transforms.config import FunnelConfig
from transforms.report import all_sources_cohorts, backward_weekly, by_source, cohort_matrix, funnel_today, stage_series

TEAM_COLOURS = {"marketing": "#2b7bba", "sales": "#e07b39"}
SERIES_DAYS = 90


def _figure(fig: go.Figure, title: str, x: str, y: str, height: int = 420) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, height=height, template="plotly_white",
                      margin={"t": 60, "l": 70, "r": 30, "b": 60}, legend_title_text="")
    return fig


def _funnel_figure(today: pl.DataFrame) -> go.Figure:
    labels = [
        f"{n:,} leads" + (f" · {rate:.1%} → next" if rate is not None else "")
        for n, rate in zip(today["in_stage"], today["conversion_to_next"], strict=True)
    ]
    fig = go.Figure(go.Bar(
        x=today["in_stage"].to_list(),
        y=[f"{s} ({t})" for s, t in zip(today["stage"], today["owner_team"], strict=True)],
        orientation="h", text=labels, textposition="auto",
        marker_color=[TEAM_COLOURS[t] for t in today["owner_team"]],
    ))
    fig.update_yaxes(autorange="reversed")
    return _figure(fig, "Leads per stage today (blue: marketing, orange: sales)", "leads in stage", "stage (owner)")


def _cohort_figure(matrix: pl.DataFrame) -> go.Figure:
    fig = go.Figure()
    for pair in matrix["pair"].unique(maintain_order=True).to_list():
        rows = matrix.filter(pl.col("pair") == pair)
        text = [
            f"{r:.0%}" + (f" · {d:.0f} d" if d is not None else "") + ("" if m else " (immature)")
            for r, d, m in zip(rows["conversion_rate"], rows["median_days_to_convert"], rows["is_mature"], strict=True)
        ]
        fig.add_trace(go.Bar(x=rows["cohort_month"].to_list(), y=rows["conversion_rate"].to_list(), name=pair,
                             text=text, textposition="outside",
                             marker_pattern_shape=["" if m else "/" for m in rows["is_mature"]]))
    fig.update_yaxes(tickformat=".0%")
    return _figure(fig, "Conversion by cohort month (hatched: cohort not yet mature)", "cohort month",
                   "converted / entered", height=520)


def _series_figure(series: pl.DataFrame) -> go.Figure:
    fig = go.Figure()
    for stage in series["stage"].unique(maintain_order=True).to_list():
        rows = series.filter(pl.col("stage") == stage)
        fig.add_trace(go.Scatter(x=rows["date"].to_list(), y=rows["in_stage"].to_list(), name=stage,
                                 mode="lines", stackgroup="stages"))
    return _figure(fig, "Leads in each stage over time", "date", "leads in stage (stacked)")


def _backward_figure(weekly: pl.DataFrame) -> go.Figure:
    fig = go.Figure()
    for stage in weekly["stage"].unique(maintain_order=True).to_list():
        rows = weekly.filter(pl.col("stage") == stage)
        fig.add_trace(go.Bar(x=rows["week"].to_list(), y=rows["moves"].to_list(), name=f"from {stage}",
                             text=rows["moves"].to_list(), textposition="inside"))
    fig.update_layout(barmode="stack")
    return _figure(fig, "Leads sent backwards per week", "week (Monday)", "backward moves")


def _source_figure(sources: pl.DataFrame) -> go.Figure:
    fig = go.Figure()
    for stage in sources["stage"].unique(maintain_order=True).to_list():
        rows = sources.filter(pl.col("stage") == stage)
        fig.add_trace(go.Bar(x=rows["source"].to_list(), y=rows["in_stage"].to_list(), name=stage,
                             text=rows["in_stage"].to_list(), textposition="auto"))
    fig.update_layout(barmode="group")
    return _figure(fig, "Leads per stage by source today", "source", "leads in stage")


def _quality_figure(manifest: dict[str, Any]) -> go.Figure:
    tables = manifest["tables"]
    fig = go.Figure()
    for key, colour in (("valid", "#4c9a2a"), ("quarantined", "#c0392b"), ("collapsed", "#999999")):
        values = [tables[t][key] for t in tables]
        fig.add_trace(go.Bar(x=list(tables), y=values, name=key, marker_color=colour,
                             text=[f"{v:,}" for v in values], textposition="outside"))
    fig.update_layout(barmode="group")
    return _figure(fig, f"Input rows of run {manifest['run_id']}", "input table", "rows")


def _reasons_table(manifest: dict[str, Any]) -> str:
    def reasons(counts: dict[str, int]) -> str:
        return html.escape(", ".join(f"{k}: {v:,}" for k, v in counts.items()) or "-")

    rows = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{c['read']:,}</td><td>{c['valid']:,}</td><td>{c['quarantined']:,}</td>"
        f"<td>{c['collapsed']:,}</td><td>{reasons(c['quarantine_reasons'])}</td></tr>"
        for t, c in manifest["tables"].items()
    )
    return ("<table><tr><th>table</th><th>read</th><th>valid</th><th>quarantined</th><th>collapsed</th>"
            f"<th>quarantined by reason</th></tr>{rows}</table>")


def latest_manifest(store: OutputStore, as_of: date) -> dict[str, Any]:
    """The manifest of the latest run with this as-of date."""
    manifests = [json.loads(p.read_text()) for p in sorted((store.root / "runs").glob("*.json"))]
    matching = [m for m in manifests if m["as_of"] == as_of.isoformat()]
    if not matching:
        raise FileNotFoundError(f"{store.root / 'runs'}: no run manifest for as-of {as_of}")
    return max(matching, key=lambda m: m["ended_at"])


def render_report(store: OutputStore, as_of: date, config: FunnelConfig) -> str:
    """The report page for one as-of date, from the datasets under the output location."""
    daily = pl.read_parquet(store.root / "metrics" / "daily_funnel", hive_partitioning=True)
    transitions = pl.read_parquet(store.dataset_dir("transitions"))
    milestones = pl.read_parquet(store.dataset_dir("milestones"))
    manifest = latest_manifest(store, as_of)
    cohorts_all = all_sources_cohorts(milestones, as_of, config)
    sections = [
        ("The funnel today", f"Leads in each stage at the end of {as_of}, the team that owns them, and the share "
         "of leads that ever reached the stage which went on to the next one.",
         _funnel_figure(funnel_today(daily, cohorts_all, as_of, config))),
        ("Conversion by cohort", "Of the leads that first reached a stage in a month, the share that reached the "
         "next stage so far, with the median days it took; young cohorts are still converting.",
         _cohort_figure(cohort_matrix(cohorts_all))),
        ("Stages over time", f"Leads in each stage at the end of each day, over the last {SERIES_DAYS} days "
         "that have been computed.", _series_figure(stage_series(daily, as_of, SERIES_DAYS, config))),
        ("Sent back to marketing", "Backward moves per week (a lead not ready to buy returned to an earlier "
         "stage), by the stage it left.", _backward_figure(backward_weekly(transitions, as_of, config))),
        ("By source", "Leads in each stage today for every acquisition source.",
         _source_figure(by_source(daily, as_of, config))),
        ("Data quality", "Rows read from each input, how many were usable, refused (quarantined) or exact "
         "duplicates (collapsed).", _quality_figure(manifest)),
    ]
    parts = []
    for i, (title, explanation, fig) in enumerate(sections):
        chart = fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        parts.append(f"<section><h2>{html.escape(title)}</h2><p>{html.escape(explanation)}</p>{chart}</section>")
    parts.append(_reasons_table(manifest))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Lead funnel as of {as_of}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}}
section{{margin-bottom:2.5em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;
text-align:right}} th{{background:#f3f3f3}}</style></head>
<body><h1>Lead funnel as of {as_of}</h1>
<p>Run {html.escape(manifest['run_id'])} ({html.escape(manifest['flow'])}), timezone {html.escape(config.timezone)},
config {html.escape(manifest['config_hash'])}, code {html.escape(manifest['code_version'])}.</p>
{''.join(parts)}
</body></html>
"""


def write_report(store: OutputStore, as_of: date, config: FunnelConfig) -> Path:
    """Write report/as_of=D/index.html and report/latest.html, each atomically."""
    page = render_report(store, as_of, config)
    target = store.write_text(page, store.root / "report" / f"as_of={as_of.isoformat()}" / "index.html")
    store.write_text(page, store.root / "report" / "latest.html")
    return target
