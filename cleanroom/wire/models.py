"""models.proto <-> domain: model versions and their intake reports."""

from __future__ import annotations

from cleanroom.domain.model_versions import ModelState, ModelVersion
from cleanroom.v1 import models_pb2
from cleanroom.wire.common import timestamp


def model_to_proto(version: ModelVersion) -> models_pb2.ModelVersion:
    report = version.report
    sandbox = report.get("sandbox") or {}
    timings = report.get("timings") or {}
    intake = models_pb2.ModelIntakeReport(
        accepted=bool(report.get("accepted")),
        findings=[models_pb2.IntakeFinding(code=r["code"], message=r["message"]) for r in report.get("reasons", [])],
        sandbox_backend=sandbox.get("backend", ""), sandbox_backend_reason=sandbox.get("backend_reason", ""),
        traceback=report.get("manufacturer_traceback", ""), sandbox_stdout=report.get("sandbox_stdout", ""),
        sandbox_stderr=report.get("sandbox_stderr", ""), parameter_count=report.get("parameter_count") or 0,
        trainable_parameters=report.get("trainable", []), trainable_parameter_count=report.get("trainable_parameter_count") or 0,
        op_histogram=report.get("op_histogram", {}),
        sandbox_seconds=float(timings.get("sandbox_seconds", 0.0)), validation_seconds=float(timings.get("validation_seconds", 0.0)),
    )
    state = models_pb2.MODEL_STATE_ACCEPTED if version.state is ModelState.ACCEPTED else models_pb2.MODEL_STATE_REJECTED
    message = models_pb2.ModelVersion(
        name=version.resource_name, display_name=version.name, version=version.version, state=state,
        package_sha256=version.package_sha256, task=version.task, num_classes=version.num_classes,
        input_shape=list(version.input_shape), intake_report=intake,
    )
    if version.created_at is not None:
        message.create_time.CopyFrom(timestamp(version.created_at))
    return message
