"""All proto <-> domain conversion lives here, so servicers stay thin and domain stays proto-free."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from cleanroom.datasets.service import UploadRequest
from cleanroom.domain import deid
from cleanroom.domain.datasets import Dataset, IntakeReport
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.identity import Principal, Role
from cleanroom.v1 import common_pb2, datasets_pb2, identity_pb2

_ROLE_TO_PROTO = {
    Role.DATA_OWNER: common_pb2.DATA_OWNER,
    Role.MANUFACTURER: common_pb2.MANUFACTURER,
    Role.PRIVACY_OFFICER: common_pb2.PRIVACY_OFFICER,
    Role.AUDITOR: common_pb2.AUDITOR,
    Role.ADMIN: common_pb2.ADMIN,
}
_ROLE_FROM_PROTO = {v: k for k, v in _ROLE_TO_PROTO.items()}
_FORMATS = {datasets_pb2.CSV: "csv", datasets_pb2.PARQUET: "parquet"}


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


def _rule_from_proto(message: datasets_pb2.Generalization) -> deid.Generalization | None:
    kind = message.WhichOneof("rule")
    if kind == "age_band":
        return deid.AgeBand(width=message.age_band.width, top_code=message.age_band.top_code or 90)
    if kind == "date":
        precision = {datasets_pb2.MONTH: "month", datasets_pb2.YEAR: "year"}.get(message.date)
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


def column_from_proto(message: datasets_pb2.ColumnSpec) -> deid.ColumnSpec:
    # Unspecified enums map to None; validate_policy reports them with the column's name.
    return deid.ColumnSpec(
        name=message.name,
        type=deid.ColumnType[datasets_pb2.ColumnType.Name(message.type)] if message.type else None,  # type: ignore[arg-type]
        role=deid.ColumnRole[datasets_pb2.ColumnRole.Name(message.role)] if message.role else None,  # type: ignore[arg-type]
        generalization=_rule_from_proto(message.generalization),
    )


def column_to_proto(column: deid.ColumnSpec) -> datasets_pb2.ColumnSpec:
    return datasets_pb2.ColumnSpec(
        name=column.name,
        type=datasets_pb2.ColumnType.Value(column.type.name),
        role=datasets_pb2.ColumnRole.Value(column.role.name),
        generalization=_rule_to_proto(column.generalization),
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
        columns=tuple(column_from_proto(c) for c in metadata.columns),
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
