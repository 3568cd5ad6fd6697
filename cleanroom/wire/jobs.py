"""jobs.proto <-> domain: job requests as typed parameters, and jobs with their artefacts.

The workload hash binds the model version's package digest, the parameters' JSON form and the
dataset id. The SDK recomputes it from the request it sent, so the server and the SDK build the same
parameters from the same request: through this module (and `to_json`, cleanroom/domain/job_params.py).

"Left out" is the proto3 zero value: a recipe field at 0 or "" (none of them a valid setting) is
filled by the service's recipe, an empty report-option list or score_bins 0 means the evaluator's
default. `TrainingSpec.recipe` is output only: a request's is ignored (only the service names the
rule it applied), a job's echo carries it.
"""

from __future__ import annotations

import math
from dataclasses import replace

from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.job_params import DEFAULT_ROWS_PER_PATIENT, EvaluationParams, JobParams, SharedFields, TrainingParams
from cleanroom.domain.jobs import Artifact, FailureCode, Job, JobState
from cleanroom.domain.streams import ThresholdLabel, WindowSpec
from cleanroom.v1 import jobs_pb2
from cleanroom.wire.common import cohort_from_proto, cohort_to_proto, timestamp

_JOB_STATES: dict[JobState, jobs_pb2.JobState.ValueType] = {state: jobs_pb2.JobState.Value(f"JOB_STATE_{state.name}") for state in JobState}
_FAILURES: dict[FailureCode, jobs_pb2.JobFailure.ValueType] = {code: jobs_pb2.JobFailure.Value(f"JOB_FAILURE_{code.name}") for code in FailureCode if code is not FailureCode.NONE}


def _number(value: float, field: str) -> float:
    """A finite, non-negative number; anything else is a bad request."""
    if not math.isfinite(value) or value < 0:
        raise bad_request("the job request is invalid; nothing was reserved",
                          FieldViolation(f"spec.{field}", "must be a finite number, 0 or more"))
    return value


# --- requests ------------------------------------------------------------------------------------

Spec = jobs_pb2.TrainingSpec | jobs_pb2.EvaluationSpec


def _shared(spec: Spec) -> SharedFields:
    """What both request kinds carry. The report options are checked by the job validation
    (jobs/validation.py), with every other field, before any reservation."""
    return SharedFields(
        feature_columns=tuple(spec.feature_columns),
        label_column=spec.label_column,
        target_epsilon=_number(spec.target_epsilon, "target_epsilon"),
        target_delta=_number(spec.target_delta, "target_delta"),
        max_rows_per_patient=spec.max_rows_per_patient or DEFAULT_ROWS_PER_PATIENT,
        sensitivity_at_specificity=tuple(spec.sensitivity_at_specificity),
        specificity_at_sensitivity=tuple(spec.specificity_at_sensitivity),
        net_benefit_thresholds=tuple(spec.net_benefit_thresholds),
        score_bins=spec.score_bins,
        cohort=cohort_from_proto(spec.cohort, "spec.cohort"),
        windows=windows_from_proto(spec.windows) if spec.HasField("windows") else None,
    )


DEFAULT_MIN_COVERAGE = 0.5


def windows_from_proto(message: jobs_pb2.WindowSpec) -> WindowSpec:
    """A stream job's windows; min_coverage 0 (left out) means 0.5. The values are checked with the
    dataset's stream by the job validation (streams.validate_windows), before any reservation."""
    rule = None
    if message.HasField("label_rule"):
        r = message.label_rule
        rule = ThresholdLabel(r.channel, r.comparison, r.threshold, r.for_seconds)
    return WindowSpec(window_seconds=message.window_seconds, stride_seconds=message.stride_seconds,
                      resample_seconds=message.resample_seconds,
                      min_coverage=message.min_coverage or DEFAULT_MIN_COVERAGE, label_rule=rule)


def windows_to_proto(windows: WindowSpec) -> jobs_pb2.WindowSpec:
    message = jobs_pb2.WindowSpec(window_seconds=windows.window_seconds, stride_seconds=windows.stride_seconds,
                                  resample_seconds=windows.resample_seconds, min_coverage=windows.min_coverage)
    if windows.label_rule is not None:
        r = windows.label_rule
        message.label_rule.CopyFrom(jobs_pb2.ThresholdLabel(channel=r.channel, comparison=r.comparison,
                                                            threshold=r.threshold, for_seconds=r.for_seconds))
    return message


def training_params_from_proto(spec: jobs_pb2.TrainingSpec) -> TrainingParams:
    """A training request's parameters (`spec.recipe` is output only and not read here)."""
    return TrainingParams(
        **_shared(spec),
        epochs=spec.epochs,
        expected_batch_patients=spec.expected_batch_patients,
        learning_rate=_number(spec.learning_rate, "learning_rate"),
        optimizer=spec.optimizer,
        clipping_norm=_number(spec.clipping_norm, "clipping_norm"),
        validation_fraction=_number(spec.validation_fraction, "validation_fraction"),
    )


def evaluation_params_from_proto(spec: jobs_pb2.EvaluationSpec) -> EvaluationParams:
    return EvaluationParams(**_shared(spec), metrics=tuple(sorted(spec.metrics)))


def params_from_job(job: jobs_pb2.Job) -> JobParams:
    """The parameters a job ran with, from the spec it echoes: the request as sent, with what the
    service's recipe filled and the recipe's name."""
    if job.WhichOneof("spec") == "training":
        return replace(training_params_from_proto(job.training), recipe=job.training.recipe)
    return evaluation_params_from_proto(job.evaluation)


# --- jobs ----------------------------------------------------------------------------------------


def _fill_spec(spec: Spec, job: Job, params: JobParams) -> None:
    spec.model = f"models/{job.model_id}"
    if params.cohort:  # echoed as sent: the sites, no single dataset
        spec.cohort.extend(cohort_to_proto(params.cohort))
    else:
        spec.dataset = f"datasets/{job.dataset_id}"
    spec.feature_columns.extend(params.feature_columns)
    spec.label_column = params.label_column
    spec.target_epsilon, spec.target_delta = params.target_epsilon, params.target_delta
    spec.max_rows_per_patient = params.max_rows_per_patient
    spec.sensitivity_at_specificity.extend(params.sensitivity_at_specificity)
    spec.specificity_at_sensitivity.extend(params.specificity_at_sensitivity)
    spec.net_benefit_thresholds.extend(params.net_benefit_thresholds)
    spec.score_bins = params.score_bins
    if params.windows is not None:
        spec.windows.CopyFrom(windows_to_proto(params.windows))


def job_to_proto(job: Job, artifacts: list[Artifact], linkage: str = "") -> jobs_pb2.Job:
    """`linkage`: a cohort job's statement of who counts as one person across its sites."""
    message = jobs_pb2.Job(
        name=job.resource_name, kind=job.kind.value, state=_JOB_STATES[job.state],
        failure=_FAILURES.get(job.failure, jobs_pb2.JOB_FAILURE_UNSPECIFIED),
        privacy_request=f"privacyRequests/{job.privacy_request_id}" if job.privacy_request_id else "",
        create_time=timestamp(job.created_at), workload=job.workload or "", linkage=linkage,
        artifacts=[jobs_pb2.Artifact(name=a.name, sha256=a.sha256, size_bytes=a.size_bytes) for a in artifacts],
    )
    if job.finished_at is not None:
        message.finish_time.CopyFrom(timestamp(job.finished_at))
    params = job.params
    if isinstance(params, TrainingParams):
        _fill_spec(message.training, job, params)
        spec = message.training
        spec.epochs, spec.expected_batch_patients, spec.optimizer = params.epochs, params.expected_batch_patients, params.optimizer
        spec.learning_rate, spec.clipping_norm = params.learning_rate, params.clipping_norm
        spec.validation_fraction, spec.recipe = params.validation_fraction, params.recipe
    else:
        _fill_spec(message.evaluation, job, params)
        message.evaluation.metrics.extend(params.metrics)
    return message
