"""95% intervals for DP metrics: a parametric bootstrap over sampling and the known noise.

Pure post-processing of the released noisy statistics (no privacy cost). Each replicate redraws
the rows from the noisy (clamped) cell frequencies, multinomially, then adds fresh noise of the
released scale. The interval pivots on the replicates: the spread of (metric* - metric of the
replicates' own truth) is taken as the spread of (estimate - true value), which also removes the
first-order bias that noise puts into non-linear metrics (|·| in the calibration error). Rows are
treated as independent: with several rows per patient this understates sampling spread (the
noise part is exact). A rounded normal stands in for the discrete Gaussian (close for σ >= 0.5,
and both put almost all mass on 0 below that).
"""

from __future__ import annotations

import numpy as np

from cleanroom.trainer import metrics as m

REPLICATES = 2000


Stats = dict[str, np.ndarray]


def _noise(sigma: float, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return np.rint(rng.normal(0.0, sigma, size=shape))


def _resample_counts(noisy: np.ndarray, sigma: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The replicate world's truth (expected counts), clean multinomial draws and noised draws [R, ...]."""
    cells = np.maximum(noisy, 0).astype(np.float64).reshape(-1)
    total = int(round(cells.sum()))
    p = cells / cells.sum() if cells.sum() > 0 else np.full(cells.size, 1 / cells.size)
    clean = rng.multinomial(total, p, size=REPLICATES).astype(np.float64)
    noised = clean + _noise(sigma, clean.shape, rng)
    shape = (REPLICATES, *noisy.shape)
    return (total * p).reshape(noisy.shape), clean.reshape(shape), noised.reshape(shape)


def _bin_means(noisy_sums: np.ndarray, noisy_hist: np.ndarray) -> np.ndarray:
    """Each bin's mean score from the noisy sums, kept inside the bin."""
    rows = np.maximum(noisy_hist, 0).sum(0)
    lo, hi = np.arange(m.BINS) / m.BINS, np.arange(1, m.BINS + 1) / m.BINS
    mean = np.where(rows >= 1, np.maximum(noisy_sums, 0) / m.QUANT / np.maximum(rows, 1), (lo + hi) / 2)
    return np.clip(mean, lo, hi)


def histogram_replicates(noisy: Stats, sigma: dict[str, float], rng: np.random.Generator) -> tuple[Stats, Stats]:
    """(truth, replicates) of score_histogram, and of score_sums when those were released."""
    truth_h, clean, noised = _resample_counts(noisy["score_histogram"], sigma["score_histogram"], rng)
    truth, reps = {"score_histogram": truth_h}, {"score_histogram": noised}
    if "score_sums" in noisy:
        mean = m.QUANT * _bin_means(noisy["score_sums"], noisy["score_histogram"])
        truth["score_sums"] = mean * truth_h.sum(0)
        reps["score_sums"] = mean * clean.sum(-2) + _noise(sigma["score_sums"], (REPLICATES, m.BINS), rng)
    return truth, reps


def confusion_replicates(noisy: np.ndarray, sigma: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    truth, _, noised = _resample_counts(noisy, sigma, rng)
    return truth, noised


def regression_replicates(noisy: Stats, sigma: dict[str, float], rng: np.random.Generator) -> tuple[Stats, Stats]:
    """Sums of v and v² (v in [0, 1]) redrawn from normal sampling laws; var(v²) uses its upper bound."""
    n = max(float(noisy["count"][0]), 1.0)
    m1 = float(np.clip(noisy["abs_error_sum"][0] / (m.QUANT * n), 0, 1))
    m2 = float(np.clip(noisy["sq_error_sum"][0] / (m.QUANT * n), m1 ** 2, 1))
    z = rng.normal(size=(2, REPLICATES))
    truth = {"count": np.float64(n), "abs_error_sum": m.QUANT * n * m1, "sq_error_sum": m.QUANT * n * m2}
    reps = {"count": n + _noise(sigma["count"], (REPLICATES,), rng),
            "abs_error_sum": m.QUANT * (n * m1 + np.sqrt(n * (m2 - m1 ** 2)) * z[0])
            + _noise(sigma["abs_error_sum"], (REPLICATES,), rng),
            "sq_error_sum": m.QUANT * (n * m2 + np.sqrt(n * m2 * (1 - m2)) * z[1])
            + _noise(sigma["sq_error_sum"], (REPLICATES,), rng)}
    return truth, reps


def pivot_interval(estimate: float, replicates: np.ndarray, truth: float, *, low: float = 0.0,
                   high: float = np.inf) -> tuple[float, float, float]:
    """(bias-corrected value, 95% low, 95% high): estimate - (q - truth) at q = median, 97.5%, 2.5%,
    clamped to the metric's range. For an unbiased metric the value stays the estimate (up to
    bootstrap error); for a biased one (the calibration error) the value moves inside its interval."""
    q_lo, q_mid, q_hi = np.percentile(replicates, [2.5, 50, 97.5])
    values = [estimate - (q - truth) for q in (q_mid, q_hi, q_lo)]
    return tuple(float(np.clip(v, low, high)) for v in values)  # type: ignore[return-value]
