"""Sufficient statistics for evaluation, computed from patient-bounded rows, and their sensitivity.

Each statistic is an integer vector. Adding or removing one patient adds or removes at most
`max_rows` rows, each changing the vector by at most `per_row` in L1 (one cell of a histogram:
1; one quantized value in [-1, 1]: QUANT), so the L2 sensitivity is at most max_rows * per_row.

Binary classification releases, in two stages:
  1. `score_locator`: rows by score on a coarse fixed logit grid, labels pooled. Only used to place
     the bins of stage 2 (and as the DP row count of the bin rule).
  2. `score_histogram`: rows by (label, score bin) on the edges stage 1 chose (plus the public
     ones); `calibration_gaps`: Σ (label - score) per calibration bin (the ECE and the reliability
     diagram); `squared_error_sum`: Σ (score - label)² (the Brier score).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cleanroom.trainer import metrics as m

# Budget weights (shares of ρ), normalised over the statistics a request releases. For a binary
# request with calibration: locator 10%, histogram 60%, calibration gaps 20%, squared error 10%.
WEIGHTS = {"score_locator": 1.0, "score_histogram": 6.0, "calibration_gaps": 2.0, "squared_error_sum": 1.0,
           "confusion": 6.0, "count": 1.0, "abs_error_sum": 1.0, "sq_error_sum": 1.0}
STAGE_ONE = ("score_locator",)

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Statistic:
    name: str
    values: IntArray         # exact integer values; never released without noise
    per_row: int             # L1 change one row can make

    def sensitivity(self, max_rows: int) -> int:
        return max_rows * self.per_row


def histogram(labels: FloatArray | IntArray, scores: FloatArray, edges: FloatArray) -> IntArray:
    hist = np.zeros((2, len(edges) + 1), dtype=np.int64)
    np.add.at(hist, (np.asarray(labels).astype(np.int64), m.bin_index(scores, edges)), 1)
    return hist


def _quantized(values: FloatArray) -> IntArray:
    return np.rint(np.clip(values, -1.0, 1.0) * m.QUANT).astype(np.int64)


def calibration_gaps(labels: FloatArray | IntArray, scores: FloatArray) -> IntArray:
    """Σ (label - score) per equal-width calibration bin, each term quantized to 1/QUANT."""
    gaps = np.zeros(m.CALIBRATION_BINS, dtype=np.int64)
    np.add.at(gaps, m.bin_index(scores, m.CALIBRATION_EDGES), _quantized(np.asarray(labels, dtype=np.float64) - scores))
    return gaps


def locator(scores: FloatArray) -> Statistic:
    counts = np.bincount(m.bin_index(scores, m.locator_edges()), minlength=len(m.LOCATOR_LOGITS) + 1)
    return Statistic("score_locator", counts.astype(np.int64), 1)


def binary(probabilities: FloatArray, y: FloatArray | IntArray, *, calibration: bool) -> tuple[
        list[Statistic], Callable[[FloatArray], list[Statistic]]]:
    """probabilities [n, 2] -> the stage-1 statistics, and the stage-2 ones given the chosen edges."""
    scores = np.asarray(probabilities[:, 1], dtype=np.float64)

    def stage_two(edges: FloatArray) -> list[Statistic]:
        stats = [Statistic("score_histogram", histogram(y, scores, edges), 1)]
        if calibration:
            squared = np.array([_quantized((scores - np.asarray(y, dtype=np.float64)) ** 2).sum()], dtype=np.int64)
            stats += [Statistic("calibration_gaps", calibration_gaps(y, scores), m.QUANT),
                      Statistic("squared_error_sum", squared, m.QUANT)]
        return stats

    return [locator(scores)], stage_two


def multiclass(probabilities: FloatArray, y: FloatArray | IntArray, *, calibration: bool,
               confusion: bool) -> list[Statistic]:
    """Confusion matrix; for calibration, top-label confidence binned by correct / incorrect on the
    calibration bins, and the per-bin gaps Σ (correct - confidence)."""
    k = probabilities.shape[1]
    predicted = probabilities.argmax(1)
    stats = []
    if confusion:
        matrix = np.zeros((k, k), dtype=np.int64)
        np.add.at(matrix, (np.asarray(y).astype(np.int64), predicted), 1)
        stats.append(Statistic("confusion", matrix, 1))
    if calibration:
        confidence = np.asarray(probabilities.max(1), dtype=np.float64)
        correct = (predicted == y).astype(np.int64)
        edges = np.asarray(m.CALIBRATION_EDGES, dtype=np.float64)
        stats += [Statistic("score_histogram", histogram(correct, confidence, edges), 1),
                  Statistic("calibration_gaps", calibration_gaps(correct, confidence), m.QUANT)]
    return stats


def regression(predictions: FloatArray, y: FloatArray, *, bound: float) -> list[Statistic]:
    """Row count and sums of v = min(|error| / bound, 1) and v², quantized."""
    # No rows (a cohort site whose persons all count at an earlier site): zero sums, still noised.
    v = (np.minimum(np.abs(predictions.reshape(len(y), -1) - y.reshape(len(y), -1)).mean(1) / bound, 1.0)
         if len(y) else np.zeros(0, dtype=np.float64))

    def quantized(a: FloatArray) -> IntArray:
        return np.array([int(np.rint(a * m.QUANT).sum())], dtype=np.int64)

    return [Statistic("count", np.array([len(y)], dtype=np.int64), 1),
            Statistic("abs_error_sum", quantized(v), m.QUANT),
            Statistic("sq_error_sum", quantized(v ** 2), m.QUANT)]
