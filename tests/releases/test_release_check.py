"""ε of a statistics receipt ("basic" accountant) recomputed from its mechanism parameters alone:
for every statistic kind, noise and step the engine runs, its steps' ε add up to the answer's."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cleanroom.jobs.release import canonical_parameters
from cleanroom.sdk.release_check import basic_composition_epsilon
from cleanroom.statistics.engine import Query
from cleanroom.statistics.engine.engine import run_query

BOUNDS = (0.0, 50.0)
QUERIES = [
    Query(kind="count", epsilon=0.7),
    Query(kind="sum", column="x", epsilon=1.0, bounds=BOUNDS),
    Query(kind="mean", column="x", epsilon=1.3, bounds=BOUNDS),
    Query(kind="variance", column="x", epsilon=1.0, bounds=BOUNDS),
    Query(kind="mean", column="x", epsilon=1.0, estimate_bounds=True),
    Query(kind="quantile", column="x", epsilon=0.9, bounds=BOUNDS),
    Query(kind="histogram", column="x", epsilon=1.0, bins=(0.0, 10.0, 50.0)),
    Query(kind="mean", column="x", group_by="g", epsilon=1.0, delta=1e-6, bounds=BOUNDS),
    Query(kind="mean", column="x", epsilon=1.0, delta=1e-6, noise="gaussian", bounds=BOUNDS),
]


@pytest.fixture(scope="module")
def table() -> pa.Table:
    rng = np.random.default_rng(7)
    rows = 2000
    return pa.table({"pid": [f"p{i}" for i in range(rows)], "x": rng.uniform(0, 50, rows), "g": rng.choice(["a", "b", "c"], rows)})


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: f"{q.kind}-{q.noise}")
def test_the_steps_epsilons_add_up_to_the_answers(table: pa.Table, query: Query) -> None:
    answer = run_query(table, query, patient_column="pid")
    signed = canonical_parameters(dict(answer.mechanism.parameters))  # as the receipt holds them: decimal text
    assert basic_composition_epsilon(signed) == pytest.approx(answer.epsilon, abs=1e-6)
    halved = {key: (str(float(value) / 2) if key.endswith(".epsilon") else value) for key, value in signed.items()}
    assert abs(basic_composition_epsilon(halved) - answer.epsilon) > 1e-3  # a changed parameter shows


def test_parameters_without_any_step_are_refused() -> None:
    with pytest.raises(ValueError):
        basic_composition_epsilon({"rows_per_patient": "1"})
