"""Differentially private aggregate statistics, owned by the service (no manufacturer code).

Public API: build a `Query` (its `kind` a `StatKind`), check it with `validate_query`, price it with
`estimate_cost` / `expected_error`, and answer it with `run_query` on the decrypted table. Privacy
unit: the patient (per-patient row bounding before any mechanism). Noise: OpenDP's exact discrete
samplers only.

Importing this package, or its `query`, `kinds`, `answer` and `codec` modules, loads no numpy,
pyarrow or OpenDP (the SDK describes queries with them): the names that need those load on first
use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from cleanroom.statistics.engine.answer import Answer, Cell
from cleanroom.statistics.engine.kinds import StatKind
from cleanroom.statistics.engine.query import Filter, Query, validate_query

if TYPE_CHECKING:
    from cleanroom.statistics.engine.dryrun import estimate_cost, expected_error
    from cleanroom.statistics.engine.engine import run_query
    from cleanroom.statistics.engine.prepared import schema_from_table

_HEAVY = {
    "estimate_cost": "cleanroom.statistics.engine.dryrun",
    "expected_error": "cleanroom.statistics.engine.dryrun",
    "run_query": "cleanroom.statistics.engine.engine",
    "schema_from_table": "cleanroom.statistics.engine.prepared",
}

__all__ = [
    "Answer",
    "Cell",
    "Filter",
    "Query",
    "StatKind",
    "estimate_cost",
    "expected_error",
    "run_query",
    "schema_from_table",
    "validate_query",
]


def __getattr__(name: str) -> object:
    module = _HEAVY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
