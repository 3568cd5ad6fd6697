"""A job request before any reservation (pure): what the recipe fills, and the report options'
validation with its structured field violations."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from cleanroom.domain.datasets import Dataset, IntakeReport
from cleanroom.domain.deid import ColumnRole, ColumnSpec, ColumnType
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.job_params import MAX_SCORE_BINS, MIN_SCORE_BINS, EvaluationParams, TrainingParams
from cleanroom.domain.model_versions import ModelState, ModelVersion
from cleanroom.domain.recipe import RULE, budget_recipe
from cleanroom.jobs import validation
from cleanroom.jobs.service import JobService, trainable_parameter_count
from cleanroom.storage import clock
from cleanroom.trainer import metrics as trainer_metrics

COLUMNS = (ColumnSpec("pid", ColumnType.STRING, ColumnRole.PATIENT_KEY), ColumnSpec("a", ColumnType.FLOAT, ColumnRole.FEATURE),
           ColumnSpec("b", ColumnType.FLOAT, ColumnRole.FEATURE), ColumnSpec("y", ColumnType.INTEGER, ColumnRole.LABEL, label_classes=2))
SHARED = dict(feature_columns=("a", "b"), label_column="y", target_epsilon=1.0, target_delta=1e-5, max_rows_per_patient=1)
LEFT_OUT = TrainingParams(**SHARED, epochs=0, expected_batch_patients=0, learning_rate=0.0, optimizer="", clipping_norm=0.0,  # type: ignore[arg-type]
                          validation_fraction=0.5)
FULL = replace(LEFT_OUT, epochs=5, expected_batch_patients=64, learning_rate=0.1, optimizer="sgd", clipping_norm=1.0)


def _model(task: str = "binary-classification", *, report: dict[str, object] | None = None) -> ModelVersion:
    return ModelVersion("m1", "p1", "lr", "1", ModelState.ACCEPTED, "ab" * 32, task, 2 if task != "regression" else 1, (2,),
                        ("0.weight", "0.bias"), report={"parameter_count": 6, "trainable_parameter_count": 6} if report is None else report)


def _dataset(patients: int = 569) -> Dataset:
    return Dataset("d1", "o1", "d", "", COLUMNS, 5, patients, patients, IntakeReport(), "0" * 64, clock.now())


def _violations(error: pytest.ExceptionInfo[CleanroomError]) -> dict[str, str]:
    assert error.value.code is ErrorCode.BAD_REQUEST
    return {v.field: v.description for v in error.value.violations}


# --- the recipe ------------------------------------------------------------------------------------


def test_a_request_that_leaves_the_recipe_out_gets_the_rule_and_names_it() -> None:
    filled = JobService._with_recipe(LEFT_OUT, _model(), _dataset())
    expected = budget_recipe(patients=569, epsilon=1.0, model_parameters=6, validation_fraction=0.5)
    assert isinstance(filled, TrainingParams) and filled.recipe == RULE == expected.rule
    assert (filled.epochs, filled.expected_batch_patients, filled.learning_rate, filled.optimizer, filled.clipping_norm) == (
        expected.epochs, expected.expected_batch_patients, expected.learning_rate, expected.optimizer, expected.clipping_norm)
    assert filled.to_json()["recipe"] == RULE
    JobService._validate(filled, _model(), _dataset())  # and it is a valid request


def test_a_request_that_names_everything_runs_exactly_as_sent() -> None:
    same = JobService._with_recipe(FULL, _model(), _dataset())
    assert same is FULL and "recipe" not in same.to_json()


def test_fields_the_request_sets_are_kept() -> None:
    partial = replace(LEFT_OUT, epochs=7, optimizer="adam")
    filled = JobService._with_recipe(partial, _model(), _dataset())
    assert isinstance(filled, TrainingParams) and (filled.epochs, filled.optimizer, filled.recipe) == (7, "adam", RULE)
    assert filled.learning_rate == budget_recipe(patients=569, epsilon=1.0, model_parameters=6, validation_fraction=0.5,
                                                 optimizer="adam").learning_rate


def test_the_recipe_reads_the_trainable_count_from_the_intake_report() -> None:
    assert trainable_parameter_count(_model(report={"parameter_count": 5000, "trainable_parameter_count": 40})) == 40
    assert trainable_parameter_count(_model(report={"parameter_count": 5000})) == 5000  # versions stored before the count
    big = JobService._with_recipe(LEFT_OUT, _model(report={"parameter_count": 10**6, "trainable_parameter_count": 500_000}), _dataset())
    assert isinstance(big, TrainingParams) and big.learning_rate == 0.2


def test_when_no_recipe_fits_validation_names_the_left_out_fields_before_any_reservation() -> None:
    tiny = _dataset(patients=1)
    params = JobService._with_recipe(LEFT_OUT, _model(), tiny)
    assert params is LEFT_OUT
    with pytest.raises(CleanroomError) as raised:
        JobService._validate(params, _model(), tiny)
    found = _violations(raised)
    assert {"spec.epochs", "spec.expected_batch_patients", "spec.learning_rate", "spec.optimizer", "spec.clipping_norm"} <= set(found)
    assert found["spec.epochs"].endswith(validation.NO_RECIPE) and "left out" in found["spec.optimizer"]


# --- the report options --------------------------------------------------------------------------------


def _evaluation(**options: object) -> EvaluationParams:
    return EvaluationParams(**SHARED, metrics=(), **options)  # type: ignore[arg-type]


def test_the_bounds_agree_with_the_evaluator() -> None:
    assert (MIN_SCORE_BINS, MAX_SCORE_BINS) == (trainer_metrics.MIN_BINS // 2, 4 * trainer_metrics.MAX_BINS)


def test_named_operating_points_and_thresholds_are_accepted() -> None:
    params = _evaluation(sensitivity_at_specificity=(0.95, 0.9), specificity_at_sensitivity=(0.8,),
                         net_benefit_thresholds=tuple(i / 20 for i in range(1, 17)), score_bins=MAX_SCORE_BINS)
    assert validation.report_violations(params, _model()) == []
    JobService._validate(params, _model(), _dataset())


@pytest.mark.parametrize("options, field, words", [
    ({"sensitivity_at_specificity": (0.95, 1.0)}, "spec.sensitivity_at_specificity", "strictly between 0 and 1"),
    ({"specificity_at_sensitivity": (0.0,)}, "spec.specificity_at_sensitivity", "strictly between 0 and 1"),
    ({"net_benefit_thresholds": (math.nan,)}, "spec.net_benefit_thresholds", "strictly between 0 and 1"),
    ({"net_benefit_thresholds": (-0.1,)}, "spec.net_benefit_thresholds", "strictly between 0 and 1"),
    ({"net_benefit_thresholds": tuple(i / 20 for i in range(1, 18))}, "spec.net_benefit_thresholds", "at most 16 values, not 17"),
    ({"sensitivity_at_specificity": (0.9, 0.9)}, "spec.sensitivity_at_specificity", "named twice"),
    ({"score_bins": MIN_SCORE_BINS - 1}, "spec.score_bins", "between 4 and 640"),
    ({"score_bins": MAX_SCORE_BINS + 1}, "spec.score_bins", "between 4 and 640"),
    ({"score_bins": -3}, "spec.score_bins", "between 4 and 640"),
])
def test_bad_report_options_are_refused_with_the_field(options: dict[str, object], field: str, words: str) -> None:
    for params in (_evaluation(**options), replace(FULL, **options)):  # type: ignore[arg-type]
        with pytest.raises(CleanroomError) as raised:
            JobService._validate(params, _model(), _dataset())
        found = _violations(raised)
        assert list(found) == [field] and words in found[field]


def test_report_options_on_a_model_that_is_not_a_binary_classifier_are_refused() -> None:
    regression = _model("regression")
    params = _evaluation(net_benefit_thresholds=(0.2,), score_bins=20)
    found = {v.field: v.description for v in validation.report_violations(params, regression)}
    assert set(found) == {"spec.net_benefit_thresholds", "spec.score_bins"}
    assert all("binary classification only; this model's task is regression" in d for d in found.values())
    assert validation.report_violations(_evaluation(), regression) == []


# --- what the officer reads ------------------------------------------------------------------------


def test_a_job_request_tells_the_officer_the_model_the_columns_it_reads_and_its_length() -> None:
    from cleanroom.jobs.service import work_of

    work = work_of(_model(), FULL)
    assert work.columns == ("a", "b", "y")
    assert "training of lr 1 (models/m1" in work.description and "2 feature column(s) and the label y" in work.description
    assert "5 epoch(s)" in work.description
    evaluation = work_of(_model(), EvaluationParams(**SHARED, metrics=()))  # type: ignore[arg-type]
    assert evaluation.description.startswith("evaluation of lr 1") and "epoch" not in evaluation.description


def test_a_statistics_request_tells_the_officer_the_statistic_and_every_column_it_reads() -> None:
    from cleanroom.statistics.engine.query import Filter, Query
    from cleanroom.statistics.service import work_of

    work = work_of(Query(kind="mean", epsilon=1.0, column="age", group_by="sex", bounds=(0, 90),
                         filters=(Filter("ward", "==", "icu"),)))
    assert work.columns == ("age", "sex", "ward")
    assert work.description == "mean of age clamped to [0, 90] by sex where ward == 'icu'"
