"""Run as a process of its own (tests/datasets/test_stream_memory.py): ingests a stream CSV file
and prints, as JSON, the Arrow pool's peak and how far the process's RSS rose above its level
before intake (sampled every 10 ms: ru_maxrss would carry the parent's peak over the exec)."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pyarrow as pa

from cleanroom import crypto
from cleanroom.datasets.deidentify import Pseudonymizer
from cleanroom.datasets.stream_intake import ingest_stream
from cleanroom.datasets.upload_stream import MAX_CHUNK_BYTES, Trailer, UploadStream
from cleanroom.domain.deid import ColumnRole, ColumnSpec, ColumnType, validate_policy
from cleanroom.domain.streams import ChannelSpec, StreamSpec
from cleanroom.storage.blobs import BlobStore

COLUMNS = (ColumnSpec("pid", ColumnType.STRING, ColumnRole.PATIENT_KEY),
           ColumnSpec("ts", ColumnType.TIMESTAMP, ColumnRole.TIME),
           ColumnSpec("hr", ColumnType.FLOAT, ColumnRole.FEATURE),
           ColumnSpec("hr_unit", ColumnType.STRING, ColumnRole.UNIT),
           ColumnSpec("spo2", ColumnType.INTEGER, ColumnRole.FEATURE))
SPEC = StreamSpec("ts", (ChannelSpec("hr", "bpm", "hr_unit"), ChannelSpec("spo2", "%")),
                  time_resolution_seconds=2, max_shift_days=30)


def _parts(path: Path, sha256: str) -> Iterator[bytes | Trailer]:
    with path.open("rb") as handle:
        while chunk := handle.read(MAX_CHUNK_BYTES):
            yield chunk
    yield Trailer(path.stat().st_size, sha256)


class PeakRss:
    """The highest RSS seen while running, sampled on a thread of its own."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(path: Path, blobs: Path, partition_bytes: int) -> None:
    with path.open("rb") as handle:
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    size = path.stat().st_size
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    with PeakRss() as rss:
        result = ingest_stream(UploadStream(_parts(path, sha256), max_bytes=1 << 40), file_format="csv",
                               policy=validate_policy(COLUMNS, 5, stream=True), spec=SPEC,
                               pseudonymizer=Pseudonymizer(b"k" * 32), shift_key=b"s" * 32, blobs=BlobStore(blobs),
                               dataset_id="big", data_key=crypto.new_data_key(), size_bytes=size,
                               partition_bytes=partition_bytes)
    seconds = time.perf_counter() - started
    result.blob.abort()
    print(json.dumps({"file_bytes": size, "arrow_peak": pa.default_memory_pool().max_memory(),
                      "rss_growth": rss.peak - before, "seconds": seconds, "readings": result.report.rows_received,
                      "stored": result.report.rows_stored, "patients": result.patient_count}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
