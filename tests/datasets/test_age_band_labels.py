"""An age band's public key space (AgeBand.labels) holds every band intake can produce."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.datasets.transforms import _generalize as generalize  # the intake step itself
from cleanroom.domain.deid import AgeBand, ColumnRole, ColumnSpec, ColumnType


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 30), top=st.integers(1, 120), ages=st.lists(st.integers(0, 130), min_size=1, max_size=200))
def test_every_generalised_age_is_one_of_the_rules_labels(width: int, top: int, ages: list[int]) -> None:
    rule = AgeBand(width=width, top_code=top)
    column = ColumnSpec("age", ColumnType.INTEGER, ColumnRole.QUASI_IDENTIFIER, rule)
    produced = set(generalize(pa.array(ages, pa.int64()), column, 0).to_pylist())
    labels = rule.labels()
    assert produced <= set(labels) and len(labels) == len(set(labels))


def test_the_labels_of_the_demo_rule() -> None:
    assert AgeBand(width=10, top_code=80).labels() == ["0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80+"]
