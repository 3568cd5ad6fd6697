"""Job requests become typed parameters and back into the exact JSON the workload hash, the stored
spec and the worker have always used; a job becomes its message with the request it was sent."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime
from typing import TypeVar

import pytest

from cleanroom.domain.errors import CleanroomError
from cleanroom.domain.job_params import EvaluationParams, TrainingParams, from_spec_json, params_from_json, to_spec_json
from cleanroom.domain.jobs import Artifact, Job, JobKind, JobState
from cleanroom.v1 import jobs_pb2
from cleanroom.wire.jobs import evaluation_params_from_proto, job_to_proto, params_from_job, training_params_from_proto

TRAINING = jobs_pb2.TrainingSpec(
    model="models/m1", dataset="datasets/d1", feature_columns=["age", "hr"], label_column="event", target_epsilon=3.0,
    target_delta=1e-05, epochs=5, expected_batch_patients=64, learning_rate=0.1, optimizer="sgd", clipping_norm=1.0,
    validation_fraction=0.2, max_rows_per_patient=0,
)
EVALUATION = jobs_pb2.EvaluationSpec(
    model="models/m1", dataset="datasets/d1", feature_columns=["age", "hr"], label_column="event", target_epsilon=0.5,
    target_delta=1e-06, metrics=["specificity", "auroc"], max_rows_per_patient=3,
)


def test_training_parameters_keep_their_json_form() -> None:
    params = training_params_from_proto(TRAINING)
    # Key order and exact decimal text as the contract vectors (docs/api/vectors/workload.json) pin them.
    assert list(params.to_json().items()) == [
        ("kind", "training"), ("feature_columns", ["age", "hr"]), ("label_column", "event"), ("target_epsilon", "3.0"),
        ("target_delta", "0.00001"), ("epochs", 5), ("expected_batch_patients", 64), ("learning_rate", "0.1"),
        ("optimizer", "sgd"), ("clipping_norm", "1.0"), ("validation_fraction", "0.2"), ("max_rows_per_patient", 1),
    ]


def test_evaluation_parameters_keep_their_json_form() -> None:
    params = evaluation_params_from_proto(EVALUATION)
    assert list(params.to_json().items()) == [
        ("kind", "evaluation"), ("feature_columns", ["age", "hr"]), ("label_column", "event"), ("target_epsilon", "0.5"),
        ("target_delta", "0.000001"), ("metrics", ["auroc", "specificity"]), ("max_rows_per_patient", 3),
    ]


@pytest.mark.parametrize("params", [training_params_from_proto(TRAINING), evaluation_params_from_proto(EVALUATION)])
def test_parameters_round_trip_through_the_stored_text(params: TrainingParams | EvaluationParams) -> None:
    text = to_spec_json(params)
    assert text == json.dumps(params.to_json(), sort_keys=True)
    assert from_spec_json(text) == params
    assert to_spec_json(from_spec_json(text)) == text


def test_an_awkward_float_reads_back_as_the_same_float() -> None:
    spec = jobs_pb2.TrainingSpec()
    spec.CopyFrom(TRAINING)
    spec.learning_rate, spec.target_delta = 0.1 + 0.2, 1 / 3 * 1e-5
    params = training_params_from_proto(spec)
    again = from_spec_json(to_spec_json(params))
    assert isinstance(again, TrainingParams)
    assert (again.learning_rate, again.target_delta) == (params.learning_rate, params.target_delta)


@pytest.mark.parametrize("field", ["target_epsilon", "target_delta", "learning_rate", "clipping_norm", "validation_fraction"])
@pytest.mark.parametrize("value", [-0.5, math.inf, math.nan])
def test_a_negative_or_non_finite_number_is_a_bad_request(field: str, value: float) -> None:
    spec = jobs_pb2.TrainingSpec()
    spec.CopyFrom(TRAINING)
    setattr(spec, field, value)
    with pytest.raises(CleanroomError) as raised:
        training_params_from_proto(spec)
    assert [v.field for v in raised.value.violations] == [f"spec.{field}"]


@pytest.mark.parametrize("data", [{}, {"kind": "other"}, {"kind": "training"}, {**training_params_from_proto(TRAINING).to_json(), "epochs": "5"}])
def test_malformed_stored_parameters_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        params_from_json(data)


def _job(kind: JobKind, params: TrainingParams | EvaluationParams) -> Job:
    return Job("j1", kind, "p1", "m1", "d1", to_spec_json(params), JobState.RELEASED, datetime(2026, 1, 2, tzinfo=UTC),
               privacy_request_id="r1", workload="w" * 64, finished_at=datetime(2026, 1, 3, tzinfo=UTC))


@pytest.mark.parametrize(("kind", "spec"), [(JobKind.TRAINING, TRAINING), (JobKind.EVALUATION, EVALUATION)])
def test_a_job_echoes_the_request_it_was_sent(kind: JobKind, spec: jobs_pb2.TrainingSpec | jobs_pb2.EvaluationSpec) -> None:
    params = training_params_from_proto(spec) if isinstance(spec, jobs_pb2.TrainingSpec) else evaluation_params_from_proto(spec)
    message = job_to_proto(_job(kind, params), [Artifact("metrics.json", "ab" * 32, 12)])
    assert message.WhichOneof("spec") == kind.value
    assert params_from_job(message) == params
    assert (message.artifacts[0].name, message.artifacts[0].size_bytes, message.privacy_request) == ("metrics.json", 12, "privacyRequests/r1")
    echoed = message.training if kind is JobKind.TRAINING else message.evaluation
    assert (echoed.model, echoed.dataset) == ("models/m1", "datasets/d1")


# --- the report options and the recipe's name ------------------------------------------------------

REPORT = {"sensitivity_at_specificity": [0.95, 0.9], "specificity_at_sensitivity": [0.8], "net_benefit_thresholds": [0.15, 0.25],
          "score_bins": 24}


Spec = TypeVar("Spec", jobs_pb2.TrainingSpec, jobs_pb2.EvaluationSpec)


def _with(spec: Spec, **fields: object) -> Spec:
    copy = type(spec)()
    copy.CopyFrom(spec)
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(copy, name).extend(value)
        else:
            setattr(copy, name, value)
    return copy


def test_report_options_are_written_only_when_set_as_exact_decimal_text() -> None:
    params = evaluation_params_from_proto(_with(EVALUATION, **REPORT))
    items = list(params.to_json().items())
    plain = list(evaluation_params_from_proto(EVALUATION).to_json().items())
    assert items[:len(plain)] == plain  # the old form, then only the new keys
    assert items[len(plain):] == [("sensitivity_at_specificity", ["0.95", "0.9"]), ("specificity_at_sensitivity", ["0.8"]),
                                  ("net_benefit_thresholds", ["0.15", "0.25"]), ("score_bins", 24)]
    training = training_params_from_proto(_with(TRAINING, net_benefit_thresholds=[0.1]))
    assert list(training.to_json())[-1] == "net_benefit_thresholds" and "score_bins" not in training.to_json()


@pytest.mark.parametrize("spec", [_with(TRAINING, **REPORT), _with(EVALUATION, **REPORT)])
def test_report_options_round_trip_through_the_stored_text_and_the_job_echo(spec: jobs_pb2.TrainingSpec | jobs_pb2.EvaluationSpec) -> None:
    params = training_params_from_proto(spec) if isinstance(spec, jobs_pb2.TrainingSpec) else evaluation_params_from_proto(spec)
    assert (params.sensitivity_at_specificity, params.score_bins) == ((0.95, 0.9), 24)
    assert from_spec_json(to_spec_json(params)) == params
    kind = JobKind.TRAINING if isinstance(params, TrainingParams) else JobKind.EVALUATION
    message = job_to_proto(_job(kind, params), [])
    echoed = message.training if kind is JobKind.TRAINING else message.evaluation
    assert list(echoed.net_benefit_thresholds) == [0.15, 0.25] and echoed.score_bins == 24
    assert params_from_job(message) == params


def test_the_recipe_is_named_by_the_service_only_and_echoed_with_the_job() -> None:
    asked = _with(TRAINING, recipe="budget-aware-dpsgd/v1")
    sent = training_params_from_proto(asked)
    assert sent.recipe == "" and "recipe" not in sent.to_json()  # a request cannot claim a recipe
    ran = replace(sent, recipe="budget-aware-dpsgd/v1")
    assert ran.to_json()["recipe"] == "budget-aware-dpsgd/v1" and list(ran.to_json())[-1] == "recipe"
    assert from_spec_json(to_spec_json(ran)) == ran
    message = job_to_proto(_job(JobKind.TRAINING, ran), [])
    assert message.training.recipe == "budget-aware-dpsgd/v1" and params_from_job(message) == ran
    assert job_to_proto(_job(JobKind.TRAINING, sent), []).training.recipe == ""


def test_stored_specs_written_before_the_new_fields_read_back_unchanged() -> None:
    for params in (training_params_from_proto(TRAINING), evaluation_params_from_proto(EVALUATION)):
        old = json.dumps(params.to_json(), sort_keys=True)  # no recipe, no report options
        again = from_spec_json(old)
        assert again == params and to_spec_json(again) == old
        assert again.sensitivity_at_specificity == () and again.score_bins == 0


@pytest.mark.parametrize("data", [{"net_benefit_thresholds": [0.1]}, {"net_benefit_thresholds": ["x"]}, {"score_bins": "24"},
                                  {"recipe": 1}])
def test_malformed_stored_options_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        params_from_json({**training_params_from_proto(TRAINING).to_json(), **data})
