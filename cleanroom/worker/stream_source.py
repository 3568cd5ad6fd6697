"""The sandbox's side of a stream site: a sealed stream table read one patient's windows at a time.

A site of job.json whose dataset is a stream carries "stream" (domain.streams.StreamDescription)
and its blob is a sealed stream table (crypto/sealed_table.py), not an Arrow IPC stream. Phase B
opens it here and asks for windows patient by patient; nothing holds more than one patient's
requested time ranges in memory, whatever the dataset's size.

    site = open_site(blob_path, secrets, site_json, job)  # secrets: this site's from stdin
    site.patients                      pseudonyms, in stored order
    site.span(patient)                 PatientSpan: first/last time and rows, from the sealed index
    site.starts(patient)               every candidate window start (trainer.windows.window_starts)
    site.windows_for(patient, starts)  -> (X float32 (n, C, L), y float64 (n,)), n <= len(starts)
    site.all_windows(patient, k, rng)  -> up to k windows from all the patient's candidate starts
    site.close()                       (or use it as a context manager)

windows_for reads only the time ranges the windows at `starts` cover (trainer.windows.runs), via
SealedTable.read_span, which decrypts only the batches that can hold them; windows failing
coverage (or without a finite label) are dropped, so a patient gives at most len(starts) windows.
The study's names (the job's feature columns, its label column or its threshold rule's channel)
map onto this site's columns through job.json "columns", as for tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from cleanroom.crypto.sealed_table import PatientSpan, SealedTable
from cleanroom.domain.streams import WindowSpec
from cleanroom.trainer import windows
from cleanroom.worker.keys import unwrap_site_key


class StreamSite:
    """One site's sealed stream table with the job's window spec and this site's column names."""

    def __init__(self, table: SealedTable, *, spec: WindowSpec, channels: Sequence[str], label: str,
                 fileobj: BinaryIO | None = None) -> None:
        self._table, self._file = table, fileobj
        self.spec = spec
        self.channels = tuple(channels)  # this site's columns, in the model's channel order
        self.label = label  # this site's label column, or the threshold rule's channel
        self.time_column = _metadata(table, b"time_column")
        missing = [c for c in (*self.channels, self.label, self.time_column) if c not in table.schema.names]
        if missing:
            raise KeyError(f"the stream has no column {missing[0]!r}")
        self.patients: list[str] = [s.patient for s in table.spans]
        self._first_times: np.ndarray = table.index.column("first_time").to_numpy()

    def span(self, patient: str) -> PatientSpan:
        span = self._table.span(patient)
        if span is None:
            raise KeyError("no such patient in this stream")
        return span

    def starts(self, patient: str) -> np.ndarray:
        span = self.span(patient)
        return windows.window_starts(span.first_time, span.last_time, self.spec)

    def windows_for(self, patient: str, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return windows.cut(self.readings(patient, starts), starts, self.spec)

    def all_windows(self, patient: str, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self.windows_for(patient, windows.choose_starts(self.starts(patient), k, rng))

    def readings(self, patient: str, starts: np.ndarray) -> windows.Readings:
        """The patient's readings in the time ranges the windows at `starts` cover, nothing else.
        Each batch under those ranges is decrypted once, however many windows share it."""
        ranges = windows.runs(starts, self.spec)
        batches = self._batches(self.span(patient), ranges)
        table = pa.Table.from_batches([self._table.batch(i) for i in batches], schema=self._table.schema)
        times = _numpy(table.column(self.time_column), pa.int64())  # ascending: one patient's rows
        edges = [(int(np.searchsorted(times, lo)), int(np.searchsorted(times, hi))) for lo, hi in ranges]
        table = pa.concat_tables([table.slice(a, b - a) for a, b in edges]) if edges else table.slice(0, 0)
        kinds = {**{c: pa.float32() for c in self.channels}, self.label: pa.float64(), self.time_column: pa.int64()}
        columns = {name: _numpy(table.column(name), kind) for name, kind in kinds.items()}
        return windows.Readings.from_columns(columns[self.time_column], columns, channels=self.channels,
                                             label=self.label)

    def _batches(self, span: PatientSpan, ranges: list[tuple[int, int]]) -> list[int]:
        """The patient's batches that can hold a reading in [lo, hi) of any range (as read_span)."""
        firsts = self._first_times[span.first_batch:span.end_batch]
        needed: set[int] = set()
        for lo, hi in ranges:
            a = max(int(np.searchsorted(firsts, lo, side="right")) - 1, 0)
            needed.update(range(a, int(np.searchsorted(firsts, hi - 1, side="right"))))
        return [span.first_batch + i for i in sorted(needed)]

    def close(self) -> None:
        self._table.close()
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> StreamSite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_site(path: Path, secrets: Mapping[str, str], site: Mapping[str, Any], job: Mapping[str, Any]) -> StreamSite:
    """The site's stream, opened with its released key, under the job's window spec and columns."""
    key = unwrap_site_key(secrets, site["dataset_id"])
    fileobj = path.open("rb")
    try:
        table = SealedTable(fileobj, key, site["dataset_id"])
        spec, channels, label = site_columns(site, job["params"])
        return StreamSite(table, spec=spec, channels=channels, label=label, fileobj=fileobj)
    except BaseException:
        fileobj.close()
        raise


def site_columns(site: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[WindowSpec, list[str], str]:
    """The job's window spec, and its channels and label source under this site's column names."""
    spec = WindowSpec.from_json(params["windows"])
    columns: Mapping[str, str] = site.get("columns", {})
    channels = [columns.get(name, name) for name in params["feature_columns"]]
    study_label = spec.label_rule.channel if spec.label_rule is not None else params["label_column"]
    return spec, channels, columns.get(study_label, study_label)


def _metadata(table: SealedTable, key: bytes) -> str:
    value = (table.schema.metadata or {}).get(key)
    if value is None:
        raise KeyError("the sealed table does not name its time column")
    return str(value.decode())


def _numpy(column: pa.ChunkedArray, kind: pa.DataType) -> np.ndarray:
    """A column as numpy; nulls become NaN (floats)."""
    array: np.ndarray = column.cast(kind).to_numpy()
    return array
