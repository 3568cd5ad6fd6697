"""DP evaluation over stream windows: metrics per window and per patient, one budget.

The caller gives the model's outputs on at most `max_rows` windows of each evaluated patient
(chosen uniformly among the patient's windows, independently of the data values) and each
window's patient slot. Two releases read the same patients, so they compose sequentially in zCDP:

  per window    ρ/2   the evaluator's statistics over every window; a patient moves them by at
                      most max_rows windows' worth (the sensitivity evaluate.py uses)
  per patient   ρ/2   one row per patient: its score is the mean of its windows' predicted
                      probabilities, its label positive when any of its windows is positive;
                      a patient moves them by one row

Total ρ/2 + ρ/2 = ρ, the (ε, δ) of one evaluation (the split evaluate.py makes for a cohort's
pooled and per-site parts, here over the same patients). The per-patient view is defined for binary
classification; other tasks release the per-window metrics alone, with the whole ρ.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from cleanroom.domain.errors import CleanroomError, ErrorCode, bad_request
from cleanroom.trainer import accounting, sampling
from cleanroom.trainer import evaluate as ev
from cleanroom.trainer.evaluate import Array, EvaluationResult, Options
from cleanroom.trainer.graph import ExportedModel, Task
from cleanroom.trainer.guard import DEFAULT_ALLOWED_MODULES, assert_no_foreign_modules
from cleanroom.trainer.sources import BatchSource

PARTS = {"per_window": 0.5, "per_patient": 0.5}
PATIENTS_PER_READ = 256  # patients whose windows are cut and scored at once; only their outputs are kept


def evaluate_source(program: torch.export.ExportedProgram, source: BatchSource, *, task: str, num_classes: int,
                    target_epsilon: float, target_delta: float, metrics: Sequence[str], max_rows_per_patient: int,
                    state: dict[str, torch.Tensor] | None = None, error_bound: float | None = None,
                    seed_source: sampling.SeedSource = os.urandom,
                    noise_rng: random.Random | np.random.Generator | None = None,
                    allowed_modules: Iterable[str] = DEFAULT_ALLOWED_MODULES,
                    sensitivity_at_specificity: Sequence[float] = ev.SENSITIVITY_AT_SPECIFICITY,
                    specificity_at_sensitivity: Sequence[float] = ev.SPECIFICITY_AT_SENSITIVITY,
                    net_benefit_thresholds: Sequence[float] = ev.NET_BENEFIT_THRESHOLDS,
                    score_bins: int | None = None) -> EvaluationResult:
    """Patient-level (ε, δ)-DP metrics per window and per patient of the program (`state`
    overriding its trainable tensors) over every patient of `source`, at most
    max_rows_per_patient windows each; see the module docstring and evaluate.evaluate."""
    assert_no_foreign_modules(allowed_modules)
    kind, wanted = Task(task, num_classes), set(metrics)
    ev.check_request(kind, wanted, target_epsilon=target_epsilon, max_rows=max_rows_per_patient)
    options = Options(tuple(float(v) for v in sensitivity_at_specificity), tuple(float(v) for v in specificity_at_sensitivity),
                      tuple(float(v) for v in net_benefit_thresholds), score_bins)
    options.check()
    if kind.kind == "regression" and (error_bound is None or not error_bound > 0):
        raise bad_request("regression evaluation needs a positive public error_bound")
    accounting.check_delta(delta=target_delta, n_patients=source.n_patients)
    model = ExportedModel(program, task=kind, trainable=list(state or {}))
    rng = sampling.numpy_generator(seed_source)
    outputs, y, patient = window_outputs(model, dict(state or {}), source, max_rows=max_rows_per_patient, rng=rng)
    return evaluate_windows(kind, outputs, y, patient, wanted=wanted, target_epsilon=target_epsilon,
                            target_delta=target_delta, max_rows=max_rows_per_patient, rng=rng, options=options,
                            error_bound=error_bound, noise_rng=noise_rng)


def window_outputs(model: ExportedModel, state: dict[str, torch.Tensor], source: BatchSource, *, max_rows: int,
                   rng: np.random.Generator) -> tuple[Array, NDArray[Any], NDArray[np.int64]]:
    """The model's outputs on at most max_rows windows of every patient of the source, their labels
    and each window's patient slot; windows are cut a few hundred patients at a time and dropped
    once scored, so memory holds outputs, not windows."""
    outputs, labels, slots = [], [], []
    for first in range(0, source.n_patients, PATIENTS_PER_READ):
        patients = np.arange(first, min(first + PATIENTS_PER_READ, source.n_patients))
        examples = source.batch(patients, max_rows=max_rows, rng=rng)
        if tuple(examples.X.shape[1:]) != model.input_shape:
            raise bad_request(f"features must be [n, {', '.join(map(str, model.input_shape))}]")
        if np.bincount(examples.batch.segments).max(initial=0) > max_rows:
            raise CleanroomError(ErrorCode.INTERNAL, "a batch source broke the per-patient bound")
        rows = torch.as_tensor(examples.batch.rows)
        outputs.append(ev.model_outputs(model, state, examples.X[rows]))
        labels.append(examples.y[rows].numpy())
        # Segments are gap-free slots among the patients that gave windows: unique per read.
        slots.append(examples.batch.segments + first)
    width = model.output_size if model.task.classification else 1
    if not outputs:
        return np.zeros((0, width)), np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(outputs), np.concatenate(labels), np.concatenate(slots).astype(np.int64)


def patient_rows(outputs: Array, y: NDArray[Any], patient: NDArray[np.int64]) -> tuple[Array, NDArray[np.float64]]:
    """One row per patient slot that has windows, in slot order: the mean of its windows' outputs,
    and 1 when any of its windows is labelled positive (binary), else 0."""
    patient = np.asarray(patient, dtype=np.int64)
    slots, inverse, counts = np.unique(patient, return_inverse=True, return_counts=True)
    sums = np.zeros((len(slots), outputs.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse.reshape(-1), outputs)
    labels = np.zeros(len(slots), dtype=np.float64)
    np.maximum.at(labels, inverse.reshape(-1), np.asarray(y, dtype=np.float64))
    return sums / counts[:, None], labels


def evaluate_windows(task: Task, outputs: Array, y: NDArray[Any], patient: NDArray[np.int64], *, wanted: set[str],
                     target_epsilon: float, target_delta: float, max_rows: int, rng: np.random.Generator,
                     options: Options | None = None, error_bound: float | None = None,
                     noise_rng: random.Random | np.random.Generator | None = None) -> EvaluationResult:
    """The per-window result, carrying the per-patient one (binary tasks) and the whole mechanism."""
    rho = accounting.calibrate_rho(target_epsilon=target_epsilon, delta=target_delta)
    binary = task.kind == "binary-classification"
    part = rho * PARTS["per_window"] if binary else rho

    def release(rows_out: Array, rows_y: NDArray[Any], part_rho: float, bound: int) -> EvaluationResult:
        return ev.mechanism(task, rows_out, rows_y, rho=part_rho, wanted=wanted, max_rows=bound, rng=rng,
                          options=options or Options(), error_bound=error_bound, noise_rng=noise_rng, delta=target_delta)

    per_window = release(outputs, y, part, max_rows)
    if not binary:
        params = dict(per_window.mechanism_parameters, unit_of_analysis="window",
                      per_patient="not released: a patient's label is defined for binary classification only")
        return dataclasses.replace(per_window, mechanism_parameters=params)
    scores, labels = patient_rows(outputs, y, patient)
    per_patient = release(scores, labels, rho * PARTS["per_patient"], 1)
    return _combined(per_window, per_patient, rho=rho, delta=target_delta, max_rows=max_rows)


def _combined(per_window: EvaluationResult, per_patient: EvaluationResult, *, rho: float, delta: float,
              max_rows: int) -> EvaluationResult:
    """The per-window result with the per-patient one beside it; the description covers the whole
    ρ as one Gaussian mechanism (ρ = 1 / (2σ²)) for the ledger's composition and the SDK's check."""
    params = dict(per_window.mechanism_parameters)
    for entries in (params["statistics"], per_patient.mechanism_parameters["statistics"]):
        for entry in entries.values():
            entry["budget_fraction"] = entry["rho"] / rho
    params.update({
        "rho": rho, "noise_multiplier": math.sqrt(1 / (2 * rho)), "count": 1, "privacy_unit": "patient",
        "unit_of_analysis": "window", "max_rows_per_patient": max_rows,
        "budget_split": {k: v["budget_fraction"] for k, v in params["statistics"].items()},
        "budget_parts": dict(PARTS),
        "composition": ("zCDP: ρ/2 for the per-window statistics (at most max_rows_per_patient windows of each "
                        "patient) plus ρ/2 for the per-patient statistics (one row per patient), over the same "
                        "patients; converted to (ε, δ) through RDP"),
        "per_patient": {"rho": rho * PARTS["per_patient"], "max_rows_per_patient": 1,
                        "score": "mean of the patient's windows' predicted probabilities",
                        "label": "positive when any of the patient's windows is positive",
                        "statistics": per_patient.mechanism_parameters["statistics"]},
    })
    return dataclasses.replace(per_window, epsilon_spent=accounting.zcdp_epsilon(rho=rho, delta=delta),
                               mechanism_parameters=params, per_patient=per_patient)
