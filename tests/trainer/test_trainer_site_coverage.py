"""Per-site DP evaluation of a three-site cohort: each site's 95% intervals cover its exact values.

A fixed model's scores on three hospitals (a confident, an unconfident and a medium model, so the
sites differ), with 300 persons treated at the first and the third hospital (linked: one unit, at
most 2 rows, the bound, in all). The DP evaluation (evaluate_outputs, pooled plus per site, ρ split
in halves) is repeated RUNS times with fresh noise and bootstrap, and every pooled and per-site
interval for AUROC, accuracy, sensitivity, specificity, calibration error and Brier score must hold
the exact value at ε = 1 and 3 in at least floor(RUNS·0.93 - 3·sqrt(RUNS·0.93·0.07)) runs (the rule of
test_trainer_coverage.py: 85 of 100). The exact per-site value is the non-private, unbinned metric
over the rows the per-site part reads: the site's rows of units whose first site it is, so the
linked persons count at the first hospital only.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import coverage
from cleanroom.trainer import intervals
from cleanroom.trainer.evaluate import EvaluationResult, evaluate_outputs, first_sites
from cleanroom.trainer.graph import Task

RUNS = 100
NAMES = ("North", "South", "East")
SITE_SIZES = (2500, 2000, 2000)
LINKED = 300
EPSILON = 3.0
EPSILONS = (1.0, 3.0)


def _site_scores(site: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=n)
    true_logit = (4.0 * x - 3.0, 1.2 * x - 0.5, 2.0 * x - 1.0)[site]
    model_logit = (true_logit, 0.25 * true_logit, 0.7 * true_logit)[site]
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(np.int64)
    return 1 / (1 + np.exp(-model_logit)), y


def _cohort(seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    parts = [_site_scores(s, n, rng) for s, n in enumerate(SITE_SIZES)]
    p = np.concatenate([a for a, _ in parts])
    y = np.concatenate([b for _, b in parts])
    site = np.repeat(np.arange(3), SITE_SIZES)
    unit = np.asarray([f"S{s}:{i}" for s, n in enumerate(SITE_SIZES) for i in range(n)], dtype=object)
    # The first LINKED rows of the East site are persons also treated at North: the same unit.
    east = np.flatnonzero(site == 2)[:LINKED]
    unit[east] = [f"L:{i}" for i in range(LINKED)]
    unit[np.flatnonzero(site == 0)[:LINKED]] = [f"L:{i}" for i in range(LINKED)]
    return {"p": p, "y": y, "site": site, "unit": unit}


@pytest.fixture(scope="module")
def cohort() -> dict[str, np.ndarray]:
    return _cohort()


def _exact(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return coverage.exact_metrics(p, y)


def _run(c: dict[str, np.ndarray], run: int, epsilon: float = EPSILON) -> EvaluationResult:
    return evaluate_outputs(Task("binary-classification", 2), np.stack([1 - c["p"], c["p"]], 1), c["y"],
                            wanted=set(coverage.METRICS) - {"brier"}, target_epsilon=epsilon, target_delta=1e-6,
                            max_rows=2, rng=np.random.default_rng([run, 11]), noise_rng=np.random.default_rng([run, 7]),
                            site_names=NAMES, per_site=first_sites(c["unit"], c["site"]))


def test_each_site_evaluates_its_own_units_only(cohort) -> None:
    per_site = first_sites(cohort["unit"], cohort["site"])
    east = np.flatnonzero(cohort["site"] == 2)
    assert (per_site[east[:LINKED]] == -1).all() and (per_site[east[LINKED:]] == 2).all()
    assert (per_site[cohort["site"] != 2] == cohort["site"][cohort["site"] != 2]).all()


@pytest.mark.parametrize("epsilon", EPSILONS)
def test_per_site_and_pooled_intervals_cover_the_exact_values(cohort, epsilon, monkeypatch) -> None:
    monkeypatch.setattr(intervals, "REPLICATES", 400)
    need = coverage.required(RUNS)
    assert need == 85
    per_site = first_sites(cohort["unit"], cohort["site"])
    exact = {"pooled": _exact(cohort["p"], cohort["y"])}
    exact.update({name: _exact(cohort["p"][per_site == s], cohort["y"][per_site == s]) for s, name in enumerate(NAMES)})
    assert len({round(e["auroc"], 2) for e in exact.values()}) == 4   # the sites really differ
    hits = {(part, k): 0 for part in exact for k in coverage.METRICS}
    widths: dict[tuple[str, str], list[float]] = {key: [] for key in hits}
    for run in range(RUNS):
        result = _run(cohort, run, epsilon)
        assert [s.name for s in result.sites] == list(NAMES)
        parts = {"pooled": result.metrics, **{s.name: s.result.metrics for s in result.sites}}
        for (part, k) in hits:
            _, lo, hi = parts[part][k]
            hits[(part, k)] += lo <= exact[part][k] <= hi
            widths[(part, k)].append(hi - lo)
    short = {f"{part} {k}": n for (part, k), n in hits.items() if n < need}
    assert not short, short
    for key, w in widths.items():
        assert 0 < float(np.mean(w)) < 0.4, key   # informative, not a [0, 1] that covers by default


def test_the_cohort_spends_one_evaluations_budget(cohort) -> None:
    """ρ/2 pooled and ρ/2 per site (parallel): the same ε, ρ and noise multiplier as one evaluation."""
    single = evaluate_outputs(Task("binary-classification", 2), np.stack([1 - cohort["p"], cohort["p"]], 1), cohort["y"],
                              wanted=set(coverage.METRICS) - {"brier"}, target_epsilon=EPSILON, target_delta=1e-6, max_rows=2,
                              rng=np.random.default_rng(1), noise_rng=np.random.default_rng(2))
    result = _run(cohort, 0)
    assert result.epsilon_spent == pytest.approx(single.epsilon_spent) and result.epsilon_spent <= EPSILON
    params = result.mechanism_parameters
    assert params["rho"] == pytest.approx(single.mechanism_parameters["rho"])
    assert params["noise_multiplier"] == pytest.approx(single.mechanism_parameters["noise_multiplier"])
    pooled_rho = sum(e["rho"] for e in params["statistics"].values())
    site_rhos = [sum(e["rho"] for e in part["statistics"].values()) for part in params["per_site"].values()]
    assert pooled_rho == pytest.approx(params["rho"] / 2)
    assert site_rhos == pytest.approx([params["rho"] / 2] * 3)
    assert sum(params["budget_split"].values()) == pytest.approx(0.5)
    # Twice the noise variance of a single evaluation's statistic at half its ρ.
    assert params["statistics"]["score_histogram"]["sigma"] == pytest.approx(
        single.mechanism_parameters["statistics"]["score_histogram"]["sigma"] * np.sqrt(2))
