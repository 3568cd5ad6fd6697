"""DP evaluation: close to the exact metrics at large ε, intervals that cover, patient bounds, budget."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cleanroom.domain.errors import CleanroomError
from cleanroom.trainer import metrics as m
from cleanroom.trainer import noise
from cleanroom.trainer.evaluate import evaluate
from tests.trainer.test_trainer_helpers import MLP, allowed_here, export, fixed_seed, separable_data

BINARY_METRICS = ["accuracy", "sensitivity", "specificity", "auroc", "calibration"]


@pytest.fixture(scope="module")
def binary_case():
    """A fitted MLP on noisy labels (accuracy ~0.9, so no metric sits at its bound) and its exact metrics."""
    torch.manual_seed(12)
    X, y = separable_data(2000, seed=6, flip=0.1)
    net = MLP()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.as_tensor(X)), torch.as_tensor(y)).backward()
        opt.step()
    p = torch.softmax(net(torch.as_tensor(X)), 1)[:, 1].detach().double().numpy()
    return export(net), X, y, _exact_binary(p, y), p


def _exact_binary(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Non-private, unbinned values (ECE on its definition's ten equal-width bins)."""
    gaps = np.zeros(m.CALIBRATION_BINS)
    np.add.at(gaps, m.bin_index(p, m.CALIBRATION_EDGES), y - p)
    pred = p >= 0.5
    return {"accuracy": float((pred == y).mean()), "sensitivity": float(pred[y == 1].mean()),
            "specificity": float((~pred[y == 0]).mean()), "auroc": float(roc_auc_score(y, p)),
            "calibration": float(np.abs(gaps).sum() / len(y)), "brier": float(((p - y) ** 2).mean())}


def _run(program, X, y, patient, *, epsilon, metrics=BINARY_METRICS, task="binary-classification", classes=2,
         max_rows=1, **kw):
    return evaluate(program, X=X, y=y, patient=patient, task=task, num_classes=classes, target_epsilon=epsilon,
                    target_delta=1e-6, metrics=metrics, max_rows_per_patient=max_rows, allowed_modules=allowed_here(), **kw)


def test_large_epsilon_metrics_are_close_to_the_exact_ones(binary_case) -> None:
    program, X, y, exact, _ = binary_case
    result = _run(program, X, y, np.arange(len(y)), epsilon=50.0)
    assert 0.8 < exact["accuracy"] < 0.97
    for name in [*BINARY_METRICS, "brier"]:
        value, lo, hi = result.metrics[name]
        assert value == pytest.approx(exact[name], abs=0.01), name
        assert lo <= exact[name] <= hi, name
    assert result.score_bins["auroc_binning_bound"] < 0.005  # bins that follow the scores cost little
    assert result.roc_points[0] == pytest.approx((1.0, 1.0)) and result.roc_points[-1] == pytest.approx((0.0, 0.0))
    assert len(result.reliability) == m.CALIBRATION_BINS
    assert all(r["observed_low"] <= r["observed"] <= r["observed_high"] for r in result.reliability)
    spec_at, sens_at = result.operating_points
    assert spec_at["fixed"] == "specificity" and spec_at["target"] == 0.95 and sens_at["fixed"] == "sensitivity"
    assert spec_at["ci95"][0] <= spec_at["value"] <= spec_at["ci95"][1]
    assert [e["threshold"] for e in result.net_benefit] == [0.05, 0.1, 0.2, 0.3]


def test_intervals_cover_the_exact_values_in_most_runs(binary_case) -> None:
    """Through evaluate() itself, a real model and the exact discrete-Gaussian sampler (the many-run
    check is test_trainer_coverage.py): 20 runs, at least 15 must cover (93% less 3 binomial sd)."""
    program, X, y, exact, _ = binary_case
    covered = {name: 0 for name in exact}
    widths = []
    for run in range(20):
        result = _run(program, X, y, np.arange(len(y)), epsilon=1.0, seed_source=fixed_seed(1000 * run),
                      noise_rng=random.Random(run))
        for name, (_, lo, hi) in result.metrics.items():
            covered[name] += lo <= exact[name] <= hi
        widths.append(result.metrics["accuracy"][2] - result.metrics["accuracy"][1])
    assert all(count >= 15 for count in covered.values()), covered
    assert 0.005 < np.mean(widths) < 0.2  # informative, yet wide enough to carry noise and sampling


def test_bins_follow_the_scores_of_a_confident_model(binary_case) -> None:
    """Half the rows below 0.05 once fell into one of 20 fixed bins; no bin holds a large share now."""
    program, X, y, _, p = binary_case
    confident = np.clip(p ** 3 / (p ** 3 + (1 - p) ** 3), 0, 1)  # the same order, far more extreme scores
    assert np.mean(confident < 0.05) > 0.3
    from cleanroom.trainer.evaluate import evaluate_outputs
    from cleanroom.trainer.graph import Task

    result = evaluate_outputs(Task("binary-classification", 2), np.stack([1 - confident, confident], 1), y,
                              wanted={"auroc"}, target_epsilon=1.0, target_delta=1e-6, max_rows=1,
                              rng=np.random.default_rng(1), noise_rng=random.Random(1))
    edges = np.asarray(result.score_bins["edges"])
    share = np.bincount(m.bin_index(confident, edges), minlength=len(edges) + 1) / len(y)
    assert share.max() < 0.15, share
    assert {0.5, 0.05, 0.1, 0.2, 0.3, *m.CALIBRATION_EDGES} <= set(edges.tolist())
    assert "follow the model's own scores" in result.score_bins["description"]
    low, high = result.metrics["auroc"][1:]
    assert low <= roc_auc_score(y, confident) <= high


def test_auroc_bracket_and_operating_points_hold_the_exact_values() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(3000) < 0.3).astype(np.int64)
    p = 1 / (1 + np.exp(-(rng.normal(size=3000) + 1.5 * y - 1)))
    for edges in (np.array([0.5]), np.array([0.2, 0.5, 0.7]), np.sort(rng.random(40))):
        hist = np.zeros((2, len(edges) + 1))
        np.add.at(hist, (y, m.bin_index(p, edges)), 1)
        low, point, high = (float(v) for v in m.auroc(hist))
        assert low <= roc_auc_score(y, p) <= high and low <= point <= high
        for target in (0.8, 0.95):
            t = np.unique(p)  # every achievable threshold, exactly
            spec = np.array([(p[y == 0] < u).mean() for u in t])
            sens = np.array([(p[y == 1] >= u).mean() for u in t])
            exact_sens = sens[spec >= target].max()
            exact_spec = spec[sens >= target].max()
            lo, _, hi = (float(v) for v in m.operating_point(hist, fixed="specificity", target=target))
            assert lo <= exact_sens <= hi
            lo, _, hi = (float(v) for v in m.operating_point(hist, fixed="sensitivity", target=target))
            assert lo <= exact_spec <= hi


def test_operating_points_and_thresholds_are_parameters(binary_case) -> None:
    program, X, y, _, _ = binary_case
    result = _run(program, X, y, np.arange(len(y)), epsilon=3.0, metrics=["auroc"], sensitivity_at_specificity=[0.9, 0.99],
                  specificity_at_sensitivity=[], net_benefit_thresholds=[0.15], score_bins=12)
    assert [p["name"] for p in result.operating_points] == ["sensitivity at specificity ≥ 0.9", "sensitivity at specificity ≥ 0.99"]
    assert [e["threshold"] for e in result.net_benefit] == [0.15] and 0.15 in result.score_bins["edges"]
    assert result.score_bins["following"] == 12 and result.mechanism_parameters["net_benefit_thresholds"] == [0.15]
    for bad in ({"net_benefit_thresholds": [1.0]}, {"sensitivity_at_specificity": [0.0]}, {"score_bins": 1}):
        with pytest.raises(CleanroomError):
            _run(program, X, y, np.arange(len(y)), epsilon=1.0, metrics=["auroc"], **bad)


def test_rows_beyond_the_per_patient_cap_do_not_count(binary_case) -> None:
    program, X, y, exact, p = binary_case
    wrong = np.flatnonzero((p >= 0.5) != y)[0]
    X_big = np.concatenate([X, np.repeat(X[wrong:wrong + 1], 5000, 0)])
    y_big = np.concatenate([y, np.repeat(y[wrong:wrong + 1], 5000)])
    patient = np.concatenate([np.arange(len(y)), np.full(5000, wrong)])  # one patient, 5001 rows, all wrong
    result = _run(program, X_big, y_big, patient, epsilon=50.0, metrics=["accuracy"], max_rows=2)
    assert result.metrics["accuracy"][0] == pytest.approx(exact["accuracy"], abs=0.01)
    assert result.mechanism_parameters["statistics"]["score_histogram"]["l2_sensitivity"] == 2


def test_budget_is_spent_as_asked_and_described(binary_case) -> None:
    program, X, y, _, _ = binary_case
    result = _run(program, X, y, np.arange(len(y)), epsilon=2.0)
    assert result.epsilon_spent == pytest.approx(2.0, abs=1e-6) and result.delta == 1e-6
    stats = result.mechanism_parameters["statistics"]
    assert set(stats) == {"score_locator", "score_histogram", "calibration_gaps", "squared_error_sum"}
    assert {k: v["budget_fraction"] for k, v in stats.items()} == pytest.approx(
        {"score_locator": 0.1, "score_histogram": 0.6, "calibration_gaps": 0.2, "squared_error_sum": 0.1})
    assert stats["score_locator"]["stage"] == 1 and stats["score_histogram"]["stage"] == 2
    assert sum(s["rho"] for s in stats.values()) == pytest.approx(result.mechanism_parameters["rho"])
    assert all(s["mechanism"] == "discrete-gaussian" for s in stats.values())
    params = result.mechanism_parameters  # one equivalent Gaussian, for the ledger's RDP composition
    assert params["mechanism"] == "gaussian" and 1 / (2 * params["noise_multiplier"] ** 2) == pytest.approx(params["rho"])
    only_accuracy = _run(program, X, y, np.arange(len(y)), epsilon=2.0, metrics=["accuracy"])
    assert set(only_accuracy.mechanism_parameters["statistics"]) == {"score_locator", "score_histogram"}
    assert only_accuracy.epsilon_spent == pytest.approx(2.0, abs=1e-6)


def test_bad_requests_are_refused(binary_case) -> None:
    program, X, y, _, _ = binary_case
    with pytest.raises(CleanroomError, match="delta"):
        evaluate(program, X=X, y=y, patient=np.arange(len(y)), task="binary-classification", num_classes=2,
                 target_epsilon=1.0, target_delta=1 / len(y), metrics=["accuracy"], max_rows_per_patient=1,
                 allowed_modules=allowed_here())
    with pytest.raises(CleanroomError, match="metrics"):
        _run(program, X, y, np.arange(len(y)), epsilon=1.0, metrics=["mae"])


def test_regression_mae_and_rmse() -> None:
    torch.manual_seed(13)
    net = MLP(out=1)
    rng = np.random.default_rng(7)
    X = rng.normal(size=(3000, 30)).astype(np.float32)
    with torch.no_grad():
        pred = net(torch.as_tensor(X)).numpy()[:, 0]
    y = (pred + rng.normal(0, 0.3, 3000)).astype(np.float32)
    err = np.minimum(np.abs(pred - y), 2.0)
    exact = {"mae": err.mean(), "rmse": np.sqrt((err ** 2).mean())}
    program = export(net)
    args = dict(task="regression", classes=0, metrics=["mae", "rmse"], error_bound=2.0)
    close = _run(program, X, y, np.arange(3000), epsilon=50.0, **args)
    for name, value in exact.items():
        assert close.metrics[name][0] == pytest.approx(value, abs=0.01)
    hits = 0
    for run in range(20):
        res = _run(program, X, y, np.arange(3000), epsilon=0.5, seed_source=fixed_seed(77 * run),
                   noise_rng=random.Random(run), **args)
        hits += all(res.metrics[k][1] <= v <= res.metrics[k][2] for k, v in exact.items())
    assert hits >= 16
    with pytest.raises(CleanroomError, match="error_bound"):
        _run(program, X, y, np.arange(3000), epsilon=1.0, task="regression", classes=0, metrics=["mae"])


def test_multiclass_accuracy_and_macro_recall() -> None:
    from tests.trainer.test_trainer_helpers import CNN1d

    torch.manual_seed(14)
    net = CNN1d(3)
    X = np.random.default_rng(8).normal(size=(1500, 30)).astype(np.float32)
    with torch.no_grad():
        logits = net(torch.as_tensor(X))
    y = logits.argmax(1).numpy().copy()
    y[::4] = (y[::4] + 1) % 3  # a quarter wrong
    result = _run(export(net, (30,)), X, y, np.arange(1500), epsilon=50.0, task="multiclass-classification",
                  classes=3, metrics=["accuracy", "macro_recall", "calibration"])
    assert result.metrics["accuracy"][0] == pytest.approx(0.75, abs=0.01)
    recall = np.mean([(logits.argmax(1).numpy()[y == k] == k).mean() for k in range(3)])
    assert result.metrics["macro_recall"][0] == pytest.approx(recall, abs=0.01)
    assert result.roc_points == [] and len(result.reliability) == m.CALIBRATION_BINS


def test_discrete_gaussian_has_the_right_scale_and_is_integer() -> None:
    draws = noise.count_noise((4000,), sigma=3.0)
    assert draws.dtype == np.int64
    assert abs(draws.mean()) < 0.2 and draws.std() == pytest.approx(3.0, rel=0.06)
    assert set(np.unique(noise.count_noise((200,), sigma=0.05))) <= {-1, 0, 1}


def test_a_class_the_noise_can_hide_gets_whole_range_intervals(binary_case) -> None:
    """Three positives among 600 at ε = 0.5: the noisy positive total is indistinguishable from
    zero, so the report must not claim AUROC 0 [0, 0] (what the collapsed replicates gave)."""
    program, X, y, _, _ = binary_case
    rows = np.concatenate([np.flatnonzero(y == 1)[:3], np.flatnonzero(y == 0)[:597]])
    result = _run(program, X[rows], y[rows], np.arange(len(rows)), epsilon=0.5)
    assert result.score_bins["scarce_class"] == "positives"
    for name in ("auroc", "sensitivity", "specificity"):
        assert result.metrics[name][1:] == (0.0, 1.0), name
    assert "Too few positives" in result.score_bins["description"]
    balanced = _run(program, X[:600], y[:600], np.arange(600), epsilon=0.5)
    assert balanced.score_bins["scarce_class"] == "" and balanced.metrics["auroc"][1] > 0.5
