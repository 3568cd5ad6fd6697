"""OpenDP measurements for the statistics engine: exact discrete samplers only.

Every noise draw here is OpenDP's discrete Laplace or discrete Gaussian over 64-bit integers,
drawn from OpenDP's own CSPRNG. No floating-point noise of our own: textbook float Laplace leaks
through the gaps in its output's binary representation (Mironov 2012) within a few queries.
Real-valued sums are therefore mapped to fixed point first (see `to_fixed`), noised as integers,
and scaled back (post-processing, which DP is closed under).

Calibration asks OpenDP's own privacy maps (`binary_search_param`) for the smallest scale whose
map meets the requested ε (and δ) at the stated sensitivity, and every release re-checks the map
before noise is drawn, so a rounding slip fails closed instead of overspending.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import opendp.prelude as dp

from cleanroom.domain.errors import CleanroomError, ErrorCode

# "contrib" is OpenDP's switch for constructors whose proofs are still under review; all the
# measurements below (discrete Laplace/Gaussian, thresholded counts, private quantile) live behind
# it. We enable it deliberately and nothing else. "floating-point" stays off: sums are fixed-point
# integers by the time they reach a sampler, so no float-noise code path can run.
dp.enable_features("contrib")

CONFIDENCE = 0.95
EXACT_GAUSSIAN_ACCURACY_MAX_SCALE = 1000.0
FIXED_POINT_BITS = 24  # clamped values are scaled so |x|·2^k ≤ 2^24: ~7 significant digits


@dataclass(frozen=True)
class Noise:
    """A calibrated additive mechanism: integer sensitivity (L1 for Laplace, L2 for Gaussian)."""

    gaussian: bool
    scale: float
    sensitivity: int
    epsilon: float
    delta: float = 0.0

    @property
    def name(self) -> str:
        return "discrete-gaussian" if self.gaussian else "discrete-laplace"

    def half_width(self, *, alpha: float = 1 - CONFIDENCE) -> float:
        """Half-width of the (1 - alpha) interval of one noisy integer, from OpenDP's utilities."""
        return _half_width(self.scale, alpha, self.gaussian)


@lru_cache(maxsize=1024)  # a warm worker asks the same few (scale, alpha) again and again
def _half_width(scale: float, alpha: float, gaussian: bool) -> float:
    """OpenDP defines accuracy as P[|noise| >= a] = alpha; for integer noise the floor keeps the
    coverage (documented by OpenDP), and is the honest integer half-width."""
    if not gaussian:
        return float(math.floor(dp.discrete_laplacian_scale_to_accuracy(scale, alpha)))
    if scale <= EXACT_GAUSSIAN_ACCURACY_MAX_SCALE:
        return float(math.floor(dp.discrete_gaussian_scale_to_accuracy(scale, alpha)))
    # OpenDP's discrete-Gaussian accuracy sums the pmf, in time linear in the scale (minutes at
    # fixed-point scales). Past 1000 the discrete tail beyond k matches the continuous one beyond
    # k - 1/2 to far below alpha's precision, so the continuous accuracy, rounded up, plus one,
    # is conservative (at 1000 it equals the exact 1961).
    return float(math.ceil(dp.gaussian_scale_to_accuracy(scale, alpha)) + 1)


def internal_failure() -> CleanroomError:
    # OpenDP's messages may quote inputs; never pass them on.
    return CleanroomError(ErrorCode.INTERNAL, "the statistics mechanism failed")


# --- additive noise ------------------------------------------------------------------------------


def _space(*, vector: bool, gaussian: bool) -> tuple[dp.Domain, dp.Metric]:
    atom = dp.atom_domain(T=dp.i64)
    if not vector:
        return atom, dp.absolute_distance(T=dp.i64)
    metric = dp.l2_distance(T=dp.i64) if gaussian else dp.l1_distance(T=dp.i64)
    return dp.vector_domain(atom), metric


@lru_cache(maxsize=256)
def _measurement(scale: float, *, gaussian: bool, vector: bool, delta: float) -> dp.Measurement:
    space = _space(vector=vector, gaussian=gaussian)
    if not gaussian:
        return dp.m.make_laplace(*space, scale=scale)  # discrete Laplace on integer domains
    zcdp = dp.m.make_gaussian(*space, scale=scale)  # discrete Gaussian on integer domains
    return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(zcdp), delta=delta)


def _target(epsilon: float, delta: float, gaussian: bool) -> object:
    return (epsilon, delta) if gaussian else epsilon


@lru_cache(maxsize=256)
def _unit_scale(*, epsilon: float, delta: float, gaussian: bool) -> float:
    """The scale OpenDP certifies at sensitivity 1 (binary search over its privacy map)."""
    return float(
        dp.binary_search_param(
            lambda s: _measurement(s, gaussian=gaussian, vector=False, delta=delta),
            d_in=1,
            d_out=_target(epsilon, delta, gaussian),
        )
    )


@lru_cache(maxsize=1024)
def calibrate(*, sensitivity: int, epsilon: float, delta: float = 0.0, gaussian: bool = False) -> Noise:
    """The smallest scale OpenDP certifies for (ε, δ) at this sensitivity (δ only for Gaussian).

    Both discrete maps depend on sensitivity/scale alone, so the unit scale times the sensitivity
    is right up to float rounding; OpenDP's own map then confirms it (nudging up if rounding bit).
    """
    delta = delta if gaussian else 0.0
    scale = _unit_scale(epsilon=epsilon, delta=delta, gaussian=gaussian) * int(sensitivity)
    for _ in range(8):
        noise = Noise(gaussian, scale, int(sensitivity), epsilon, delta)
        if _certified(noise):
            return noise
        scale *= 1 + 1e-9
    raise internal_failure()


@lru_cache(maxsize=1024)
def _certified(noise: Noise) -> bool:
    """OpenDP's own map confirms the vector mechanism meets (ε, δ) at the sensitivity."""
    meas = _measurement(noise.scale, gaussian=noise.gaussian, vector=True, delta=noise.delta)
    return bool(meas.check(noise.sensitivity, _target(noise.epsilon, noise.delta, noise.gaussian)))


def release(values: list[int], noise: Noise) -> list[int]:
    """Noisy copies of integer values (one vector draw; the same guarantee for any length)."""
    if not _certified(noise):
        raise internal_failure()
    meas = _measurement(noise.scale, gaussian=noise.gaussian, vector=True, delta=noise.delta)
    try:
        return [int(v) for v in meas([int(v) for v in values])]
    except dp.OpenDPException:
        raise internal_failure() from None


# --- fixed point ---------------------------------------------------------------------------------


def fixed_point_bits(magnitude: float) -> int:
    """k with magnitude·2^k ≤ 2^FIXED_POINT_BITS: resolution 2^-k, chosen from public bounds only."""
    return FIXED_POINT_BITS - math.ceil(math.log2(magnitude))


def to_fixed(values: np.ndarray, bits: int) -> np.ndarray:
    """round(x·2^k) as int64, exact (ldexp is exact; rint rounds half to even)."""
    return np.rint(np.ldexp(np.asarray(values, dtype=np.float64), bits)).astype(np.int64)


def fixed_magnitude(magnitude: float, bits: int) -> int:
    """The largest |round(x·2^k)| for |x| ≤ magnitude: the per-row sensitivity in fixed point."""
    return int(math.ceil(math.ldexp(magnitude, bits)))


# --- thresholded counts (unknown keys) -----------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    """Counts over keys that are not public: a key is released only if its noisy count ≥ τ.

    `certified` is the smallest τ whose OpenDP map meets (ε, δ); the mechanism runs at
    `threshold` = certified + 1. OpenDP 0.16 releases noisy counts *equal to* τ but leaves that
    point's mass out of δ (opendp/opendp#2922, open), so its map under-reports δ by up to e^(1/scale)
    for the Laplace threshold. Running one above makes "released" mean "noisy > certified", the
    event whose probability the map does bound; tests measure the release rate of a one-patient
    key against δ to keep this honest.
    """

    noise: Noise
    certified: int
    rows: int  # a patient changes ≤ rows keys, each by ≤ rows, total ≤ rows

    @property
    def threshold(self) -> int:
        return self.certified + 1


@lru_cache(maxsize=256)
def _threshold_measurement(scale: float, threshold: int, *, gaussian: bool, delta: float) -> dp.Measurement:
    domain = dp.map_domain(dp.atom_domain(T=dp.String), dp.atom_domain(T=dp.i64))
    if not gaussian:
        metric = dp.l01inf_distance(dp.absolute_distance(T=dp.i64))
        return dp.m.make_laplace_threshold(domain, metric, scale=scale, threshold=threshold)
    metric = dp.l02inf_distance(dp.absolute_distance(T=dp.i64))
    meas = dp.m.make_gaussian_threshold(domain, metric, scale=scale, threshold=threshold)
    return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(meas), delta=delta)


@lru_cache(maxsize=1024)
def _threshold_ok(scale: float, threshold: int, rows: int, epsilon: float, delta: float, gaussian: bool) -> bool:
    try:
        meas = _threshold_measurement(scale, threshold, gaussian=gaussian, delta=delta)
        return bool(meas.check((rows, rows, rows), (epsilon, delta)))
    except dp.OpenDPException:
        return False  # e.g. the threshold's own δ already exceeds the δ to fix


@lru_cache(maxsize=256)
def calibrate_threshold(*, rows: int, epsilon: float, delta: float, gaussian: bool = False) -> Threshold:
    """Scale from ε (Gaussian: half of δ too), then the smallest τ OpenDP certifies for the rest.

    τ is what makes unknown keys safe: a key held by a single patient has a true count ≤ rows,
    and its noisy count passes τ with probability within δ.
    """
    noise = calibrate(sensitivity=rows, epsilon=epsilon, delta=delta / 2, gaussian=gaussian)
    noise = Noise(gaussian, noise.scale, rows, epsilon, delta)
    high = rows + 1
    while not _threshold_ok(noise.scale, high, rows, epsilon, delta, gaussian):
        high *= 2
        if high > 2**60:
            raise internal_failure()
    low = rows  # a threshold at the sensitivity itself is never enough
    while high - low > 1:
        middle = (low + high) // 2
        ok = _threshold_ok(noise.scale, middle, rows, epsilon, delta, gaussian)
        low, high = (low, middle) if ok else (middle, high)
    return Threshold(noise, high, rows)


def release_above_threshold(counts: dict[str, int], threshold: Threshold) -> dict[str, int]:
    """Noisy counts of the keys whose noisy count exceeds the certified τ; others do not appear."""
    noise = threshold.noise
    if not _threshold_ok(noise.scale, threshold.certified, threshold.rows, noise.epsilon, noise.delta, noise.gaussian):
        raise internal_failure()
    meas = _threshold_measurement(noise.scale, threshold.threshold, gaussian=noise.gaussian, delta=noise.delta)
    try:
        return {str(k): int(v) for k, v in meas(counts).items()}
    except dp.OpenDPException:
        raise internal_failure() from None


# --- quantiles -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantileSelector:
    """OpenDP's private quantile (exponential-mechanism selection among public candidates)."""

    level: float
    scale: float
    rows: int
    epsilon: float

    def rank_half_width(self, candidates: int, *, alpha: float = 1 - CONFIDENCE) -> float:
        """Rows by which the chosen candidate's score may exceed the best one's, w.p. ≥ 1 - alpha.

        The score is |(1-q)·#below - q·#above| in rows, selected with noise of this scale: the
        standard exponential-mechanism tail bound gives scale·ln(candidates / alpha).
        """
        return self.scale * math.log(candidates / alpha)


def _quantile_measurement(candidates: tuple[float, ...], level: float, scale: float) -> dp.Measurement:
    domain = dp.vector_domain(dp.atom_domain(T=dp.f64, nan=False))
    return dp.m.make_private_quantile(
        domain, dp.symmetric_distance(), dp.max_divergence(), candidates=list(candidates), alpha=level, scale=scale
    )


@lru_cache(maxsize=256)
def calibrate_quantile(*, rows: int, level: float, epsilon: float) -> QuantileSelector:
    """d_in = rows: removing a patient removes ≤ rows values (symmetric distance)."""
    scale = dp.binary_search_param(lambda s: _quantile_measurement((0.0, 1.0), level, s), d_in=rows, d_out=epsilon)
    return QuantileSelector(level, float(scale), rows, epsilon)


@lru_cache(maxsize=64)
def _certified_quantile(candidates: tuple[float, ...], selector: QuantileSelector) -> dp.Measurement | None:
    meas = _quantile_measurement(candidates, selector.level, selector.scale)
    return meas if meas.check(selector.rows, selector.epsilon) else None


def release_quantile(values: np.ndarray, candidates: tuple[float, ...], selector: QuantileSelector) -> float:
    meas = _certified_quantile(candidates, selector)
    if meas is None:
        raise internal_failure()
    try:
        return float(meas(np.asarray(values, dtype=np.float64).tolist()))
    except dp.OpenDPException:
        raise internal_failure() from None
