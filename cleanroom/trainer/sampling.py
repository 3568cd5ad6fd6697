"""Patient-level sampling: Poisson over patients, then at most k rows of each sampled patient.

Randomness comes from numpy PCG64 seeded per job with 256 bits from `seed_source` (os.urandom by
default): an unguessable seed, though not a cryptographically secure stream. The sampled-Gaussian
analysis needs the sampling independent of the data; the noise itself comes from the OS CSPRNG
(noise.SecureGaussian).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SeedSource = Callable[[int], bytes]


def numpy_generator(seed_source: SeedSource) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(int.from_bytes(seed_source(32), "little")))


@dataclass(frozen=True)
class PatientIndex:
    """Rows grouped by patient: rows of patient p are order[starts[p]:starts[p] + counts[p]]."""

    order: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    @property
    def n_patients(self) -> int:
        return len(self.counts)

    @classmethod
    def build(cls, patient: np.ndarray) -> PatientIndex:
        _, inverse, counts = np.unique(np.asarray(patient), return_inverse=True, return_counts=True)
        order = np.argsort(inverse.reshape(-1), kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return cls(order, starts, counts.astype(np.int64))


def poisson_patients(rng: np.random.Generator, *, n_patients: int, sample_rate: float) -> np.ndarray:
    """Each patient independently with probability sample_rate: the sampled-Gaussian analysis' sampler."""
    return np.flatnonzero(rng.random(n_patients) < sample_rate)


def bounded_rows(index: PatientIndex, patients: np.ndarray, *, max_rows: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the given patients, at most max_rows each (uniform without replacement), and each
    row's position in `patients` (its segment)."""
    counts = index.counts[patients]
    lens = np.minimum(counts, max_rows)
    segments = np.repeat(np.arange(len(patients)), lens)
    offsets = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    for j in np.flatnonzero(counts > max_rows):
        at = segments == j
        offsets[at] = rng.choice(counts[j], size=max_rows, replace=False)
    rows = index.order[index.starts[patients][segments] + offsets]
    return rows, segments


def patient_chunks(segments: np.ndarray, *, max_rows: int) -> list[slice]:
    """Split a segment-sorted row list at patient boundaries into slices of at most max_rows rows
    (a patient is never split, so per-patient sums stay within one chunk)."""
    if len(segments) <= max_rows:
        return [slice(0, len(segments))] if len(segments) else []
    boundaries = np.flatnonzero(np.diff(segments)) + 1
    edges = np.concatenate([[0], boundaries, [len(segments)]])
    chunks, start = [], 0
    for a, b in zip(edges[:-1], edges[1:]):
        if b - start > max_rows and a > start:
            chunks.append(slice(start, int(a)))
            start = int(a)
    chunks.append(slice(start, len(segments)))
    return chunks
