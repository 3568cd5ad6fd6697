"""Patient-level DP evaluation: noisy sufficient statistics, then metrics with 95% intervals.

Rows are bounded per patient first (at most `max_rows_per_patient`, sampled uniformly), so one
patient moves any statistic by at most max_rows * per_row. The request's (ε, δ) is turned into
one zCDP budget ρ (calibrated so that the composition meets the target), split between the
statistics by fixed public weights (statistics.WEIGHTS), each released with exact discrete
Gaussian noise (noise.count_noise). zCDP composes adaptively, so the second stage may depend on
the first: the total stays ρ.

Binary classification, ε split (shares of ρ; without calibration the first two are renormalised):
  stage 1  score_locator       10%   pooled rows on a fixed logit grid: where the scores lie, and
                                     the DP row count of the bin rule
  stage 2  score_histogram     60%   rows by (label, score bin), bins following the scores
           calibration_gaps    20%   Σ (label - score) per calibration bin (ECE, reliability)
           squared_error_sum   10%   Σ (score - label)² (Brier score)

Score bins (metrics.py): B = clamp(round((n̂ / (2σ))^(2/3)), 8, 160) edges at equal-mass quantiles
of the locator, n̂ the locator's noisy total and σ the histogram's noise scale, plus the public
edges 0.1, ..., 0.9 and the net-benefit thresholds. A request may fix B (`score_bins`).

Every metric is post-processing of the released statistics: accuracy, sensitivity and
specificity at 0.5, AUROC with its binning bracket, sensitivity at named specificities and the
reverse, net benefit at named thresholds, the expected calibration error and Brier score, a
reliability diagram; multiclass gets accuracy, macro recall and calibration; regression MAE and
RMSE from clamped error sums (`error_bound` is the public clamp). Intervals: intervals.py.

Cohorts (several sites named in the request, a public fact): ρ is split exactly in two halves.
The pooled half releases the statistics above over every evaluated row. The per-site half gives
each privacy unit to exactly one site, the first of the request's sites where it has rows, and
releases each site's statistics over that site's rows of its own units only, each with the whole
per-site half: the sites' row sets belong to disjoint units, so they compose in parallel (one
unit changes one site's statistics). Total: ρ/2 + ρ/2 = ρ, the same (ε, δ) as one evaluation.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

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

# Defaults of the binary report's named operating points and net-benefit thresholds.
SENSITIVITY_AT_SPECIFICITY = (0.95,)
SPECIFICITY_AT_SENSITIVITY = (0.95,)
NET_BENEFIT_THRESHOLDS = (0.05, 0.1, 0.2, 0.3)

Array = NDArray[np.float64]
Interval = tuple[float, float, float]


@dataclass(frozen=True)
class EvaluationResult:
    metrics: dict[str, Interval]                       # name -> (value, 95% low, 95% high)
    roc_points: list[tuple[float, float]]              # (FPR, TPR) at every bin edge, binary only
    reliability: list[dict[str, float]]                # per calibration bin, when calibration was asked
    epsilon_spent: float
    delta: float
    accountant: str
    mechanism_parameters: dict[str, Any] = field(default_factory=dict)
    operating_points: list[dict[str, Any]] = field(default_factory=list)   # binary only
    net_benefit: list[dict[str, Any]] = field(default_factory=list)        # binary only
    score_bins: dict[str, Any] = field(default_factory=dict)               # what the bins are, in words too
    sites: list[SiteEvaluation] = field(default_factory=list)              # cohorts only: per-site results
    per_patient: EvaluationResult | None = None                            # streams only (stream_evaluate.py)


@dataclass(frozen=True)
class SiteEvaluation:
    """One site's part of a cohort evaluation: its own units' rows at this site, ρ/2 of the budget."""

    name: str
    index: int                       # the site's position in the request
    result: EvaluationResult


@dataclass(frozen=True)
class Options:
    """The request's public choices for a binary report."""

    sensitivity_at_specificity: tuple[float, ...] = SENSITIVITY_AT_SPECIFICITY
    specificity_at_sensitivity: tuple[float, ...] = SPECIFICITY_AT_SENSITIVITY
    net_benefit_thresholds: tuple[float, ...] = NET_BENEFIT_THRESHOLDS
    score_bins: int | None = None

    def check(self) -> None:
        for name in ("sensitivity_at_specificity", "specificity_at_sensitivity", "net_benefit_thresholds"):
            values = getattr(self, name)
            if len(values) > 16 or not all(isinstance(v, (int, float)) and 0 < v < 1 for v in values):
                raise bad_request(f"{name}: at most 16 values, each strictly between 0 and 1")
        if self.score_bins is not None and not m.MIN_BINS // 2 <= self.score_bins <= 4 * m.MAX_BINS:
            raise bad_request(f"score_bins must be between {m.MIN_BINS // 2} and {4 * m.MAX_BINS}")


def first_sites(patient: NDArray[Any], site: NDArray[Any]) -> NDArray[np.int64]:
    """Per row: its site when that is its unit's first site (lowest request index), else -1. The
    per-site part reads only rows whose value is not -1, so every unit counts at one site only."""
    units, inverse = np.unique(np.asarray(patient), return_inverse=True)
    first = np.full(len(units), np.iinfo(np.int64).max, dtype=np.int64)
    site = np.asarray(site, dtype=np.int64)
    np.minimum.at(first, inverse.reshape(-1), site)
    return np.where(site == first[inverse.reshape(-1)], site, -1).astype(np.int64)


def _bounded_rows(patient: NDArray[Any], *, max_rows: int, rng: np.random.Generator) -> tuple[NDArray[np.int64], int]:
    index = sampling.PatientIndex.build(patient)
    rows, _ = sampling.bounded_rows(index, np.arange(index.n_patients), max_rows=max_rows, rng=rng)
    return np.sort(rows), int(index.n_patients)


def model_outputs(model: ExportedModel, state: dict[str, torch.Tensor], X: torch.Tensor) -> Array:
    out = model.predict(state, X)
    if model.task.classification:
        out = torch.softmax(out.double(), dim=1)
    return np.asarray(out.double().numpy(), dtype=np.float64)


@dataclass
class _Release:
    """Noisy statistics, their noise scales and their public description, built up stage by stage."""

    rho: float
    total_weight: float
    max_rows: int
    noise_rng: random.Random | np.random.Generator | None
    noisy: dict[str, Array] = field(default_factory=dict)
    sigma: dict[str, float] = field(default_factory=dict)
    described: dict[str, dict[str, Any]] = field(default_factory=dict)

    def share(self, name: str) -> float:
        return self.rho * statistics.WEIGHTS[name] / self.total_weight

    def sigma_of(self, name: str, per_row: int) -> float:
        return per_row * self.max_rows / math.sqrt(2 * self.share(name))

    def add(self, stats: Iterable[statistics.Statistic], stage: int) -> None:
        for s in stats:
            share, sens = self.share(s.name), s.sensitivity(self.max_rows)
            sigma = sens / math.sqrt(2 * share)
            self.sigma[s.name] = sigma
            self.noisy[s.name] = (s.values + noise.count_noise(s.values.shape, sigma=sigma, rng=self.noise_rng)).astype(np.float64)
            self.described[s.name] = {"mechanism": "discrete-gaussian", "sigma": sigma, "l2_sensitivity": sens,
                                      "noise_multiplier": sigma / sens, "rho": share, "cells": int(s.values.size),
                                      "budget_fraction": share / self.rho, "stage": stage}


def _planned(task: Task, wanted: set[str]) -> list[str]:
    """The statistics a request releases (public: from the task and the metric names only)."""
    if task.kind == "binary-classification":
        return ["score_locator", "score_histogram"] + (["calibration_gaps", "squared_error_sum"] if "calibration" in wanted else [])
    if task.kind == "multiclass-classification":
        return ((["confusion"] if wanted & {"accuracy", "macro_recall"} else [])
                + (["score_histogram", "calibration_gaps"] if "calibration" in wanted else []))
    return ["count", "abs_error_sum", "sq_error_sum"]


def check_request(task: Task, wanted: set[str], *, target_epsilon: float, max_rows: int) -> None:
    unknown = wanted - set(SUPPORTED.get(task.kind, ()))
    if not wanted or unknown:
        raise bad_request(f"metrics for {task.kind} are chosen from: {', '.join(SUPPORTED.get(task.kind, ()))}")
    if not (math.isfinite(target_epsilon) and target_epsilon > 0) or max_rows < 1:
        raise bad_request("target_epsilon must be finite and positive, max_rows_per_patient at least 1")


def evaluate(program: torch.export.ExportedProgram, *, X: NDArray[Any], y: NDArray[Any], patient: NDArray[Any],
             task: str, num_classes: int, target_epsilon: float, target_delta: float, metrics: Sequence[str],
             max_rows_per_patient: int, error_bound: float | None = None,
             state: dict[str, torch.Tensor] | None = None, seed_source: sampling.SeedSource = os.urandom,
             noise_rng: random.Random | np.random.Generator | None = None,
             allowed_modules: Iterable[str] = DEFAULT_ALLOWED_MODULES,
             sensitivity_at_specificity: Sequence[float] = SENSITIVITY_AT_SPECIFICITY,
             specificity_at_sensitivity: Sequence[float] = SPECIFICITY_AT_SENSITIVITY,
             net_benefit_thresholds: Sequence[float] = NET_BENEFIT_THRESHOLDS,
             score_bins: int | None = None, site: NDArray[Any] | None = None,
             site_names: Sequence[str] = ()) -> EvaluationResult:
    """Patient-level (ε, δ)-DP metrics of the program (with `state` overriding its trainable tensors).
    Noise comes from the OS CSPRNG unless `noise_rng` is given (tests only); `seed_source` seeds
    the row bounding and the bootstrap, neither of which the privacy argument relies on.

    Binary requests also name operating points (sensitivity at each specificity in
    `sensitivity_at_specificity`, specificity at each sensitivity in `specificity_at_sensitivity`)
    and net-benefit thresholds, all in (0, 1); `score_bins` overrides the bin rule.

    A cohort passes each row's site index (`site`, into `site_names`); `patient` is then the
    privacy unit across sites. With two or more site names the result is pooled plus per site."""
    assert_no_foreign_modules(allowed_modules)
    kind, wanted = Task(task, num_classes), set(metrics)
    check_request(kind, wanted, target_epsilon=target_epsilon, max_rows=max_rows_per_patient)
    options = Options(tuple(float(v) for v in sensitivity_at_specificity), tuple(float(v) for v in specificity_at_sensitivity),
                      tuple(float(v) for v in net_benefit_thresholds), score_bins)
    options.check()
    if kind.kind == "regression" and (error_bound is None or not error_bound > 0):
        raise bad_request("regression evaluation needs a positive public error_bound")
    model = ExportedModel(program, task=kind, trainable=list(state or {}))
    X_t = model.features(X)
    y_arr = model.labels(y, len(X_t)).numpy()
    if len(patient) != len(X_t):
        raise bad_request("patient must hold one id per row")
    per_site = _site_assignment(patient, site, site_names)
    rng = sampling.numpy_generator(seed_source)
    rows, n_patients = _bounded_rows(np.asarray(patient), max_rows=max_rows_per_patient, rng=rng)
    accounting.check_delta(delta=target_delta, n_patients=n_patients)
    outputs = model_outputs(model, dict(state or {}), X_t[torch.as_tensor(rows)])
    return evaluate_outputs(kind, outputs, y_arr[rows], wanted=wanted, target_epsilon=target_epsilon,
                            target_delta=target_delta, max_rows=max_rows_per_patient, error_bound=error_bound,
                            options=options, rng=rng, noise_rng=noise_rng, site_names=site_names,
                            per_site=None if per_site is None else per_site[rows])


def _site_assignment(patient: NDArray[Any], site: NDArray[Any] | None, site_names: Sequence[str]) -> NDArray[np.int64] | None:
    if len(site_names) < 2:
        return None
    if site is None or len(site) != len(patient):
        raise bad_request("a cohort evaluation needs one site index per row")
    site = np.asarray(site, dtype=np.int64)
    if len(site) and not (0 <= int(site.min()) and int(site.max()) < len(site_names)):
        raise bad_request("a row's site index is not one of the cohort's sites")
    return first_sites(patient, site)


def evaluate_outputs(task: Task, outputs: Array, y: NDArray[Any], *, wanted: set[str], target_epsilon: float,
                     target_delta: float, max_rows: int, rng: np.random.Generator, options: Options = Options(),
                     error_bound: float | None = None, noise_rng: random.Random | np.random.Generator | None = None,
                     site_names: Sequence[str] = (), per_site: NDArray[np.int64] | None = None) -> EvaluationResult:
    """The mechanism and the metrics, given the model's outputs on the patient-bounded rows (the
    coverage test and bench call this directly, with the exact outputs in hand). A cohort (two or
    more `site_names`) also passes `per_site`: each row's site for the per-site part, or -1 where
    the row's unit counts at an earlier site (first_sites)."""
    rho = accounting.calibrate_rho(target_epsilon=target_epsilon, delta=target_delta)

    def release(rows_out: Array, rows_y: NDArray[Any], part_rho: float) -> EvaluationResult:
        return mechanism(task, rows_out, rows_y, rho=part_rho, wanted=wanted, max_rows=max_rows, rng=rng,
                          options=options, error_bound=error_bound, noise_rng=noise_rng, delta=target_delta)

    if len(site_names) < 2:
        return release(outputs, y, rho)
    if per_site is None or len(per_site) != len(y):
        raise bad_request("a cohort evaluation needs each evaluated row's site")
    pooled = release(outputs, y, rho / 2)
    sites = [SiteEvaluation(name, s, release(outputs[per_site == s], y[per_site == s], rho / 2))
             for s, name in enumerate(site_names)]
    return _cohort_result(pooled, sites, rho=rho, delta=target_delta)


def _cohort_result(pooled: EvaluationResult, sites: list[SiteEvaluation], *, rho: float, delta: float) -> EvaluationResult:
    """The pooled result carrying the per-site ones; the mechanism description covers the whole ρ:
    ρ/2 pooled plus ρ/2 per site (parallel over disjoint units), one Gaussian mechanism of ρ for
    the ledger's RDP composition and the SDK's ε recomputation."""
    params = dict(pooled.mechanism_parameters)
    for entries in [params["statistics"], *(s.result.mechanism_parameters["statistics"] for s in sites)]:
        for entry in entries.values():
            entry["budget_fraction"] = entry["rho"] / rho
    params.update({
        "rho": rho, "noise_multiplier": math.sqrt(1 / (2 * rho)), "count": 1, "privacy_unit": "person",
        "budget_split": {k: v["budget_fraction"] for k, v in params["statistics"].items()},
        "budget_parts": {"pooled": 0.5, "per_site": 0.5},
        "composition": ("zCDP: ρ/2 for the pooled statistics plus ρ/2 for the per-site statistics, which read "
                        "disjoint units (each unit at its first site) and compose in parallel; converted to "
                        "(ε, δ) through RDP"),
        "per_site": {s.name: {"site_index": s.index, "rho": rho / 2, "statistics": s.result.mechanism_parameters["statistics"]}
                     for s in sites},
    })
    return dataclasses.replace(pooled, epsilon_spent=accounting.zcdp_epsilon(rho=rho, delta=delta),
                               mechanism_parameters=params, sites=sites)


def mechanism(task: Task, outputs: Array, y: NDArray[Any], *, rho: float, wanted: set[str], max_rows: int,
               rng: np.random.Generator, options: Options, error_bound: float | None,
               noise_rng: random.Random | np.random.Generator | None, delta: float) -> EvaluationResult:
    """One release of ρ over the given rows: the statistics, then the metrics and their intervals.
    `max_rows` bounds the rows one patient has among them (the statistics' sensitivity)."""
    planned = _planned(task, wanted)
    release = _Release(rho, sum(statistics.WEIGHTS[n] for n in planned), max_rows, noise_rng)
    if task.kind == "binary-classification":
        return _binary(task, outputs, y, wanted, release, options, rng, delta=delta)
    if task.kind == "multiclass-classification":
        release.add(statistics.multiclass(outputs, y, calibration="calibration" in wanted,
                                          confusion=bool(wanted & {"accuracy", "macro_recall"})), stage=1)
        return _multiclass(task, wanted, release, rng, delta=delta)
    assert error_bound is not None
    release.add(statistics.regression(outputs, y, bound=error_bound), stage=1)
    return _regression(task, wanted, release, rng, delta=delta, bound=error_bound)


def _binary(task: Task, outputs: Array, y: NDArray[Any], wanted: set[str], release: _Release, options: Options,
            rng: np.random.Generator, *, delta: float) -> EvaluationResult:
    first, second = statistics.binary(outputs, y, calibration="calibration" in wanted)
    release.add(first, stage=1)
    # Post-processing of stage 1 only: the bin count and the edges.
    n_hat = float(release.noisy["score_locator"].sum())
    sigma_h = release.sigma_of("score_histogram", 1)
    rule = m.bin_count(n_hat, sigma_h)
    following = m.quantile_edges(release.noisy["score_locator"], sigma=release.sigma["score_locator"],
                                 bins=options.score_bins or rule)
    edges = m.score_edges(following, options.net_benefit_thresholds)
    release.add(second(edges), stage=2)

    hist = release.noisy["score_histogram"]
    truth, reps = intervals.histogram_replicates(hist, release.sigma["score_histogram"], rng)
    families = [_histogram_metrics(h, edges, options) for h in (hist, truth, reps)]
    scarce = _scarce_class(hist, release.sigma["score_histogram"])

    def interval(key: str, low: float = 0.0, high: float = 1.0) -> Interval:
        est, tru, rep = (f[key] for f in families)
        value = intervals.bounded_pivot((float(est[0]), float(est[1]), float(est[2])), rep,
                                        (float(tru[0]), float(tru[1]), float(tru[2])), low=low, high=high)
        # A class the noise can hide leaves every metric that reads it unknown: say so, do not
        # report the replicates' collapsed interval (0 positives give AUROC 0 [0, 0]).
        return (value[0], low, high) if scarce and key != "accuracy" else value

    values = {k: interval(k) for k in sorted(wanted - {"calibration"})}
    if "calibration" in wanted:
        values["calibration"] = intervals.calibration_error(release.noisy["calibration_gaps"], release.sigma["calibration_gaps"],
                                                            hist, release.sigma["score_histogram"], edges, rng)
        values["brier"] = intervals.brier(float(release.noisy["squared_error_sum"][0]), release.sigma["squared_error_sum"],
                                          hist, release.sigma["score_histogram"])
    operating = [_point_entry(interval(f"{other}@{fixed}={t!r}"), other=other, fixed=fixed, target=t)
                 for fixed, other, targets in (("specificity", "sensitivity", options.sensitivity_at_specificity),
                                               ("sensitivity", "specificity", options.specificity_at_sensitivity))
                 for t in targets]
    benefit = []
    for t in options.net_benefit_thresholds:
        odds = t / (1 - t)
        model_nb, everyone = interval(f"net_benefit@{t!r}", -odds, 1.0), interval(f"treat_all@{t!r}", -odds, 1.0)
        benefit.append({"threshold": t, "value": model_nb[0], "ci95": [model_nb[1], model_nb[2]],
                        "treat_all": everyone[0], "treat_all_ci95": [everyone[1], everyone[2]], "treat_none": 0.0})
    fpr, tpr = m.roc(hist)
    reliability = _reliability(hist, release.noisy.get("calibration_gaps"), edges, families) if "calibration" in wanted else []
    low, point, high = m.auroc(hist)
    bins = {"count": len(edges) + 1, "following": len(following) + 1, "rule": rule, "requested": options.score_bins,
            "edges": [float(e) for e in edges], "auroc_binning_bound": float((high - low) / 2),
            "description": _describe_bins(len(edges) + 1, len(following) + 1, rule, options, float((high - low) / 2)) + (
                f" Too few {scarce} to tell from the privacy noise at this ε: every metric but accuracy is given with "
                "its whole range as its interval." if scarce else ""),
            "scarce_class": scarce}
    params = _parameters(release, delta=delta)
    params.update({"score_bins": len(edges) + 1, "score_bin_edges": bins["edges"],
                   "score_bin_rule": "round((n / (2 sigma))^(2/3)) clamped to [8, 160]; n the locator's noisy total",
                   "net_benefit_thresholds": list(options.net_benefit_thresholds),
                   "sensitivity_at_specificity": list(options.sensitivity_at_specificity),
                   "specificity_at_sensitivity": list(options.specificity_at_sensitivity)})
    return EvaluationResult(values, [(float(a), float(b)) for a, b in zip(fpr, tpr)], reliability,
                            accounting.zcdp_epsilon(rho=release.rho, delta=delta), delta, "zcdp-rdp", params,
                            operating, benefit, bins)


def _scarce_class(hist: Array, sigma: float) -> str:
    """'positives' or 'negatives' when that class's noisy total is within two noise standard
    deviations of zero (the total sums one noisy cell per bin); '' when both stand out."""
    spread = 2.0 * sigma * math.sqrt(hist.shape[-1])
    negatives, positives = (float(t) for t in hist.sum(-1))
    return "positives" if positives <= spread else "negatives" if negatives <= spread else ""


def _histogram_metrics(hist: Array, edges: Array, options: Options) -> dict[str, tuple[Array, Array, Array]]:
    """Every bracketed metric of a histogram (arrays broadcast over replicate dimensions)."""
    out: dict[str, tuple[Array, Array, Array]] = {}
    c = m.confusion(hist)
    curve = m.roc(hist, c)
    for name, value in m.at_threshold(hist, m.edge_position(edges, m.DECISION_THRESHOLD), c).items():
        out[name] = (value, value, value)
    out["auroc"] = m.auroc(hist)
    for t in options.sensitivity_at_specificity:
        out[f"sensitivity@specificity={t!r}"] = m.operating_point(hist, fixed="specificity", target=t, curve=curve)
    for t in options.specificity_at_sensitivity:
        out[f"specificity@sensitivity={t!r}"] = m.operating_point(hist, fixed="sensitivity", target=t, curve=curve)
    for t in options.net_benefit_thresholds:
        nb = m.net_benefit(hist, m.edge_position(edges, t), t, c)
        out[f"net_benefit@{t!r}"] = (nb["model"],) * 3
        out[f"treat_all@{t!r}"] = (nb["treat_all"],) * 3
    rate = m.observed_rate(hist, edges)
    out["observed"] = (rate, rate, rate)
    return out


def _point_entry(interval: Interval, *, other: str, fixed: str, target: float) -> dict[str, Any]:
    return {"name": f"{other} at {fixed} ≥ {target:g}", "metric": other, "fixed": fixed, "target": target,
            "value": interval[0], "ci95": [interval[1], interval[2]]}


def _reliability(hist: Array, gaps: Array | None, edges: Array,
                 families: list[dict[str, tuple[Array, Array, Array]]]) -> list[dict[str, float]]:
    bins = m.reliability(hist, gaps, edges)
    est, tru, rep = (f["observed"][1] for f in families)
    for b, entry in enumerate(bins):
        _, lo, hi = intervals.pivot_interval(float(est[b]), rep[:, b], float(tru[b]), low=0.0, high=1.0)
        entry["observed_low"], entry["observed_high"] = lo, hi
    return bins


def _describe_bins(count: int, following: int, rule: int, options: Options, bound: float) -> str:
    chosen = (f"the request fixed {options.score_bins}" if options.score_bins
              else f"the rule round((n / 2σ)^(2/3)) gave {rule} for this evaluation's noisy row count n and noise σ")
    thresholds = ", ".join(f"{t:g}" for t in options.net_benefit_thresholds)
    return (f"Scores were grouped into {count} bins. {following} of them follow the model's own scores: their edges sit at "
            f"equal-count points of a coarse noisy count of scores on the logit scale (10% of the budget), so a confident "
            f"model does not pile its patients into one bin ({chosen}). The other edges are fixed in advance: 0.5 (where "
            f"accuracy, sensitivity and specificity are read), 0.1 to 0.9 (the calibration bins) and the net-benefit "
            f"thresholds ({thresholds}); metrics read at an edge have no binning error. Patients in the same bin cannot "
            f"be ordered, so the AUROC could differ by up to {bound:.4f} either way from the value shown; its interval "
            f"includes that.")


def _multiclass(task: Task, wanted: set[str], release: _Release, rng: np.random.Generator, *,
                delta: float) -> EvaluationResult:
    values: dict[str, Interval] = {}
    if "confusion" in release.noisy:
        noisy = release.noisy["confusion"]
        truth, reps = intervals.confusion_replicates(noisy, release.sigma["confusion"], rng)
        point, tru, rep = (m.multiclass_metrics(c) for c in (noisy, truth, reps))
        for k in sorted(wanted & {"accuracy", "macro_recall"}):
            values[k] = intervals.pivot_interval(float(point[k]), rep[k], float(tru[k]), low=0.0, high=1.0)
    reliability: list[dict[str, float]] = []
    if "calibration" in wanted:
        edges = np.asarray(m.CALIBRATION_EDGES, dtype=np.float64)
        hist = release.noisy["score_histogram"]
        values["calibration"] = intervals.calibration_error(release.noisy["calibration_gaps"], release.sigma["calibration_gaps"],
                                                            hist, release.sigma["score_histogram"], edges, rng)
        truth_h, reps_h = intervals.histogram_replicates(hist, release.sigma["score_histogram"], rng)
        families = [{"observed": (r, r, r)} for r in (m.observed_rate(h, edges) for h in (hist, truth_h, reps_h))]
        reliability = _reliability(hist, release.noisy["calibration_gaps"], edges, families)
    params = _parameters(release, delta=delta)
    return EvaluationResult(values, [], reliability, accounting.zcdp_epsilon(rho=release.rho, delta=delta), delta,
                            "zcdp-rdp", params)


def _regression(task: Task, wanted: set[str], release: _Release, rng: np.random.Generator, *, delta: float,
                bound: float) -> EvaluationResult:
    """Regression metrics are computed on the unit scale and multiplied by the public error bound."""
    noisy, sigma = release.noisy, release.sigma
    released = {k: np.asarray(v[0], dtype=np.float64) for k, v in noisy.items()}
    truth, reps = intervals.regression_replicates(noisy, sigma, rng)
    metric_sets: list[dict[str, Array]] = [m.regression_metrics(s["count"], s["abs_error_sum"], s["sq_error_sum"], bound=1.0)
                                           for s in (released, truth, reps)]
    point, tru, rep = metric_sets
    values = {}
    for k in sorted(wanted):
        value, lo, hi = intervals.pivot_interval(float(point[k]), rep[k], float(tru[k]), low=0.0, high=1.0)
        values[k] = (bound * value, bound * lo, bound * hi)
    return EvaluationResult(values, [], [], accounting.zcdp_epsilon(rho=release.rho, delta=delta), delta, "zcdp-rdp",
                            _parameters(release, delta=delta))


def _parameters(release: _Release, *, delta: float) -> dict[str, Any]:
    """The public description of the mechanism. For the ledger's RDP composition the statistics
    together are one Gaussian mechanism of this noise multiplier (ρ = 1 / (2 σ²)): their ρ shares
    add up to ρ (zCDP composes adaptively, so the stages do not change that)."""
    for entry in release.described.values():
        entry["epsilon_alone"] = accounting.zcdp_epsilon(rho=entry["rho"], delta=delta)
    rho = release.rho
    return {"statistics": release.described, "rho": rho, "privacy_unit": "patient",
            "max_rows_per_patient": release.max_rows,
            "composition": "zCDP (ρ adds, adaptively across the two stages), converted to (ε, δ) through RDP",
            "budget_split": {k: v["budget_fraction"] for k, v in release.described.items()},
            "mechanism": "gaussian", "noise_multiplier": math.sqrt(1 / (2 * rho)), "count": 1}

