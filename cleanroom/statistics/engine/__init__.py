"""Differentially private aggregate statistics, owned by the service (no manufacturer code).

Public API: build a `Query`, check it with `validate_query`, price it with `estimate_cost` /
`expected_error`, and answer it with `run_query` on the decrypted table. Privacy unit: the patient
(per-patient row bounding before any mechanism). Noise: OpenDP's exact discrete samplers only.
"""

from cleanroom.statistics.engine.answer import Answer, Cell
from cleanroom.statistics.engine.dryrun import estimate_cost, expected_error
from cleanroom.statistics.engine.engine import run_query
from cleanroom.statistics.engine.prepared import schema_from_table
from cleanroom.statistics.engine.query import Filter, Query, validate_query

__all__ = [
    "Answer",
    "Cell",
    "Filter",
    "Query",
    "estimate_cost",
    "expected_error",
    "run_query",
    "schema_from_table",
    "validate_query",
]
