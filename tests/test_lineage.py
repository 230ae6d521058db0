"""OpenLineage run events, received by a local HTTP server; a run whose endpoint is down still succeeds."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from flows.lineage import Lineage
from flows.settings import DEFAULT_CONFIG, load_settings
from tests.conftest import dirty_input

AS_OF = date(2026, 10, 31)


class _Collector(ThreadingHTTPServer):
    """An OpenLineage endpoint on 127.0.0.1 that keeps every event posted to it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.events: list[dict[str, Any]] = []
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        """The base URL clients are configured with."""
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.paths.append(self.path)
        self.server.events.append(json.loads(body))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[_Collector]:
    """A running endpoint, shut down after the test."""
    server = _Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def no_lineage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OpenLineage variables from the machine running the tests."""
    for name in ("OPENLINEAGE_URL", "OPENLINEAGE_ENDPOINT", "OPENLINEAGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def _refused_url() -> str:
    """A port on 127.0.0.1 where nothing listens: connection refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def _config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "lineage.toml"
    config.write_text(DEFAULT_CONFIG.read_text() + f'\n[lineage]\nurl = "{url}"\ntimeout_s = 2\n')
    return config


def _manifest(**extra: Any) -> dict[str, Any]:
    return {"run_id": "r1", "rows_written": {"transitions": 12, "metrics/daily_funnel": 5}, **extra}


@pytest.mark.usefixtures("no_lineage_env")
def test_off_by_default_sends_nothing(collector: _Collector, tmp_path: Path) -> None:
    with Lineage.start(load_settings(None), "funnel-nightly", str(tmp_path), tmp_path / "out") as lineage:
        lineage.complete(_manifest())
    assert lineage.run_id is None
    assert collector.events == []


@pytest.mark.usefixtures("no_lineage_env")
def test_env_url_fail_and_delta_version(collector: _Collector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OPENLINEAGE_URL alone turns it on; an error sends FAIL; a Delta version is a dataset version facet."""
    monkeypatch.setenv("OPENLINEAGE_URL", collector.url)
    dirty_input(tmp_path / "in", 20, seed=3, days=10)
    with pytest.raises(RuntimeError, match="boom"), Lineage.start(load_settings(None), "funnel-backfill",
                                                                  str(tmp_path / "in"), tmp_path / "out"):
        raise RuntimeError("boom\nsecond line")
    with Lineage.start(load_settings(None), "funnel-backfill", str(tmp_path / "in"), tmp_path / "out") as lineage:
        lineage.complete(_manifest(delta_versions={"transitions": 7}))

    assert collector.paths == ["/api/v1/lineage"] * 4
    assert [e["eventType"] for e in collector.events] == ["START", "FAIL", "START", "COMPLETE"]
    assert collector.events[1]["run"]["facets"]["errorMessage"]["message"] == "boom"
    outputs = {o["name"]: o for o in collector.events[3]["outputs"]}
    transitions = outputs[f"{(tmp_path / 'out').resolve()}/transitions"]
    assert transitions["facets"]["version"]["datasetVersion"] == "7"
    assert "version" not in outputs[f"{(tmp_path / 'out').resolve()}/metrics/daily_funnel"]["facets"]


@pytest.mark.usefixtures("prefect_server", "no_lineage_env")
def test_nightly_sends_start_and_complete_with_datasets(collector: _Collector, tmp_path: Path) -> None:
    """Expects run_pipeline to send START before extract and COMPLETE after the commit (see flows/lineage.py)."""
    from flows.pipeline import nightly

    inputs = dirty_input(tmp_path / "in", 100, seed=4, days=30)
    output = tmp_path / "out"
    nightly(as_of=AS_OF, input_location=str(inputs), output_dir=str(output),
            config_path=str(_config(tmp_path, collector.url)))

    start, complete = collector.events
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert start["run"]["runId"] == complete["run"]["runId"]
    assert complete["job"]["namespace"] == "funnel" and complete["job"]["name"] == "funnel-nightly"
    for event in (start, complete):
        assert [(i["namespace"], i["name"]) for i in event["inputs"]] == [
            ("file", str(inputs.resolve() / "leads.parquet")), ("file", str(inputs.resolve() / "activities.parquet"))]
        fields = {f["name"] for f in event["inputs"][1]["facets"]["schema"]["fields"]}
        assert {"activity_id", "lead_id", "occurred_at", "activity_type"} <= fields
    [manifest] = [json.loads(p.read_text()) for p in (output / "runs").glob("*.json")]
    assert manifest["lineage_run_id"] == complete["run"]["runId"]
    outputs = {o["name"]: o for o in complete["outputs"]}
    assert set(outputs) == {f"{output.resolve()}/{name}" for name in manifest["rows_written"]}
    transitions = outputs[f"{output.resolve()}/transitions"]
    assert transitions["namespace"] == "file"
    assert transitions["outputFacets"]["outputStatistics"]["rowCount"] == manifest["rows_written"]["transitions"]
    columns = {f["name"]: f for f in transitions["facets"]["schema"]["fields"]}
    assert columns["to_stage"]["description"] == "Stage after the move"


@pytest.mark.usefixtures("prefect_server", "no_lineage_env")
def test_nightly_succeeds_with_endpoint_down_and_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from flows.pipeline import nightly

    inputs = dirty_input(tmp_path / "in", 100, seed=4, days=30)
    with caplog.at_level(logging.WARNING, logger="flows.lineage"):
        summary = nightly(as_of=AS_OF, input_location=str(inputs), output_dir=str(tmp_path / "out"),
                          config_path=str(_config(tmp_path, _refused_url())))
    assert summary.written["transitions"] > 0
    [manifest] = [json.loads(p.read_text()) for p in (tmp_path / "out" / "runs").glob("*.json")]
    assert manifest["lineage_run_id"] is None
    warnings = [r for r in caplog.records if r.name == "flows.lineage"]
    assert len(warnings) == 1
    assert "unreachable" in warnings[0].getMessage()
