"""A seeded, vectorised generator of realistic CRM leads and activities that follow the funnel.

Leads have owners: a marketing rep picks up most new leads, a sales rep takes over when sales
accepts (a few dozen reps per team, some leads never assigned, a few explicit unassignments),
and sales responds to new MQLs and SALs within hours to days, some beyond 48 hours, so handoff
SLAs are met and breached. Clean output follows every rule of the input contract; `dirty=True`
adds what real CRM exports contain: a fault for every rule of FUNNEL_SPEC.md section 1,
duplicates of both kinds, orphans, future timestamps, offsets, quoting and umlauts, mixed case
and stray spaces (owner ids too). Everything is numpy/polars array work: no Python loop over
leads or rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import polars as pl

SOURCES = ("newsletter", "blog", "linkedin_ads", "google_ads", "webinar", "referral", "events",
           "organic_search")
SOURCE_P = (0.18, 0.17, 0.16, 0.14, 0.10, 0.08, 0.07, 0.10)
INDUSTRIES = ("software", "manufacturing", "finance", "healthcare", "retail", "logistics",
              "energy", "education")
COUNTRIES = ("DE", "AT", "CH", "US", "GB", "FR", "NL", "SE", "PL", "ES")
JOB_LEVELS = ("c_level", "vp", "director", "manager", "individual_contributor", "other")
JOB_P = (0.06, 0.08, 0.16, 0.30, 0.32, 0.08)
COMPANIES = ("Müller GmbH", "Schmidt & Söhne", "Nordwind AG", "Acme, Inc.", 'Blue "Ocean" Labs',
             "Zürich Data", "Köhler Systems", "Brightpath", "Lumen, Licht & Co", "Oakridge")
# Marketing engagement, most frequent first; then the sales events the generator places.
ENGAGEMENT = ("page_view", "email_open", "email_click", "pricing_page_view", "content_download",
              "form_submit", "webinar_attended", "demo_request", "meeting_held", "unsubscribed")
ENGAGEMENT_P = (0.36, 0.25, 0.12, 0.07, 0.07, 0.05, 0.03, 0.02, 0.02, 0.01)
# The default scoring points and threshold, for when sales should notice a lead (about its MQL time).
ENGAGEMENT_POINTS = (1, 1, 3, 5, 8, 10, 10, 25, 0, 0)
MQL_THRESHOLD = 40
SALES = ("sales_accepted", "sales_rejected", "opportunity_created", "closed_won", "closed_lost")
ASSIGNED = "owner_assigned"
TYPES = (*ENGAGEMENT, *SALES, ASSIGNED)
MARKETING_REPS = tuple(f"mkt-{i:02d}" for i in range(1, 25))
SALES_REPS = tuple(f"sales-{i:02d}" for i in range(1, 37))
REPS = MARKETING_REPS + SALES_REPS
NEVER = np.iinfo(np.int64).max
NO_OWNER, UNASSIGN = -1, -2  # owner codes that are not a rep: not an assignment / an empty owner_id

US_PER_SECOND = 1_000_000
US_PER_MINUTE = 60 * US_PER_SECOND
US_PER_DAY = 86_400 * US_PER_SECOND


@dataclass(frozen=True)
class Generated:
    """Raw input tables as text, as a CRM export holds them."""

    leads: pl.DataFrame
    activities: pl.DataFrame


def _epoch_us(day: date) -> int:
    return int(datetime.combine(day, time(), UTC).timestamp()) * US_PER_SECOND


def _days(rng: np.random.Generator, scale: float, size: int) -> np.ndarray:
    """Exponential gaps of `scale` days, whole seconds."""
    return (rng.exponential(scale, size) * 86_400).astype(np.int64) * US_PER_SECOND


def _timestamp_text(us: pl.Expr, style: pl.Expr) -> pl.Expr:
    """Text in one of the contract's spellings: naive, T..Z, or with a +02:00 offset."""
    shifted = (us + pl.when(style == 2).then(2 * 3600 * US_PER_SECOND).otherwise(0)).cast(pl.Datetime("us"))
    text = shifted.dt.to_string("%Y-%m-%d %H:%M:%S")
    return (
        pl.when(style == 1).then(pl.concat_str(text.str.slice(0, 10), pl.lit("T"), text.str.slice(11), pl.lit("Z")))
        .when(style == 2).then(pl.concat_str(text, pl.lit("+02:00")))
        .otherwise(text)
    )


def _pick(values: tuple[str, ...], codes: pl.Expr) -> pl.Expr:
    return codes.replace_strict(list(range(len(values))), list(values), return_dtype=pl.String)


def _response_hours(rng: np.random.Generator, size: int, median_hours: float) -> np.ndarray:
    """Response times of sales to a handoff: hours to days, a fifth or so beyond 48 hours."""
    hours = rng.lognormal(np.log(median_hours), 1.1, size)
    return (hours * 3600).astype(np.int64) * US_PER_SECOND


def _reps(rng: np.random.Generator, reps: tuple[str, ...], size: int) -> np.ndarray:
    """Owner codes (indexes into REPS) of reps of one team."""
    return REPS.index(reps[0]) + rng.integers(0, len(reps), size)


def _sales_events(rng: np.random.Generator, created: np.ndarray, n_mkt: np.ndarray, last_mkt: np.ndarray,
                  scored_at: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sales acceptance, meetings, rejections back to marketing, opportunities, deals, and reassignments.

    Acceptance follows the moment the lead's points reach the MQL threshold (else its last
    marketing activity) by a sales response time; a meeting follows acceptance likewise.
    Returns leads, times, type codes and owner codes.
    """
    n = created.size
    u = rng.random((11, n))
    base = np.where(scored_at < NEVER, scored_at, np.maximum(created, last_mkt))
    accept1 = u[0] < np.clip(0.05 + 0.025 * n_mkt, 0, 0.6)
    t_accept1 = base + _response_hours(rng, n, 20)
    direct_opp = ~accept1 & (u[1] < 0.02)  # a skip straight to sql
    reject1 = accept1 & (u[2] < 0.3)
    t_reject1 = t_accept1 + _days(rng, 15, n)
    accept2 = reject1 & (u[3] < 0.4)
    t_accept2 = t_reject1 + _days(rng, 30, n)
    opp = ((accept1 & ~reject1) | accept2) & (u[4] < 0.5) | direct_opp
    t_opp = np.where(accept2, t_accept2, np.where(accept1, t_accept1, base)) + _days(rng, 12, n)
    won = opp & (u[5] < 0.4)
    lost = opp & ~won & (u[6] < 0.8)
    t_close = t_opp + _days(rng, 25, n)
    lost_after_won = won & (u[7] < 0.1)  # ignored by the funnel: closed_won is terminal
    meeting = accept1 & (u[8] < 0.7)
    t_meeting = t_accept1 + _response_hours(rng, n, 18)
    # Sales takes the lead over on acceptance (minutes later); a rejected lead goes back to a
    # marketing rep, or is left unassigned.
    to_sales = accept1 & (u[9] < 0.9)
    t_to_sales = t_accept1 + _days(rng, 0.02, n)
    back = reject1 & (u[10] < 0.8)
    t_back = t_reject1 + _days(rng, 0.05, n)
    back_owner = np.where(u[10] < 0.6, _reps(rng, MARKETING_REPS, n), UNASSIGN)
    none = np.full(n, NO_OWNER)
    slots = [
        (accept1, t_accept1, "sales_accepted", none), (reject1, t_reject1, "sales_rejected", none),
        (accept2, t_accept2, "sales_accepted", none), (opp, t_opp, "opportunity_created", none),
        (won, t_close, "closed_won", none), (lost, t_close, "closed_lost", none),
        (lost_after_won, t_close + _days(rng, 20, n), "closed_lost", none),
        (meeting, t_meeting, "meeting_held", none),
        (to_sales, t_to_sales, ASSIGNED, _reps(rng, SALES_REPS, n)),
        (back, t_back, ASSIGNED, back_owner),
    ]
    leads = np.concatenate([np.flatnonzero(m) for m, _, _, _ in slots])
    times = np.concatenate([t[m] for m, t, _, _ in slots])
    types = np.concatenate([np.full(int(m.sum()), TYPES.index(k)) for m, _, k, _ in slots])
    owners = np.concatenate([o[m] for m, _, _, o in slots])
    return leads, times, types, owners


def _activity_arrays(rng: np.random.Generator, created: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Marketing engagement, reps picking up leads, then sales events; with each one's owner code.

    Engagement comes in bursts, with quiet leads and shared instants; a marketing rep picks up
    four leads in five within days of creation.
    """
    n = created.size
    propensity = rng.gamma(0.9, 1.0, n)  # near 0: quiet leads; the long tail: very active ones
    n_mkt = rng.poisson(propensity * 24.3).astype(np.int64)
    total = int(n_mkt.sum())
    lead = np.repeat(np.arange(n), n_mkt)
    u = rng.random(total)
    gaps = np.where(u < 0.35, _days(rng, 0.01, total), _days(rng, 6, total))  # bursts of minutes
    gaps[u > 0.96] = 0  # several activities at the same instant
    cum = np.cumsum(gaps)
    first = np.concatenate(([0], np.cumsum(n_mkt)[:-1]))
    has = n_mkt > 0
    lead_start = np.zeros(n, dtype=np.int64)
    lead_start[has] = cum[first[has]] - gaps[first[has]]
    times = created[lead] + cum - lead_start[lead]
    types = rng.choice(len(ENGAGEMENT), total, p=ENGAGEMENT_P)
    last_mkt = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last_mkt, lead, times)
    # Points so far per lead (no window: a lower bound of the score), and when they first reach
    # the threshold; rows are in (lead, time) order, so a global cumulative sum less each lead's
    # start is the running total.
    points = np.asarray(ENGAGEMENT_POINTS)[types]
    running = np.cumsum(points)
    lead_start_points = np.zeros(n, dtype=np.int64)
    lead_start_points[has] = running[first[has]] - points[first[has]]
    crossed = running - lead_start_points[lead] >= MQL_THRESHOLD
    scored_at = np.full(n, NEVER)
    np.minimum.at(scored_at, lead[crossed], times[crossed])
    s_lead, s_times, s_types, s_owners = _sales_events(rng, created, n_mkt, last_mkt, scored_at)
    picked = np.flatnonzero(rng.random(n) < 0.8)
    p_times = created[picked] + _days(rng, 1.5, picked.size)
    p_owners = _reps(rng, MARKETING_REPS, picked.size)
    return (np.concatenate([lead, s_lead, picked]), np.concatenate([times, s_times, p_times]),
            np.concatenate([types, s_types, np.full(picked.size, TYPES.index(ASSIGNED))]),
            np.concatenate([np.full(total, NO_OWNER), s_owners, p_owners]))


def generate(n_leads: int, seed: int, *, dirty: bool = False, end: date = date(2026, 10, 31),
             days: int = 730) -> Generated:
    """Leads created over `days` days up to `end` (UTC) and their activities up to `end`."""
    rng = np.random.default_rng(seed)
    end_us = _epoch_us(end + timedelta(days=1))
    start_us = end_us - days * US_PER_DAY
    created = start_us + (rng.random(n_leads) * (end_us - start_us)).astype(np.int64)
    created -= created % US_PER_SECOND
    lead, times, types, owners = _activity_arrays(rng, created)
    keep = times < end_us
    lead, times, types, owners = lead[keep], times[keep], types[keep], owners[keep]
    n_act = lead.size

    leads = pl.DataFrame({
        "_i": np.arange(n_leads),
        "_created": created,
        "_updated": created + _days(rng, 40, n_leads),
        "_source": rng.choice(len(SOURCES), n_leads, p=SOURCE_P),
        "_company": rng.integers(0, len(COMPANIES), n_leads),
        "_industry": rng.integers(0, len(INDUSTRIES), n_leads),
        "_country": rng.integers(0, len(COUNTRIES), n_leads),
        "_employees": np.round(rng.lognormal(3.4, 1.6, n_leads)).astype(np.int64),
        "_job": rng.choice(len(JOB_LEVELS), n_leads, p=JOB_P),
        "_style": rng.choice(3, n_leads, p=(0.7, 0.2, 0.1)),
    }).select(
        lead_id=pl.concat_str(pl.lit("L"), pl.col("_i").cast(pl.String).str.zfill(8)),
        created_at=_timestamp_text(pl.col("_created"), pl.col("_style")),
        updated_at=_timestamp_text(pl.col("_updated"), pl.col("_style")),
        email=pl.concat_str(pl.lit("contact"), pl.col("_i").cast(pl.String), pl.lit("@example-"),
                            pl.col("_company").cast(pl.String), pl.lit(".com")),
        source=_pick(SOURCES, pl.col("_source")),
        company=_pick(COMPANIES, pl.col("_company")),
        industry=_pick(INDUSTRIES, pl.col("_industry")),
        country=_pick(COUNTRIES, pl.col("_country")),
        employee_count=pl.col("_employees").cast(pl.String),
        job_level=_pick(JOB_LEVELS, pl.col("_job")),
    )
    activities = pl.DataFrame({
        "_id": rng.permutation(n_act),  # ids not in time order: ties break by id, not by position
        "_lead": lead,
        "_at": times,
        "_type": types,
        "_owner": owners,
        "_style": rng.choice(3, n_act, p=(0.8, 0.15, 0.05)),
    }).select(
        activity_id=pl.concat_str(pl.lit("A"), pl.col("_id").cast(pl.String).str.zfill(9)),
        lead_id=pl.concat_str(pl.lit("L"), pl.col("_lead").cast(pl.String).str.zfill(8)),
        occurred_at=_timestamp_text(pl.col("_at"), pl.col("_style")),
        activity_type=_pick(TYPES, pl.col("_type")),
        owner_id=pl.when(pl.col("_owner") == UNASSIGN).then(pl.lit(""))
        .when(pl.col("_owner") >= 0).then(_pick(REPS, pl.col("_owner").clip(0))),
    )
    if dirty:
        leads = _dirty_leads(rng, leads)
        activities = _dirty_activities(rng, activities)
    return Generated(leads=leads, activities=activities)


def _faults(rng: np.random.Generator, n: int, kinds: int, rate: float) -> pl.Series:
    """Per row: 0 for a clean row, else the number of one fault family."""
    faulty = rng.random(n) < rate
    return pl.Series(np.where(faulty, rng.integers(1, kinds + 1, n), 0))


def _replace(column: str, fault: pl.Expr, cases: dict[int, pl.Expr | str | None]) -> pl.Expr:
    expr: pl.Expr = pl.col(column)
    for code, value in cases.items():
        lit = value if isinstance(value, pl.Expr) else pl.lit(value, pl.String)
        expr = pl.when(fault == code).then(lit).otherwise(expr)
    return expr.alias(column)


def _sometimes(messy: pl.Series, changed: pl.Expr, column: str) -> pl.Expr:
    """`changed` on the rows picked by `messy`, the column as it was elsewhere."""
    return pl.when(pl.lit(messy)).then(changed).otherwise(pl.col(column))


def _noise(rng: np.random.Generator, n: int, rate: float) -> pl.Series:
    return pl.Series(rng.random(n) < rate)


def _duplicates(rng: np.random.Generator, frame: pl.DataFrame, rate: float,
                change: dict[str, pl.Expr]) -> pl.DataFrame:
    """Copies of a random `rate` of the rows, with `change` applied to the copies."""
    picked = frame.filter(_noise(rng, frame.height, rate))
    return picked.with_columns(**change) if change else picked


def _dirty_leads(rng: np.random.Generator, leads: pl.DataFrame) -> pl.DataFrame:
    n = leads.height
    fault = pl.lit(_faults(rng, n, 13, 0.02))
    messy = _noise(rng, n, 0.05)
    dirty = leads.with_columns(
        _replace("lead_id", fault, {1: "", 2: "   "}),
        _replace("created_at", fault, {3: None, 4: "2025-02-30 10:00:00", 5: "2025-03-01 25:00:00",
                                       6: "2031-01-01 00:00:00"}),
        _replace("updated_at", fault, {7: "last tuesday"}),
        _replace("email", fault, {8: "no-at-sign.example.com"}),
        _replace("country", fault, {9: "Deutschland", 0: _sometimes(
            messy, pl.concat_str(pl.lit(" "), pl.col("country").str.to_lowercase()), "country")}),
        _replace("employee_count", fault, {10: "12.5", 11: "-4", 12: "many", 0: _sometimes(
            messy, pl.concat_str(pl.lit("+"), pl.col("employee_count")), "employee_count")}),
        _replace("job_level", fault, {13: "intern", 0: _sometimes(
            messy, pl.concat_str(pl.col("job_level").str.to_uppercase(), pl.lit(" ")), "job_level")}),
        source=_sometimes(messy, pl.concat_str(pl.lit(" "), pl.col("source").str.to_titlecase(), pl.lit(" ")),
                          "source"),
    )
    exact = _duplicates(rng, dirty, 0.005, {})
    superseded = _duplicates(rng, dirty, 0.003, {
        "updated_at": pl.lit("2026-10-30T12:00:00Z"), "source": pl.lit("referral")})
    conflicting = _duplicates(rng, dirty, 0.003, {"company": pl.lit("Other, Company")})
    shuffled = int(rng.integers(1 << 31))
    return pl.concat([dirty, exact, superseded, conflicting]).sample(fraction=1.0, shuffle=True, seed=shuffled)


def _dirty_activities(rng: np.random.Generator, activities: pl.DataFrame) -> pl.DataFrame:
    n = activities.height
    fault = pl.lit(_faults(rng, n, 8, 0.01))
    messy = _noise(rng, n, 0.03)
    dirty = activities.with_columns(
        _replace("activity_id", fault, {1: ""}),
        _replace("lead_id", fault, {2: " ", 7: pl.concat_str(pl.lit("GHOST-"), pl.col("lead_id"))}),
        _replace("occurred_at", fault, {3: "2025-13-01 00:00:00", 4: "soon", 5: "2031-06-01T00:00:00Z",
                                        8: "2000-01-01 00:00:00"}),
        _replace("activity_type", fault, {6: "carrier_pigeon", 0: _sometimes(
            messy, pl.concat_str(pl.lit(" "), pl.col("activity_type").str.to_titlecase()), "activity_type")}),
        owner_id=_sometimes(messy, pl.concat_str(pl.lit(" "), pl.col("owner_id"), pl.lit("  ")), "owner_id"),
    )
    exact = _duplicates(rng, dirty, 0.005, {})
    conflicting = _duplicates(rng, dirty, 0.001, {"occurred_at": pl.lit("2024-12-31 23:59:59")})
    return pl.concat([dirty, exact, conflicting])


def write_inputs(directory: Path, leads: pl.DataFrame, activities: pl.DataFrame, fmt: str) -> None:
    """Write generated input tables as <table>.csv or <table>.parquet (text columns)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in (("leads", leads), ("activities", activities)):
        for stale in (directory / f"{name}.csv", directory / f"{name}.parquet"):
            stale.unlink(missing_ok=True)
        if fmt == "csv":
            frame.write_csv(directory / f"{name}.csv")
        else:
            frame.write_parquet(directory / f"{name}.parquet", row_group_size=1_000_000)
