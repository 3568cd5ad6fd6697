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
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanroom.v1 import datasets_pb2


@dataclass(frozen=True)
class Schema:
    columns: list[datasets_pb2.ColumnSpec]
    k_anonymity: int = 0


class SchemaError(ValueError):
    pass


def _enum(enum_type: Any, value: object, what: str, column: str) -> int:
    try:
        return int(enum_type.Value(str(value).upper()))
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


def column_spec(entry: dict[str, Any]) -> datasets_pb2.ColumnSpec:
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


def parse_schema(data: dict[str, Any]) -> Schema:
    columns = data.get("columns")
    if not isinstance(columns, list) or not columns:
        raise SchemaError("the schema needs a non-empty list of columns")
    return Schema([column_spec(c) for c in columns], int(data.get("k_anonymity", 0)))


def load_schema(path: str | Path) -> Schema:
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    return parse_schema(data)
