"""DP clamping bounds: a noisy histogram over a public log-scale grid (charged its own ε).

The grid is fixed in advance (so the key space is public and no δ is needed): a zero bin for
|x| < 2^k_min, then one bin per power of two up to 2^k_max on each side. Each bin's count gets
discrete Laplace noise at sensitivity L (a patient's L rows fall in at most L bins, L1 ≤ L). A bin
passes when its noisy count exceeds what noise alone reaches in any of the grid's bins with
probability 1e-6 (a Bonferroni threshold from OpenDP's accuracy utility; at 5% one estimate in
twenty would stretch to a far-away empty octave); the bounds are the outer edges of the lowest
and highest passing bins. Bins thinly populated at the tails are missed on
purpose: their rows are clamped, which is the price of not revealing outliers.
"""

from __future__ import annotations

import numpy as np

from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.statistics.engine import mechanisms

K_MAX = 40                          # bounds never exceed ±2^41
K_MIN_FLOAT, K_MIN_INTEGER = -20, 0
FALSE_BIN_PROBABILITY = 1e-6


def grid_size(*, integer: bool) -> int:
    k_min = K_MIN_INTEGER if integer else K_MIN_FLOAT
    return 2 * (K_MAX - k_min + 1) + 1


def bin_index(values: np.ndarray, *, integer: bool) -> np.ndarray:
    """Grid bin of each value: centre bin for |x| < 2^k_min, one bin per octave each side."""
    k_min = K_MIN_INTEGER if integer else K_MIN_FLOAT
    centre = K_MAX - k_min + 1
    magnitude = np.abs(values)
    with np.errstate(divide="ignore"):
        octave = np.clip(np.floor(np.log2(np.where(magnitude > 0, magnitude, 1.0))), k_min, K_MAX).astype(np.int64)
    offset = octave - k_min + 1
    index = np.where(values > 0, centre + offset, centre - offset)
    return np.where(magnitude < 2.0**k_min, centre, index)


def bin_edges(index: int, *, integer: bool) -> tuple[float, float]:
    k_min = K_MIN_INTEGER if integer else K_MIN_FLOAT
    centre = K_MAX - k_min + 1
    if index == centre:
        return -(2.0**k_min), 2.0**k_min
    octave = k_min + abs(index - centre) - 1
    if index > centre:
        return 2.0**octave, 2.0 ** (octave + 1)
    return -(2.0 ** (octave + 1)), -(2.0**octave)


def pass_threshold(noise: mechanisms.Noise, *, integer: bool) -> float:
    """A noisy count must exceed this to be believed: an empty bin passes w.p. ≤ 1e-6 in all."""
    return noise.half_width(alpha=FALSE_BIN_PROBABILITY / grid_size(integer=integer))


def estimate_bounds(values: np.ndarray, *, rows: int, epsilon: float, integer: bool) -> tuple[float, float]:
    """(lo, hi) covering the well-populated part of the data; ε-DP at L = rows per patient."""
    noise = mechanisms.calibrate(sensitivity=rows, epsilon=epsilon)
    counts = np.bincount(bin_index(np.asarray(values, np.float64), integer=integer), minlength=grid_size(integer=integer))
    noisy = np.asarray(mechanisms.release(counts.tolist(), noise))
    passing = np.flatnonzero(noisy > pass_threshold(noise, integer=integer))
    if passing.size == 0:
        raise CleanroomError(
            ErrorCode.FAILED_PRECONDITION,
            "too few patients to estimate bounds at this epsilon; give public bounds or a larger bounds_epsilon",
        )
    lo, _ = bin_edges(int(passing[0]), integer=integer)
    _, hi = bin_edges(int(passing[-1]), integer=integer)
    return lo, hi
