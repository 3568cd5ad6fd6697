"""PromQL helpers for the dashboard and alert tests, and the tests of those helpers.

`metric_names` pulls the metric names out of a PromQL expression without a full parser: it removes
strings, label matchers, ranges and grouping clauses, then keeps the identifiers that are neither
keywords nor function calls. `exported_names` is every series name the service can expose, built
from cleanroom.observability.metrics itself. `promtool` finds the binary (missing: a failure, see tests/tools.py).
"""

from __future__ import annotations

import re

import pytest

from cleanroom.observability.metrics import BudgetSnapshot, Metrics
from tests import tools

# Grafana's variables, replaced by something Prometheus would accept in the same place.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "$dataset": ".*"}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "offset", "atan2", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", re.S)


def substitute_grafana(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (Grafana variables allowed)."""
    label_values = _LABEL_VALUES.match(expr)
    if label_values:
        expr = label_values.group(1)
    text = _STRING.sub('""', substitute_grafana(expr))
    text = _GROUPING.sub(" ", _RANGE.sub(" ", _MATCHERS.sub(" ", text)))
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def exported_names() -> set[str]:
    """Every series name the service can expose, from its own registry, plus Prometheus's `up`."""
    metrics = Metrics()
    metrics.watch_budgets(lambda: [BudgetSnapshot("ds-1", cap_epsilon=10, spent_epsilon=1, reserved_epsilon=0.5)])
    names = {"up"}
    for family in metrics.registry.collect():
        names.update(sample.name for sample in family.samples)
        names.update(_series_names(family.name, family.type))
    return names


def exported_families() -> dict[str, set[str]]:
    """Metric family -> the series names it exposes (a family with labels has no samples yet)."""
    metrics = Metrics()
    metrics.watch_budgets(lambda: [BudgetSnapshot("ds-1", cap_epsilon=10, spent_epsilon=1, reserved_epsilon=0.5)])
    return {family.name: _series_names(family.name, family.type) for family in metrics.registry.collect()}


def _series_names(name: str, kind: str) -> set[str]:
    if kind == "counter":
        return {f"{name}_total"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    if kind == "summary":
        return {name, f"{name}_count", f"{name}_sum"}
    return {name}


def require_binary(name: str) -> str:
    return tools.binary(name)


@pytest.mark.parametrize("expr, expected", [
    ('up{job="cleanroom"} == 0', {"up"}),
    ('histogram_quantile(0.95, sum by (le, method) (rate(cleanroom_rpc_duration_seconds_bucket{job="x"}[$__rate_interval])))',
     {"cleanroom_rpc_duration_seconds_bucket"}),
    ('sum by (job) (rate(a_total{code=~"INTERNAL|UNKNOWN"}[5m])) / sum by (job) (rate(b_total[5m])) > 0.05', {"a_total", "b_total"}),
    ('increase(kills_total[15m]) > 0 or (kills_total unless kills_total offset 15m)', {"kills_total"}),
    ('max by (dataset) (remaining{dataset=~"$dataset"}) / on (dataset) group_left max by (dataset) (cap > 0) < 1e-1', {"remaining", "cap"}),
    ('absent(up{job="cleanroom"})', {"up"}),
    ('label_values(cleanroom_privacy_epsilon_cap{job="cleanroom"}, dataset)', {"cleanroom_privacy_epsilon_cap"}),
    ('sum(rate(x_total{path="/a{b}"}[1m])) and bool y', {"x_total", "y"}),
])
def test_metric_names(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_exported_names_cover_every_family_and_the_budget_gauges() -> None:
    names = exported_names()
    assert {"up", "cleanroom_rpc_requests_total", "cleanroom_rpc_duration_seconds_bucket",
            "cleanroom_rpc_duration_seconds_count", "cleanroom_privacy_epsilon_cap",
            "cleanroom_privacy_epsilon_remaining", "cleanroom_jobs_queued"} <= names
    assert "cleanroom_rpc_requests" not in names  # a counter's bare family name is not a series
