"""Statistical tests: the empirical error of each query kind matches its mechanism's distribution.

Tolerances are stated in standard errors of the repeated estimate (about 5 SE, so a correct
implementation fails about once in a few million runs, and a wrong scale by 15-20% fails always).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.statistics.engine import Answer, Query, run_query
from tests.statistics.test_stats_fixtures import vitals

TABLE = vitals(patients=1000)
HEART = TABLE.column("heart_rate").to_numpy()


def _repeat(query: Query, runs: int, table: pa.Table = TABLE, **kwargs: object) -> list[Answer]:
    return [run_query(table, query, patient_column="patient", **kwargs) for _ in range(runs)]


def _errors(answers: list[Answer], truth: float) -> tuple[np.ndarray, np.ndarray]:
    values = np.array([a.value for a in answers])
    widths = np.array([a.half_width for a in answers])
    return values - truth, widths


def _coverage(errors: np.ndarray, widths: np.ndarray) -> float:
    return float(np.mean(np.abs(errors) <= widths))


def test_count_at_epsilon_one_has_the_discrete_laplace_error() -> None:
    """ε = 1, sensitivity 1: discrete Laplace with t = e^-1, so E|X| = 2t/(1-t²) ≈ 0.851.

    (The continuous Laplace would give 1.0; "about 0.88" is the usual rounded folklore.) SD of |X|
    is ≈ 1.06, so over 2000 runs the mean absolute error has SE ≈ 0.024; we allow ±0.12 (5 SE).
    """
    answers = _repeat(Query(kind="count", epsilon=1.0), 2000)
    errors, widths = _errors(answers, TABLE.num_rows)
    t = math.exp(-1 / answers[0].mechanism.parameter("count.scale"))
    assert 2 * t / (1 - t * t) == pytest.approx(0.851, abs=1e-3)
    assert np.mean(np.abs(errors)) == pytest.approx(0.851, abs=0.12)
    assert abs(np.mean(errors)) < 0.16  # unbiased: SD of X ≈ 1.36, 5 SE
    assert np.all(widths == 3.0)  # floor of OpenDP's 95% accuracy (3.38) for scale 1
    # P(|X| ≤ 3) = 1 - 2t^4/(1+t) ≈ 0.973; SE over 2000 runs ≈ 0.0036.
    assert _coverage(errors, widths) == pytest.approx(1 - 2 * t**4 / (1 + t), abs=0.018)
    assert all(a.epsilon == 1.0 and a.delta == 0.0 for a in answers[:5])


def test_sum_error_matches_its_scale() -> None:
    """Clamped to (0, 250), L = 1, ε = 1: Laplace scale 250, so E|error| ≈ 250, SE ≈ 7.9."""
    answers = _repeat(Query(kind="sum", column="heart_rate", epsilon=1.0, bounds=(0.0, 250.0)), 1000)
    errors, widths = _errors(answers, float(np.clip(HEART, 0, 250).sum()))
    assert np.mean(np.abs(errors)) == pytest.approx(250.0, rel=0.16)
    assert abs(np.mean(errors)) < 5 * 250 * math.sqrt(2) / math.sqrt(1000)
    assert _coverage(errors, widths) >= 0.93
    assert widths[0] == pytest.approx(250.0 * math.log(20), rel=0.01)  # Laplace 95%: scale·ln(20)


def test_mean_error_and_interval() -> None:
    """ε/2 to the sum (scale 500) and ε/2 to the count (scale 2) over n = 1000.

    Error ≈ (e_sum - mean·e_count)/n, SD = sqrt(2·500² + 70²·2·2²)/1000 ≈ 0.73; ±15% is ~4 SE.
    """
    answers = _repeat(Query(kind="mean", column="heart_rate", epsilon=1.0, bounds=(0.0, 250.0)), 1000)
    errors, widths = _errors(answers, float(np.clip(HEART, 0, 250).mean()))
    predicted = math.sqrt(2 * 500.0**2 + HEART.mean() ** 2 * 2 * 2.0**2) / 1000
    assert np.std(errors) == pytest.approx(predicted, rel=0.15)
    assert _coverage(errors, widths) >= 0.95  # union bound + interval arithmetic: conservative
    assert np.median(widths) < 4 * predicted  # ...but not uselessly wide


def test_variance_lands_near_the_truth() -> None:
    answers = _repeat(Query(kind="variance", column="heart_rate", epsilon=2.0, bounds=(20.0, 120.0)), 600)
    truth = float(np.var(np.clip(HEART, 20, 120)))
    errors, widths = _errors(answers, truth)
    assert _coverage(errors, widths) >= 0.95
    assert abs(np.median(errors)) < 0.1 * truth


def test_gaussian_count_error_matches_its_scale() -> None:
    answers = _repeat(Query(kind="count", epsilon=1.0, delta=1e-6, noise="gaussian"), 1000)
    errors, widths = _errors(answers, TABLE.num_rows)
    sigma = answers[0].mechanism.parameter("count.scale")
    assert answers[0].mechanism.name == "discrete-gaussian" and answers[0].delta == 1e-6
    assert np.std(errors) == pytest.approx(sigma, rel=0.12)  # SE of an SD over 1000 runs ≈ 2.2%
    assert _coverage(errors, widths) >= 0.93


def test_histogram_cells_each_carry_count_noise() -> None:
    truth = {("true",): int(np.sum(TABLE.column("smoker").to_numpy())), ("false",): 0}
    truth[("false",)] = TABLE.num_rows - truth[("true",)]
    answers = _repeat(Query(kind="histogram", column="smoker", epsilon=1.0), 500)
    for key, count in truth.items():
        errors = np.array([a.by_key()[key] for a in answers]) - count
        assert np.mean(np.abs(errors)) == pytest.approx(0.851, abs=0.25)  # SE ≈ 0.047 over 500


def _uniform(patients: int, seed: int = 3) -> pa.Table:
    values = np.random.default_rng(seed).uniform(0.0, 100.0, patients)
    return pa.table({"patient": pa.array(np.arange(patients)), "x": pa.array(values)})


def test_quantiles_land_within_their_stated_rank_error() -> None:
    table = _uniform(2000)
    data = np.sort(table.column("x").to_numpy())
    levels = (0.1, 0.5, 0.9)
    answers = _repeat(Query(kind="quantile", column="x", epsilon=3.0, bounds=(0.0, 100.0), quantiles=levels), 200, table)
    for level in levels:
        cells = [c for a in answers for c in a.cells if c.level == level]
        ranks = np.array([np.sum(data < c.value) for c in cells])
        rank_errors = np.abs(ranks - level * len(data))
        assert np.mean(rank_errors <= cells[0].half_width + 1) >= 0.95
        grid = 100.0 / 1023
        value_errors = np.abs(np.array([c.value for c in cells]) - np.quantile(data, level))
        assert np.quantile(value_errors, 0.95) <= (cells[0].half_width + 1) * 100.0 / len(data) + grid


@pytest.mark.parametrize(("scale", "shift"), [(10.0, 70.0), (200.0, -50.0)])
def test_estimated_bounds_contain_most_of_the_data(scale: float, shift: float) -> None:
    values = np.random.default_rng(5).normal(shift, scale, 3000)
    table = pa.table({"patient": pa.array(np.arange(3000)), "x": pa.array(values)})
    query = Query(kind="mean", column="x", epsilon=2.0, estimate_bounds=True, bounds_epsilon=1.0)
    covered = []
    for answer in _repeat(query, 30, table):
        lo, hi = answer.bounds
        assert np.mean((values >= lo) & (values <= hi)) >= 0.99
        assert hi - lo <= 16 * scale + 2 * abs(shift)  # octave bins: loose, not absurd
        assert answer.epsilon == 2.0 and answer.mechanism.parameter("bounds.epsilon") < 1.0
        covered.append(abs(answer.value - np.clip(values, lo, hi).mean()) <= answer.half_width)
    assert np.mean(covered) >= 0.85  # 95% intervals; 30 runs


def test_bounds_estimation_refuses_when_too_few_patients() -> None:
    table = pa.table({"patient": pa.array(np.arange(5)), "x": pa.array(np.linspace(1.0, 2.0, 5))})
    query = Query(kind="mean", column="x", epsilon=0.2, estimate_bounds=True)
    with pytest.raises(CleanroomError) as caught:
        run_query(table, query, patient_column="patient")
    assert caught.value.code is ErrorCode.FAILED_PRECONDITION
