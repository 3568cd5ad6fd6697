"""Dataset schema files (TOML or JSON): column types, roles and generalisation rules.

    k_anonymity = 5
    [[columns]]
    name = "patient_id"
    type = "string"
    role = "patient_key"
    [[columns]]
    name = "age"
    type = "integer"
    role = "quasi_identifier"
    generalize = { age_band = 10 }        # or { date = "month" }, { prefix = 3 }, { suppress = true }
    [[columns]]
    name = "outcome"
    type = "integer"
    role = "label"
    label_classes = 2                     # classification labels: values 0..label_classes-1
    [[columns]]
    name = "sex"
    type = "integer"
    role = "feature"
    categories = [0, 1]                   # the public list of values: statistics may group by it
    [[columns]]
    name = "rrn"
    type = "string"
    role = "linkage_id"                   # at most one: the identifier that links a person across
                                          # hospitals (replaced by the platform-wide linkage pseudonym)

A stream (wellness-IoT readings: patient, time, channels) adds a TIME column of type "timestamp"
and a `[stream]` table (cleanroom/sdk/streams.py):

    [stream]
    time_column = "time"
    channels = ["hr:bpm", "spo2:%:spo2_unit"]  # NAME:UNIT[:UNIT_COLUMN]; a UNIT column has role "unit"
    time_resolution_seconds = 1               # times floored to it
    max_shift_days = 30                       # each patient's times shifted by a secret whole-day offset
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cleanroom.sdk.streams import stream_from_schema
from cleanroom.v1 import datasets_pb2

# A schema entry becomes a ColumnSpec in cleanroom.wire.datasets, with the other datasets.proto
# conversions; SchemaError and column_spec stay importable from here, as the SDK's names.
from cleanroom.wire.datasets import SchemaError as SchemaError
from cleanroom.wire.datasets import column_spec as column_spec


@dataclass(frozen=True)
class Schema:
    columns: list[datasets_pb2.ColumnSpec]
    k_anonymity: int = 0
    stream: datasets_pb2.StreamSpec | None = None  # set: the file is a stream


def parse_schema(data: dict[str, Any]) -> Schema:
    columns = data.get("columns")
    if not isinstance(columns, list) or not columns:
        raise SchemaError("the schema needs a non-empty list of columns")
    stream = stream_from_schema(data["stream"]) if "stream" in data else None
    return Schema([column_spec(c) for c in columns], int(data.get("k_anonymity", 0)), stream)


def with_linkage_column(schema: Schema, name: str) -> Schema:
    """The schema with column `name` declared LINKAGE_ID (e.g. a shared schema file, linked by one
    hospital that holds the identifier); raises SchemaError when the schema has no such column."""
    if not any(c.name == name for c in schema.columns):
        raise SchemaError(f"column {name}: not in the schema, so it cannot be the linkage column")
    columns = []
    for column in schema.columns:
        copy = datasets_pb2.ColumnSpec()
        copy.CopyFrom(column)
        if column.name == name:
            copy.role = datasets_pb2.LINKAGE_ID
            copy.ClearField("generalization")
        columns.append(copy)
    return replace(schema, columns=columns)


def load_schema(path: str | Path) -> Schema:
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    return parse_schema(data)
