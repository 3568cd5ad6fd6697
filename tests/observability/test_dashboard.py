"""The Grafana dashboard: it parses, every query names only metrics the service exports, every query
is valid PromQL (promtool), and every metric the service exports has a panel."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.test_dashboard_promql import (
    exported_families,
    exported_names,
    metric_names,
    require_binary,
    substitute_grafana,
)
from tests.paths import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "cleanroom-dashboard.json"
SECTIONS = ("Service health", "Jobs", "Privacy budgets", "Sandboxes", "Key broker", "Authentication", "Notifications")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expression) for every panel target and every query variable."""
    found = [(panel["title"], target["expr"]) for panel in _panels(dashboard["panels"])
             for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append((f"${variable['name']}", query["query"] if isinstance(query, dict) else query))
    return found


def test_dashboard_has_the_sections_and_unique_ids(dashboard) -> None:
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == list(SECTIONS)
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    for panel in _panels(dashboard["panels"]):
        if panel["type"] != "row":
            assert panel["targets"] and panel.get("description"), panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_query_names_only_exported_metrics(dashboard) -> None:
    exported = exported_names()
    queries = _queries(dashboard)
    assert len(queries) > 20
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        assert names <= exported, f"{where}: {sorted(names - exported)} not exported by cleanroom.observability.metrics"


def test_every_exported_metric_has_a_panel(dashboard) -> None:
    used = set().union(*(metric_names(expr) for _, expr in _queries(dashboard)))
    missing = [family for family, series in exported_families().items() if not series & used]
    assert not missing, f"metrics with no panel: {missing}"


def test_every_query_is_valid_promql(dashboard, tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana variables replaced)."""
    promtool = require_binary("promtool")
    rules = [{"record": f"cleanroom:dashboard_query_{i}", "expr": substitute_grafana(expr)}
             for i, (_, expr) in enumerate(_queries(dashboard)) if not expr.lstrip().startswith("label_values(")]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_budget_panels_cover_spent_and_remaining_per_dataset(dashboard) -> None:
    budget = [(panel["title"], t["expr"]) for panel in _panels(dashboard["panels"]) for t in panel.get("targets", [])
              if "cleanroom_privacy_epsilon" in t["expr"]]
    exprs = " ".join(expr for _, expr in budget)
    assert "cleanroom_privacy_epsilon_spent" in exprs and "cleanroom_privacy_epsilon_remaining" in exprs
    assert all("by (dataset)" in expr for _, expr in budget)  # one line per dataset, not one per replica
