"""datasets.proto <-> domain: column specs and generalisation rules, uploads, intake reports, datasets,
and the SDK's schema files (TOML or JSON, read into dicts) as the ColumnSpec messages it sends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, TypeVar

from cleanroom.domain import deid
from cleanroom.domain.datasets import Dataset, IntakeReport, UploadRequest
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.streams import ChannelSpec, StreamDescription, StreamIntakeSummary, StreamSpec
from cleanroom.v1 import datasets_pb2
from cleanroom.wire.common import known_enum, timestamp

V_co = TypeVar("V_co", bound=int, covariant=True)
_FORMATS: dict[int, str] = {datasets_pb2.CSV: "csv", datasets_pb2.PARQUET: "parquet"}
_COLUMN_TYPES: dict[int, deid.ColumnType] = {datasets_pb2.ColumnType.Value(t.name): t for t in deid.ColumnType}
_COLUMN_ROLES: dict[int, deid.ColumnRole] = {datasets_pb2.ColumnRole.Value(r.name): r for r in deid.ColumnRole}
_DATE_PRECISIONS: dict[int, Literal["month", "year"]] = {datasets_pb2.MONTH: "month", datasets_pb2.YEAR: "year"}


def dataset_id_from_name(name: str, field: str = "dataset") -> str:
    if not name.startswith("datasets/") or len(name) <= len("datasets/"):
        raise bad_request("expected a dataset name like datasets/{id}", FieldViolation(field, "not a dataset name"))
    return name.removeprefix("datasets/")


# --- columns and generalisation rules ---------------------------------------------------------


def _rule_from_proto(message: datasets_pb2.Generalization, field: str) -> deid.Generalization | None:
    kind = message.WhichOneof("rule")
    if kind == "age_band":
        return deid.AgeBand(width=message.age_band.width, top_code=message.age_band.top_code or 90)
    if kind == "date":
        precision = known_enum(message.date, _DATE_PRECISIONS, field + ".date")
        return deid.DateTruncation(precision) if precision else None
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


def column_from_proto(message: datasets_pb2.ColumnSpec, field: str = "metadata.columns[0]") -> deid.ColumnSpec:
    # An unspecified type or role stays None here, on purpose: the spec is unvalidated input, and
    # deid.validate_policy reports it with the column's name (ColumnSpec's types describe valid specs).
    return deid.ColumnSpec(
        name=message.name,
        type=known_enum(message.type, _COLUMN_TYPES, field + ".type"),  # type: ignore[arg-type]
        role=known_enum(message.role, _COLUMN_ROLES, field + ".role"),  # type: ignore[arg-type]
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


# --- uploads and datasets ------------------------------------------------------------------------


def upload_request_from_proto(metadata: datasets_pb2.UploadMetadata) -> UploadRequest:
    file_format = _FORMATS.get(metadata.format)
    if file_format is None:
        raise bad_request("the file format is required", FieldViolation("metadata.format", "CSV or PARQUET"))
    return UploadRequest(
        display_name=metadata.display_name,
        description=metadata.description,
        file_format=file_format,
        columns=tuple(column_from_proto(c, f"metadata.columns[{i}]") for i, c in enumerate(metadata.columns)),
        k_anonymity=metadata.policy.k_anonymity,
        size_bytes=metadata.size_bytes,
        stream=stream_spec_from_proto(metadata.stream) if metadata.HasField("stream") else None,
    )


# --- streams (cleanroom/domain/streams.py) ------------------------------------------------------


def stream_spec_from_proto(message: datasets_pb2.StreamSpec) -> StreamSpec:
    """Unvalidated, as column specs are: streams.validate_stream names what is wrong."""
    return StreamSpec(
        time_column=message.time_column,
        channels=tuple(ChannelSpec(c.name, c.unit, c.unit_column) for c in message.channels),
        time_resolution_seconds=message.time_resolution_seconds or 1,
        max_shift_days=message.max_shift_days,
    )


def stream_spec_to_proto(spec: StreamSpec) -> datasets_pb2.StreamSpec:
    return datasets_pb2.StreamSpec(
        time_column=spec.time_column,
        channels=[datasets_pb2.ChannelSpec(name=c.name, unit=c.unit, unit_column=c.unit_column) for c in spec.channels],
        time_resolution_seconds=spec.time_resolution_seconds,
        max_shift_days=spec.max_shift_days,
    )


def stream_summary_to_proto(summary: StreamIntakeSummary) -> datasets_pb2.StreamIntakeSummary:
    return datasets_pb2.StreamIntakeSummary(
        readings=summary.readings,
        patients=summary.patients,
        channels=[datasets_pb2.ChannelReadings(channel=c, unit=u, readings=n) for c, u, n in summary.channels],
        shortest_span_seconds=summary.shortest_span_seconds,
        median_span_seconds=summary.median_span_seconds,
        longest_span_seconds=summary.longest_span_seconds,
        gaps=summary.gaps,
        gap_seconds=summary.gap_seconds,
        readings_merged=summary.readings_merged,
        time_resolution_seconds=summary.time_resolution_seconds,
        max_shift_days=summary.max_shift_days,
        time_zone=summary.time_zone,
    )


def stream_summary_from_proto(message: datasets_pb2.StreamIntakeSummary) -> StreamIntakeSummary:
    return StreamIntakeSummary(
        readings=message.readings,
        patients=message.patients,
        channels=tuple((c.channel, c.unit, c.readings) for c in message.channels),
        shortest_span_seconds=message.shortest_span_seconds,
        median_span_seconds=message.median_span_seconds,
        longest_span_seconds=message.longest_span_seconds,
        gaps=message.gaps,
        gap_seconds=message.gap_seconds,
        readings_merged=message.readings_merged,
        time_resolution_seconds=message.time_resolution_seconds,
        max_shift_days=message.max_shift_days,
        time_zone=message.time_zone,
    )


def stream_description_to_proto(description: StreamDescription) -> datasets_pb2.StreamDescription:
    return datasets_pb2.StreamDescription(
        time_column=description.time_column,
        channels=[datasets_pb2.ChannelUnit(channel=c, unit=u) for c, u in description.channels],
        time_resolution_seconds=description.time_resolution_seconds,
        longest_span_hours=description.longest_span_hours,
    )


def stream_description_from_proto(message: datasets_pb2.StreamDescription) -> StreamDescription:
    return StreamDescription(
        time_column=message.time_column,
        channels=tuple((c.channel, c.unit) for c in message.channels),
        time_resolution_seconds=message.time_resolution_seconds,
        longest_span_hours=message.longest_span_hours,
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
        linkage_column=report.linkage_column,
        rows_without_linkage_id=report.rows_without_linkage_id,
        stream=stream_summary_to_proto(report.stream) if report.stream is not None else None,
    )


def dataset_to_proto(dataset: Dataset) -> datasets_pb2.Dataset:
    message = datasets_pb2.Dataset(
        name=dataset.resource_name,
        display_name=dataset.display_name,
        columns=[column_to_proto(c) for c in dataset.columns],
        create_time=timestamp(dataset.created_at),
        k_anonymity=dataset.k_anonymity,
    )
    if dataset.stream is not None:  # public with the schema (domain/streams.py)
        message.stream.CopyFrom(stream_description_to_proto(dataset.stream))
    if not dataset.schema_only:
        message.owner = f"principals/{dataset.owner_id}"
        message.description = dataset.description
        message.row_count = dataset.row_count
        message.patient_count = dataset.patient_count
        message.intake_report.CopyFrom(report_to_proto(dataset.report))
        message.ciphertext_sha256 = dataset.ciphertext_sha256
    return message


# --- schema files (the SDK): one column entry of a TOML or JSON schema as a ColumnSpec ------------


class SchemaError(ValueError):
    """A schema file's column entry that no ColumnSpec can say."""


class _ProtoEnum(Protocol[V_co]):
    """What a generated proto enum type offers (each has its own private wrapper class)."""

    def Value(self, name: str) -> V_co: ...
    def keys(self) -> list[str]: ...


def _enum(enum_type: _ProtoEnum[V_co], value: object, what: str, column: str) -> V_co:
    try:
        return enum_type.Value(str(value).upper())
    except ValueError:
        names = ", ".join(n.lower() for n in enum_type.keys() if not n.endswith("UNSPECIFIED"))
        raise SchemaError(f"column {column}: {what} must be one of {names}") from None


def _generalization(rule: dict[str, Any], column: str) -> datasets_pb2.Generalization:
    if "age_band" in rule:
        return datasets_pb2.Generalization(
            age_band=datasets_pb2.AgeBand(width=int(rule["age_band"]), top_code=int(rule.get("top_code", 0)))
        )
    if "date" in rule:
        return datasets_pb2.Generalization(date=_enum(datasets_pb2.DatePrecision, rule["date"], "date", column))
    if "prefix" in rule:
        return datasets_pb2.Generalization(prefix=datasets_pb2.Prefix(keep=int(rule["prefix"])))
    if rule.get("suppress"):
        return datasets_pb2.Generalization(suppress=True)
    raise SchemaError(f"column {column}: generalize needs age_band, date, prefix or suppress")


def column_spec(entry: Mapping[str, Any]) -> datasets_pb2.ColumnSpec:
    """One `[[columns]]` entry of a schema file as the ColumnSpec an upload sends. The entry is a
    parsed TOML or JSON document: its values are whatever the file holds, hence Any."""
    name = str(entry.get("name", ""))
    spec = datasets_pb2.ColumnSpec(
        name=name,
        type=_enum(datasets_pb2.ColumnType, entry.get("type", ""), "type", name),
        role=_enum(datasets_pb2.ColumnRole, entry.get("role", ""), "role", name),
    )
    if "generalize" in entry:
        spec.generalization.CopyFrom(_generalization(dict(entry["generalize"]), name))
    if "label_classes" in entry:
        classes = entry["label_classes"]
        if isinstance(classes, bool) or not isinstance(classes, int) or not -2**31 <= classes < 2**31:
            raise SchemaError(f"column {name}: label_classes must be a whole number of classes")
        spec.label_classes = classes
    if "categories" in entry:
        spec.categories.extend(_categories(entry["categories"], name))
    return spec


def _categories(values: object, column: str) -> list[str]:
    """Declared categories as the server takes them: text, integers written plainly."""
    if not isinstance(values, list) or not values:
        raise SchemaError(f"column {column}: categories must be a non-empty list")
    if not all(isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) for v in values):
        raise SchemaError(f"column {column}: categories must be whole numbers or strings")
    return [str(v) for v in values]
