"""The funnel report: one self-contained HTML page per run, built from the outputs (pending over published)."""

from __future__ import annotations

import html
from datetime import date
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import polars as pl

from flows.catalog import DAILY_FUNNEL, MILESTONES, OWNER_HISTORY, SLA, TRANSITIONS, Dataset
from flows.store import OutputStore, Store, report_relative
from transforms.metrics import cohort_conversion_parts
from transforms.report import (
    all_sources_cohorts,
    backward_weekly,
    by_source,
    cohort_matrix,
    funnel_today,
    overdue_by_owner,
    pickup_hours_weekly,
    restatements,
    sla_weekly,
    stage_series,
)
from transforms.rules import FunnelConfig

TEAM_COLOURS = {"marketing": "#2b7bba", "sales": "#e07b39"}
SERIES_DAYS = 90
DAILY_FUNNEL_COLUMNS = ["date", "source", "stage", "in_stage", "entered", "exited_forward", "exited_backward"]


def _figure(fig: go.Figure, title: str, x: str, y: str, height: int = 420) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, height=height, template="plotly_white",
                      margin={"t": 60, "l": 70, "r": 30, "b": 60}, legend_title_text="")
    return fig


def prepare() -> None:
    """Build a throwaway chart: plotly loads its figure classes, validators and template on first use (0.3 s)."""
    fig = go.Figure([go.Bar(x=[0], y=[""], text=[""], marker_color=["#000"]), go.Scatter(x=[0], y=[0])])
    fig.update_yaxes(autorange="reversed")
    _figure(fig, "", "", "").to_html(full_html=False, include_plotlyjs=False)


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
    days = series["date"].n_unique()
    for stage in series["stage"].unique(maintain_order=True).to_list():
        rows = series.filter(pl.col("stage") == stage)
        fig.add_trace(go.Scatter(x=rows["date"].to_list(), y=rows["in_stage"].to_list(), name=stage,
                                 mode="lines" if days > 2 else "lines+markers", stackgroup="stages"))
    fig.update_xaxes(type="date", tickformat="%Y-%m-%d", dtick=86_400_000 if days < 8 else None)
    title = "Leads in each stage over time"
    if days < 2:  # a first run: say how to get a history rather than draw an empty axis
        title += " (one day computed so far: `funnel backfill` fills earlier dates)"
    return _figure(fig, title, "date", "leads in stage (stacked)")


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
        fig.add_trace(go.Bar(x=[html.escape(s) for s in rows["source"]], y=rows["in_stage"].to_list(), name=stage,
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


def _handoff_figure(weekly: pl.DataFrame, pickup: pl.DataFrame, stage: str, hours: float) -> go.Figure:
    rows = weekly.filter(pl.col("stage") == stage)
    fig = go.Figure()
    for key, name, colour in (("met_on_time", "met on time", "#4c9a2a"), ("stopped_late", "answered late", "#e0a030"),
                              ("overdue", "still overdue now", "#c0392b"), ("open", "open, not yet due", "#9e9e9e")):
        fig.add_trace(go.Bar(x=rows["week"].to_list(), y=rows[key].to_list(), name=name, marker_color=colour,
                             text=rows[key].to_list(), textposition="inside"))
    times = pickup.filter(pl.col("stage") == stage)
    fig.add_trace(go.Scatter(x=times["week"].to_list(), y=times["median_hours"].to_list(), yaxis="y2",
                             name="median hours to pick up", mode="lines+markers", line_color="#333"))
    fig.update_layout(barmode="stack", yaxis2={"overlaying": "y", "side": "right", "title": "median hours",
                                               "rangemode": "tozero"})
    return _figure(fig, f"Leads entering {stage}: answered within {hours:g} h or not, per week",
                   "week entered (Monday)", "leads entering the stage")


def _owners_table(overdue: pl.DataFrame, as_of: date) -> str:
    if overdue.is_empty():
        return f"<p>No lead is overdue at the end of {as_of}.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(owner)}</td><td>{n:,}</td><td>{html.escape(stages)}</td>"
        f"<td>{due:%Y-%m-%d %H:%M} UTC</td></tr>"
        for owner, n, stages, due in overdue.rows())
    return (f"<p>Who has the overdue leads at the end of {as_of} (the lead's owner now):</p><table><tr><th>owner</th>"
            f"<th>overdue leads</th><th>stages</th><th>longest overdue since</th></tr>{rows}</table>")


def _restatements_table(restated: pl.DataFrame, as_of: date) -> str:
    if restated.is_empty():
        return f"<p>No earlier date was rewritten in the 30 days up to {as_of}.</p>"
    reasons = {"late_rows": "rows arrived late", "rules_changed": "the rules changed", "catch_up": "missed nights"}
    rows = "".join(
        f"<tr><td>{run_date}</td><td>{html.escape(reasons[reason])}</td><td>{n:,}</td><td>{first} .. {last}</td></tr>"
        for _run, run_date, reason, n, first, last in restated.rows())
    return ("<table><tr><th>run of</th><th>why</th><th>dates rewritten</th><th>from .. to</th></tr>"
            f"{rows}</table>")


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


def latest_manifest(store: Store, as_of: date) -> dict[str, Any]:
    """The manifest of the latest committed run with this as-of date."""
    matching = [m for m in store.manifests() if m["as_of"] == as_of.isoformat()]
    if not matching:
        raise FileNotFoundError(f"{store.location}/runs: no run manifest for as-of {as_of}")
    return matching[-1]


def _dated(store: Store, pending: OutputStore | None, dataset: Dataset) -> pl.DataFrame:
    """Every date of a dated dataset: the pending run's partitions over the published ones."""
    new = set(pending.published_dates(dataset)) if pending else set()
    frames = [store.read_day(dataset, day).with_columns(pl.lit(day).alias(str(dataset.partition)))
              for day in store.published_dates(dataset) if day not in new]
    if pending is not None:
        frames += [pl.read_parquet(pending.path(dataset, day)).with_columns(pl.lit(day).alias(str(dataset.partition)))
                   for day in sorted(new)]
    return pl.concat(frames, how="vertical_relaxed")


def _whole(store: Store, pending: OutputStore | None, dataset: Dataset) -> pl.DataFrame:
    """A whole dataset: the pending run's, else the published one."""
    return pl.read_parquet(pending.path(dataset)) if pending is not None else store.scan(dataset).collect()


def render_report(store: Store, pending: OutputStore | None, manifest: dict[str, Any],
                  config: FunnelConfig, cohort_parts: list[pl.LazyFrame] | None = None) -> str:
    """The report page of one run, from its datasets (pending ones over published ones).

    `cohort_parts`: the run's shards' `cohort_conversion_parts`, which spare reading the
    milestones again for the cohorts of all sources.
    """
    as_of = date.fromisoformat(manifest["as_of"])
    daily = _dated(store, pending, DAILY_FUNNEL).select(DAILY_FUNNEL_COLUMNS)
    transitions = _whole(store, pending, TRANSITIONS)
    if cohort_parts is None:
        cohort_parts = [cohort_conversion_parts(_whole(store, pending, MILESTONES).lazy(), config)]
    cohorts_all = all_sources_cohorts(cohort_parts, as_of, config)
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
    ]
    sla = _whole(store, pending, SLA)
    for rule in config.slas:
        sections.append((
            f"Handoffs into {rule.stage}",
            f"Every lead entering {rule.stage} starts a clock: it is answered on time when "
            f"{' or '.join(rule.met_by) + ' happens or ' if rule.met_by else ''}the lead leaves {rule.stage} within "
            f"{rule.within_hours:g} hours. Bars count the leads entering it each week by outcome as of {as_of}; "
            "the line is the median time it took to answer, by week answered.",
            _handoff_figure(sla_weekly(sla, as_of, config), pickup_hours_weekly(sla, as_of, config), rule.stage,
                            rule.within_hours)))
    sections.append(("Data quality", "Rows read from each input, how many were usable, refused (quarantined) or "
                     "exact duplicates (collapsed).", _quality_figure(manifest)))
    parts = []
    for i, (title, explanation, fig) in enumerate(sections):
        chart = fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        parts.append(f"<section><h2>{html.escape(title)}</h2><p>{html.escape(explanation)}</p>{chart}</section>")
    if config.slas:
        owners = _whole(store, pending, OWNER_HISTORY)
        parts.append(f"<section><h2>Overdue leads by owner</h2>{_owners_table(overdue_by_owner(sla, owners), as_of)}"
                     "</section>")
    restated = restatements([*store.manifests(), manifest], as_of)
    parts.append(f"<section><h2>Rewritten dates</h2><p>Earlier dates recomputed by the runs of the last 30 days, "
                 f"so that every published date stays true.</p>{_restatements_table(restated, as_of)}</section>")
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


def write_report(store: Store, pending: OutputStore | None, manifest: dict[str, Any],
                 config: FunnelConfig, cohort_parts: list[pl.LazyFrame] | None = None) -> Path | str:
    """Write report/as_of=D/index.html and report/latest.html into the pending area (or the store).

    Returns where the page is once published.
    """
    page = render_report(store, pending, manifest, config, cohort_parts)
    as_of = date.fromisoformat(manifest["as_of"])
    for relative in (report_relative(as_of), report_relative()):
        if pending is not None:
            pending.write_text(page, pending.root / relative)
        else:
            store.publish_text(page, relative)
    return store.report_location(as_of)
