"""Prefect flows and the `funnel` command: wiring and I/O only."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_INPUT = REPO / "data" / "sample"  # the shipped sample, so a bare `funnel run` works
DEFAULT_OUTPUT = REPO / "data" / "output"  # git-ignored

# Nothing outside this machine can be reached, and a nightly job should be quiet: telemetry
# off, Prefect's own logging at WARNING unless the user asks for more. Set before prefect loads.
for _key, _value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_LOG_PRINTS": "false",
    # A fresh PREFECT_HOME migrates its SQLite database before the temporary server answers;
    # on two busy cores that passed Prefect's 20 s default and failed the first run.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # Polars' allocator (jemalloc) hands freed pages back to the kernel after about a second, and
    # the next shard's frames fault them in again, zeroed: at 1M/20M, 2.7M page faults and 12 s of
    # system time. Kept ten seconds as lazily freed pages (MADV_FREE: reused without a fault,
    # still reclaimed by the kernel under memory pressure), 1.5M faults and 8-9 s. Polars appends
    # this to its own settings, so these win; read when Polars is first imported.
    "_RJEM_MALLOC_CONF": "muzzy_decay_ms:10000",
}.items():
    os.environ.setdefault(_key, _value)
