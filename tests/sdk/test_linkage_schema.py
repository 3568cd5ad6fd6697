"""The SDK's and CLI's way to declare a linkage column on an existing schema file."""

from __future__ import annotations

import pytest

from cleanroom.cli.main import build_parser
from cleanroom.sdk.schema import SchemaError, parse_schema, with_linkage_column
from cleanroom.v1 import datasets_pb2

SCHEMA = parse_schema({"columns": [
    {"name": "pid", "type": "string", "role": "patient_key"},
    {"name": "rrn", "type": "string", "role": "direct_identifier"},
    {"name": "hr", "type": "float", "role": "feature"},
]})


def test_the_named_column_becomes_the_linkage_column_and_the_schema_is_left_alone() -> None:
    linked = with_linkage_column(SCHEMA, "rrn")
    assert [c.role for c in linked.columns] == [datasets_pb2.PATIENT_KEY, datasets_pb2.LINKAGE_ID, datasets_pb2.FEATURE]
    assert SCHEMA.columns[1].role == datasets_pb2.DIRECT_IDENTIFIER


def test_a_column_not_in_the_schema_is_refused_naming_it() -> None:
    with pytest.raises(SchemaError, match="column nhs: not in the schema"):
        with_linkage_column(SCHEMA, "nhs")


def test_a_schema_file_declares_it_by_role_and_the_cli_by_flag() -> None:
    declared = parse_schema({"columns": [{"name": "rrn", "type": "integer", "role": "linkage_id"}]})
    assert declared.columns[0].role == datasets_pb2.LINKAGE_ID
    args = build_parser({}).parse_args(["dataset", "upload", "f.csv", "--schema", "s.toml", "--linkage-column", "rrn"])
    assert args.linkage_column == "rrn"
