"""A stream job's windows: proto <-> domain, echoed in the job view, and absent for a table job."""

from __future__ import annotations

from datetime import UTC, datetime

from cleanroom.domain.job_params import TrainingParams, to_spec_json
from cleanroom.domain.jobs import Job, JobKind, JobState
from cleanroom.domain.streams import ThresholdLabel, WindowSpec
from cleanroom.v1 import jobs_pb2
from cleanroom.wire.jobs import (
    evaluation_params_from_proto,
    job_to_proto,
    params_from_job,
    training_params_from_proto,
    windows_from_proto,
    windows_to_proto,
)

RULE = jobs_pb2.ThresholdLabel(channel="spo2", comparison="below", threshold=90.0, for_seconds=60)


def _training(**fields: object) -> jobs_pb2.TrainingSpec:
    return jobs_pb2.TrainingSpec(model="models/m1", dataset="datasets/d1", feature_columns=["hr", "spo2"], target_epsilon=1.0,
                                 target_delta=1e-5, epochs=2, expected_batch_patients=8, learning_rate=0.1, optimizer="sgd",
                                 clipping_norm=1.0, validation_fraction=0.2, max_rows_per_patient=4, **fields)  # type: ignore[arg-type]


def test_windows_with_a_threshold_rule_become_the_domains() -> None:
    message = jobs_pb2.WindowSpec(window_seconds=600, stride_seconds=300, resample_seconds=5, min_coverage=0.8, label_rule=RULE)
    assert windows_from_proto(message) == WindowSpec(600, 300, 5, 0.8, ThresholdLabel("spo2", "below", 90.0, 60))
    assert windows_to_proto(windows_from_proto(message)) == message


def test_a_left_out_coverage_means_one_half_and_no_rule_means_the_label_column() -> None:
    windows = windows_from_proto(jobs_pb2.WindowSpec(window_seconds=60, stride_seconds=60, resample_seconds=1))
    assert (windows.min_coverage, windows.label_rule) == (0.5, None)


def test_a_table_request_has_no_windows_and_keeps_its_json_form() -> None:
    params = training_params_from_proto(_training(label_column="event"))
    assert params.windows is None and "windows" not in params.to_json()
    assert evaluation_params_from_proto(jobs_pb2.EvaluationSpec(feature_columns=["a"], label_column="y")).windows is None


def test_the_job_view_echoes_the_windows_and_reads_back_the_same_parameters() -> None:
    windows = jobs_pb2.WindowSpec(window_seconds=600, stride_seconds=600, resample_seconds=5, label_rule=RULE)
    params = training_params_from_proto(_training(windows=windows))
    assert params.to_json()["windows"] == {"window_seconds": 600, "stride_seconds": 600, "resample_seconds": 5,
                                           "min_coverage": "0.5", "label_rule": {"channel": "spo2", "comparison": "below",
                                                                                 "threshold": "90.0", "for_seconds": 60}}
    message = job_to_proto(_job(params), [])
    assert message.training.windows.label_rule.channel == "spo2" and message.training.windows.min_coverage == 0.5
    assert params_from_job(message) == params


def test_a_table_jobs_view_has_no_windows() -> None:
    params = training_params_from_proto(_training(label_column="event"))
    assert not job_to_proto(_job(params), []).training.HasField("windows")


def _job(params: TrainingParams) -> Job:
    return Job("j1", JobKind.TRAINING, "p1", "m1", "d1", to_spec_json(params), JobState.QUEUED, datetime(2026, 1, 1, tzinfo=UTC))
