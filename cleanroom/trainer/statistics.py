"""Sufficient statistics for evaluation, computed from patient-bounded rows, and their sensitivity.

Each statistic is an integer vector. Adding or removing one patient adds or removes at most
`max_rows` rows, each changing the vector by at most `per_row` in L1 (one cell of a histogram:
1; one quantized score: QUANT), so the L2 sensitivity is at most max_rows * per_row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cleanroom.trainer import metrics as m

# Budget weights (shares of ρ) per statistic: the histogram feeds four metrics, the sums one.
WEIGHTS = {"score_histogram": 3.0, "score_sums": 1.0, "confusion": 3.0, "count": 1.0,
           "abs_error_sum": 1.0, "sq_error_sum": 1.0}


@dataclass(frozen=True)
class Statistic:
    name: str
    values: np.ndarray       # exact integer values; never released without noise
    per_row: int             # L1 change one row can make

    def sensitivity(self, max_rows: int) -> int:
        return max_rows * self.per_row


def _histogram(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    hist = np.zeros((2, m.BINS), dtype=np.int64)
    np.add.at(hist, (labels.astype(np.int64), m.score_bins(scores)), 1)
    return hist


def _sums(scores: np.ndarray) -> np.ndarray:
    sums = np.zeros(m.BINS, dtype=np.int64)
    np.add.at(sums, m.score_bins(scores), np.rint(np.clip(scores, 0, 1) * m.QUANT).astype(np.int64))
    return sums


def binary(probabilities: np.ndarray, y: np.ndarray, *, calibration: bool) -> list[Statistic]:
    """probabilities [n, 2] -> the score histogram by label (and score sums for calibration)."""
    scores = probabilities[:, 1]
    stats = [Statistic("score_histogram", _histogram(y, scores), 1)]
    if calibration:
        stats.append(Statistic("score_sums", _sums(scores), m.QUANT))
    return stats


def multiclass(probabilities: np.ndarray, y: np.ndarray, *, calibration: bool, confusion: bool) -> list[Statistic]:
    """Confusion matrix; for calibration, top-label confidence binned by correct / incorrect."""
    k = probabilities.shape[1]
    predicted = probabilities.argmax(1)
    stats = []
    if confusion:
        matrix = np.zeros((k, k), dtype=np.int64)
        np.add.at(matrix, (y.astype(np.int64), predicted), 1)
        stats.append(Statistic("confusion", matrix, 1))
    if calibration:
        confidence, correct = probabilities.max(1), (predicted == y).astype(np.int64)
        stats += [Statistic("score_histogram", _histogram(correct, confidence), 1),
                  Statistic("score_sums", _sums(confidence), m.QUANT)]
    return stats


def regression(predictions: np.ndarray, y: np.ndarray, *, bound: float) -> list[Statistic]:
    """Row count and sums of v = min(|error| / bound, 1) and v², quantized."""
    v = np.minimum(np.abs(predictions.reshape(len(y), -1) - y.reshape(len(y), -1)).mean(1) / bound, 1.0)
    quantized = lambda a: np.array([int(np.rint(a * m.QUANT).sum())], dtype=np.int64)  # noqa: E731
    return [Statistic("count", np.array([len(y)], dtype=np.int64), 1),
            Statistic("abs_error_sum", quantized(v), m.QUANT),
            Statistic("sq_error_sum", quantized(v ** 2), m.QUANT)]
