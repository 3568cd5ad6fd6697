"""Do the DP evaluation's 95% intervals cover the exact values? Repeated in-process evaluations.

For a fixed model and dataset, the DP evaluation (cleanroom.trainer.evaluate.evaluate_outputs:
the whole mechanism and every interval, from the model's outputs on) is repeated with fresh noise,
bootstrap and seeds, and each reported 95% interval for AUROC, accuracy, sensitivity,
specificity and calibration error (ECE, 10 equal-width bins) — and the Brier score — is checked
against the EXACT value: non-private and unbinned, on the same rows (sklearn's roc_auc_score for
AUROC). Two fixed cases, each 2,000 patients with one row each:

- confident: a sharp, calibrated model (true logit 4x - 3): about half the patients score below
  0.05, as in the issue; the old 20 fixed-width bins read its AUROC as 0.949 (exact 0.954);
- unconfident: a weak, under-confident model (every score between 0.22 and 0.7, the median
  near 0.47) on data with a real signal: the old bins read 0.749 (exact 0.760), within ±0.08.

ε = 0.5, 1 and 3, δ = 1e-6. Pass: each coverage >= 93% minus binomial slack for the number of
runs, i.e. at least floor(R·0.93 - 3·sqrt(R·0.93·0.07)) of R runs (a check that fails by chance
with probability about 0.001 if the true coverage is exactly 93%, and far less at 95%). Exits
non-zero if any falls short. Noise is a rounded normal from numpy (`--exact-noise` uses the
service's exact discrete-Gaussian sampler: the same law to within rounding, about 4x slower).
The fast version of this check runs in tests/trainer/test_trainer_coverage.py.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cleanroom.trainer import intervals  # noqa: E402
from cleanroom.trainer import metrics as m  # noqa: E402
from cleanroom.trainer.evaluate import EvaluationResult, evaluate_outputs  # noqa: E402
from cleanroom.trainer.graph import Task  # noqa: E402

METRICS = ("auroc", "accuracy", "sensitivity", "specificity", "calibration", "brier")
EPSILONS = (0.5, 1.0, 3.0)
MODELS = ("confident", "unconfident")
DELTA = 1e-6
NOMINAL, FLOOR = 0.95, 0.93


@dataclass(frozen=True)
class Case:
    name: str
    probabilities: NDArray[np.float64]     # [n, 2]
    labels: NDArray[np.int64]
    exact: dict[str, float]


def case(name: str, n: int = 2000, seed: int = 2024) -> Case:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    if name == "confident":
        true_logit = 4.0 * x - 3.0
        model_logit = true_logit
    elif name == "unconfident":
        true_logit = 1.2 * x - 0.5
        model_logit = 0.25 * true_logit
    else:
        raise ValueError(name)
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(np.int64)
    p = 1 / (1 + np.exp(-model_logit))
    return Case(name, np.stack([1 - p, p], 1), y, exact_metrics(p, y))


def exact_metrics(p: NDArray[np.float64], y: NDArray[np.int64]) -> dict[str, float]:
    """Non-private, unbinned values on the same rows."""
    from sklearn.metrics import roc_auc_score

    pred = p >= m.DECISION_THRESHOLD
    gaps = np.zeros(m.CALIBRATION_BINS)
    np.add.at(gaps, m.bin_index(p, m.CALIBRATION_EDGES), y - p)
    return {"auroc": float(roc_auc_score(y, p)), "accuracy": float((pred == y).mean()),
            "sensitivity": float(pred[y == 1].mean()), "specificity": float((~pred[y == 0]).mean()),
            "calibration": float(np.abs(gaps).sum() / len(y)), "brier": float(((p - y) ** 2).mean())}


def run_once(c: Case, epsilon: float, run: int, *, exact_noise: bool = False) -> EvaluationResult:
    noise_rng: random.Random | np.random.Generator = random.Random(run) if exact_noise else np.random.default_rng([run, 7])
    return evaluate_outputs(Task("binary-classification", 2), c.probabilities, c.labels, wanted=set(METRICS) - {"brier"},
                            target_epsilon=epsilon, target_delta=DELTA, max_rows=1, rng=np.random.default_rng([run, 11]),
                            noise_rng=noise_rng)


def coverage(c: Case, epsilon: float, runs: int, *, seed: int = 0, exact_noise: bool = False) -> dict[str, tuple[int, float]]:
    """metric -> (runs whose interval held the exact value, mean interval width)."""
    hits = dict.fromkeys(METRICS, 0)
    widths: dict[str, list[float]] = {k: [] for k in METRICS}
    for r in range(runs):
        result = run_once(c, epsilon, seed + r, exact_noise=exact_noise)
        for k in METRICS:
            _, lo, hi = result.metrics[k]
            hits[k] += lo <= c.exact[k] <= hi
            widths[k].append(hi - lo)
    return {k: (hits[k], float(np.mean(widths[k]))) for k in METRICS}


def required(runs: int, floor: float = FLOOR, z: float = 3.0) -> int:
    """Fewest covering runs accepted: 93% minus z binomial standard deviations."""
    return math.floor(runs * floor - z * math.sqrt(runs * floor * (1 - floor)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--replicates", type=int, default=intervals.REPLICATES, help="bootstrap replicates per evaluation")
    parser.add_argument("--exact-noise", action="store_true", help="the service's discrete-Gaussian sampler")
    args = parser.parse_args(argv)
    intervals.REPLICATES = args.replicates
    need = required(args.runs)
    print(f"coverage of 95% intervals, {args.runs} runs per row; pass: >= {need} ({need / args.runs:.1%})")
    print(f"{'model':12s} {'ε':>4s}  " + "  ".join(f"{k:>19s}" for k in METRICS))
    failed = []
    for name in MODELS:
        c = case(name)
        print(f"{name:12s} exact " + "  ".join(f"{c.exact[k]:19.4f}" for k in METRICS))
        for eps in EPSILONS:
            start = time.perf_counter()
            result = coverage(c, eps, args.runs, exact_noise=args.exact_noise)
            cells = []
            for k in METRICS:
                hits, width = result[k]
                ok = hits >= need
                failed += [] if ok else [f"{name} ε={eps:g} {k}: {hits}/{args.runs}"]
                cells.append(f"{hits / args.runs:6.1%} w{width:.3f}{' ' if ok else '!'}".rjust(19))
            print(f"{name:12s} {eps:4g}  " + "  ".join(cells) + f"   ({time.perf_counter() - start:.0f} s)")
    print("w: mean interval width; !: below the pass line")
    if failed:
        print("FAILED: " + "; ".join(failed))
        return 1
    print("all intervals cover")
    return 0


if __name__ == "__main__":
    sys.exit(main())
