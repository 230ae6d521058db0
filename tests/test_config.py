"""The funnel config: shipped defaults load, bad configs are refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.io import load_config
from tests.conftest import CUSTOM_CONFIG
from transforms.config import ConfigError, DaskConfig, parse_config_text


def test_shipped_defaults_match_the_spec() -> None:
    """Section 2 of the spec, as loaded from flows/default_config.toml."""
    config = load_config(None)
    assert config.timezone == "UTC"
    assert [(s.name, s.owner_team) for s in config.stages] == [
        ("lead", "marketing"), ("mql", "marketing"), ("sal", "sales"), ("sql", "sales"), ("closed_won", "sales")]
    assert (config.window_days, config.mql_threshold, config.score_target) == (90, 40, "mql")
    assert dict(config.points) == {"page_view": 1, "email_open": 1, "email_click": 3, "pricing_page_view": 5,
                                   "content_download": 8, "form_submit": 10, "webinar_attended": 10,
                                   "demo_request": 25}
    assert dict(config.promotions) == {"sales_accepted": "sal", "opportunity_created": "sql",
                                       "closed_won": "closed_won"}
    assert dict(config.demotions) == {"sales_rejected": "mql", "closed_lost": "mql"}
    assert (config.terminal, config.cohort_maturity_days) == (("closed_won",), 90)
    assert len(config.catalogue) == 15


@pytest.mark.parametrize(("change", "message"), [
    (('sales_accepted = "sal"', 'sales_accepted = "won"'), "unknown stage 'won'"),
    (('page_view = 2', 'page_scroll = 2'), "unknown activity type 'page_scroll'"),
    (('fit = "employee_count >= 10"', 'fit = "headcount >= 10"'), "does not parse"),
    (('fit = "employee_count >= 10"', 'fit = "employee_count >= \'ten\'"'), "does not parse"),
    (('fit = "employee_count >= 10"', 'fit = "employee_count + 1"'), "not a boolean"),
    (('timezone = "Europe/Berlin"', 'timezone = "Mars/Olympus"'), "not an IANA zone"),
    (('stages = ["closed_won"]', 'stages = ["closed_lost"]'), "unknown stage 'closed_lost'"),
    (('owner_team = "sales"', 'owner_team = "finance"'), "owner_team 'finance'"),
    (('[cohorts]', '[cohort]'), "unknown key"),
])
def test_bad_configs_are_refused(change: tuple[str, str], message: str) -> None:
    """Unknown stage, activity type, column or key, and unparsable predicates: one clear error."""
    old, new = change
    assert old in CUSTOM_CONFIG
    with pytest.raises(ConfigError, match=message):
        parse_config_text(CUSTOM_CONFIG.replace(old, new, 1))


def test_config_file_errors(tmp_path: Path) -> None:
    """A missing file or broken TOML is a ConfigError naming the problem."""
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("timezone = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_timezone_override_changes_only_the_zone() -> None:
    """--timezone replaces the config's zone and nothing else."""
    base = load_config(None)
    berlin = load_config(None, "Europe/Berlin")
    assert berlin.timezone == "Europe/Berlin"
    assert (berlin.stages, berlin.points, berlin.fit) == (base.stages, base.points, base.fit)


def test_dask_settings_from_config_and_command_line() -> None:
    """[dask] picks the executor; --workers / --dask-address override it; bad values are refused."""
    assert not load_config(None).dask.enabled
    config = parse_config_text(CUSTOM_CONFIG + '\n[dask]\nworkers = 3\n')
    assert (config.dask.enabled, config.dask.shard_count) == (True, 3)
    remote = config.dask.overridden(None, "tcp://10.0.0.5:8786")
    assert (remote.address, remote.shard_count) == ("tcp://10.0.0.5:8786", 8)
    assert config.dask.overridden(0, None).enabled is False
    remote_config = parse_config_text(CUSTOM_CONFIG + '\n[dask]\naddress = "tcp://10.0.0.5:8786"\n')
    assert remote_config.dask.overridden(2, None) == DaskConfig(workers=2)  # --workers means a local cluster
    with pytest.raises(ConfigError, match="either --workers or --dask-address"):
        config.dask.overridden(2, "tcp://10.0.0.5:8786")
    with pytest.raises(ConfigError, match="not a Dask scheduler address"):
        config.dask.overridden(None, "10.0.0.5:8786")
    assert parse_config_text(CUSTOM_CONFIG + '\n[dask]\nworkers = 2\nshards = 6\n').dask.shard_count == 6
    with pytest.raises(ConfigError, match="not a Dask scheduler address"):
        parse_config_text(CUSTOM_CONFIG + '\n[dask]\naddress = "10.0.0.5:8786"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config_text(CUSTOM_CONFIG + '\n[dask]\nthreads = 2\n')
    with pytest.raises(ConfigError, match="must be >= 0"):
        parse_config_text(CUSTOM_CONFIG + '\n[dask]\nworkers = -1\n')
