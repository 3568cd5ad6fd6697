"""A generated wellness stream stored as intake stores one (a sealed stream table, its dataset row,
its wrapped key), for statistics tests; and the exact values the views should answer near."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cleanroom import crypto
from cleanroom.crypto.sealed_table import SealedTableWriter
from cleanroom.domain.datasets import Dataset, IntakeReport, new_dataset_id
from cleanroom.domain.deid import ColumnRole, ColumnSpec, ColumnType
from cleanroom.domain.streams import StreamDescription, StreamIntakeSummary
from cleanroom.storage import clock, dataset_repo
from cleanroom.storage.blobs import BlobStore

DAY = 86_400
STEP = 60  # seconds between a light patient's readings
START = 1_700_000_000
COLUMNS = (
    ColumnSpec("patient", ColumnType.STRING, ColumnRole.PATIENT_KEY),
    ColumnSpec("time", ColumnType.TIMESTAMP, ColumnRole.TIME),
    ColumnSpec("heart_rate", ColumnType.FLOAT, ColumnRole.FEATURE),
    ColumnSpec("spo2", ColumnType.FLOAT, ColumnRole.FEATURE),
    ColumnSpec("arm", ColumnType.STRING, ColumnRole.FEATURE, categories=("a", "b")),
)
SCHEMA = pa.schema([("patient", pa.string()), ("time", pa.int64()), ("heart_rate", pa.float32()),
                    ("spo2", pa.float32()), ("arm", pa.string())])
HEAVY = "p-heavy"
HEAVY_HEART_RATE = 190.0


@dataclass(frozen=True)
class Patient:
    name: str
    arm: str
    times: np.ndarray
    heart_rate: np.ndarray  # NaN: no reading
    spo2: np.ndarray

    def table(self) -> pa.Table:
        n = len(self.times)
        return pa.table({"patient": [self.name] * n, "time": self.times,
                         "heart_rate": pa.array(self.heart_rate, pa.float32(), mask=np.isnan(self.heart_rate)),
                         "spo2": pa.array(self.spo2, pa.float32(), mask=np.isnan(self.spo2)), "arm": [self.arm] * n}, schema=SCHEMA)


def light_patient(index: int, rng: np.random.Generator, *, days: int = 2) -> Patient:
    """One reading a minute with a daily rhythm; arm b's heart rate runs 10 bpm higher, its SpO2 lower;
    an SpO2 sensor gap of two hours."""
    arm = "ab"[index % 2]
    times = START + index * 37 + np.arange(0, days * DAY, STEP, dtype=np.int64)
    phase = 2 * np.pi * (times % DAY) / DAY
    base = 65.0 + (10.0 if arm == "b" else 0.0) + rng.normal(0, 5)
    heart = base + 8 * np.sin(phase) + rng.normal(0, 4, times.size)
    spo2 = (97.0 if arm == "a" else 94.5) + rng.normal(0, 1.5, times.size)
    gap = slice(600, 720)
    spo2[gap] = np.nan
    return Patient(f"p{index:04d}", arm, times, heart.astype(np.float32).astype(np.float64),
                   spo2.astype(np.float32).astype(np.float64))


def heavy_patient(readings: int) -> Patient:
    """`readings` readings at 1 Hz (100 times a light patient's), a constant extreme heart rate."""
    times = START + np.arange(readings, dtype=np.int64)
    return Patient(HEAVY, "a", times, np.full(readings, HEAVY_HEART_RATE), np.full(readings, 99.0))


def store_stream(app, owner, patients: list[Patient]) -> Dataset:  # type: ignore[no-untyped-def]
    """What stream intake leaves behind: the sealed table in the blob store, the dataset row, the wrapped key."""
    dataset_id, key = new_dataset_id(), crypto.new_data_key()
    pending = BlobStore(app.config.blob_dir).create(dataset_id)
    writer = SealedTableWriter(pending, key, dataset_id, SCHEMA, patient_column="patient", time_column="time", digest=True)
    for patient in sorted(patients, key=lambda p: p.name):
        writer.write_patient(patient.table())
    writer.close()
    spans = [int(p.times[-1] - p.times[0]) for p in patients]
    rows = sum(len(p.times) for p in patients)
    summary = StreamIntakeSummary(readings=rows, patients=len(patients), longest_span_seconds=max(spans))
    dataset = Dataset(dataset_id, owner.id, "wellness", "", COLUMNS, 5, rows, len(patients),
                      IntakeReport(rows_received=rows, rows_stored=rows, stream=summary), writer.ciphertext_sha256,
                      clock.now(), organisation_id=owner.organisation_id,
                      stream=StreamDescription("time", (("heart_rate", "bpm"), ("spo2", "%")), 1, max(spans) // 3600))
    with app.db.transaction() as session:
        dataset_repo.add_dataset(session, dataset, app.keys.wrap_dataset_key(dataset_id, key))
        pending.commit()
    return dataset


# --- exact values, computed directly from the generated readings (not through the worker's code)


def daily_means(patient: Patient) -> list[float]:
    """The patient's mean heart rate per day since its first reading."""
    days = (patient.times - patient.times[0]) // DAY
    return [float(np.mean(patient.heart_rate[days == d])) for d in np.unique(days)]


def time_in_range(patient: Patient, low: float, high: float) -> float:
    """Regular one-minute readings: the share of observed time is the share of readings with a value."""
    values = patient.spo2[~np.isnan(patient.spo2)]
    return float(np.mean((values >= low) & (values <= high)))
