"""Row-level preparation before any mechanism runs: filters, then per-patient row bounding.

The privacy unit is the patient, so every sensitivity in cleanroom.statistics.engine is stated in terms of L,
the most rows one patient may contribute. Bounding keeps at most L of each patient's rows,
chosen uniformly at random without replacement, so a patient with 5,000 rows weighs no more than
one with L. Both steps are row-local or per-patient, so they are stable: adding or removing one
patient changes the bounded table by at most that patient's L rows.

Vectorised: the only per-patient work is in numpy sorts, never a Python loop over rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cleanroom.statistics.engine.query import Filter, as_float, parse_date

_COMPARE = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal}


def fresh_rng() -> np.random.Generator:
    """A generator for the bounding sample, seeded from the OS's CSPRNG on every call.

    The sample is not noise (OpenDP draws that), but which rows were kept must not be guessable
    or repeatable across queries, so it is never seeded from a constant or the clock.
    """
    return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32), "big")))


def apply_filters(table: pa.Table, filters: Sequence[Filter]) -> pa.Table:
    """Keep the rows where every filter holds; a null never matches (SQL's three-valued logic)."""
    if not filters:
        return table
    mask = None
    for flt in filters:
        this = pc.fill_null(_filter_mask(table.column(flt.column), flt), False)
        mask = this if mask is None else pc.and_(mask, this)
    return table.filter(mask)


def _filter_mask(column: pa.ChunkedArray, flt: Filter) -> pa.ChunkedArray:
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        column = pc.cast(column, pa.float64())  # exact for integers below 2^53; one comparison type
        kind = pa.float64()
    values = flt.values()
    scalars = pa.array([_coerce(x, kind) for x in values], kind)
    if flt.op == "in":
        return pc.is_in(column, value_set=scalars)
    return _COMPARE[flt.op](column, scalars[0])


def _coerce(value: object, kind: pa.DataType) -> object:
    if pa.types.is_floating(kind):
        return as_float(value)
    if pa.types.is_date(kind):
        return parse_date(value)
    return value


def drop_nulls(table: pa.Table, columns: Iterable[str | None]) -> pa.Table:
    """Rows without a value in a measured or grouping column cannot be placed: drop them.

    A float NaN counts as missing too: it would survive clamping and turn into an arbitrary
    integer in fixed point, breaking the sum's sensitivity.
    """
    for name in columns:
        if name is None:
            continue
        column = table.column(name)
        if pa.types.is_floating(column.type):
            table = table.filter(pc.fill_null(pc.invert(pc.is_nan(column)), False))
        elif column.null_count:
            table = table.filter(pc.is_valid(column))
    return table


def bound_rows(table: pa.Table, *, patient_column: str, max_rows: int, rng: np.random.Generator | None = None) -> pa.Table:
    """At most `max_rows` rows per patient, sampled uniformly without replacement; order kept.

    Rows without a patient key are dropped: nobody could bound their contribution.
    """
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    table = drop_nulls(table, [patient_column])
    if table.num_rows == 0:
        return table
    codes = _patient_codes(table.column(patient_column))
    keep = sample_per_patient(codes, max_rows, rng or fresh_rng())
    return table.take(pa.array(keep))


def _patient_codes(patients: pa.ChunkedArray) -> np.ndarray:
    encoded = pc.dictionary_encode(patients.combine_chunks())
    codes: np.ndarray = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return codes


def sample_per_patient(codes: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a uniform random `max_rows`-subset of each patient's rows, in table order."""
    shuffled = rng.permutation(codes.size)
    # A stable sort by patient of a uniformly shuffled order: uniformly random within each patient.
    order = shuffled[np.argsort(codes[shuffled], kind="stable")]
    grouped = codes[order]
    positions = np.arange(grouped.size)
    starts = np.concatenate(([True], grouped[1:] != grouped[:-1]))
    rank = positions - np.maximum.accumulate(np.where(starts, positions, 0))
    return np.sort(order[rank < max_rows])
