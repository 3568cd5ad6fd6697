"""Prometheus end to end: a real scrape of a running server passes `promtool check metrics`, and a
real Prometheus (the Debian binary) scrapes the server through a demo flow and evaluates the real
alert rules. Without the binaries the tests fail (tests/tools.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cleanroom.sdk import Client
from tests.api.test_datasets_api import _rows, _schema, _write_csv
from tests.conftest import Running, make_config, start_server
from tests.observability.test_dashboard_promql import require_binary
from tests.paths import REPO_ROOT

ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
WAIT_SECONDS = 30


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Running]:
    instance = start_server(make_config(tmp_path / "state", metrics_listen="127.0.0.1:0"))
    assert instance.server.metrics_port
    yield instance
    instance.server.stop(grace=0)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(what: str, probe: Callable[[], Any], seconds: float = WAIT_SECONDS) -> Any:
    """Polls until probe() returns something truthy; fails after `seconds` with the last answer."""
    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except OSError as error:  # Prometheus not listening yet
            last = error
        else:
            if last:
                return last
        time.sleep(0.5)
    pytest.fail(f"timed out after {seconds}s waiting for {what}; last answer: {last!r}")


def test_real_scrape_passes_promtool_check_metrics(served: Running) -> None:
    promtool = require_binary("promtool")
    with served.client(served.admin_token) as admin:
        admin.create_principal("Hospital A", "data_owner")
        admin.whoami()
    body = _get(f"http://127.0.0.1:{served.server.metrics_port}/metrics")
    assert 'cleanroom_rpc_requests_total{code="OK",method="/cleanroom.v1.AdminService/CreatePrincipal"} 1.0' in body
    assert 'method="/cleanroom.v1.IdentityService/WhoAmI"' in body
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", f"promtool lint problems:\n{result.stdout}"


def _start_prometheus(tmp_path: Path, metrics_port: int) -> tuple[subprocess.Popen, str, Path]:
    binary = require_binary("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "cleanroom", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port, log = _free_port(), tmp_path / "prometheus.log"
    process = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    return process, f"http://127.0.0.1:{port}", log


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _query(base: str, promql: str) -> list[dict[str, Any]]:
    answer = json.loads(_get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def _demo_flow(served: Running, tmp_path: Path) -> str:
    """A hospital uploads a dataset; the privacy officer sets its budget and shares it. Returns its id."""
    with served.client(served.admin_token) as admin:
        owner = admin.create_principal("Hospital A", "data_owner")
        officer = admin.create_principal("Privacy officer", "privacy_officer")
        maker = admin.create_principal("Acme devices", "manufacturer")
    with Client(served.address, owner.token) as hospital:
        dataset = hospital.upload_dataset(_write_csv(tmp_path / "vitals.csv", _rows(20, 2)), _schema())
    with Client(served.address, officer.token) as privacy:
        privacy.set_budget(dataset.name, epsilon=8, delta=1e-6, reason="hospital total")
        privacy.share_dataset(dataset.name, maker.principal.name, epsilon=3, delta=1e-6, reason="pilot study")
    return dataset.name.removeprefix("datasets/")


def test_prometheus_scrapes_the_demo_flow(served: Running, tmp_path: Path) -> None:
    process, base, log = _start_prometheus(tmp_path, served.server.metrics_port)
    try:
        _wait_for("Prometheus to be ready", lambda: "Ready" in _get(f"{base}/-/ready"))
        dataset_id = _demo_flow(served, tmp_path)
        expectations = {
            'up{job="cleanroom"} == 1': 1,
            'cleanroom_rpc_requests_total{method="/cleanroom.v1.DatasetService/UploadDataset",code="OK"}': 1,
            'cleanroom_uploads_total{outcome="stored"}': 1,
            f'cleanroom_privacy_epsilon_cap{{dataset="{dataset_id}"}}': 8,
            f'cleanroom_privacy_epsilon_remaining{{dataset="{dataset_id}"}}': 8,
        }
        for promql, minimum in expectations.items():
            result = _wait_for(promql, lambda q=promql: _query(base, q))
            assert float(result[0]["value"][1]) >= minimum, (promql, result)
        _assert_alert_rules_evaluate(base)
    except BaseException:
        print(log.read_text(errors="replace")[-4000:])
        raise
    finally:
        _stop(process)


def _assert_alert_rules_evaluate(base: str) -> None:
    """Prometheus loaded every alert of alerts.yml and evaluated each without error; none fires."""
    expected = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}

    def healthy() -> list[dict[str, Any]] | None:
        groups = json.loads(_get(f"{base}/api/v1/rules"))["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule["health"] == "ok" for rule in rules) else None

    rules = _wait_for("every alert rule to evaluate", healthy)
    assert {rule["name"] for rule in rules} == expected
    firing = [rule["name"] for rule in rules if rule["state"] == "firing"]
    assert not firing, f"alerts firing on a healthy demo: {firing}"
