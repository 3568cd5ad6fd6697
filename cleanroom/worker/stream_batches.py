"""A stream site as the trainer's batch source: windows of sampled patients, cut on demand.

For each patient slot the step sampled (Poisson, by the trainer), this source chooses at most k of
the patient's candidate window starts uniformly (trainer.windows.choose_starts; the candidates
come from the sealed index's first and last reading time), reads only the time ranges those
windows cover and cuts them (worker.stream_source). Windows without enough readings or without a
usable label are dropped, so a patient gives at most k windows, possibly none; a patient with a
hundred times more data gives no more than anyone else. Memory holds the step's windows and one
patient's requested ranges at a time, never the dataset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cleanroom.trainer import windows
from cleanroom.trainer.sources import Batch, Examples, compact_segments
from cleanroom.worker.stream_source import StreamSite


class StreamBatchSource:
    """The windows of `patients` (pseudonyms of `site`, one slot each) for a task's labels."""

    def __init__(self, site: StreamSite, patients: Sequence[str], *, task: str, num_classes: int) -> None:
        self._site = site
        self._patients = list(patients)
        self._classification = task != "regression"
        self._num_classes = num_classes
        self._shape = (len(site.channels), site.spec.cells)

    @property
    def n_patients(self) -> int:
        return len(self._patients)

    def windows_of(self, slot: int, *, max_rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """At most max_rows windows of the patient in `slot` and their labels (usable ones only)."""
        patient = self._patients[slot]
        starts = windows.choose_starts(self._site.starts(patient), max_rows, rng)
        if not len(starts):
            return np.zeros((0, *self._shape), dtype=np.float32), np.zeros(0)
        X, y = self._site.windows_for(patient, starts)
        keep = self._usable(y)
        return X[keep], y[keep]

    def batch(self, patients: np.ndarray, *, max_rows: int, rng: np.random.Generator) -> Examples:
        parts = [self.windows_of(int(slot), max_rows=max_rows, rng=rng) for slot in patients]
        counts = np.asarray([len(y) for _, y in parts], dtype=np.int64)
        X = np.concatenate([x for x, _ in parts]) if parts else np.zeros((0, *self._shape), dtype=np.float32)
        y = np.concatenate([y for _, y in parts]) if parts else np.zeros(0)
        labels = torch.as_tensor(y.astype(np.int64) if self._classification else y.astype(np.float32))
        batch = Batch(np.arange(len(y)), compact_segments(counts), len(patients))
        return Examples(torch.as_tensor(X.astype(np.float32, copy=False)), labels, batch)

    def _usable(self, y: np.ndarray) -> np.ndarray:
        """A per-window filter (it keeps the patient-level bound): class labels must be classes."""
        keep: np.ndarray = np.isfinite(y)
        if self._classification:
            keep &= (y >= 0) & (y < self._num_classes) & (y == np.round(y))
        return keep
