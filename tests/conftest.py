"""Shared fixtures: configs, the worked example, one Prefect test server per session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

import flows  # noqa: F401  (quiet Prefect settings before prefect loads)
from flows.settings import DEFAULT_CONFIG, parse_settings_text
from synthetic.generate import generate, write_inputs
from transforms.rules import FunnelConfig

# Tests never write into the working tree: no hypothesis example database, and its
# constants cache goes to a temporary directory instead of .hypothesis/.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="funnel-hypothesis-"))
settings.register_profile("funnel", database=None)
settings.load_profile("funnel")

# Another company's funnel: an extra stage, recycling to lead, a short window, Berlin time.
CUSTOM_CONFIG = """
timezone = "Europe/Berlin"
[[stages]]
name = "lead"
owner_team = "marketing"
[[stages]]
name = "mql"
owner_team = "marketing"
[[stages]]
name = "sal"
owner_team = "sales"
[[stages]]
name = "sql"
owner_team = "sales"
[[stages]]
name = "opportunity"
owner_team = "sales"
[[stages]]
name = "closed_won"
owner_team = "sales"
[activities]
catalogue = ["page_view", "form_submit", "demo_request", "sales_accepted", "sales_rejected",
             "opportunity_created", "proposal_sent", "closed_won", "closed_lost", "unsubscribed"]
[scoring]
window_days = 7
mql_threshold = 12
target_stage = "mql"
fit = "employee_count >= 10"
[scoring.points]
page_view = 2
form_submit = 5
demo_request = 10
[promotions]
sales_accepted = "sal"
opportunity_created = "sql"
proposal_sent = "opportunity"
closed_won = "closed_won"
[demotions]
sales_rejected = "lead"
closed_lost = "mql"
unsubscribed = "lead"
[terminal]
stages = ["closed_won"]
[cohorts]
maturity_days = 30
"""


@pytest.fixture(scope="session")
def default_config() -> FunnelConfig:
    """The shipped defaults."""
    return parse_settings_text(DEFAULT_CONFIG.read_text()).rules


@pytest.fixture(scope="session")
def custom_config() -> FunnelConfig:
    """A non-default funnel."""
    return parse_settings_text(CUSTOM_CONFIG).rules


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect API for every flow test (starting one costs seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def repo_root() -> Path:
    """The checkout, for tests that read shipped files."""
    return Path(__file__).resolve().parent.parent


def dirty_input(directory: Path, leads: int, seed: int, days: int) -> Path:
    """A generated dirty input directory: Parquet files with text columns, as a CRM export."""
    data = generate(leads, seed=seed, dirty=True, days=days)
    write_inputs(directory, data.leads, data.activities, "parquet")
    return directory
