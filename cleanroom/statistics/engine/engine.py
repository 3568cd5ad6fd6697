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

from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.privacy import Mechanism
from cleanroom.statistics.engine import group_keys as keyspace
from cleanroom.statistics.engine import mechanisms
from cleanroom.statistics.engine.answer import Answer
from cleanroom.statistics.engine.clamp_bounds import estimate_bounds
from cleanroom.statistics.engine.compute import Cells
from cleanroom.statistics.engine.kinds import kind_spec
from cleanroom.statistics.engine.plan import DEFAULT_ROWS_PER_PATIENT, Plan, make_plan
from cleanroom.statistics.engine.prepared import PreparedTable
from cleanroom.statistics.engine.query import Query, column_types, validate_query

PublicKeys = Mapping[str, Sequence[str]]


def run_query(
    table: pa.Table | PreparedTable,
    query: Query,
    *,
    patient_column: str,
    public_group_keys: PublicKeys | None = None,
    default_rows_per_patient: int = DEFAULT_ROWS_PER_PATIENT,
) -> Answer:
    """Answer `query` with DP; raises BAD_REQUEST for invalid queries (before touching any row).

    Pass a PreparedTable to answer many queries over one table without preparing it again."""
    prepared = table if isinstance(table, PreparedTable) else PreparedTable(table, patient_column=patient_column)
    if patient_column not in prepared.types or prepared.patient_column != patient_column:
        raise CleanroomError(ErrorCode.FAILED_PRECONDITION, "the dataset has no patient key column")
    types = column_types(prepared.schema)
    validate_query(query, list(types.items()), patient_column=patient_column, public_group_keys=public_group_keys)
    plan = make_plan(query, types=types, public_group_keys=public_group_keys, default_rows_per_patient=default_rows_per_patient)
    dims = keyspace.public_dims(query, types, public_group_keys) if plan.public_keys else None
    keyspace.check_cells(dims)
    cells, raw_keys = _cells(prepared, plan, dims)
    _clamp(cells)
    if not plan.public_keys:
        _select(cells, raw_keys)
    released = tuple(kind_spec(query.kind).implementation().compute(cells))
    return Answer(
        kind=query.kind,
        cells=released,
        epsilon=plan.epsilon,
        delta=plan.delta,
        mechanism=describe(plan, cells.trace),
        rows_per_patient=plan.rows,
        bounds=cells.bounds,
    )


def _cells(prepared: PreparedTable, plan: Plan, dims: list[list[str]] | None) -> tuple[Cells, list[str]]:
    query = plan.query
    selection = prepared.select(plan, dims)
    numeric = kind_spec(query.kind).numeric
    values = prepared.values_at(query.require_column(), selection.rows) if numeric else None
    integer = prepared.types.get(query.column or "") == "integer"
    keys = [keyspace.split_key(k, query) for k in selection.keys]
    counts = None if selection.counts is None else selection.counts.astype(np.int64, copy=False)
    return Cells(plan, keys, selection.codes, values, query.bounds, integer, known_counts=counts), selection.keys


def _clamp(cells: Cells) -> None:
    """Clamp numeric values to the public bounds, or to DP-estimated ones (charged as "bounds")."""
    if cells.values is None:
        return
    step = cells.plan.step("bounds")
    if step is not None:
        cells.bounds = estimate_bounds(cells.values, rows=cells.plan.rows, epsilon=step.epsilon, integer=cells.integer)
        cells.trace.append(("bounds", mechanisms.calibrate(sensitivity=cells.plan.rows, epsilon=step.epsilon)))
    if cells.bounds is None:  # validation requires public bounds unless they are estimated
        raise mechanisms.internal_failure()
    lo, hi = cells.bounds
    shared = not cells.values.flags.writeable  # the table's own bounded values: clamp into a copy
    cells.values = np.clip(cells.values, lo, hi, out=None if shared else cells.values)


def _select(cells: Cells, raw_keys: list[str]) -> None:
    """τ-thresholding: keep only keys whose noisy count passes; the rest vanish without a trace."""
    step = cells.plan.required_step("select")
    threshold = mechanisms.calibrate_threshold(rows=cells.plan.rows, epsilon=step.epsilon, delta=step.delta, gaussian=cells.plan.gaussian)
    cells.trace.append(("select", threshold))
    counts = cells.counts()
    released = mechanisms.release_above_threshold(dict(zip(raw_keys, counts.tolist())), threshold)
    kept = sorted(released)
    if kept != raw_keys:  # keys were suppressed (their rows go) or come in another order: re-code
        position = {key: index for index, key in enumerate(raw_keys)}
        kept_positions = [position[k] for k in kept]
        remap = np.full(len(raw_keys), -1, dtype=np.int64)
        remap[kept_positions] = np.arange(len(kept))
        codes = remap[cells.codes]
        inside = codes >= 0
        cells.codes = codes[inside]
        cells.values = None if cells.values is None else cells.values[inside]
        cells.known_counts = counts[kept_positions]
    cells.keys = [keyspace.split_key(k, cells.plan.query) for k in kept]
    cells.selected = ([released[k] for k in kept], threshold.noise)


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
    if not isinstance(calibrated, mechanisms.Noise):
        raise TypeError("not a calibrated mechanism")
    noise = calibrated
    entries = [("scale", noise.scale), ("sensitivity", noise.sensitivity), ("epsilon", noise.epsilon), ("delta", noise.delta)]
    return noise.name, entries
