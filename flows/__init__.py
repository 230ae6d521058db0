"""Prefect flows and the `funnel` command: wiring and I/O only."""

import os

# Nothing outside this machine can be reached, and a nightly job should be quiet: telemetry
# off, Prefect's own logging at WARNING unless the user asks for more. Set before prefect loads.
for _key, _value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_LOG_PRINTS": "false",
}.items():
    os.environ.setdefault(_key, _value)
