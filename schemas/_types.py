"""Column types shared by the schema modules."""

from typing import Any

UTC_US: dict[str, Any] = {"time_zone": "UTC", "time_unit": "us"}
