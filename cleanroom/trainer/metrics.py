"""Validation metrics as pure functions of (noisy) sufficient statistics, with binning bounds.

Every function takes arrays with any number of leading replicate dimensions, so the same code
computes the point estimate and the bootstrap replicates. Noisy cells are used as released
(unbiased sums; clamping each cell at zero would bias every cumulative count), and only the final
ratios are clamped to their range.

Score bins. A binary score histogram is [..., 2, B] counts of rows by (label, score bin), where
the B bins are cut by B - 1 interior `edges` in (0, 1), sorted: bin j holds scores in
[edges[j-1], edges[j]) (bin 0 from 0, the last up to and including 1). Threshold index k in 0..B
calls a row positive when its bin index is >= k, i.e. its score is >= edges[k-1]; k = 0 calls
every row positive, k = B none. So every confusion count is a cumulative sum, exact at the edges.
The edges come from `score_edges`: public edges (0.5, the calibration edges 0.1..0.9 and the
requested net-benefit thresholds, so those metrics carry no binning error at all) plus edges that
follow the model's scores on the logit scale, placed by a small DP step (see `quantile_edges`).

Binning bounds. A metric that depends on the order of scores inside a bin is returned as a
triple (low, point, high) such that the exact, unbinned metric of the rows the histogram counts
lies in [low, high]: for AUROC, pairs of a positive and a negative in the same bin are the only
ones the histogram cannot order, so the exact AUROC lies within ± W/2 of the binned trapezoid,
W = Σ_b pos_b·neg_b / (P·N) (the within-bin pair mass). Intervals are built on low and high.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
Triple = tuple[Array, Array, Array]

CALIBRATION_BINS = 10          # the usual ECE: ten equal-width probability bins
CALIBRATION_EDGES = tuple(k / CALIBRATION_BINS for k in range(1, CALIBRATION_BINS))
DECISION_THRESHOLD = 0.5       # accuracy, sensitivity and specificity are reported at this threshold
QUANT = 1000                   # sums of values in [-1, 1] are released as integers in units of 1/QUANT

# The locator: a coarse, fixed grid on the logit scale whose pooled noisy counts place the edges.
LOCATOR_STEP = 0.5
LOCATOR_LIMIT = 16.0           # logits beyond ±16 (scores within 1.2e-7 of 0 or 1) share the two tail cells
LOCATOR_LOGITS = np.arange(-LOCATOR_LIMIT, LOCATOR_LIMIT + LOCATOR_STEP / 2, LOCATOR_STEP)

# The bin rule: B = clamp(round((n / (RULE_SCALE · σ))^(2/3)), MIN_BINS, MAX_BINS) bins that follow
# the scores (see `bin_count`).
RULE_SCALE = 2.0
MIN_BINS, MAX_BINS = 8, 160


def sigmoid(z: NDArray[np.float64]) -> Array:
    return np.asarray(0.5 * (1.0 + np.tanh(np.asarray(z, dtype=np.float64) / 2)), dtype=np.float64)


def locator_edges() -> Array:
    """The locator's interior edges as probabilities: len(LOCATOR_LOGITS) + 1 cells."""
    return sigmoid(LOCATOR_LOGITS)


def bin_index(scores: NDArray[np.float64], edges: Sequence[float] | Array) -> NDArray[np.int64]:
    """Bin of each score: the number of edges at or below it (a score equal to an edge goes up)."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(scores, dtype=np.float64),
                           side="right").astype(np.int64)


def bin_count(n_rows: float, sigma: float) -> int:
    """The documented rule for the number of score-following bins, from a DP (or public) row count
    and the histogram's noise scale (public: ε, δ, the budget share and rows per patient).

    Binning error of AUROC shrinks like 1/B (equal-mass bins leave ~n/B rows per bin, so the
    within-bin pair mass W is of order 1/B) while the noise in a cumulative count grows like
    σ·√B, i.e. like σ·√B / n in the metric. Balancing c/B against σ√B/n gives B ∝ (n/σ)^(2/3).
    RULE_SCALE was set once on simulated confident and unconfident models (bench/coverage.py)."""
    if not (math.isfinite(n_rows) and n_rows > 0 and sigma > 0):
        return MIN_BINS
    return int(min(MAX_BINS, max(MIN_BINS, round((n_rows / (RULE_SCALE * sigma)) ** (2 / 3)))))


def quantile_edges(locator: Array, *, sigma: float, bins: int) -> Array:
    """`bins - 1` edges (probabilities) at equal-mass quantiles of the noisy locator counts.

    Post-processing of the released locator only: cells below 2σ are taken as empty (the noise of
    an empty cell rarely reaches that), the rest minus 2σ give a piecewise-linear CDF on the logit
    scale (tail cells as point masses at ±LOCATOR_LIMIT), and the quantiles are read off it. With
    nothing above the threshold the edges are spread evenly over logits -4..4."""
    counts = np.maximum(np.asarray(locator, dtype=np.float64) - 2 * sigma, 0.0)
    if counts.sum() <= 0:
        return sigmoid(np.linspace(-4.0, 4.0, bins + 1)[1:-1])
    # Cell i (1..len-2) spans LOCATOR_LOGITS[i-1]..LOCATOR_LOGITS[i]; cells 0 and -1 are the tails,
    # point masses at -LOCATOR_LIMIT and +LOCATOR_LIMIT.
    knots = np.concatenate([[-LOCATOR_LIMIT - 1e-9], LOCATOR_LOGITS, [LOCATOR_LIMIT + 1e-9]])
    cdf = np.concatenate([[0.0], np.cumsum(counts)])
    cdf = cdf / cdf[-1]
    targets = np.arange(1, bins) / bins
    # np.interp needs increasing x: nudge flat stretches so the first logit reaching a level wins.
    cdf_strict = cdf + np.arange(len(cdf)) * 1e-12
    logits = np.interp(targets, cdf_strict, knots)
    return sigmoid(np.clip(logits, -LOCATOR_LIMIT, LOCATOR_LIMIT))


def score_edges(following: Array, thresholds: Sequence[float]) -> Array:
    """Interior edges of the released histogram: the score-following edges and the public ones."""
    public = [DECISION_THRESHOLD, *CALIBRATION_EDGES, *thresholds]
    edges = np.unique(np.concatenate([np.asarray(following, dtype=np.float64), np.asarray(public, dtype=np.float64)]))
    return np.asarray(edges[(edges > 0) & (edges < 1)], dtype=np.float64)


def edge_position(edges: Array, value: float) -> int:
    """Threshold index k with edges[k-1] == value (the public edges are always present)."""
    k = int(np.searchsorted(edges, value, side="left"))
    if k >= len(edges) or edges[k] != value:
        raise ValueError(f"{value} is not an edge")
    return k + 1


def _unit(a: Array) -> Array:
    return np.asarray(np.clip(a, 0.0, 1.0), dtype=np.float64)


def _take(a: Array, index: NDArray[np.int64]) -> Array:
    """a[..., index[...]] along the last axis."""
    return np.asarray(np.take_along_axis(a, index[..., None], -1)[..., 0], dtype=np.float64)


def _ratio(num: Array | np.float64, den: Array | np.float64) -> Array:
    return np.asarray(np.clip(num / np.maximum(den, 1.0), 0.0, 1.0), dtype=np.float64)


def confusion(hist: Array) -> dict[str, Array]:
    """TP, FP, TN, FN at every threshold index 0..B (index k: bins >= k are positive)."""
    h = np.asarray(hist, dtype=np.float64)
    above = np.flip(np.cumsum(np.flip(h, -1), -1), -1)                    # Σ_{b >= k}
    above = np.concatenate([above, np.zeros_like(above[..., :1])], -1)     # k = B: none positive
    totals = h.sum(-1, keepdims=True)
    return {"tp": above[..., 1, :], "fp": above[..., 0, :], "fn": totals[..., 1, :] - above[..., 1, :],
            "tn": totals[..., 0, :] - above[..., 0, :]}


def roc(hist: Array, c: dict[str, Array] | None = None) -> tuple[Array, Array]:
    """(FPR, TPR) at threshold indices 0..B: from (1, 1) down to (0, 0) (`c`: its confusion, if known)."""
    c = confusion(hist) if c is None else c
    return _ratio(c["fp"], c["fp"] + c["tn"]), _ratio(c["tp"], c["tp"] + c["fn"])


def auroc(hist: Array) -> Triple:
    """(low, trapezoid, high): pairs in different bins are ordered by the bins; a positive and a
    negative in the same bin may be ordered either way, so they add between 0 and W."""
    h = np.asarray(hist, dtype=np.float64)
    neg, pos = h[..., 0, :], h[..., 1, :]
    pos_above = np.flip(np.cumsum(np.flip(pos, -1), -1), -1) - pos      # positives in strictly higher bins
    pairs = np.maximum(neg.sum(-1) * pos.sum(-1), 1.0)
    cross = (neg * pos_above).sum(-1) / pairs
    within = (neg * pos).sum(-1) / pairs
    return _unit(cross), _unit(cross + within / 2), _unit(cross + within)


def at_threshold(hist: Array, k: int, c: dict[str, Array] | None = None) -> dict[str, Array]:
    """Accuracy, sensitivity and specificity calling bins >= k positive (no binning error at an edge)."""
    c = {name: v[..., k] for name, v in (confusion(hist) if c is None else c).items()}
    return {"accuracy": _ratio(c["tp"] + c["tn"], c["tp"] + c["tn"] + c["fp"] + c["fn"]),
            "sensitivity": _ratio(c["tp"], c["tp"] + c["fn"]),
            "specificity": _ratio(c["tn"], c["tn"] + c["fp"])}


def operating_point(hist: Array, *, fixed: str, target: float, curve: tuple[Array, Array] | None = None) -> Triple:
    """Sensitivity at specificity >= target (fixed="specificity"), or specificity at sensitivity
    >= target (fixed="sensitivity"): the best the other rate can be at a threshold meeting the
    target. Bounds: let k be the edge threshold meeting the target with the most of the other rate;
    the best threshold lies between edge k and the next edge down (which misses the target), so the
    exact value lies between the rates at those two edges. Point: linear interpolation between them."""
    fpr, tpr = roc(hist) if curve is None else curve
    if fixed == "specificity":
        met_rate, other = 1.0 - fpr, tpr            # other rate falls as k grows; met rate rises
    elif fixed == "sensitivity":
        # Specificity rises with k, sensitivity falls: flip so the same scan applies.
        met_rate, other = np.flip(tpr, -1), np.flip(1.0 - fpr, -1)
    else:
        raise ValueError(f"unknown operating point {fixed!r}")
    # Monotone in k as the exact curve is (noise may break it): the met rate as its running max from
    # the left of index k... i.e. meeting the target at k means every later index meets it too.
    met_mono = np.flip(np.minimum.accumulate(np.flip(met_rate, -1), -1), -1)
    feasible = met_mono >= target
    last = met_rate.shape[-1] - 1
    k = np.where(feasible.any(-1), np.argmax(feasible, -1), last)
    k_prev = np.maximum(k - 1, 0)
    low = _take(other, k)
    high = np.where(k > 0, _take(other, k_prev), 1.0)
    m_k, m_prev = _take(met_rate, k), _take(met_rate, k_prev)
    span = m_k - m_prev
    w = np.where(np.abs(span) > 1e-12, np.clip((m_k - target) / np.where(np.abs(span) > 1e-12, span, 1.0), 0, 1), 0.0)
    point = low + w * (high - low)
    return (np.asarray(low, dtype=np.float64), np.asarray(np.clip(point, low, high), dtype=np.float64),
            np.asarray(high, dtype=np.float64))


def net_benefit(hist: Array, k: int, threshold: float, c: dict[str, Array] | None = None) -> dict[str, Array]:
    """Vickers' net benefit of treating rows at or above the threshold (edge index k), and of
    treating everyone: TP/n - FP/n · t/(1-t) (no binning error: t is an edge)."""
    c = confusion(hist) if c is None else c
    n = np.maximum(np.asarray(hist, dtype=np.float64).sum((-2, -1)), 1.0)
    odds = threshold / (1 - threshold)
    model = (c["tp"][..., k] - c["fp"][..., k] * odds) / n
    everyone = (c["tp"][..., 0] - c["fp"][..., 0] * odds) / n
    return {"model": np.asarray(np.clip(model, -odds, 1.0), dtype=np.float64),
            "treat_all": np.asarray(np.clip(everyone, -odds, 1.0), dtype=np.float64)}


def calibration_rows(hist: Array, edges: Array) -> tuple[Array, Array]:
    """(rows, positives) per calibration bin [..., CALIBRATION_BINS], merging score bins."""
    h = np.asarray(hist, dtype=np.float64)
    cuts = [edge_position(edges, e) for e in CALIBRATION_EDGES]
    groups = np.split(np.arange(h.shape[-1]), cuts)
    rows = np.stack([h[..., :, g].sum((-2, -1)) for g in groups], -1)
    positives = np.stack([h[..., 1, g].sum(-1) for g in groups], -1)
    return rows, positives


def observed_rate(hist: Array, edges: Array) -> Array:
    rows, positives = calibration_rows(hist, edges)
    return _ratio(positives, rows)


def reliability(hist: Array, gaps: Array | None, edges: Array) -> list[dict[str, float]]:
    """Per calibration bin: rows, observed positive rate and mean predicted score (observed minus
    the released mean gap, kept inside the bin); all noisy, clamped."""
    rows, positives = calibration_rows(hist, edges)
    bounds = (0.0, *CALIBRATION_EDGES, 1.0)
    out = []
    for b in range(CALIBRATION_BINS):
        lo, hi = bounds[b], bounds[b + 1]
        n = float(rows[b])
        observed = float(_ratio(np.float64(positives[b]), np.float64(n)))
        if gaps is not None and n >= 1:
            predicted = float(np.clip((positives[b] - gaps[b] / QUANT) / n, lo, hi))
        else:
            predicted = (lo + hi) / 2
        out.append({"bin_low": lo, "bin_high": hi, "mean_predicted": predicted, "observed": observed, "rows": n})
    return out


def multiclass_metrics(confusion_matrix: Array) -> dict[str, Array]:
    """confusion [..., K, K] counts by (true, predicted)."""
    c = np.asarray(confusion_matrix, dtype=np.float64)
    diag = np.diagonal(c, axis1=-2, axis2=-1)
    recall = _ratio(diag, c.sum(-1))
    return {"accuracy": _ratio(diag.sum(-1), c.sum((-2, -1))), "macro_recall": np.asarray(recall.mean(-1), dtype=np.float64)}


def regression_metrics(count: Array, abs_sum: Array, sq_sum: Array, *, bound: float) -> dict[str, Array]:
    """MAE and RMSE from sums of min(|error| / bound, 1) and its square, in units of 1/QUANT."""
    n = np.maximum(count, 1.0)
    mae = np.clip(abs_sum / (QUANT * n), 0.0, 1.0)
    msq = np.clip(sq_sum / (QUANT * n), 0.0, 1.0)
    return {"mae": np.asarray(bound * mae, dtype=np.float64), "rmse": np.asarray(bound * np.sqrt(msq), dtype=np.float64)}
