"""The funnel config: shipped defaults load, bad configs are refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.settings import DaskConfig, load_config, load_settings, parse_settings_text
from tests.conftest import CUSTOM_CONFIG
from transforms.rules import ConfigError


def parse_config_text(text: str) -> object:
    return parse_settings_text(text)


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
    assert len(config.catalogue) == 16 and "owner_assigned" in config.catalogue
    assert config.points.get("owner_assigned", 0) == 0 and config.assignment_types == ("owner_assigned",)
    assert config.personal_columns == ("email", "company") and config.slas == ()


@pytest.mark.parametrize(("change", "message"), [
    (('sales_accepted = "sal"', 'sales_accepted = "won"'), "unknown stage 'won'"),
    (('page_view = 2', 'page_scroll = 2'), "unknown activity type 'page_scroll'"),
    (('fit = "employee_count >= 10"', 'fit = "headcount >= 10"'), "does not parse"),
    (('fit = "employee_count >= 10"', 'fit = "employee_count >= \'ten\'"'), "does not parse"),
    (('fit = "employee_count >= 10"', 'fit = "employee_count + 1"'), "not a boolean"),
    (('timezone = "Europe/Berlin"', 'timezone = "Mars/Olympus"'), "not an IANA zone"),
    (('stages = ["closed_won"]', 'stages = ["closed_lost"]'), "unknown stage 'closed_lost'"),
    (('owner_team = "sales"', 'owner_team = "finance"'), "owner_team: Input should be 'marketing' or 'sales'"),
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
    assert not load_settings(None).run.dask.enabled
    run = parse_settings_text(CUSTOM_CONFIG + '\n[dask]\nworkers = 3\n').run
    assert run.dask.enabled and run.dask.workers == 3
    remote = run.dask.overridden(None, "tcp://10.0.0.5:8786")
    assert remote.address == "tcp://10.0.0.5:8786"
    assert run.dask.overridden(0, None).enabled is False
    remote_run = parse_settings_text(CUSTOM_CONFIG + '\n[dask]\naddress = "tcp://10.0.0.5:8786"\n').run
    assert remote_run.dask.overridden(2, None) == DaskConfig(workers=2)  # --workers means a local cluster
    with pytest.raises(ConfigError, match="either --workers or --dask-address"):
        run.dask.overridden(2, "tcp://10.0.0.5:8786")
    with pytest.raises(ConfigError, match="not a Dask scheduler address"):
        run.dask.overridden(None, "10.0.0.5:8786")
    assert parse_settings_text(CUSTOM_CONFIG + '\n[run]\nshards = 6\n').run.shards == 6
    with pytest.raises(ConfigError, match="not a Dask scheduler address"):
        parse_settings_text(CUSTOM_CONFIG + '\n[dask]\naddress = "10.0.0.5:8786"\n')
    with pytest.raises(ConfigError, match=r"dask\.threads: unknown key"):
        parse_settings_text(CUSTOM_CONFIG + '\n[dask]\nthreads = 2\n')
    with pytest.raises(ConfigError, match="greater than or equal to 0"):
        parse_settings_text(CUSTOM_CONFIG + '\n[dask]\nworkers = -1\n')


@pytest.mark.parametrize(("change", "message"), [
    (("[scoring.points]", "[scoring.point]"), r"scoring\.point: unknown key"),
    (("window_days = 7", "window_day = 7"), r"scoring\.window_day: unknown key"),
    (("mql_threshold = 12", "mql_treshold = 12"), r"scoring\.mql_treshold: unknown key"),
    (("page_view = 2", "page_view = 1.7"), r"scoring\.points\.page_view: Input should be a valid integer"),
    (("mql_threshold = 12", 'mql_threshold = "forty"'), r"scoring\.mql_threshold: Input should be a valid integer"),
    (("window_days = 7", "window_days = 1e8"), r"scoring\.window_days: Input should be a valid integer"),
    (("window_days = 7", "window_days = 100000000"), r"scoring\.window_days: Input should be less than"),
    (("catalogue = [", "catalog = ["), r"activities\.catalog: unknown key"),
    (("maturity_days = 30", "maturity_day = 30"), r"cohorts\.maturity_day: unknown key"),
    (('stages = ["closed_won"]', 'stage = ["closed_won"]'), r"terminal\.stage: unknown key"),
    (('name = "closed_won"', 'name = "closed won"'), r"stages\.5\.name: String should match pattern"),
    (("[cohorts]", "[cohort]"), "cohort: unknown key"),
])
def test_config_typos_are_refused_at_every_level(change: tuple[str, str], message: str) -> None:
    """A typo anywhere is refused with the key named, never silently defaulted or truncated."""
    old, new = change
    assert old in CUSTOM_CONFIG
    with pytest.raises(ConfigError, match=message):
        parse_settings_text(CUSTOM_CONFIG.replace(old, new, 1))


@pytest.mark.parametrize(("extra", "message"), [
    ('[schedule]\ncorn = "0 2 * * *"\n', r"schedule\.corn: unknown key"),
    ('[guard]\nmin_lead_ratio = 2\n', r"guard\.min_lead_ratio: Input should be less than or equal to 1"),
    ('[source]\nuri = "postgresql://u:secret@h/db"\n', "holds a credential"),
    ('[source]\nuri = "postgresql://u@h/db?password=secret"\n', "holds a credential"),
    ('[[sla]]\nstage = "won"\nwithin_hours = 4\n', r"sla\[0\]\.stage names unknown stage 'won'"),
    ('[[sla]]\nstage = "mql"\nwithin_hours = 0\n', r"sla\.0\.within_hours: Input should be greater than 0"),
    ('[[sla]]\nstage = "mql"\nwithin_hours = 4\nmet_by = ["call"]\n', "unknown activity type 'call'"),
    ('[[sla]]\nstage = "mql"\nwithin_hours = 4\n[[sla]]\nstage = "mql"\nwithin_hours = 8\n',
     "two \\[\\[sla\\]\\] entries for one stage"),
    ('[owners]\nassignment_types = ["handover"]\n', "owners.assignment_types names unknown activity type"),
    ('[privacy]\npersonal_columns = ["phone"]\n', r"personal_columns names unknown column\(s\) \['phone'\]"),
])
def test_bad_settings_and_sections_are_refused(extra: str, message: str) -> None:
    """Run settings, SLAs, owners and privacy are checked like the rules."""
    with pytest.raises(ConfigError, match=message):
        parse_settings_text(CUSTOM_CONFIG + "\n" + extra)


def test_a_custom_catalogue_without_assignments_has_none() -> None:
    """The default assignment type belongs to the default catalogue; another company's may lack it."""
    rules = parse_settings_text(CUSTOM_CONFIG).rules
    assert rules.assignment_types == ()
    sla_text = '\n[[sla]]\nstage = "mql"\nwithin_hours = 48\nmet_by = ["sales_accepted"]\n'
    sla = parse_settings_text(CUSTOM_CONFIG + sla_text)
    assert [(s.stage, s.within_hours, s.met_by) for s in sla.rules.slas] == [("mql", 48.0, ("sales_accepted",))]


def test_rules_hash_ignores_run_settings() -> None:
    """Changing the schedule or executor never restates history; changing a rule does."""
    base = parse_settings_text(CUSTOM_CONFIG).rules.config_hash
    assert parse_settings_text(CUSTOM_CONFIG + '\n[schedule]\ncron = "0 3 * * *"\n').rules.config_hash == base
    changed = CUSTOM_CONFIG.replace("mql_threshold = 12", "mql_threshold = 13")
    assert parse_settings_text(changed).rules.config_hash != base
