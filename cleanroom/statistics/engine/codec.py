"""Queries and answers as plain JSON-able dicts: how they cross into and out of the stats worker,
and the canonical bytes a privacy receipt signs."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from typing import Any

from cleanroom.domain.privacy import Mechanism
from cleanroom.domain.stream_views import StreamView
from cleanroom.statistics.engine.answer import Answer, Cell
from cleanroom.statistics.engine.query import Filter, Query

ANSWER_FILE = "answer.json"  # the name the receipt gives the signed answer


def stats_workload(dataset_id: str) -> str:
    """The attested workload of every statistics worker on a dataset: its key release and every
    receipt it signs are bound to it (the SDK recomputes it from the answer's dataset). The domain
    string is part of the API contract (docs/api/receipts.md), not a module path: it never moves."""
    return hashlib.sha256(b"cleanroom.stats.v1\x00" + dataset_id.encode("utf-8")).hexdigest()


def _plain(value: object) -> object:
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def query_to_dict(query: Query) -> dict[str, Any]:
    """A stream view is written only when set, so a table query's canonical bytes (and the references
    and receipts made of them) are what they were before streams."""
    out = {
        "kind": query.kind, "epsilon": query.epsilon, "delta": query.delta, "column": query.column,
        "group_by": query.group_by, "filters": [[f.column, f.op, _plain(f.value)] for f in query.filters],
        "bounds": list(query.bounds) if query.bounds is not None else None, "estimate_bounds": query.estimate_bounds,
        "bounds_epsilon": query.bounds_epsilon, "bins": list(query.bins) if query.bins is not None else None,
        "quantiles": list(query.quantiles), "max_rows_per_patient": query.max_rows_per_patient, "noise": query.noise,
    }
    if query.stream_view is not None:
        out["stream_view"] = query.stream_view.to_json()
    return out


def query_from_dict(data: dict[str, Any]) -> Query:
    return Query(
        kind=data["kind"], epsilon=data["epsilon"], delta=data["delta"], column=data["column"], group_by=data["group_by"],
        filters=tuple(Filter(c, op, tuple(v) if isinstance(v, list) else v) for c, op, v in data["filters"]),
        bounds=tuple(data["bounds"]) if data["bounds"] is not None else None, estimate_bounds=data["estimate_bounds"],
        bounds_epsilon=data["bounds_epsilon"], bins=tuple(data["bins"]) if data["bins"] is not None else None,
        quantiles=tuple(data["quantiles"]), max_rows_per_patient=data["max_rows_per_patient"], noise=data["noise"],
        stream_view=StreamView.from_json(data["stream_view"]) if data.get("stream_view") is not None else None,
    )


def canonical_query(query: Query) -> bytes:
    return json.dumps(query_to_dict(query), sort_keys=True, separators=(",", ":")).encode()


def answer_to_dict(answer: Answer) -> dict[str, Any]:
    return {
        "kind": answer.kind, "epsilon": answer.epsilon, "delta": answer.delta, "confidence": answer.confidence,
        "rows_per_patient": answer.rows_per_patient, "bounds": list(answer.bounds) if answer.bounds is not None else None,
        "mechanism": {"name": answer.mechanism.name, "accountant": answer.mechanism.accountant,
                      "parameters": [[k, v] for k, v in answer.mechanism.parameters]},
        "cells": [{"key": list(c.key), "statistic": c.statistic, "value": c.value, "half_width": c.half_width,
                   "unit": c.unit, "level": c.level} for c in answer.cells],
    }


def answer_from_dict(data: dict[str, Any]) -> Answer:
    mechanism = data["mechanism"]
    return Answer(
        kind=data["kind"], epsilon=data["epsilon"], delta=data["delta"], confidence=data["confidence"],
        rows_per_patient=data["rows_per_patient"], bounds=tuple(data["bounds"]) if data["bounds"] is not None else None,
        mechanism=Mechanism(mechanism["name"], mechanism["accountant"], tuple((k, v) for k, v in mechanism["parameters"])),
        cells=tuple(Cell(tuple(c["key"]), c["statistic"], c["value"], c["half_width"], c["unit"], c["level"]) for c in data["cells"]),
    )


def canonical_answer(answer: Answer) -> bytes:
    """The bytes a receipt signs: sorted keys, no spaces, floats as Python writes them."""
    return json.dumps(answer_to_dict(answer), sort_keys=True, separators=(",", ":")).encode()
