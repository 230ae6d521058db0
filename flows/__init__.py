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
}.items():
    os.environ.setdefault(_key, _value)
