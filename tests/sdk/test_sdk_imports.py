"""The SDK loads only what a client needs: describing a query, sending it and checking a receipt
never pull in the engine's numerical stack (OpenDP, numpy, pyarrow), the trainer (torch, Opacus) or
the server's storage. Each import runs in a fresh interpreter, so nothing another test loaded counts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.paths import REPO_ROOT

NOT_FOR_CLIENTS = ("opendp", "numpy", "pyarrow", "torch", "opacus", "sqlalchemy",
                   "cleanroom.trainer", "cleanroom.storage", "cleanroom.server", "cleanroom.statistics.engine.engine")
PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(module: str) -> set[str]:
    result = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True,
                            cwd=REPO_ROOT, check=True)
    return set(json.loads(result.stdout))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == name or m.startswith(name + ".") for name in NOT_FOR_CLIENTS))


@pytest.mark.parametrize("module", ["cleanroom.sdk", "cleanroom.sdk.stats", "cleanroom.sdk.verify"])
def test_the_sdk_loads_no_engine_trainer_or_storage(module: str) -> None:
    modules = loaded_by(module)
    assert module in modules
    assert heavy(modules) == []


def test_a_query_is_described_and_sent_as_a_message_without_the_engine() -> None:
    modules = loaded_by("cleanroom.wire.stats, cleanroom.statistics.engine.codec; "
                        "from cleanroom.statistics.engine import Filter, Query, StatKind; "
                        "from cleanroom.wire.stats import query_to_proto; "
                        "query_to_proto(Query(kind=StatKind.MEAN, column='x', bounds=(0, 1), epsilon=1.0, filters=(Filter('y', '==', 2),)))")
    assert heavy(modules) == []


def test_the_probe_sees_a_heavy_import() -> None:
    assert "numpy" in heavy(loaded_by("cleanroom.statistics.engine.engine"))
