"""The `funnel` command: generate data, run the nightly flow, backfill, serve the schedule, maintain outputs."""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import logging
import os
import signal
import sys
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from flows import DEFAULT_OUTPUT  # first: quiet, telemetry-free Prefect settings before prefect loads

# In the terminal a failure is one line from `main`; Prefect's console handler would add the
# task and flow tracebacks. They still reach the Prefect API (and UI) through its API handler.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
# Dask's own warnings (a worker restarted, say) likewise stay out of a sharded run's terminal.
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")

if TYPE_CHECKING:
    from flows.pipeline import RunSummary
    from flows.store import Store


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=None,
                        help="directory with leads and activities (CSV or Parquet), or a postgresql:// URI "
                             "(password in FUNNEL_DB_PASSWORD); default: the config's source.uri, else data/sample")
    _output_options(parser)
    parser.add_argument("--config", type=Path, default=None, help="funnel rules (TOML); shipped defaults if absent")
    parser.add_argument("--timezone", default=None, help="IANA zone; overrides the config's")
    parser.add_argument("--workers", type=int, default=None,
                        help="shard the replay on a local Dask cluster of N processes (default: the config's "
                             "dask.workers, else one process)")
    parser.add_argument("--dask-address", default=None,
                        help="shard the replay on an existing Dask cluster (tcp://host:port)")
    parser.add_argument("--shards", type=int, default=None,
                        help="split the leads into N shards (default: the config's run.shards, else by input size)")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="memory budget that sets the number of shards (default: the config's run.memory_gb, "
                             "else 60%% of the machine's or memory cgroup's memory)")
    parser.add_argument("--force", action="store_true",
                        help="publish even when the input looks collapsed (see [guard] in the config)")


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default=None,
                        help="output location: a directory or s3://bucket/prefix (gs://, az://), credentials from "
                             "the environment (default: the config's output.location, else data/output)")
    parser.add_argument("--format", dest="output_format", choices=("parquet", "delta"), default=None,
                        help="parquet directories (local only) or Delta Lake tables (default: the config's "
                             "output.format, else parquet)")


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
    _output_options(report)
    report.add_argument("--config", type=Path, default=None)
    report.add_argument("--timezone", default=None)

    deploy = sub.add_parser("deploy", help="create or update the nightly and backfill deployments on the Prefect "
                            "server (PREFECT_API_URL), schedule and timezone from the config")
    deploy.add_argument("--config", type=Path, default=None, help="funnel rules and run settings (TOML)")
    deploy.add_argument("--input", default=None, help="input location the runs read (no credentials)")
    deploy.add_argument("--output", default=str(DEFAULT_OUTPUT), help="output location the runs write (path or s3://...)")
    deploy.add_argument("--format", dest="output_format", choices=("parquet", "delta"), default=None,
                        help="output format of the runs (default: the config's [output] format)")
    deploy.add_argument("--pool", default="funnel", help="process work pool (created if missing)")
    deploy.add_argument("--name", default="funnel", help="deployment name")
    deploy.add_argument("--workers", type=int, default=None)
    deploy.add_argument("--dask-address", default=None)
    deploy.add_argument("--shards", type=int, default=None)

    recover = sub.add_parser("recover", help="complete (parquet) or undo (delta) a commit a crash interrupted")
    _output_options(recover)
    recover.add_argument("--config", type=Path, default=None)

    vacuum = sub.add_parser("vacuum", help="compact every Delta table and delete files older than a retention")
    _output_options(vacuum)
    vacuum.add_argument("--config", type=Path, default=None)
    vacuum.add_argument("--retention-hours", type=int, default=None,
                        help="delete unreferenced files older than this (default and minimum without --force: 168)")
    vacuum.add_argument("--force", action="store_true", help="allow a retention shorter than 168 hours")

    catalog = sub.add_parser("catalog", help="write DuckDB views (funnel_views.sql) and a dbt sources.yml for the "
                             "outputs")
    _output_options(catalog)
    catalog.add_argument("--config", type=Path, default=None)
    catalog.add_argument("--to", type=Path, required=True, help="directory to write the two files into")

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
    """Prefect's temporary API server for this process, started at once and bound to its life.

    Prefect would start the same server (`prefect.server.api.server:create_app` under uvicorn,
    UI off) on the first flow run, after importing its whole server package in this process
    first (about 4 s). Spawned here instead, at the very start of the command, it comes up while
    this process imports Polars and the pipeline, and the flow is pointed at it through
    PREFECT_API_URL (local Dask workers too). If this process is killed (SIGKILL, the
    out-of-memory killer), the kernel's parent-death signal ends the server: it is started from
    the main thread, which lives as long as the process.
    """

    _current: ClassVar[TemporaryApi | None] = None  # one per process, reused by every run in it

    def __init__(self) -> None:
        # The same environment Prefect would give it; the server reads the same profile and
        # settings files as this process, from the same environment and directory. Block types
        # are not registered (nor their registry hashed, about a second of CPU): no flow here
        # uses blocks, and a real server registers them when it starts.
        self._env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                     "PREFECT__SERVER_FINAL": "1", "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
                     "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false"}
        spec = importlib.util.find_spec("prefect")  # found, not imported
        self._app_dir = str(Path(spec.origin).parent.parent) if spec and spec.origin else "."
        self._timeout = 120.0
        self._ready = False
        self._spawn()

    def _spawn(self) -> None:
        import socket
        import subprocess

        with socket.socket() as probe:  # a free port; uvicorn exits with 3 if it was taken meanwhile
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", self._app_dir,
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=self._env, preexec_fn=_die_with_parent)

    def wait(self) -> str:
        """Block until the server answers; its API URL."""
        import urllib.request

        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy
        deadline = time.monotonic() + self._timeout
        while not self._ready:
            code = self.process.poll()
            if code == 3:  # the port was taken: try another
                self._spawn()
            elif code is not None:
                raise RuntimeError(f"Prefect's temporary API server exited with code {code}")
            elif time.monotonic() > deadline:
                self.process.terminate()
                raise RuntimeError(f"Prefect's temporary API server did not answer within {self._timeout} s "
                                   "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")
            try:
                with direct.open(f"{self.url}/health", timeout=2) as response:
                    self._ready = response.status == 200
            except OSError:
                time.sleep(0.05)
        return self.url

    def stop(self) -> None:
        """End the server (at exit of a process that did not end through `entry`)."""
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @classmethod
    def start(cls) -> TemporaryApi | None:
        """The temporary API, where no Prefect server is configured; started once per process.

        Spawned before Prefect is imported (about a second) unless PREFECT_API_URL is set; if
        Prefect's settings then name a server after all (a profile), it is stopped again.
        """
        if cls._current is not None and cls._current.process.poll() is None:
            return cls._current
        if os.environ.get("PREFECT_API_URL"):
            return None
        server = TemporaryApi()
        from prefect.settings import get_current_settings

        settings = get_current_settings()
        if settings.api.url or not settings.server.ephemeral.enabled:
            server.stop()
            return None
        server._timeout = settings.server.ephemeral.startup_timeout_seconds
        for key in ("NO_PROXY", "no_proxy"):  # the server is on this machine: never reach it through a proxy
            os.environ[key] = ",".join(filter(None, [os.environ.get(key), "127.0.0.1"]))
        cls._current = server
        atexit.register(server.stop)
        return server


def _run(args: argparse.Namespace, server: TemporaryApi | None) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.pipeline import backfill, nightly

    if server is not None:
        # What the run would load lazily, loaded while the server comes up (about 1.1 s): the
        # client's request encoder (FastAPI), pandera's Polars checks and the report's charts.
        import fastapi.encoders  # noqa: F401
        import pandera.backends.polars.builtin_checks  # noqa: F401

        from flows.report import prepare

        prepare()
    # Heartbeats tell a lasting server that a run crashed; the temporary API ends with the run, so
    # none are sent to it (the flow's end waited up to a second for the heartbeat thread's sleep).
    api = {PREFECT_API_URL: server.wait(), PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None} if server is not None else {}
    started = time.perf_counter()
    if args.input and args.input.startswith(("postgresql://", "postgres://")):
        from flows.settings import database_uri_without_password

        database_uri_without_password(args.input)  # before the URI reaches Prefect as a parameter
    if args.output:
        from flows.settings import output_location

        output_location(args.output, "--output")  # likewise: a URI holding a credential never becomes a parameter
    common = {"input_location": args.input, "force": args.force, "shards": args.shards, "output_dir": args.output,
              "output_format": args.output_format,
              "config_path": str(args.config) if args.config else None, "timezone": args.timezone,
              "workers": args.workers, "dask_address": args.dask_address, "memory_gb": args.memory_gb}
    with temporary_settings(updates=api):
        if args.command == "run":
            summary = nightly(as_of=args.as_of, **common)
        else:
            from rich.progress import Progress

            with Progress(transient=True) as progress:
                days = (args.end - args.start).days + 1
                bar = progress.add_task("writing partitions", total=days)
                summary = backfill(start=args.start, end=args.end, on_day=lambda _d: progress.advance(bar),
                                   **common)
    _print_summary(summary, time.perf_counter() - started)


def _store(args: argparse.Namespace) -> tuple[Store, str, str]:
    """The output store the command line (or the config's `[output]`) names, its location and format."""
    from flows.settings import load_settings, output_location
    from flows.store import open_store

    output = load_settings(args.config).run.output
    location = output_location(str(args.output or output.location or DEFAULT_OUTPUT), "--output")
    output_format = args.output_format or output.format
    store = open_store(location, output_format)
    return store, store.location, output_format


def _report(args: argparse.Namespace) -> None:
    from flows.report import latest_manifest, write_report
    from flows.settings import load_config

    store, location, _ = _store(args)
    manifests = store.manifests()
    if not manifests:
        raise ValueError(f"{location}: no runs yet; run `funnel run` first")
    manifest = latest_manifest(store, args.as_of) if args.as_of else manifests[-1]
    print(f"report: {write_report(store, None, manifest, load_config(args.config, args.timezone))}")


def _deploy(args: argparse.Namespace) -> None:
    from flows.deployment import deploy, deploy_report

    deployed = deploy(args.config, args.input, args.output, args.pool, args.name, args.workers, args.dask_address,
                      args.shards, args.output_format)
    print("\n".join(deploy_report(deployed, args.pool)))


def _recover(args: argparse.Namespace) -> None:
    store, location, _ = _store(args)
    with store.locked():
        done = store.recover()
    print(f"funnel recover: {'recovered an interrupted commit' if done else 'nothing to recover'} in {location}")


def _vacuum(args: argparse.Namespace) -> None:
    from flows.delta import SAFE_RETENTION_HOURS, DeltaStore

    store, location, _ = _store(args)
    if not isinstance(store, DeltaStore):
        raise ValueError(f"{location}: vacuum maintains Delta tables (--format delta); Parquet keeps no old files")
    hours = SAFE_RETENTION_HOURS if args.retention_hours is None else args.retention_hours
    with store.locked():
        done = store.vacuum(hours, args.force)
    for name, (compacted, deleted) in done.items():
        print(f"  {name:<28} compacted {compacted:>5} files  deleted {deleted:>5} files")
    print(f"funnel vacuum: {len(done)} tables in {location}, retention {hours} h")


def _catalog(args: argparse.Namespace) -> None:
    from flows.settings import load_config
    from flows.views import write_catalog

    _, location, output_format = _store(args)
    for path in write_catalog(location, output_format, load_config(args.config), args.to):
        print(f"wrote {path}")


def _serve(args: argparse.Namespace) -> None:
    from flows.deployment import nightly_deployment

    # Deployments take a local output directory; the format comes from the config's [output].
    output = Path(args.output) if args.output else DEFAULT_OUTPUT
    deployment = nightly_deployment(args.input, output, args.config, args.timezone, args.cron,
                                    args.workers, args.dask_address)
    from prefect import serve

    serve(deployment)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `funnel` console script."""
    args = _parser().parse_args(argv)
    # SIGTERM (a scheduler stopping the job) ends a run like Ctrl-C: nothing published, lock released.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = TemporaryApi.start() if args.command in ("run", "backfill") else None
    from flows.delta import OutputStoreError
    from flows.inputs import InputError
    from flows.pipeline import CollapsedInputError
    from flows.quality import QualityError
    from flows.store import NotAtomicError, RunLockedError
    from transforms.rules import ConfigError

    commands = {"generate": _generate, "serve": _serve, "report": _report, "recover": _recover, "vacuum": _vacuum,
                "catalog": _catalog, "deploy": _deploy}
    try:
        if args.command in commands:
            commands[args.command](args)
        else:
            _run(args, server)
    except (InputError, ConfigError, RunLockedError, CollapsedInputError, NotAtomicError, OutputStoreError,
            ValueError, FileNotFoundError) as exc:
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


def entry() -> None:
    """The console script: `main`, then a quick exit where this process ran Prefect's temporary API.

    That server and everything sent to it end with this process anyway, so after the exit
    handlers (Prefect's flushes) ran, tearing down the interpreter's modules and threads is
    skipped: about a second of every run.
    """
    code = main()
    server = TemporaryApi._current
    if server is not None:
        atexit.unregister(server.stop)  # its parent-death signal stops it, without waiting for its shutdown
        atexit._run_exitfuncs()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
