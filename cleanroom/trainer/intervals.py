"""95% intervals for DP metrics: sampling, the known privacy noise, and the binning bound.

Pure post-processing of the released noisy statistics (no privacy cost). Three sources of error
are carried:

- privacy noise, whose law is known exactly (a rounded normal stands in for the discrete
  Gaussian: close for σ >= 0.5, and both put almost all mass on 0 below that);
- sampling of the evaluated patients (rows treated as independent: with several rows per
  patient this understates sampling spread; the noise part is exact);
- binning: a metric whose exact value the histogram only brackets comes as (low, point, high)
  functions of the statistics (metrics.py), and the interval runs from the lower end of `low`'s
  interval to the upper end of `high`'s.

Histogram metrics (AUROC, accuracy, sensitivity, specificity, operating points, net benefit,
observed rates) use a parametric bootstrap: each replicate redraws the rows multinomially from
the noisy (clamped) cell frequencies, then adds fresh noise of the released scale, and the
interval pivots on the replicates (the spread of metric* - metric of the replicate's own truth
is taken as the spread of estimate - true value, which also removes first-order noise bias).

The calibration error is a sum of absolute gaps, where a pivot under-corrects the bias |·| puts
in near-zero gaps. Its interval uses the triangle inequality instead: |Σ|g̃_b| - Σ|g_b|| <=
Σ|g̃_b - g_b|, whose 95% quantile is known from the noise (and a sampling term per bin), so the
interval holds whatever the true gaps. The Brier score is one noisy sum over a noisy count: a
normal interval with both variances and the sampling variance.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from cleanroom.trainer import metrics as m

REPLICATES = 2000
Z95 = 1.959963984540054

Array = NDArray[np.float64]
Stats = dict[str, Array]
Interval = tuple[float, float, float]     # (value, 95% low, 95% high)


def _noise(sigma: float, shape: tuple[int, ...], rng: np.random.Generator) -> Array:
    return np.asarray(np.rint(rng.normal(0.0, sigma, size=shape)), dtype=np.float64)


def _resample_counts(noisy: Array, sigma: float, rng: np.random.Generator) -> tuple[Array, Array, Array]:
    """The replicate world's truth (expected counts), clean multinomial draws and noised draws [R, ...].

    The truth is the noisy cells clamped at zero, then scaled so each row along the last axis (a
    class of a histogram or a confusion matrix) sums to its noisy total. Clamping alone adds about
    0.4σ to every empty cell: with tens of cells that inflates a class total (a denominator) by
    several σ, and the replicates then understate the relative noise."""
    noisy = np.asarray(noisy, dtype=np.float64)
    clamped = np.maximum(noisy, 0.0)
    if noisy.ndim >= 1:
        rows = np.maximum(noisy.sum(-1, keepdims=True), 0.0)
        mass = clamped.sum(-1, keepdims=True)
        clamped = np.where(mass > 0, clamped * rows / np.where(mass > 0, mass, 1.0), clamped)
    cells = clamped.reshape(-1)
    total = int(round(cells.sum()))
    p = cells / cells.sum() if cells.sum() > 0 else np.full(cells.size, 1 / cells.size)
    clean = rng.multinomial(total, p, size=REPLICATES).astype(np.float64)
    noised = clean + _noise(sigma, clean.shape, rng)
    shape = (REPLICATES, *noisy.shape)
    return (total * p).reshape(noisy.shape), clean.reshape(shape), noised.reshape(shape)


def histogram_replicates(noisy: Array, sigma: float, rng: np.random.Generator) -> tuple[Array, Array]:
    """(truth, replicates) of a histogram: the replicate world and its noisy re-draws."""
    truth, _, noised = _resample_counts(noisy, sigma, rng)
    return truth, noised


def confusion_replicates(noisy: Array, sigma: float, rng: np.random.Generator) -> tuple[Array, Array]:
    truth, _, noised = _resample_counts(noisy, sigma, rng)
    return truth, noised


def regression_replicates(noisy: Stats, sigma: dict[str, float], rng: np.random.Generator) -> tuple[Stats, Stats]:
    """Sums of v and v² (v in [0, 1]) redrawn from normal sampling laws; var(v²) uses its upper bound."""
    n = max(float(noisy["count"][0]), 1.0)
    m1 = float(np.clip(noisy["abs_error_sum"][0] / (m.QUANT * n), 0, 1))
    m2 = float(np.clip(noisy["sq_error_sum"][0] / (m.QUANT * n), m1 ** 2, 1))
    z = rng.normal(size=(2, REPLICATES))
    truth = {"count": np.float64(n), "abs_error_sum": np.float64(m.QUANT * n * m1), "sq_error_sum": np.float64(m.QUANT * n * m2)}
    reps = {"count": n + _noise(sigma["count"], (REPLICATES,), rng),
            "abs_error_sum": m.QUANT * (n * m1 + np.sqrt(n * (m2 - m1 ** 2)) * z[0])
            + _noise(sigma["abs_error_sum"], (REPLICATES,), rng),
            "sq_error_sum": m.QUANT * (n * m2 + np.sqrt(n * m2 * (1 - m2)) * z[1])
            + _noise(sigma["sq_error_sum"], (REPLICATES,), rng)}
    return {k: np.asarray(v, dtype=np.float64) for k, v in truth.items()}, reps


def pivot_interval(estimate: float, replicates: Array, truth: float, *, low: float = 0.0,
                   high: float = np.inf) -> Interval:
    """(bias-corrected value, 95% low, 95% high): estimate - (q - truth) at q = median, 97.5%, 2.5%,
    clamped to the metric's range."""
    return bounded_pivot((estimate,) * 3, (replicates,) * 3, (truth,) * 3, low=low, high=high)


def bounded_pivot(estimate: tuple[float, float, float], replicates: tuple[Array, Array, Array],
                  truth: tuple[float, float, float], *, low: float = 0.0, high: float = np.inf) -> Interval:
    """The pivot on a bracketed metric: (low, point, high) estimates, replicates and replicate
    truths. The interval's low end pivots the bracket's low end at its 97.5% quantile, the high
    end the bracket's high end at 2.5%; the value pivots the point at the median, kept inside."""
    lo = estimate[0] - (float(np.percentile(replicates[0], 97.5)) - truth[0])
    hi = estimate[2] - (float(np.percentile(replicates[2], 2.5)) - truth[2])
    value = estimate[1] - (float(np.percentile(replicates[1], 50)) - truth[1])
    lo, hi = float(np.clip(lo, low, high)), float(np.clip(hi, low, high))
    lo, hi = min(lo, hi), max(lo, hi)
    return float(np.clip(value, lo, hi)), lo, hi


def calibration_error(gaps: Array, sigma_gaps: float, hist: Array, sigma_hist: float, edges: Array,
                      rng: np.random.Generator) -> Interval:
    """ECE = Σ_b |Σ_{rows in b} (label - score)| / n over the calibration bins, from the noisy gaps
    (units of 1/QUANT) and the noisy histogram (for n and the per-bin sampling term).

    Interval: Σ|g̃_b| ± q over n̂ ∓ 2 sd(n̂), where q is the 95% quantile of Σ_b |e_b|, e_b ~ N(0,
    τ_b²) with τ_b² = (σ/QUANT)² (noise) + n̂_b r̂_b (1 - r̂_b) (sampling), plus n̂/(2·QUANT) for the
    quantization of each row's term. Value: Σ_b sqrt(max(g̃_b² - (σ/QUANT)², 0)) / n̂, the per-bin
    noise bias of |·| removed, kept inside the interval."""
    g = np.asarray(gaps, dtype=np.float64) / m.QUANT
    h = np.asarray(hist, dtype=np.float64)
    n = max(float(h.sum()), 1.0)
    sd_n = float(np.sqrt(h.size) * sigma_hist)
    rows, positives = m.calibration_rows(h, edges)
    rate = np.clip(positives / np.maximum(rows, 1.0), 0.0, 1.0)
    noise_var = (sigma_gaps / m.QUANT) ** 2
    tau = np.sqrt(noise_var + np.maximum(rows, 0.0) * rate * (1 - rate))
    draws = np.abs(rng.normal(size=(4000, len(g))) * tau).sum(-1)
    q = float(np.percentile(draws, 95)) + n / (2 * m.QUANT)
    total = float(np.abs(g).sum())
    lo = max(total - q, 0.0) / (n + 2 * sd_n)
    hi = (total + q) / max(n - 2 * sd_n, 1.0)
    value = float(np.sqrt(np.maximum(g ** 2 - noise_var, 0.0)).sum()) / n
    lo, hi = float(np.clip(lo, 0, 1)), float(np.clip(hi, 0, 1))
    return float(np.clip(value, lo, hi)), lo, hi


def brier(squared_error_sum: float, sigma: float, hist: Array, sigma_hist: float) -> Interval:
    """Brier score Σ (score - label)² / n: a normal interval over the noise of the sum, the noise of
    n̂ and sampling (a value in [0, 1] with mean b has variance at most b(1 - b)), widened by the
    quantization of each row's term (1/(2·QUANT))."""
    n = max(float(np.asarray(hist, dtype=np.float64).sum()), 1.0)
    var_n = np.asarray(hist).size * sigma_hist ** 2
    b = float(np.clip(squared_error_sum / (m.QUANT * n), 0.0, 1.0))
    sd = float(np.sqrt((sigma / m.QUANT) ** 2 / n ** 2 + b * (1 - b) / n + b ** 2 * var_n / n ** 2))
    half = Z95 * sd + 1 / (2 * m.QUANT)
    return b, max(b - half, 0.0), min(b + half, 1.0)
