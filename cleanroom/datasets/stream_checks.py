"""One batch of a stream upload, de-identified and checked: what intake does before it partitions.

Per batch: the identifier scan and the table de-identification (cleanroom.datasets.transforms:
identifiers dropped, the patient key pseudonymised, rows without one dropped, labels and categories
checked), the times parsed (stream_times), each UNIT column held to its channel's declared unit,
and each patient's times held strictly increasing across the whole upload (patients may
interleave). Errors name the column and the row, never a value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cleanroom.datasets import deidentify as ops
from cleanroom.datasets.stream_times import TimeParser
from cleanroom.datasets.typed import ARROW_TYPES, column_field
from cleanroom.domain import deid
from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request
from cleanroom.domain.streams import StreamSpec

PATIENT = "patient"  # not a column name: the patient key keeps its declared name in storage


def table_policy(policy: deid.DeidPolicy) -> deid.DeidPolicy:
    """The policy's columns that the table de-identification treats (not TIME, not UNIT)."""
    return replace(policy, columns=tuple(c for c in policy.columns if not c.role.spec.stream_only))


def stored_stream_schema(policy: deid.DeidPolicy, spec: StreamSpec) -> pa.Schema:
    """Declared order, identifiers and UNIT columns dropped: the patient pseudonym (text), the time
    (int64 epoch seconds), channels as float32, every other kept column as a table stores it."""
    channels = {c.name for c in spec.channels}
    fields = []
    for column in deid.stored_columns(policy):
        if column.name == spec.time_column:
            fields.append(pa.field(column.name, pa.int64(), nullable=False))
        elif column.name in channels:
            fields.append(pa.field(column.name, pa.float32()))
        else:
            fields.append(pa.field(column.name, ARROW_TYPES[column.type]))
    return pa.schema(fields)


def partition_schema(schema: pa.Schema, patient_column: str) -> pa.Schema:
    """The stored schema as the temporary partitions hold it: the pseudonym dictionary-encoded (a
    reading carries a small index instead of 32 characters), the time in epoch microseconds."""
    index = schema.get_field_index(patient_column)
    return schema.set(index, pa.field(patient_column, pa.dictionary(pa.int32(), pa.string())))


class OrderCheck:
    """Each patient's readings must arrive with strictly increasing times. Keeps each patient's
    last time (a dict keyed by pseudonym: memory follows patients, not readings)."""

    def __init__(self, column: str) -> None:
        self.column = column
        self.last: dict[str, int] = {}

    def update(self, patients: pa.DictionaryArray, micros: np.ndarray, rows: np.ndarray) -> None:
        """`patients` (no nulls), their times, and each reading's row number in the file."""
        codes = patients.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        if len(codes) == 0:
            return
        order = np.lexsort((np.arange(len(codes)), codes))  # by patient, arrival order kept
        codes, times, rows = codes[order], micros[order], rows[order]
        same = codes[1:] == codes[:-1]
        backwards = np.flatnonzero(same & (times[1:] <= times[:-1]))
        if len(backwards):
            raise self._error(int(rows[backwards[0] + 1]))
        starts = np.flatnonzero(np.r_[True, ~same])
        ends = np.r_[starts[1:], len(codes)] - 1
        names = patients.dictionary.to_pylist()
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            name = names[codes[start]]
            previous = self.last.get(name)
            if previous is not None and times[start] <= previous:
                raise self._error(int(rows[start]))
            self.last[name] = int(times[end])

    def _error(self, row: int) -> CleanroomError:
        return bad_request("a patient's readings are not in time order; nothing was stored", FieldViolation(
            column_field(self.column),
            f"row {row}: timestamps out of order or duplicated within a patient (each patient's times must increase)"))


def check_units(batch: pa.RecordBatch, spec: StreamSpec, first_row: int) -> None:
    """Every reading's unit must be its channel's declared unit (surrounding spaces aside); a
    reading without a unit passes only when it holds no value of the channel."""
    violations = []
    for channel in spec.channels:
        if not channel.unit_column:
            continue
        units = pc.utf8_trim_whitespace(batch.column(channel.unit_column))
        declared = pa.scalar(channel.unit.strip(), pa.string())
        wrong = pc.fill_null(pc.not_equal(units, declared), pc.is_valid(batch.column(channel.name)))
        row = pc.index(wrong, True).as_py()
        if row >= 0:
            violations.append(FieldViolation(
                column_field(channel.unit_column),
                f"row {first_row + row}: a unit other than the declared unit of channel {channel.name} "
                "(a channel's unit must not change mid-stream)"))
    if violations:
        raise bad_request("a channel's unit changes within the upload; nothing was stored", *violations)


@dataclass
class StreamBatch:
    batch: pa.RecordBatch  # in partition_schema
    patients: pa.DictionaryArray  # the batch's pseudonyms (its patient column)
    rows_without_patient_key: int


@dataclass
class BatchChecks:
    """What carries from batch to batch of one upload."""

    policy: deid.DeidPolicy
    spec: StreamSpec
    pseudonymizer: ops.Pseudonymizer
    times: TimeParser
    order: OrderCheck
    schema: pa.Schema  # stored_stream_schema
    partition_schema: pa.Schema

    @staticmethod
    def start(policy: deid.DeidPolicy, spec: StreamSpec, pseudonymizer: ops.Pseudonymizer) -> BatchChecks:
        schema = stored_stream_schema(policy, spec)
        return BatchChecks(policy, spec, pseudonymizer, TimeParser(spec.time_column), OrderCheck(spec.time_column),
                           schema, partition_schema(schema, policy.patient_key.name))

    def deidentify(self, batch: pa.RecordBatch, first_row: int) -> StreamBatch:
        violations = ops.scan_for_identifiers(batch, self.policy)
        if violations:
            raise CleanroomError(
                ErrorCode.SENSITIVE_DATA_FOUND,
                "the file holds direct identifiers in columns not declared DIRECT_IDENTIFIER; nothing was stored",
                violations=violations)
        micros = self.times.parse(batch.column(self.spec.time_column), first_row)
        check_units(batch, self.spec, first_row)
        table = ops.deidentify_batch(batch, table_policy(self.policy), self.pseudonymizer, first_row=first_row)
        assert table.patients is not None
        keyed = pc.is_valid(batch.column(self.policy.patient_key.name))
        if table.rows_without_patient_key:
            micros = micros.filter(keyed)
        rows = np.flatnonzero(keyed.to_numpy(zero_copy_only=False)) + first_row
        self.order.update(table.patients, micros.to_numpy(), rows)
        return StreamBatch(self._stored(table.batch, table.patients, micros), table.patients, table.rows_without_patient_key)

    def _stored(self, deidentified: pa.RecordBatch, patients: pa.DictionaryArray, micros: pa.Array) -> pa.RecordBatch:
        arrays: list[pa.Array] = []
        channels = {c.name for c in self.spec.channels}
        for field in self.partition_schema:
            if field.name == self.policy.patient_key.name:
                arrays.append(patients)
            elif field.name == self.spec.time_column:
                arrays.append(micros)
            elif field.name in channels:
                arrays.append(_channel(deidentified.column(field.name)))
            else:
                arrays.append(deidentified.column(field.name))
        return pa.RecordBatch.from_arrays(arrays, schema=self.partition_schema)


def _channel(values: pa.Array) -> pa.Array:
    """A channel as float32; NaN, infinities and values beyond float32 are missing readings (a
    window or a mean over them would be meaningless)."""
    floats = pc.cast(values, pa.float32())
    if pa.types.is_floating(values.type):
        floats = pc.if_else(pc.is_finite(floats), floats, pa.scalar(None, pa.float32()))
    return floats
