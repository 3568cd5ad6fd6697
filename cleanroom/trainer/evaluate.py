"""Patient-level DP evaluation: noisy sufficient statistics, then metrics with 95% intervals.

Rows are bounded per patient first (at most `max_rows_per_patient`, sampled uniformly), so one
patient moves any statistic by at most max_rows * per_row. Each statistic gets a share of the
zCDP budget ρ (calibrated so that the composition meets the target (ε, δ)) and exact discrete
Gaussian noise (noise.count_noise). Every metric is post-processing of the released statistics:
classification gets accuracy, sensitivity and specificity at 0.5, AUROC over the noisy ROC at
thresholds 0.05..0.95 and an expected calibration error; regression gets MAE and RMSE from
clamped error sums (`error_bound` is the public clamp). Values are bias-corrected and given
95% intervals by a parametric bootstrap over sampling and the known noise (intervals.py).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cleanroom.domain.errors import bad_request
from cleanroom.trainer import accounting, intervals, noise, sampling, statistics
from cleanroom.trainer import metrics as m
from cleanroom.trainer.graph import ExportedModel, Task
from cleanroom.trainer.guard import DEFAULT_ALLOWED_MODULES, assert_no_foreign_modules

SUPPORTED = {
    "binary-classification": ("accuracy", "sensitivity", "specificity", "auroc", "calibration"),
    "multiclass-classification": ("accuracy", "macro_recall", "calibration"),
    "regression": ("mae", "rmse"),
}


@dataclass(frozen=True)
class EvaluationResult:
    metrics: dict[str, tuple[float, float, float]]     # name -> (value, 95% low, 95% high)
    roc_points: list[tuple[float, float]]              # (FPR, TPR), binary only
    reliability: list[dict[str, float]]                # noisy reliability bins, when calibration was asked
    epsilon_spent: float
    delta: float
    accountant: str
    mechanism_parameters: dict = field(default_factory=dict)


def _bounded_rows(patient: np.ndarray, *, max_rows: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    index = sampling.PatientIndex.build(patient)
    rows, _ = sampling.bounded_rows(index, np.arange(index.n_patients), max_rows=max_rows, rng=rng)
    return np.sort(rows), index.n_patients


def _outputs(model: ExportedModel, state: dict[str, torch.Tensor], X: torch.Tensor) -> np.ndarray:
    out = model.predict(state, X)
    if model.task.classification:
        out = torch.softmax(out.double(), dim=1)
    return out.double().numpy()


def _statistics(task: Task, outputs: np.ndarray, y: np.ndarray, wanted: set[str],
                error_bound: float | None) -> list[statistics.Statistic]:
    if task.kind == "binary-classification":
        return statistics.binary(outputs, y, calibration="calibration" in wanted)
    if task.kind == "multiclass-classification":
        return statistics.multiclass(outputs, y, calibration="calibration" in wanted,
                                     confusion=bool(wanted & {"accuracy", "macro_recall"}))
    if error_bound is None or not error_bound > 0:
        raise bad_request("regression evaluation needs a positive public error_bound")
    return statistics.regression(outputs, y, bound=error_bound)


def _release(stats: list[statistics.Statistic], *, rho: float, max_rows: int,
             noise_rng: random.Random | None) -> tuple[dict, dict, dict]:
    """Noise every statistic with its ρ share: noisy values, noise std, and a public description."""
    total_weight = sum(statistics.WEIGHTS[s.name] for s in stats)
    noisy, sigma, described = {}, {}, {}
    for s in stats:
        share = rho * statistics.WEIGHTS[s.name] / total_weight
        sens = s.sensitivity(max_rows)
        sigma[s.name] = sens / math.sqrt(2 * share)
        noisy[s.name] = s.values + noise.count_noise(s.values.shape, sigma=sigma[s.name], rng=noise_rng)
        described[s.name] = {"mechanism": "discrete-gaussian", "sigma": sigma[s.name], "l2_sensitivity": sens,
                             "noise_multiplier": sigma[s.name] / sens, "rho": share, "cells": int(s.values.size)}
    return noisy, sigma, described


def _charge(described: dict, *, delta: float) -> None:
    """Each statistic's own (ε, δ) had it been released alone; the total composes the ρ shares."""
    for entry in described.values():
        entry["epsilon_alone"] = accounting.zcdp_epsilon(rho=entry["rho"], delta=delta)


def _metric_sets(task: Task, stats: dict) -> dict[str, np.ndarray]:
    """Every metric these statistics support (arrays broadcast over replicate dimensions)."""
    out: dict[str, np.ndarray] = {}
    if "confusion" in stats:
        out.update(m.multiclass_metrics(stats["confusion"]))
    if task.kind == "binary-classification":
        out.update(m.binary_metrics(stats["score_histogram"]))
    if "score_sums" in stats:
        out["calibration"] = m.expected_calibration_error(stats["score_histogram"], stats["score_sums"])
    if task.kind == "regression":
        out.update(m.regression_metrics(stats["count"], stats["abs_error_sum"], stats["sq_error_sum"], bound=1.0))
    return out


def _replicates(task: Task, noisy: dict, sigma: dict, rng: np.random.Generator) -> tuple[dict, dict]:
    if task.kind == "regression":
        return intervals.regression_replicates(noisy, sigma, rng)
    truth, reps = {}, {}
    if "confusion" in noisy:
        truth["confusion"], reps["confusion"] = intervals.confusion_replicates(noisy["confusion"], sigma["confusion"], rng)
    if "score_histogram" in noisy:
        t, r = intervals.histogram_replicates(noisy, sigma, rng)
        truth.update(t)
        reps.update(r)
    return truth, reps


def _metrics_with_intervals(task: Task, noisy: dict, sigma: dict, wanted: set[str], scale: float,
                            rng: np.random.Generator) -> dict[str, tuple[float, float, float]]:
    """Values and intervals from the released statistics pivoted on the parametric bootstrap.
    Regression metrics are computed on the unit scale and multiplied by the public error bound."""
    released = {k: (v[0] if task.kind == "regression" else v).astype(np.float64) for k, v in noisy.items()}
    truth_stats, rep_stats = _replicates(task, noisy, sigma, rng)
    point, truth, reps = (_metric_sets(task, s) for s in (released, truth_stats, rep_stats))
    out = {}
    for k in sorted(wanted):
        value, lo, hi = intervals.pivot_interval(float(point[k]), reps[k], float(truth[k]), low=0.0, high=1.0)
        out[k] = (scale * value, scale * lo, scale * hi)
    return out


def _check_request(task: Task, wanted: set[str], *, target_epsilon: float, max_rows: int) -> None:
    unknown = wanted - set(SUPPORTED.get(task.kind, ()))
    if not wanted or unknown:
        raise bad_request(f"metrics for {task.kind} are chosen from: {', '.join(SUPPORTED.get(task.kind, ()))}")
    if not (math.isfinite(target_epsilon) and target_epsilon > 0) or max_rows < 1:
        raise bad_request("target_epsilon must be finite and positive, max_rows_per_patient at least 1")


def evaluate(program: torch.export.ExportedProgram, *, X: np.ndarray, y: np.ndarray, patient: np.ndarray,
             task: str, num_classes: int, target_epsilon: float, target_delta: float, metrics: Sequence[str],
             max_rows_per_patient: int, error_bound: float | None = None,
             state: dict[str, torch.Tensor] | None = None, seed_source=os.urandom,
             noise_rng: random.Random | None = None,
             allowed_modules: Iterable[str] = DEFAULT_ALLOWED_MODULES) -> EvaluationResult:
    """Patient-level (ε, δ)-DP metrics of the program (with `state` overriding its trainable tensors).
    Noise comes from the OS CSPRNG unless `noise_rng` is given (tests only); `seed_source` seeds
    the row bounding and the bootstrap, neither of which the privacy argument relies on."""
    assert_no_foreign_modules(allowed_modules)
    kind, wanted = Task(task, num_classes), set(metrics)
    _check_request(kind, wanted, target_epsilon=target_epsilon, max_rows=max_rows_per_patient)
    model = ExportedModel(program, task=kind, trainable=list(state or {}))
    X_t = model.features(X)
    y_arr = model.labels(y, len(X_t)).numpy()
    if len(patient) != len(X_t):
        raise bad_request("patient must hold one id per row")
    rng = sampling.numpy_generator(seed_source)
    rows, n_patients = _bounded_rows(np.asarray(patient), max_rows=max_rows_per_patient, rng=rng)
    accounting.check_delta(delta=target_delta, n_patients=n_patients)
    outputs = _outputs(model, dict(state or {}), X_t[torch.as_tensor(rows)])
    stats = _statistics(kind, outputs, y_arr[rows], wanted, error_bound)
    rho = accounting.calibrate_rho(target_epsilon=target_epsilon, delta=target_delta)
    noisy, sigma, described = _release(stats, rho=rho, max_rows=max_rows_per_patient, noise_rng=noise_rng)
    values = _metrics_with_intervals(kind, noisy, sigma, wanted, 1.0 if kind.classification else float(error_bound), rng)
    return _result(kind, values, noisy, described, rho=rho, delta=target_delta, max_rows=max_rows_per_patient)


def _result(task: Task, values: dict, noisy: dict, described: dict, *, rho: float, delta: float,
            max_rows: int) -> EvaluationResult:
    roc_points: list[tuple[float, float]] = []
    if task.kind == "binary-classification":
        fpr, tpr = m.roc(noisy["score_histogram"])
        roc_points = [(float(a), float(b)) for a, b in zip(fpr, tpr)]
    bins = m.reliability(noisy["score_histogram"], noisy["score_sums"]) if "score_sums" in noisy else []
    epsilon = accounting.zcdp_epsilon(rho=rho, delta=delta)
    _charge(described, delta=delta)
    # For the ledger's RDP composition: the statistics together are one Gaussian mechanism of this
    # noise multiplier (ρ = 1 / (2 σ²)), since their ρ shares add up to ρ.
    params = {"statistics": described, "rho": rho, "privacy_unit": "patient", "max_rows_per_patient": max_rows,
              "composition": "zCDP (ρ adds), converted to (ε, δ) through RDP", "score_bins": m.BINS,
              "mechanism": "gaussian", "noise_multiplier": math.sqrt(1 / (2 * rho)), "count": 1}
    return EvaluationResult(values, roc_points, bins, epsilon, delta, "zcdp-rdp", params)
