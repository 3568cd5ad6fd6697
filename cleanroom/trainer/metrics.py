"""Validation metrics as pure functions of (noisy) sufficient statistics.

Every function takes arrays with any number of leading replicate dimensions, so the same code
computes the point estimate and the bootstrap replicates. Noisy cells are used as released
(unbiased sums; clamping each cell at zero would bias every cumulative count), and only the final
ratios are clamped to their range.

Binary: `hist` is [..., 2, BINS] counts of rows by (label, score bin); a threshold k/BINS calls a
row positive when its bin index is >= k, so every confusion count is a cumulative sum.
"""

from __future__ import annotations

import numpy as np

BINS = 20                      # score bins of width 0.05: thresholds 0.05, 0.10, ..., 0.95
THRESHOLD_INDEX = BINS // 2    # accuracy, sensitivity and specificity at threshold 0.5
CALIBRATION_BINS = 10          # the usual ECE bins, each two score bins
QUANT = 1000                   # sums of values in [0, 1] are released as integers in units of 1/QUANT


def score_bins(scores: np.ndarray) -> np.ndarray:
    """Bin index of each score in [0, 1]; bin k holds [k/BINS, (k+1)/BINS), the last one includes 1."""
    return np.clip(np.floor(np.asarray(scores, dtype=np.float64) * BINS), 0, BINS - 1).astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.clip(num / np.maximum(den, 1.0), 0.0, 1.0)


def _confusion(hist: np.ndarray) -> dict[str, np.ndarray]:
    """TP, FP, TN, FN at every threshold index 0..BINS (index k: bins >= k are positive)."""
    h = np.asarray(hist, dtype=np.float64)
    above = np.flip(np.cumsum(np.flip(h, -1), -1), -1)                    # Σ_{b >= k}
    above = np.concatenate([above, np.zeros_like(above[..., :1])], -1)     # k = BINS: none positive
    totals = h.sum(-1, keepdims=True)
    return {"tp": above[..., 1, :], "fp": above[..., 0, :], "fn": totals[..., 1, :] - above[..., 1, :],
            "tn": totals[..., 0, :] - above[..., 0, :]}


def roc(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at thresholds 0, 1/BINS, ..., 1: from (1, 1) down to (0, 0)."""
    c = _confusion(hist)
    return _ratio(c["fp"], c["fp"] + c["tn"]), _ratio(c["tp"], c["tp"] + c["fn"])


def auroc(hist: np.ndarray) -> np.ndarray:
    """Trapezoid over the binned ROC (rows sharing a bin count as ties: half credit)."""
    fpr, tpr = roc(hist)
    return np.clip(np.sum((fpr[..., :-1] - fpr[..., 1:]) * (tpr[..., :-1] + tpr[..., 1:]) / 2, -1), 0.0, 1.0)


def binary_metrics(hist: np.ndarray) -> dict[str, np.ndarray]:
    c = {k: v[..., THRESHOLD_INDEX] for k, v in _confusion(hist).items()}
    return {"accuracy": _ratio(c["tp"] + c["tn"], c["tp"] + c["tn"] + c["fp"] + c["fn"]),
            "sensitivity": _ratio(c["tp"], c["tp"] + c["fn"]),
            "specificity": _ratio(c["tn"], c["tn"] + c["fp"]),
            "auroc": auroc(hist)}


def _merge(values: np.ndarray) -> np.ndarray:
    return values.reshape(*values.shape[:-1], CALIBRATION_BINS, -1).sum(-1)


def expected_calibration_error(hist: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """Σ_bins |positives - Σ scores| / rows over CALIBRATION_BINS equal-width bins: the bin-weighted
    gap between observed and predicted. Coarser than the score bins because |noise| adds up."""
    h = np.asarray(hist, dtype=np.float64)
    gap = np.abs(_merge(h[..., 1, :]) - _merge(np.asarray(sums, dtype=np.float64)) / QUANT).sum(-1)
    return _ratio(gap, h.sum((-2, -1)))


def reliability(hist: np.ndarray, sums: np.ndarray) -> list[dict[str, float]]:
    """Per score bin: mean predicted score, observed positive rate, rows (all noisy, clamped)."""
    h = np.maximum(hist, 0.0)
    rows = h.sum(0)
    out = []
    for b in range(BINS):
        lo, hi = b / BINS, (b + 1) / BINS
        predicted = float(np.clip(max(sums[b], 0) / QUANT / rows[b], lo, hi)) if rows[b] >= 1 else (lo + hi) / 2
        out.append({"bin_low": lo, "bin_high": hi, "mean_predicted": predicted,
                    "observed": float(_ratio(h[1, b], rows[b])), "rows": float(rows[b])})
    return out


def multiclass_metrics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """confusion [..., K, K] counts by (true, predicted)."""
    m = np.asarray(confusion, dtype=np.float64)
    diag = np.diagonal(m, axis1=-2, axis2=-1)
    recall = _ratio(diag, m.sum(-1))
    return {"accuracy": _ratio(diag.sum(-1), m.sum((-2, -1))), "macro_recall": recall.mean(-1)}


def regression_metrics(count: np.ndarray, abs_sum: np.ndarray, sq_sum: np.ndarray, *, bound: float) -> dict[str, np.ndarray]:
    """MAE and RMSE from sums of min(|error| / bound, 1) and its square, in units of 1/QUANT."""
    n = np.maximum(count, 1.0)
    mae = np.clip(abs_sum / (QUANT * n), 0.0, 1.0)
    msq = np.clip(sq_sum / (QUANT * n), 0.0, 1.0)
    return {"mae": bound * mae, "rmse": bound * np.sqrt(msq)}
