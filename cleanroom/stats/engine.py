"""The service-owned DP aggregation engine: one query over one decrypted table, one Answer.

Order of operations (each row-level or per-patient, so the whole pipeline before the mechanisms
is stable with respect to adding or removing one patient):
  validate -> filter -> drop rows without a value -> assign cells (rows outside a public key space
  or outside the bins are dropped) -> keep ≤ L rows per patient -> [DP bounds] -> clamp ->
  [τ-threshold selection of non-public keys] -> noisy statistic -> Answer.
Only the noise (OpenDP's CSPRNG) and the bounding sample (os.urandom) are random.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request
from cleanroom.domain.privacy import Mechanism
from cleanroom.stats import keys as keyspace
from cleanroom.stats import mechanisms
from cleanroom.stats.answer import Answer
from cleanroom.stats.bounding import apply_filters, bound_rows, drop_nulls
from cleanroom.stats.bounds import estimate_bounds
from cleanroom.stats.compute import COMPUTE, Cells
from cleanroom.stats.plan import DEFAULT_ROWS_PER_PATIENT, Plan, make_plan
from cleanroom.stats.query import Query, column_types, validate_query

PublicKeys = Mapping[str, Sequence[str]]


def schema_from_table(table: pa.Schema | pa.Table) -> list[tuple[str, str]]:
    """The stored columns as (name, type word); unsupported Arrow types become "other"."""
    schema = table.schema if isinstance(table, pa.Table) else table
    return [(f.name, _type_word(f.type)) for f in schema]


def _type_word(kind: pa.DataType) -> str:
    if pa.types.is_boolean(kind):
        return "boolean"
    if pa.types.is_integer(kind):
        return "integer"
    if pa.types.is_floating(kind):
        return "float"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    return "date" if pa.types.is_date(kind) else "other"


def run_query(
    table: pa.Table,
    query: Query,
    *,
    patient_column: str,
    public_group_keys: PublicKeys | None = None,
    default_rows_per_patient: int = DEFAULT_ROWS_PER_PATIENT,
) -> Answer:
    """Answer `query` with DP; raises BAD_REQUEST for invalid queries (before touching any row)."""
    if patient_column not in table.column_names:
        raise CleanroomError(ErrorCode.FAILED_PRECONDITION, "the dataset has no patient key column")
    types = column_types(schema_from_table(table))
    validate_query(query, list(types.items()), patient_column=patient_column, public_group_keys=public_group_keys)
    plan = make_plan(query, types=types, public_group_keys=public_group_keys, default_rows_per_patient=default_rows_per_patient)
    cells, raw_keys = _prepare(table, plan, types, patient_column, public_group_keys)
    _clamp(cells)
    if not plan.public_keys:
        _select(cells, raw_keys)
    released = tuple(COMPUTE[query.kind](cells))
    return Answer(
        kind=query.kind,
        cells=released,
        epsilon=plan.epsilon,
        delta=plan.delta,
        mechanism=describe(plan, cells.trace),
        rows_per_patient=plan.rows,
        bounds=cells.bounds,
    )


def _prepare(table: pa.Table, plan: Plan, types: Mapping[str, str], patient: str, public: PublicKeys | None) -> tuple[Cells, list[str]]:
    query = plan.query
    needed = {patient, query.column, query.group_by, *(f.column for f in query.filters)} - {None}
    table = apply_filters(table.select([c for c in table.column_names if c in needed]), query.filters)
    table = drop_nulls(table, [query.column, query.group_by])
    table = drop_nulls(keyspace.with_row_keys(table, query), [keyspace.KEY_COLUMN])
    space = keyspace.public_keyspace(query, types, public) if plan.public_keys else None
    if space is not None:
        if len(space) > keyspace.MAX_PUBLIC_CELLS:
            raise bad_request("the query has too many cells", FieldViolation("group_by", f"at most {keyspace.MAX_PUBLIC_CELLS} cells"))
        table = drop_nulls(keyspace.with_public_codes(table, space), [keyspace.CODE_COLUMN])
    table = bound_rows(table, patient_column=patient, max_rows=plan.rows)
    codes, raw = keyspace.codes_and_keys(table, space)
    numeric = query.kind in ("sum", "mean", "variance", "quantile")
    values = table.column(query.column).to_numpy().astype(np.float64) if numeric else None
    integer = types.get(query.column or "") == "integer"
    cells = Cells(plan, [keyspace.split_key(k, query) for k in raw], codes, values, query.bounds, integer)
    return cells, raw


def _clamp(cells: Cells) -> None:
    """Clamp numeric values to the public bounds, or to DP-estimated ones (charged as "bounds")."""
    if cells.values is None:
        return
    step = cells.plan.step("bounds")
    if step is not None:
        cells.bounds = estimate_bounds(cells.values, rows=cells.plan.rows, epsilon=step.epsilon, integer=cells.integer)
        cells.trace.append(("bounds", mechanisms.calibrate(sensitivity=cells.plan.rows, epsilon=step.epsilon)))
    cells.values = np.clip(cells.values, *cells.bounds)


def _select(cells: Cells, raw_keys: list[str]) -> None:
    """τ-thresholding: keep only keys whose noisy count passes; the rest vanish without a trace."""
    step = cells.plan.step("select")
    threshold = mechanisms.calibrate_threshold(rows=cells.plan.rows, epsilon=step.epsilon, delta=step.delta, gaussian=cells.plan.gaussian)
    cells.trace.append(("select", threshold))
    released = mechanisms.release_above_threshold(dict(zip(raw_keys, cells.counts().tolist())), threshold)
    kept = sorted(released)
    position = {key: index for index, key in enumerate(raw_keys)}
    remap = np.full(len(raw_keys), -1, dtype=np.int64)
    remap[[position[k] for k in kept]] = np.arange(len(kept))
    codes = remap[cells.codes]
    inside = codes >= 0
    cells.codes = codes[inside]
    cells.values = None if cells.values is None else cells.values[inside]
    cells.keys = [keyspace.split_key(k, cells.plan.query) for k in kept]
    cells.selected = [released[k] for k in kept]
    cells.select_noise = threshold.noise


def describe(plan: Plan, trace: Sequence[tuple[str, object]]) -> Mechanism:
    """The ledger's record of what ran: every scale, sensitivity, threshold and share (all public)."""
    names: list[str] = []
    params: list[tuple[str, float]] = [("rows_per_patient", float(plan.rows))]
    for step, calibrated in trace:
        if isinstance(calibrated, float):
            params.append((step, calibrated))
            continue
        name, entries = _describe_one(calibrated)
        names.append(name)
        params.extend((f"{step}.{key}", float(value)) for key, value in entries)
    return Mechanism(name="+".join(dict.fromkeys(names)), accountant="basic", parameters=tuple(params))


def _describe_one(calibrated: object) -> tuple[str, list[tuple[str, float]]]:
    if isinstance(calibrated, mechanisms.Threshold):
        noise = calibrated.noise
        entries = [("scale", noise.scale), ("sensitivity", noise.sensitivity), ("threshold", calibrated.threshold)]
        entries.append(("certified_threshold", calibrated.certified))  # what OpenDP's map was asked
        return noise.name + "-threshold", entries + [("epsilon", noise.epsilon), ("delta", noise.delta)]
    if isinstance(calibrated, mechanisms.QuantileSelector):
        entries = [("scale", calibrated.scale), ("sensitivity", calibrated.rows), ("epsilon", calibrated.epsilon)]
        return "private-quantile", entries
    noise = calibrated
    entries = [("scale", noise.scale), ("sensitivity", noise.sensitivity), ("epsilon", noise.epsilon), ("delta", noise.delta)]
    return noise.name, entries
