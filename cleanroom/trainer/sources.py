"""Where a DP-SGD step's examples come from: a batch source.

A step Poisson-samples patients (data-independent: only the public patient count is read), then
asks the source for the examples of those patients, at most `max_rows` of each. Two sources:

- `InMemorySource`: a table's rows already in memory, at most k rows of each sampled patient
  (sampling.bounded_rows), gathered chunk by chunk by the step; the same random draws, in the same
  order, as the trainer made before sources existed.
- a stream source (cleanroom/worker/stream_batches.py): at most k window starts of each sampled
  patient, chosen among the patient's candidate starts, read and cut on demand from the sealed
  stream, so memory follows the step's working set, not the dataset.

Whatever a source returns, the step clips each patient's summed gradient to C: a source may give a
patient fewer than k examples (windows without enough readings are dropped), never more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from cleanroom.trainer import sampling


@dataclass
class Batch:
    rows: np.ndarray                 # row of each example in the batch's X and y, grouped by patient
    segments: np.ndarray             # patient slot of each example: sorted, gap-free
    n_patients: int


@dataclass(frozen=True)
class Examples:
    """One step's examples: model-ready tensors (float32 [n, *input_shape], labels as the task
    wants them) and the batch that picks and groups their rows."""

    X: torch.Tensor
    y: torch.Tensor
    batch: Batch


class BatchSource(Protocol):
    @property
    def n_patients(self) -> int: ...        # the patients the source holds (public), sampled by slot

    def batch(self, patients: np.ndarray, *, max_rows: int, rng: np.random.Generator) -> Examples: ...


@dataclass(frozen=True)
class InMemorySource:
    """A table in memory: X, y already model-ready for the whole table, rows grouped by `index`."""

    X: torch.Tensor
    y: torch.Tensor
    index: sampling.PatientIndex

    @property
    def n_patients(self) -> int:
        return self.index.n_patients

    def batch(self, patients: np.ndarray, *, max_rows: int, rng: np.random.Generator) -> Examples:
        rows, segments = sampling.bounded_rows(self.index, patients, max_rows=max_rows, rng=rng)
        return Examples(self.X, self.y, Batch(rows, segments, len(patients)))


def compact_segments(counts: np.ndarray) -> np.ndarray:
    """Segments for examples grouped by patient, `counts[j]` of the j-th patient: patients that gave
    none get no slot, so the segments stay gap-free (the step relies on it)."""
    counts = np.asarray(counts, dtype=np.int64)
    given = counts[counts > 0]
    return np.repeat(np.arange(len(given), dtype=np.int64), given)
