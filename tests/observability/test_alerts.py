"""Alert rules: promtool accepts them and their unit tests pass, each alert is tested firing and not
firing, each says what it means and what to do, and each names only metrics the service exports."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.observability.test_dashboard_promql import exported_names, metric_names, require_binary
from tests.paths import REPO_ROOT

RULES_DIR = REPO_ROOT / "deploy" / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"
ALERT_TESTS = RULES_DIR / "alerts_test.yml"
EXPECTED = {
    "CleanroomDown", "CleanroomMetricsAbsent", "CleanroomHighRpcErrorRate", "CleanroomPrivacyBudgetNearlyExhausted",
    "CleanroomKeyBrokerRefusals", "CleanroomJobsFailing", "CleanroomJobsStuck", "CleanroomSandboxKills",
    "CleanroomSandboxStartFailures",
}


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _cases() -> list[dict[str, Any]]:
    return [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]


def test_promtool_checks_the_rules() -> None:
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "test", "rules", ALERT_TESTS.name], cwd=RULES_DIR,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_expected_alerts_exist_once_each() -> None:
    names = [rule["alert"] for rule in _alerts()]
    assert sorted(names) == sorted(EXPECTED)


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing = {case["alertname"] for case in _cases() if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in _cases() if not case.get("exp_alerts")}
    for name in EXPECTED:
        assert name in firing, f"{name} is never tested firing"
        assert name in quiet, f"{name} is never tested staying quiet"


@pytest.mark.parametrize("rule", _alerts(), ids=lambda rule: rule["alert"])
def test_alert_says_what_it_means_and_what_to_do(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    assert set(annotations) >= {"summary", "description"}
    assert 10 <= len(annotations["summary"]) <= 120
    assert len(annotations["description"]) >= 150, "the description must say what to do, not just what happened"


@pytest.mark.parametrize("rule", _alerts(), ids=lambda rule: rule["alert"])
def test_alert_names_only_exported_metrics(rule: dict[str, Any]) -> None:
    names = metric_names(rule["expr"])
    assert names, rule["expr"]
    assert names <= exported_names(), f"{sorted(names - exported_names())} not exported by cleanroom.observability.metrics"


def test_specific_expressions() -> None:
    """The issue's definitions, so an edit cannot quietly change what an alert watches."""
    by_name = {rule["alert"]: rule for rule in _alerts()}
    assert by_name["CleanroomDown"]["expr"].strip() == 'up{job="cleanroom"} == 0'
    assert by_name["CleanroomDown"]["for"] == "2m"
    assert "increase(cleanroom_sandbox_kills_total" in by_name["CleanroomSandboxKills"]["expr"]
    assert "[15m]" in by_name["CleanroomSandboxKills"]["expr"]
    assert 'decision="refused"' in by_name["CleanroomKeyBrokerRefusals"]["expr"]
    assert 'outcome!="released"' in by_name["CleanroomJobsFailing"]["expr"]
    budget = by_name["CleanroomPrivacyBudgetNearlyExhausted"]["expr"]
    assert "cleanroom_privacy_epsilon_remaining" in budget and "cleanroom_privacy_epsilon_cap" in budget and "0.10" in budget
