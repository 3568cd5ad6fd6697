"""All proto <-> domain conversion lives here, so servicers stay thin and domain stays proto-free."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from cleanroom.datasets.service import UploadRequest
from cleanroom.domain import deid
from cleanroom.domain.approvals import ApprovalPolicy, PrivacyRequest
from cleanroom.domain.audit import ChainVerdict
from cleanroom.domain.cost_reasons import CostReason
from cleanroom.domain.datasets import Dataset, IntakeReport
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.identity import Principal, Role
from cleanroom.domain.jobs import FailureCode, Job, JobKind, JobState
from cleanroom.domain.model_versions import ModelState, ModelVersion
from cleanroom.domain.privacy import DELTA_SCALE, EPSILON_SCALE, MAX_EPSILON, LedgerEvent, Privacy
from cleanroom.privacy.budgets import BudgetLine
from cleanroom.statistics.engine.query import MAX_ROWS_PER_PATIENT
from cleanroom.v1 import common_pb2, datasets_pb2, identity_pb2, jobs_pb2, models_pb2, privacy_pb2

_ROLE_TO_PROTO = {
    Role.DATA_OWNER: common_pb2.DATA_OWNER,
    Role.MANUFACTURER: common_pb2.MANUFACTURER,
    Role.PRIVACY_OFFICER: common_pb2.PRIVACY_OFFICER,
    Role.AUDITOR: common_pb2.AUDITOR,
    Role.ADMIN: common_pb2.ADMIN,
}
_ROLE_FROM_PROTO = {v: k for k, v in _ROLE_TO_PROTO.items()}
_FORMATS = {datasets_pb2.CSV: "csv", datasets_pb2.PARQUET: "parquet"}
T = TypeVar("T")


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def role_from_proto(value: int, field: str = "role") -> Role:
    role = _ROLE_FROM_PROTO.get(value)  # type: ignore[call-overload]
    if role is None:
        raise bad_request("a role is required", FieldViolation(field, "one of DATA_OWNER, MANUFACTURER, PRIVACY_OFFICER, AUDITOR, ADMIN"))
    return role


def principal_to_proto(principal: Principal) -> identity_pb2.Principal:
    return identity_pb2.Principal(
        name=principal.resource_name,
        display_name=principal.display_name,
        role=_ROLE_TO_PROTO[principal.role],
        create_time=timestamp(principal.created_at),
    )


# --- columns and generalisation rules ---------------------------------------------------------


def _rule_from_proto(message: datasets_pb2.Generalization, field: str) -> deid.Generalization | None:
    kind = message.WhichOneof("rule")
    if kind == "age_band":
        return deid.AgeBand(width=message.age_band.width, top_code=message.age_band.top_code or 90)
    if kind == "date":
        precision = _known(message.date, _DATE_PRECISIONS, field + ".date")
        return deid.DateTruncation(precision) if precision else None  # type: ignore[arg-type]
    if kind == "prefix":
        return deid.PrefixTruncation(keep=message.prefix.keep)
    if kind == "suppress" and message.suppress:
        return deid.Suppress()
    return None


def _rule_to_proto(rule: deid.Generalization | None) -> datasets_pb2.Generalization:
    if isinstance(rule, deid.AgeBand):
        return datasets_pb2.Generalization(age_band=datasets_pb2.AgeBand(width=rule.width, top_code=rule.top_code))
    if isinstance(rule, deid.DateTruncation):
        precision = datasets_pb2.MONTH if rule.precision == "month" else datasets_pb2.YEAR
        return datasets_pb2.Generalization(date=precision)
    if isinstance(rule, deid.PrefixTruncation):
        return datasets_pb2.Generalization(prefix=datasets_pb2.Prefix(keep=rule.keep))
    if isinstance(rule, deid.Suppress):
        return datasets_pb2.Generalization(suppress=True)
    return datasets_pb2.Generalization()


_COLUMN_TYPES = {datasets_pb2.ColumnType.Value(t.name): t for t in deid.ColumnType}
_COLUMN_ROLES = {datasets_pb2.ColumnRole.Value(r.name): r for r in deid.ColumnRole}
_DATE_PRECISIONS = {datasets_pb2.MONTH: "month", datasets_pb2.YEAR: "year"}


def _known(value: int, known: dict[int, T], field: str) -> T | None:
    """A proto enum value as its domain value; 0 (unspecified) as None. An open proto3 enum carries
    any int32, so a number this server does not know is the caller's error, never a KeyError."""
    if value == 0:
        return None
    if value not in known:
        names = ", ".join(sorted(getattr(v, "name", str(v)).upper() for v in known.values()))
        raise bad_request("an enum field has a value this server does not know", FieldViolation(field, f"one of {names}"))
    return known[value]


def column_from_proto(message: datasets_pb2.ColumnSpec, field: str = "metadata.columns[0]") -> deid.ColumnSpec:
    # Unspecified enums map to None; validate_policy reports them with the column's name.
    return deid.ColumnSpec(
        name=message.name,
        type=_known(message.type, _COLUMN_TYPES, field + ".type"),  # type: ignore[arg-type]
        role=_known(message.role, _COLUMN_ROLES, field + ".role"),  # type: ignore[arg-type]
        generalization=_rule_from_proto(message.generalization, field + ".generalization"),
        label_classes=message.label_classes,
        categories=tuple(message.categories),
    )


def column_to_proto(column: deid.ColumnSpec) -> datasets_pb2.ColumnSpec:
    return datasets_pb2.ColumnSpec(
        name=column.name,
        type=datasets_pb2.ColumnType.Value(column.type.name),
        role=datasets_pb2.ColumnRole.Value(column.role.name),
        generalization=_rule_to_proto(column.generalization),
        label_classes=column.label_classes,
        categories=list(column.categories),
    )


# --- datasets ------------------------------------------------------------------------------------


def upload_request_from_proto(metadata: datasets_pb2.UploadMetadata) -> UploadRequest:
    file_format = _FORMATS.get(metadata.format)  # type: ignore[call-overload]
    if file_format is None:
        raise bad_request("the file format is required", FieldViolation("metadata.format", "CSV or PARQUET"))
    return UploadRequest(
        display_name=metadata.display_name,
        description=metadata.description,
        file_format=file_format,
        columns=tuple(column_from_proto(c, f"metadata.columns[{i}]") for i, c in enumerate(metadata.columns)),
        k_anonymity=metadata.policy.k_anonymity,
        size_bytes=metadata.size_bytes,
    )


def report_to_proto(report: IntakeReport) -> datasets_pb2.IntakeReport:
    return datasets_pb2.IntakeReport(
        bytes_received=report.bytes_received,
        rows_received=report.rows_received,
        rows_stored=report.rows_stored,
        rows_without_patient_key=report.rows_without_patient_key,
        k_anonymity=report.k_anonymity,
        equivalence_classes=report.equivalence_classes,
        classes_suppressed=report.classes_suppressed,
        rows_suppressed=report.rows_suppressed,
        dropped_columns=report.dropped_columns,
        pseudonymized_columns=report.pseudonymized_columns,
        generalized_columns=[datasets_pb2.GeneralizedColumn(name=n, rule=r) for n, r in report.generalized_columns],
        notes=report.notes,
    )


def dataset_to_proto(dataset: Dataset) -> datasets_pb2.Dataset:
    message = datasets_pb2.Dataset(
        name=dataset.resource_name,
        display_name=dataset.display_name,
        columns=[column_to_proto(c) for c in dataset.columns],
        create_time=timestamp(dataset.created_at),
        k_anonymity=dataset.k_anonymity,
    )
    if not dataset.schema_only:
        message.owner = f"principals/{dataset.owner_id}"
        message.description = dataset.description
        message.row_count = dataset.row_count
        message.patient_count = dataset.patient_count
        message.intake_report.CopyFrom(report_to_proto(dataset.report))
        message.ciphertext_sha256 = dataset.ciphertext_sha256
    return message


# --- privacy budgets, ledger, requests, audit -----------------------------------------------------


def amount_to_proto(amount: Privacy) -> privacy_pb2.PrivacyAmount:
    return privacy_pb2.PrivacyAmount(
        epsilon=amount.epsilon_value,
        delta=amount.delta_value,
        epsilon_exact=str(Decimal(amount.epsilon) / EPSILON_SCALE),
        delta_exact=str(Decimal(amount.delta) / DELTA_SCALE),
    )


def cost_from_proto(amount: privacy_pb2.PrivacyAmount, field: str) -> Privacy:
    return Privacy.cost(amount.epsilon, amount.delta, field_prefix=f"{field}.")


def cap_from_proto(amount: privacy_pb2.PrivacyAmount, field: str) -> Privacy:
    return Privacy.cap(amount.epsilon, amount.delta, field_prefix=f"{field}.")


def principal_id_from_name(name: str, field: str) -> str:
    if not name.startswith("principals/") or len(name) <= len("principals/"):
        raise bad_request("expected a principal name like principals/{id}", FieldViolation(field, "not a principal name"))
    return name.removeprefix("principals/")


def dataset_id_from_name(name: str, field: str = "dataset") -> str:
    if not name.startswith("datasets/") or len(name) <= len("datasets/"):
        raise bad_request("expected a dataset name like datasets/{id}", FieldViolation(field, "not a dataset name"))
    return name.removeprefix("datasets/")


def budget_to_proto(line: BudgetLine, composition: tuple[float, float | None] | None = None) -> privacy_pb2.Budget:
    balance = line.balance
    message = privacy_pb2.Budget(
        name=line.budget_id,
        cap=amount_to_proto(balance.cap),
        reserved=amount_to_proto(balance.reserved),
        spent=amount_to_proto(balance.spent),
        remaining=amount_to_proto(balance.remaining),
    )
    if line.manufacturer is not None:
        message.manufacturer = line.manufacturer.resource_name
        message.manufacturer_display_name = line.manufacturer.display_name
    if composition is not None:
        message.basic_composition_epsilon = composition[0]
        message.rdp_composition_epsilon = composition[1] or 0.0
    return message


def cost_reason_to_proto(reason: CostReason) -> privacy_pb2.CostReason:
    message = privacy_pb2.CostReason(
        rule=reason.rule.value, outcome=reason.outcome.value, budget=reason.budget_id, cap_set=reason.cap_set,
        requested=amount_to_proto(reason.requested), message=reason.message, remedy=reason.remedy,
    )
    for field, amount in (("left", reason.left), ("limit", reason.limit), ("fits_with", reason.fits_with)):
        if amount is not None:
            getattr(message, field).CopyFrom(amount_to_proto(amount))
    return message


def policy_to_proto(dataset_id: str, policy: ApprovalPolicy, patients: int) -> privacy_pb2.ApprovalPolicy:
    return privacy_pb2.ApprovalPolicy(
        dataset=f"datasets/{dataset_id}",
        max_epsilon_per_request=policy.max_epsilon / EPSILON_SCALE,
        max_delta_per_request=policy.max_delta / DELTA_SCALE,
        auto_approve_epsilon=policy.auto_approve_epsilon / EPSILON_SCALE,
        effective_max_delta=policy.delta_limit(patients) / DELTA_SCALE,
        stats_rows_per_patient=policy.stats_rows_per_patient,
    )


def policy_from_proto(message: privacy_pb2.ApprovalPolicy) -> ApprovalPolicy:
    violations = []
    if not (0 < message.max_epsilon_per_request <= MAX_EPSILON):
        violations.append(FieldViolation("policy.max_epsilon_per_request", f"above 0 and at most {MAX_EPSILON:g}"))
    if not (0 <= message.max_delta_per_request < 1):
        violations.append(FieldViolation("policy.max_delta_per_request", "0 (the default) or a number below 1"))
    if not (0 <= message.auto_approve_epsilon <= message.max_epsilon_per_request):
        violations.append(FieldViolation("policy.auto_approve_epsilon", "between 0 and max_epsilon_per_request"))
    if not (0 <= message.stats_rows_per_patient <= MAX_ROWS_PER_PATIENT):
        violations.append(FieldViolation("policy.stats_rows_per_patient", f"0 (the default, 1) to {MAX_ROWS_PER_PATIENT}"))
    if violations:
        raise bad_request("the approval policy is out of range", *violations)
    return ApprovalPolicy(
        max_epsilon=round(message.max_epsilon_per_request * EPSILON_SCALE),
        max_delta=round(message.max_delta_per_request * DELTA_SCALE),
        auto_approve_epsilon=round(message.auto_approve_epsilon * EPSILON_SCALE),
        stats_rows_per_patient=message.stats_rows_per_patient or 1,
    )


def event_to_proto(event: LedgerEvent) -> privacy_pb2.LedgerEvent:
    mechanism = f"{event.mechanism.name} ({event.mechanism.accountant})" if event.mechanism else ""
    actor = event.actor_id if event.actor_id == "system" else f"principals/{event.actor_id}"
    return privacy_pb2.LedgerEvent(
        seq=event.seq, kind=event.kind.value, budgets=event.budget_ids, amount=amount_to_proto(event.amount),
        spend=event.spend_id or "", actor=actor, time=timestamp(event.at), mechanism=mechanism, reason=event.reason,
    )


def request_to_proto(request: PrivacyRequest) -> privacy_pb2.PrivacyRequest:
    return privacy_pb2.PrivacyRequest(
        name=request.resource_name, dataset=f"datasets/{request.dataset_id}",
        manufacturer=f"principals/{request.manufacturer_id}", kind=request.kind, reference=request.reference,
        cost=amount_to_proto(request.cost), state=request.state.value,
        decided_by=f"principals/{request.decided_by}" if request.decided_by not in ("", "system") else request.decided_by,
        reason=request.reason, create_time=timestamp(request.created_at),
    )


def verdict_to_proto(verdict: ChainVerdict) -> privacy_pb2.AuditVerification:
    return privacy_pb2.AuditVerification(
        ok=verdict.ok, entries=verdict.entries, head_seq=verdict.head.seq, head_hash=verdict.head.hash,
        first_bad_seq=verdict.first_bad_seq, problem=verdict.problem,
    )


# --- model versions ------------------------------------------------------------------------------


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
        trainable_parameters=report.get("trainable", []), op_histogram=report.get("op_histogram", {}),
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


# --- jobs ----------------------------------------------------------------------------------------

_JOB_STATES = {state: jobs_pb2.JobState.Value(f"JOB_STATE_{state.name}") for state in JobState}
_FAILURES = {code: jobs_pb2.JobFailure.Value(f"JOB_FAILURE_{code.name}") for code in FailureCode if code is not FailureCode.NONE}


def job_to_proto(job: Job, artifacts: list[dict[str, Any]]) -> jobs_pb2.Job:
    message = jobs_pb2.Job(
        name=job.resource_name, kind=job.kind.value, state=_JOB_STATES[job.state],
        failure=_FAILURES.get(job.failure, jobs_pb2.JOB_FAILURE_UNSPECIFIED),
        privacy_request=f"privacyRequests/{job.privacy_request_id}" if job.privacy_request_id else "",
        create_time=timestamp(job.created_at), workload=job.workload or "",
        artifacts=[jobs_pb2.Artifact(name=a["name"], sha256=a["sha256"], size_bytes=a["size"]) for a in artifacts],
    )
    if job.finished_at is not None:
        message.finish_time.CopyFrom(timestamp(job.finished_at))
    params = json.loads(job.spec_json)
    spec = message.training if job.kind is JobKind.TRAINING else message.evaluation
    spec.model, spec.dataset = f"models/{job.model_id}", f"datasets/{job.dataset_id}"
    spec.feature_columns.extend(params["feature_columns"])
    spec.label_column = params["label_column"]
    spec.target_epsilon, spec.target_delta = float(params["target_epsilon"]), float(params["target_delta"])
    spec.max_rows_per_patient = params["max_rows_per_patient"]
    if job.kind is JobKind.TRAINING:
        spec.epochs, spec.expected_batch_patients, spec.optimizer = params["epochs"], params["expected_batch_patients"], params["optimizer"]
        spec.learning_rate, spec.clipping_norm = float(params["learning_rate"]), float(params["clipping_norm"])
        spec.validation_fraction = float(params["validation_fraction"])
    else:
        spec.metrics.extend(params["metrics"])
    return message
