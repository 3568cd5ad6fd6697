"""A request over a stream before any reservation (pure): it names windows that fit the stream's
public description, the model takes one window, the label is a LABEL column or a rule; a table
takes no windows; a cohort of streams is refused. And what the runner writes for a stream site."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cleanroom.domain.cohort import make_site
from cleanroom.domain.datasets import Dataset, IntakeReport
from cleanroom.domain.deid import ColumnRole, ColumnSpec, ColumnType
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.job_params import EvaluationParams, TrainingParams
from cleanroom.domain.model_versions import ModelState, ModelVersion
from cleanroom.domain.streams import StreamDescription, ThresholdLabel, WindowSpec
from cleanroom.jobs import runner, validation
from cleanroom.jobs.service import JobService
from cleanroom.storage import clock

COLUMNS = (ColumnSpec("pid", ColumnType.STRING, ColumnRole.PATIENT_KEY), ColumnSpec("t", ColumnType.TIMESTAMP, ColumnRole.TIME),
           ColumnSpec("hr", ColumnType.FLOAT, ColumnRole.FEATURE), ColumnSpec("spo2", ColumnType.FLOAT, ColumnRole.FEATURE),
           ColumnSpec("steps", ColumnType.INTEGER, ColumnRole.FEATURE),
           ColumnSpec("event", ColumnType.INTEGER, ColumnRole.LABEL, label_classes=2))
STREAM = StreamDescription("t", (("hr", "bpm"), ("spo2", "%"), ("steps", "steps/min")), 1, 3)
RULE = ThresholdLabel("spo2", "below", 90.0, 60)
WINDOWS = WindowSpec(600, 300, 5, label_rule=RULE)  # 120 cells
SHARED = dict(feature_columns=("hr", "spo2", "steps"), label_column="", target_epsilon=1.0, target_delta=1e-5, max_rows_per_patient=4)
TRAINING = TrainingParams(**SHARED, windows=WINDOWS, epochs=2, expected_batch_patients=16, learning_rate=0.1,  # type: ignore[arg-type]
                          optimizer="sgd", clipping_norm=1.0, validation_fraction=0.2)
EVALUATION = EvaluationParams(**SHARED, windows=WINDOWS, metrics=())  # type: ignore[arg-type]


def _model(shape: tuple[int, ...] = (3, 120), task: str = "binary-classification") -> ModelVersion:
    return ModelVersion("m1", "p1", "cnn", "1", ModelState.ACCEPTED, "ab" * 32, task, 2 if task != "regression" else 1, shape,
                        ("w",), report={"trainable_parameter_count": 100})


def _dataset(stream: StreamDescription | None = STREAM, patients: int = 300) -> Dataset:
    return Dataset("d1", "o1", "wellness", "", COLUMNS, 5, patients * 1000, patients, IntakeReport(), "0" * 64, clock.now(),
                   stream=stream)


def _refused(params: TrainingParams | EvaluationParams, model: ModelVersion | None = None,
             dataset: Dataset | None = None) -> dict[str, str]:
    with pytest.raises(CleanroomError) as raised:
        JobService._validate(params, model or _model(), dataset or _dataset())
    assert raised.value.code is ErrorCode.BAD_REQUEST and "nothing was reserved" in raised.value.message
    return {v.field: v.description for v in raised.value.violations}


@pytest.mark.parametrize("params", [TRAINING, EVALUATION])
def test_a_request_with_fitting_windows_is_valid(params: TrainingParams | EvaluationParams) -> None:
    JobService._validate(params, _model(), _dataset())
    labelled = replace(params, label_column="event", windows=replace(WINDOWS, label_rule=None))
    JobService._validate(labelled, _model(), _dataset())


def test_a_stream_needs_windows_and_a_table_takes_none() -> None:
    assert "name its windows" in _refused(replace(TRAINING, windows=None))["spec.windows"]
    table = _refused(replace(TRAINING, label_column="event"), _model((3,)), _dataset(stream=None))
    assert "table, not a stream" in table["spec.windows"]


def test_the_model_must_take_one_window_said_in_words() -> None:
    found = _refused(TRAINING, _model((3, 60)))
    assert list(found) == ["spec.windows"]
    assert found["spec.windows"] == ("the model's input_shape is [3, 60], but these windows give [3, 120]: 3 channels "
                                     "(the feature columns) by 120 cells (window_seconds / resample_seconds = 600 / 5)")
    assert "[2, 120]" in _refused(replace(TRAINING, feature_columns=("hr", "spo2")))["spec.windows"]


def test_a_window_longer_than_any_patients_stream_is_refused() -> None:
    found = _refused(replace(TRAINING, windows=replace(WINDOWS, window_seconds=4 * 3600, stride_seconds=3600)), _model((3, 2880)))
    assert "longer than any patient's stream" in found["spec.windows.window_seconds"]


def test_a_label_rule_naming_a_missing_channel_is_refused() -> None:
    found = _refused(replace(TRAINING, windows=replace(WINDOWS, label_rule=replace(RULE, channel="glucose"))))
    assert found == {"spec.windows.label_rule.channel": "not a channel of this stream"}


def test_a_label_rule_needs_a_binary_model_and_a_label_column_a_matching_one() -> None:
    found = _refused(TRAINING, _model(task="multiclass-classification"))
    assert "binary-classification" in found["spec.windows.label_rule"]
    by_column = replace(TRAINING, label_column="event", windows=replace(WINDOWS, label_rule=None))
    assert "the model has 4" in _refused(by_column, replace(_model(task="multiclass-classification"), num_classes=4))["spec.label_column"]
    assert "LABEL column" in _refused(replace(by_column, label_column="hr"))["spec.label_column"]
    assert "leave it empty" in _refused(replace(TRAINING, label_column="event"))["spec.label_column"]


def test_features_must_be_channels() -> None:
    found = _refused(replace(TRAINING, feature_columns=("hr", "event", "steps")))
    assert found["spec.feature_columns[event]"] == "not a channel of this stream"


def test_a_cohort_of_streams_is_refused_before_any_reservation() -> None:
    site = make_site("d1")
    params = replace(TRAINING, cohort=(site,))
    assert validation.cohort_violations(params, _model(), [(site, _dataset())])[0].field == "spec.cohort[0]"
    table = replace(params, label_column="event")
    found = validation.cohort_violations(table, _model((3,)), [(site, _dataset(stream=None))])
    assert [v.field for v in found] == ["spec.windows"] and "not supported yet" in found[0].description


def test_the_runner_describes_a_stream_site_and_a_rule_labelled_study_has_no_label_column() -> None:
    site = runner._Site(make_site("d1"), _dataset(), b"wrapped")
    study = runner._study(TRAINING)
    assert study == ("hr", "spo2", "steps")
    entry = runner._site_input(0, site, study)
    assert entry["stream"] == STREAM.to_json() and entry["columns"] == {"hr": "hr", "spo2": "spo2", "steps": "steps"}
    assert StreamDescription.from_json(entry["stream"]) == STREAM  # type: ignore[arg-type]
    labelled = replace(TRAINING, label_column="event", windows=replace(WINDOWS, label_rule=None))
    assert runner._study(labelled) == ("hr", "spo2", "steps", "event")
    table = runner._site_input(0, runner._Site(make_site("d1"), _dataset(stream=None), b"w"), ("hr", "event"))
    assert "stream" not in table


def test_a_signed_channel_threshold_is_written_with_its_sign() -> None:
    """A rule over a signed channel (acceleration) may name a negative threshold: its JSON form
    (the workload hash, the receipt) carries the sign, and reads back to the same number."""
    for threshold, text in ((-2.5, "-2.5"), (0.0, "0.0"), (-0.0, "0.0"), (90.0, "90.0")):
        params = replace(TRAINING, windows=replace(WINDOWS, label_rule=replace(RULE, threshold=threshold)))
        written = params.to_json()["windows"]
        assert isinstance(written, dict) and written["label_rule"]["threshold"] == text  # type: ignore[index]
        assert type(params).from_json(params.to_json()).windows == params.windows
