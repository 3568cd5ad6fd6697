"""Small sealed stream tables for tests: patients' readings at irregular 1 Hz-ish times with gaps.

`readings(...)` makes one patient's rows (pseudonym, epoch-second time, two float32 channels with
missing values, an integer label that may be missing, a kept text column); `seal(...)` writes
patients through the real SealedTableWriter. `CountingFile` wraps a file object and counts the
bytes read through it, so a test can tell how much of a blob a read touched.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from cleanroom.crypto.sealed_table import SealedTableWriter

SCHEMA = pa.schema([
    pa.field("pid", pa.string(), nullable=False),
    pa.field("t", pa.int64(), nullable=False),
    pa.field("hr", pa.float32()),
    pa.field("spo2", pa.float32()),
    pa.field("event", pa.int64()),
    pa.field("site_note", pa.string()),
])
BLOB_ID = "ds-stream-test"


def readings(patient: str, n: int, *, seed: int, start: int = 1_700_000_000) -> pa.Table:
    rng = np.random.default_rng(seed)
    steps = rng.integers(1, 3, size=n)
    steps[rng.random(n) < 0.002] += 600  # sensor gaps of ten minutes
    times = start + np.cumsum(steps).astype(np.int64)
    hr = (70 + 10 * np.sin(times / 900) + rng.normal(0, 2, n)).astype(np.float32)
    spo2 = (95 + 3 * np.sin(times / 1300) + rng.normal(0, 1, n)).astype(np.float32)
    event = (spo2 < 93).astype(np.int64)
    return pa.table({
        "pid": pa.array([patient] * n, pa.string()),
        "t": times,
        "hr": pa.array(hr, mask=rng.random(n) < 0.1),
        "spo2": pa.array(spo2, mask=rng.random(n) < 0.1),
        "event": pa.array(event, mask=rng.random(n) < 0.01),
        "site_note": pa.array(["ward-a"] * n, pa.string()),
    }, schema=SCHEMA)


def seal(patients: Sequence[pa.Table], key: bytes, **writer: Any) -> bytes:
    out = io.BytesIO()
    with SealedTableWriter(out, key, BLOB_ID, SCHEMA, patient_column="pid", time_column="t", **writer) as w:
        for table in patients:
            w.write_patient(table)
    return out.getvalue()


class CountingFile(io.RawIOBase):
    """A readable, seekable file object over bytes that counts the bytes read through it."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._inner = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def readinto(self, b: Any) -> int:
        n = self._inner.readinto(b)
        self.bytes_read += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        data = self._inner.read(size)
        self.bytes_read += len(data)
        return data
