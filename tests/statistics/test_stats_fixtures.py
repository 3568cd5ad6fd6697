"""Shared, deterministic datasets for the statistics tests (no tests of its own)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

CANARY = "CANARY-7f3a91"
BANDS = ["20-29", "30-39", "40-49", "50-59", "60-69"]


def vitals(*, patients: int = 1000, rows_per_patient: int = 1, seed: int = 0) -> pa.Table:
    """`rows_per_patient` rows for each of `patients` patients; every column is de-identified."""
    rng = np.random.default_rng(seed)
    n = patients * rows_per_patient
    pid = np.repeat(np.arange(patients), rows_per_patient)
    band = np.asarray(BANDS)[pid % len(BANDS)]
    return pa.table(
        {
            "patient": pa.array([f"p{i:06d}" for i in pid], pa.string()),
            "age_band": pa.array(band, pa.string()),
            "heart_rate": pa.array(rng.normal(70.0, 10.0, n), pa.float64()),
            "steps": pa.array(rng.integers(0, 20_000, n), pa.int64()),
            "smoker": pa.array(rng.random(n) < 0.25, pa.bool_()),
            "visit": pa.array([dt.date(2024, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 365, n)], pa.date32()),
        }
    )


def with_patient(table: pa.Table, *, patient: str, rows: int, band: str = "40-49", heart_rate: float = 200.0) -> pa.Table:
    """`table` plus one patient contributing `rows` identical rows."""
    extra = pa.table(
        {
            "patient": pa.array([patient] * rows, pa.string()),
            "age_band": pa.array([band] * rows, pa.string()),
            "heart_rate": pa.array([heart_rate] * rows, pa.float64()),
            "steps": pa.array([1000] * rows, pa.int64()),
            "smoker": pa.array([True] * rows, pa.bool_()),
            "visit": pa.array([dt.date(2024, 6, 1)] * rows, pa.date32()),
        }
    )
    return pa.concat_tables([table, extra.cast(table.schema)])
