"""The `funnel` command: generate data, run the nightly flow, backfill, serve the schedule."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    parser.add_argument("--shards", type=int, default=None,
                        help="split the leads into N shards (default: the config's run.shards, else by input size)")
    parser.add_argument("--force", action="store_true",
                        help="publish even when the input looks collapsed (see [guard] in the config)")


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
    gen.add_argument("--late-nights", type=int, default=0, metavar="N",
                     help="write the last N nights' inputs (OUT/night=YYYY-MM-DD/), rows arriving up to 9 days late")
    gen.add_argument("--late-share", type=float, default=0.125, help="share of rows that arrive late (default 1/8)")

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

    deploy = sub.add_parser("deploy", help="create or update the nightly and backfill deployments on the Prefect "
                            "server (PREFECT_API_URL), schedule and timezone from the config")
    deploy.add_argument("--config", type=Path, default=None, help="funnel rules and run settings (TOML)")
    deploy.add_argument("--input", default=None, help="input location the runs read (no credentials)")
    deploy.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="output location the runs write")
    deploy.add_argument("--pool", default="funnel", help="process work pool (created if missing)")
    deploy.add_argument("--name", default="funnel", help="deployment name")
    deploy.add_argument("--workers", type=int, default=None)
    deploy.add_argument("--dask-address", default=None)
    deploy.add_argument("--shards", type=int, default=None)

    recover = sub.add_parser("recover", help="complete a commit that a crash interrupted")
    recover.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="output location")

    serve = sub.add_parser("serve", help="serve the nightly deployment on its cron schedule")
    serve.add_argument("--cron", default=None, help="cron (default: the config's schedule.cron)")
    _run_options(serve)
    return parser


def _generate(args: argparse.Namespace) -> None:
    from synthetic.generate import generate, write_inputs

    started = time.perf_counter()
    data = generate(args.leads, args.seed, dirty=args.dirty, end=args.end)
    if args.late_nights:
        from datetime import timedelta

        from synthetic.late import nightly_inputs

        nights = [args.end - timedelta(days=n) for n in range(args.late_nights - 1, -1, -1)]
        for night in nightly_inputs(data.leads, data.activities, nights, args.late_share, seed=args.seed):
            write_inputs(args.out / f"night={night.night}", night.leads, night.activities, args.format)
        print(f"wrote {len(nights)} nightly inputs ({nights[0]}..{nights[-1]}, {args.late_share:.1%} of rows "
              f"late) to {args.out} in {time.perf_counter() - started:.1f}s")
        return
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


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a child process: be sent SIGTERM when the thread that started it ends (or is killed)."""
    import ctypes

    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class TemporaryApi:
    """Prefect's temporary API server, started in the background and bound to this process's life.

    It takes seconds to come up (its own process imports and checks its database); started
    first, it does so while this process imports Polars, pandera and the pipeline. The flow
    finds it running and uses it. Prefect stops it at exit; if this process is killed instead
    (SIGKILL, the out-of-memory killer), the kernel's parent-death signal ends it too. That
    signal follows the starting thread, so the thread stays alive for the process's lifetime.
    """

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.error: BaseException | None = None
        threading.Thread(target=self._serve, name="prefect-temporary-api", daemon=True).start()

    def _serve(self) -> None:
        import subprocess

        from prefect.server.api.server import SubprocessASGIServer

        popen: Any = subprocess.Popen

        def bound_popen(*args: Any, **kwargs: Any) -> Any:
            return popen(*args, preexec_fn=_die_with_parent, **kwargs)

        setattr(subprocess, "Popen", bound_popen)  # noqa: B010  (only while Prefect spawns its server)
        try:
            SubprocessASGIServer().start()
        except BaseException as exc:  # surfaced by wait(), in the main thread
            self.error = exc
        finally:
            setattr(subprocess, "Popen", popen)  # noqa: B010
            self.ready.set()
        threading.Event().wait()  # keep the parent-death signal's thread alive

    def wait(self) -> None:
        """Block until the server answers (or failed to start)."""
        self.ready.wait()
        if self.error is not None:
            raise self.error


def _start_temporary_api() -> TemporaryApi | None:
    """The temporary API, where no Prefect server is configured."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    return TemporaryApi()


def _run(args: argparse.Namespace, server: TemporaryApi | None) -> None:
    from flows.pipeline import backfill, nightly

    if server is not None:
        server.wait()

    started = time.perf_counter()
    if args.input and args.input.startswith(("postgresql://", "postgres://")):
        from flows.settings import database_uri_without_password

        database_uri_without_password(args.input)  # before the URI reaches Prefect as a parameter
    common = {"input_location": args.input, "force": args.force, "shards": args.shards, "output_dir": str(args.output),
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
    from flows.report import latest_manifest, write_report
    from flows.settings import load_config
    from flows.store import OutputStore

    store = OutputStore(args.output or DEFAULT_OUTPUT)
    manifests = store.manifests()
    if not manifests:
        raise ValueError(f"{store.root}: no runs yet; run `funnel run` first")
    manifest = latest_manifest(store, args.as_of) if args.as_of else manifests[-1]
    print(f"report: {write_report(store, None, manifest, load_config(args.config, args.timezone))}")


def _deploy(args: argparse.Namespace) -> None:
    from flows.deployment import deploy, deploy_report

    deployed = deploy(args.config, args.input, args.output, args.pool, args.name, args.workers, args.dask_address,
                      args.shards)
    print("\n".join(deploy_report(deployed, args.pool)))


def _recover(args: argparse.Namespace) -> None:
    from flows.store import OutputStore

    store = OutputStore(args.output)
    with store.locked():
        done = store.recover()
    print(f"funnel recover: {'completed an interrupted commit' if done else 'nothing to recover'} in {store.root}")


def _serve(args: argparse.Namespace) -> None:
    from flows.deployment import nightly_deployment

    deployment = nightly_deployment(args.input, args.output, args.config, args.timezone, args.cron,
                                    args.workers, args.dask_address)
    from prefect import serve

    serve(deployment)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `funnel` console script."""
    args = _parser().parse_args(argv)
    # SIGTERM (a scheduler stopping the job) ends a run like Ctrl-C: nothing published, lock released.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = _start_temporary_api() if args.command in ("run", "backfill") else None
    from flows.inputs import InputError
    from flows.pipeline import CollapsedInputError
    from flows.quality import QualityError
    from flows.store import NotAtomicError, RunLockedError
    from transforms.rules import ConfigError

    try:
        if args.command == "generate":
            _generate(args)
        elif args.command == "serve":
            _serve(args)
        elif args.command == "report":
            _report(args)
        elif args.command == "recover":
            _recover(args)
        elif args.command == "deploy":
            _deploy(args)
        else:
            _run(args, server)
    except (InputError, ConfigError, RunLockedError, CollapsedInputError, NotAtomicError, ValueError,
            FileNotFoundError) as exc:
        print(f"funnel: {exc}", file=sys.stderr)
        return 2
    except QualityError as exc:  # published, but below the configured data quality
        print(f"funnel: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("funnel: interrupted; nothing published", file=sys.stderr)
        return 130
    except Exception as exc:  # anything else failed the run: one line here, the traceback in Prefect
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        print(f"funnel: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
