"""Column types shared by the schema modules."""

from typing import Any

import polars as pl

UTC_US: dict[str, Any] = {"time_zone": "UTC", "time_unit": "us"}
TEXT_LIST: dict[str, Any] = {"inner": pl.String}
