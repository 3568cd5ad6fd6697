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
    hist = np.zeros((2, m.BINS))
    np.add.at(hist, (y, m.score_bins(p)), 1)
    sums = np.zeros(m.BINS)
    np.add.at(sums, m.score_bins(p), np.rint(p * m.QUANT))
    pred = p >= 0.5
    return {"accuracy": float((pred == y).mean()), "sensitivity": float(pred[y == 1].mean()),
            "specificity": float((~pred[y == 0]).mean()), "auroc": float(m.auroc(hist)),
            "calibration": float(m.expected_calibration_error(hist, sums)), "auroc_exact": roc_auc_score(y, p)}


def _run(program, X, y, patient, *, epsilon, metrics=BINARY_METRICS, task="binary-classification", classes=2,
         max_rows=1, **kw):
    return evaluate(program, X=X, y=y, patient=patient, task=task, num_classes=classes, target_epsilon=epsilon,
                    target_delta=1e-6, metrics=metrics, max_rows_per_patient=max_rows, allowed_modules=allowed_here(), **kw)


def test_large_epsilon_metrics_are_close_to_the_exact_ones(binary_case) -> None:
    program, X, y, exact, _ = binary_case
    result = _run(program, X, y, np.arange(len(y)), epsilon=50.0)
    assert 0.8 < exact["accuracy"] < 0.97
    for name in BINARY_METRICS:
        value, lo, hi = result.metrics[name]
        assert value == pytest.approx(exact[name], abs=0.01), name
        assert lo <= value <= hi
    assert abs(result.metrics["auroc"][0] - exact["auroc_exact"]) < 0.02  # binning costs little
    assert result.roc_points[0] == pytest.approx((1.0, 1.0)) and result.roc_points[-1] == pytest.approx((0.0, 0.0))
    assert len(result.reliability) == m.BINS


def test_intervals_cover_the_exact_values_in_most_runs(binary_case) -> None:
    program, X, y, exact, _ = binary_case
    covered = {name: 0 for name in BINARY_METRICS}
    widths = []
    for run in range(30):
        result = _run(program, X, y, np.arange(len(y)), epsilon=1.0, seed_source=fixed_seed(1000 * run),
                      noise_rng=random.Random(run))
        for name, (_, lo, hi) in result.metrics.items():
            covered[name] += lo <= exact[name] <= hi
        widths.append(result.metrics["accuracy"][2] - result.metrics["accuracy"][1])
    assert all(count >= 24 for count in covered.values()), covered
    assert 0.005 < np.mean(widths) < 0.2  # informative, yet wide enough to carry noise and sampling


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
    assert set(stats) == {"score_histogram", "score_sums"}
    assert sum(s["rho"] for s in stats.values()) == pytest.approx(result.mechanism_parameters["rho"])
    assert all(s["mechanism"] == "discrete-gaussian" for s in stats.values())
    params = result.mechanism_parameters  # one equivalent Gaussian, for the ledger's RDP composition
    assert params["mechanism"] == "gaussian" and 1 / (2 * params["noise_multiplier"] ** 2) == pytest.approx(params["rho"])
    only_accuracy = _run(program, X, y, np.arange(len(y)), epsilon=2.0, metrics=["accuracy"])
    assert set(only_accuracy.mechanism_parameters["statistics"]) == {"score_histogram"}


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
    assert result.roc_points == [] and len(result.reliability) == m.BINS


def test_discrete_gaussian_has_the_right_scale_and_is_integer() -> None:
    draws = noise.count_noise((4000,), sigma=3.0)
    assert draws.dtype == np.int64
    assert abs(draws.mean()) < 0.2 and draws.std() == pytest.approx(3.0, rel=0.06)
    assert set(np.unique(noise.count_noise((200,), sigma=0.05))) <= {-1, 0, 1}
