"""The `funnel` command: generate data, run the nightly flow, backfill, serve the schedule."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from flows import DEFAULT_OUTPUT  # first: quiet, telemetry-free Prefect settings before prefect loads

# In the terminal a failure is one line from `main`; Prefect's console handler would add the
# task and flow tracebacks. They still reach the Prefect API (and UI) through its API handler.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
# Dask's own warnings (a worker restarted, say) likewise stay out of a sharded run's terminal.
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")

if TYPE_CHECKING:
    from flows.pipeline import RunSummary


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=None,
                        help="directory with leads and activities (CSV or Parquet), or a postgresql:// URI "
                             "(password in FUNNEL_DB_PASSWORD); default: the config's source.uri, else data/sample")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="output location")
    parser.add_argument("--config", type=Path, default=None, help="funnel rules (TOML); shipped defaults if absent")
    parser.add_argument("--timezone", default=None, help="IANA zone; overrides the config's")
    parser.add_argument("--workers", type=int, default=None,
                        help="shard the replay on a local Dask cluster of N processes (default: the config's "
                             "dask.workers, else one process)")
    parser.add_argument("--dask-address", default=None,
                        help="shard the replay on an existing Dask cluster (tcp://host:port)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="funnel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write seeded, realistic leads and activities")
    gen.add_argument("--leads", type=int, required=True, help="number of leads")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", type=Path, required=True, help="directory to write leads.* and activities.*")
    gen.add_argument("--format", choices=("csv", "parquet"), default="csv")
    gen.add_argument("--dirty", action="store_true", help="add the faults real CRM exports contain")
    gen.add_argument("--end", type=_date, default=date(2026, 10, 31), help="last day of generated data")

    run = sub.add_parser("run", help="run the nightly flow once")
    run.add_argument("--as-of", type=_date, default=None, help="as-of date (default: yesterday, local)")
    _run_options(run)

    back = sub.add_parser("backfill", help="write the partitions of every date from --start to --end")
    back.add_argument("--start", type=_date, required=True)
    back.add_argument("--end", type=_date, required=True)
    _run_options(back)

    report = sub.add_parser("report", help="render the HTML report again from existing outputs")
    report.add_argument("--as-of", type=_date, default=None, help="as-of date (default: the latest run's)")
    report.add_argument("--output", type=Path, default=None, help="output location (default: data/output)")
    report.add_argument("--config", type=Path, default=None)
    report.add_argument("--timezone", default=None)

    serve = sub.add_parser("serve", help="serve the nightly deployment on its cron schedule")
    serve.add_argument("--cron", default=None, help="cron (default: the config's schedule.cron)")
    _run_options(serve)
    return parser


def _generate(args: argparse.Namespace) -> None:
    from flows.io import write_inputs
    from transforms.generate import generate

    started = time.perf_counter()
    data = generate(args.leads, args.seed, dirty=args.dirty, end=args.end)
    write_inputs(args.out, data.leads, data.activities, args.format)
    print(f"wrote {data.leads.height:,} leads and {data.activities.height:,} activities "
          f"({args.format}{', dirty' if args.dirty else ''}) to {args.out} in {time.perf_counter() - started:.1f}s")


def _print_summary(summary: RunSummary, seconds: float) -> None:
    dates = f"{summary.start}..{summary.as_of}" if summary.start != summary.as_of else f"{summary.as_of}"
    print(f"funnel {summary.flow} {dates}: done in {seconds:.1f}s")
    for table, counts in summary.tables.items():
        print(f"  {table:<11} read {counts['read']:>11,}  valid {counts['valid']:>11,}  "
              f"quarantined {counts['quarantined']:>9,}  collapsed {counts['collapsed']:>7,}")
    print(f"  wrote {sum(summary.written.values()):,} rows in {len(summary.written)} datasets to {summary.output}")
    print(f"  report: {summary.report}")


def _start_temporary_api() -> threading.Thread | None:
    """Start Prefect's temporary API server in the background, where no server is configured.

    It takes seconds to come up (its own process imports and checks its database); started
    first, it does so while this process imports Polars, pandera and the pipeline. The flow
    finds it running and uses it.
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    from prefect.server.api.server import SubprocessASGIServer

    thread = threading.Thread(target=SubprocessASGIServer().start, name="prefect-temporary-api", daemon=True)
    thread.start()
    return thread


def _run(args: argparse.Namespace, server: threading.Thread | None) -> None:
    from flows.pipeline import backfill, nightly

    if server is not None:
        server.join()

    started = time.perf_counter()
    common = {"input_location": args.input, "output_dir": str(args.output),
              "config_path": str(args.config) if args.config else None, "timezone": args.timezone,
              "workers": args.workers, "dask_address": args.dask_address}
    if args.command == "run":
        summary = nightly(as_of=args.as_of, **common)
    else:
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            days = (args.end - args.start).days + 1
            bar = progress.add_task("writing partitions", total=days)
            summary = backfill(start=args.start, end=args.end, on_day=lambda _d: progress.advance(bar), **common)
    _print_summary(summary, time.perf_counter() - started)


def _report(args: argparse.Namespace) -> None:
    import json

    from flows.io import OutputStore, load_config
    from flows.report import write_report

    store = OutputStore(args.output or DEFAULT_OUTPUT)
    as_of = args.as_of
    if as_of is None:
        manifests = [json.loads(p.read_text()) for p in (store.root / "runs").glob("*.json")]
        if not manifests:
            raise ValueError(f"{store.root}: no runs yet; run `funnel run` first")
        as_of = date.fromisoformat(max(manifests, key=lambda m: m["ended_at"])["as_of"])
    print(f"report: {write_report(store, as_of, load_config(args.config, args.timezone))}")


def _serve(args: argparse.Namespace) -> None:
    from flows.deployment import nightly_deployment

    deployment = nightly_deployment(args.input, args.output, args.config, args.timezone, args.cron,
                                    args.workers, args.dask_address)
    from prefect import serve

    serve(deployment)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `funnel` console script."""
    args = _parser().parse_args(argv)
    server = _start_temporary_api() if args.command in ("run", "backfill") else None
    from flows.io import InputError, RunLockedError
    from transforms.config import ConfigError

    try:
        if args.command == "generate":
            _generate(args)
        elif args.command == "serve":
            _serve(args)
        elif args.command == "report":
            _report(args)
        else:
            _run(args, server)
    except (InputError, ConfigError, RunLockedError, ValueError, FileNotFoundError) as exc:
        print(f"funnel: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("funnel: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # anything else failed the run: one line here, the traceback in Prefect
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        print(f"funnel: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
