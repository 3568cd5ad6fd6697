"""The column-wise privacy unit equals domain.cohort.unit_key row by row."""

from __future__ import annotations

import random

import pyarrow as pa

from cleanroom.domain.cohort import unit_key
from cleanroom.worker.units import unit_column


def test_the_arrow_unit_column_is_unit_key_row_by_row() -> None:
    rng = random.Random(5)
    patients = [rng.choice([None, f"p{rng.randrange(50)}"]) for _ in range(500)]
    links = [rng.choice([None, "", f"lnk-{rng.randrange(20)}"]) for _ in range(500)]
    chunked = pa.chunked_array([pa.array(patients[:200]), pa.array(patients[200:])])  # as a table's column arrives
    for index, site_links in ((0, None), (3, pa.chunked_array([pa.array(links[:200]), pa.array(links[200:])]))):
        got = unit_column(index, chunked, site_links).to_pylist()
        expected = [None if p is None else unit_key(index, p, None if site_links is None else (link or None))
                    for p, link in zip(patients, links, strict=True)]
        assert got == expected


def test_an_integer_patient_key_is_keyed_as_text() -> None:
    assert unit_column(1, pa.array([7, None]), None).to_pylist() == ["S1:7", None]
