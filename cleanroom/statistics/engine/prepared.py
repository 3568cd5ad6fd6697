"""A decrypted table in the shape queries need: numpy columns, dictionary codes, patient codes.

Preparing a column (decoding strings to codes, nulls to masks) costs far more than answering a
query over it, so a warm statistics worker prepares each column once and keeps it. A query then
runs on boolean masks and integer codes only: filters, missing values, cell assignment and the
per-patient row bound are all row-local or per-patient, exactly the pipeline of
`bounding.apply_filters` / `drop_nulls` / `bound_rows` (the Arrow reference the tests compare
against), so adding or removing one patient still moves at most that patient's L rows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cleanroom.statistics.engine import group_keys as keyspace
from cleanroom.statistics.engine.kinds import kind_spec
from cleanroom.statistics.engine.plan import Plan
from cleanroom.statistics.engine.query import Filter, Query, as_float, parse_date
from cleanroom.statistics.engine.row_bounding import fresh_rng

_EPOCH = np.datetime64("1970-01-01", "D")
_BOOLEAN_LABELS = ["false", "true"]
_KEPT_CACHE = 8  # bounds (L values) whose unfiltered row sets a table keeps
_FEW_CODES = 32  # up to this many cells, counting each code by comparison beats np.bincount on int8 codes


@dataclass(frozen=True)
class Column:
    """One prepared column. `null` marks SQL nulls; floats keep NaN in `values` (not null).

    Numeric and date columns have `values` (float64; dates as days since 1970-01-01). String and
    boolean columns have `codes` into `labels` (-1 where null); booleans are 0 = false, 1 = true.
    Codes are the narrowest signed integer that holds them: a five-valued column's codes over 1M
    rows are 1 MB, not 8, which is most of what counting them costs.
    """

    kind: str
    null: np.ndarray
    values: np.ndarray | None = None
    codes: np.ndarray | None = None
    labels: tuple[str, ...] = ()

    def reordered(self, order: np.ndarray) -> Column:
        def take(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array[order]

        return Column(self.kind, self.null[order], take(self.values), take(self.codes), self.labels)

    def numbers(self) -> np.ndarray:
        """The values of a numeric or date column."""
        if self.values is None:
            raise ValueError("not a numeric or date column")
        return self.values

    @property
    def missing(self) -> np.ndarray:
        """Rows without a usable value: null, or NaN in a float column."""
        if self.kind == "float":
            missing: np.ndarray = self.null | np.isnan(self.numbers())
            return missing
        return self.null


@dataclass(frozen=True)
class Selection:
    """Rows kept for one query, each with its cell index into `keys` (raw, joined key strings)."""

    rows: np.ndarray
    codes: np.ndarray
    keys: list[str]
    counts: np.ndarray | None = None  # rows per key, when counted during selection


class PreparedTable:
    """Columns prepared on first use and kept; `schema` gives the type word of every column.

    Rows are held grouped by patient, in a random order within each patient drawn once from the
    OS CSPRNG (so once per warm worker). Aggregates do not depend on row order; the grouping
    makes the per-patient bound one linear pass, and taking a patient's first L chosen rows in a
    random order is a uniform random L-subset of them. Reusing that order across queries changes
    nothing for DP: the bound is stable whichever subset it keeps."""

    def __init__(self, table: pa.Table, *, patient_column: str) -> None:
        self._table = table
        self.num_rows = table.num_rows
        self.schema = schema_from_table(table)
        self.types = dict(self.schema)
        self.patient_column = patient_column
        self._columns: dict[str, Column] = {}
        self._as_text: dict[str, Column] = {}  # integer columns grouped by (declared categories)
        self._incomplete: dict[str, bool] = {}  # column -> some row lacks a usable value
        self._kept_by_limit: dict[int, np.ndarray] = {}  # the bound over all rows, per L (same fixed order)
        self._by_limit: dict[tuple[str, str, int], np.ndarray] = {}  # a column's codes or values over those rows
        if patient_column in self.types:
            self._order, patients, self._segment_start = _group_by_patient(table.column(patient_column))
            self._has_patient = patients >= 0
            counts = np.bincount(patients[self._has_patient])
            self._most_rows = int(counts.max()) if counts.size else 0

    def column(self, name: str) -> Column:
        if name not in self._columns:
            self._columns[name] = _prepare_column(self._table.column(name), self.types[name]).reordered(self._order)
        return self._columns[name]

    def select(self, plan: Plan, public_dims: list[list[str]] | None) -> Selection:
        """Filter, drop rows without a value or a cell, then keep ≤ L rows per patient.

        With `public_dims` every cell of their product is answered (public key space); without,
        only the cells observed in the kept rows (to be τ-thresholded by the caller). A mask is
        built only where something can drop a row: an unfiltered query over complete columns
        reuses the bounded row set of its L as is."""
        query = plan.query
        mask: np.ndarray | None = None
        for flt in query.filters:
            mask = _and(mask, self._filter_mask(flt))
        for name in (query.column, query.group_by):
            if name is not None and not self._complete(name):
                mask = _and(mask, ~self.column(name).missing)
        cell, labels, cells = self._cells(query, public_dims)
        if cell is not None and not self._cell_complete(query, public_dims):
            mask = _and(mask, cell >= 0)
        rows = self._bound(mask, plan.rows)
        if cell is None:
            codes = np.broadcast_to(np.int64(0), rows.shape)  # read-only zeros
        elif (mask is None and query.group_by is not None and self._cell_complete(query, public_dims)
              and rows is self._kept_by_limit.get(plan.rows)):
            codes = self._bounded_codes(query.group_by, plan.rows, rows)
        else:
            codes = cell[rows]
        if public_dims is not None:
            space = [keyspace.SEPARATOR.join(parts) for parts in itertools.product(*public_dims)] if public_dims else [""]
            return Selection(rows, codes, space)
        observed, codes, counts = _observed(codes, cells)
        return Selection(rows, codes, [labels(int(c)) for c in observed], counts)

    def values_at(self, name: str, rows: np.ndarray) -> np.ndarray:
        """A numeric column's values at `rows`. Over the unfiltered bounded rows of a bound they are
        gathered once and shared (read-only: the caller copies before changing them)."""
        limit = next((L for L, kept in self._kept_by_limit.items() if kept is rows), None)
        if limit is None:
            return self._values_at(name, rows)
        return self._gathered(("values", name, limit), lambda: self._values_at(name, rows))

    def _values_at(self, name: str, rows: np.ndarray) -> np.ndarray:
        values: np.ndarray = self.column(name).numbers()[rows]
        return values

    def _bounded_codes(self, name: str, limit: int, kept: np.ndarray) -> np.ndarray:
        """A categorical column's codes over the unfiltered bounded rows of `limit`, gathered once
        (like the row set itself, they are the same for every query at that bound)."""
        def gather() -> np.ndarray:
            codes: np.ndarray = self._categorical_dim(name)[0][kept]
            return codes

        return self._gathered(("codes", name, limit), gather)

    def _gathered(self, key: tuple[str, str, int], gather: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self._by_limit:
            array = gather()
            array.setflags(write=False)
            if len(self._by_limit) >= _KEPT_CACHE * 4:
                self._by_limit.clear()
            self._by_limit[key] = array
        return self._by_limit[key]

    def _complete(self, name: str) -> bool:
        """Whether every row has a usable value in `name` (checked once per column)."""
        if name not in self._incomplete:
            self._incomplete[name] = bool(self.column(name).missing.any())
        return not self._incomplete[name]

    def _cell_complete(self, query: Query, public_dims: list[list[str]] | None) -> bool:
        """Whether every row has a cell: one categorical dimension over a complete column (a
        column's codes are -1 only where it is null); bins and public key spaces can drop rows."""
        return (public_dims is None and not kind_spec(query.kind).binned and query.group_by is not None
                and self._complete(query.group_by))

    # --- filters -----------------------------------------------------------------------------

    def _filter_mask(self, flt: Filter) -> np.ndarray:
        column = self.column(flt.column)
        wanted = flt.values()
        if column.codes is not None:
            coded: np.ndarray = ~column.null & _code_mask(column, flt.op, wanted)
            return coded
        targets = np.asarray([_as_number(v, column.kind) for v in wanted], dtype=np.float64)
        values = column.numbers()
        if flt.op == "in":
            hit = np.isin(values, targets)
        else:
            hit = _COMPARE[flt.op](values, targets[0])
        return ~column.null & hit

    # --- cells -------------------------------------------------------------------------------

    def _cells(self, query: Query, public_dims: list[list[str]] | None) -> tuple[np.ndarray | None, Callable[[int], str], int]:
        """Per-row cell code (-1: the row belongs to no cell; None: every row is in the one cell 0),
        a code -> raw key function, and the number of possible codes."""
        dims = []
        if query.group_by is not None:
            dims.append(self._categorical_dim(query.group_by))
        if kind_spec(query.kind).binned:
            dims.append(self._bin_dim(query.bins, query.require_column()) if query.bins is not None
                        else self._categorical_dim(query.require_column()))
        if not dims:
            return None, lambda code: "", 1
        if public_dims is not None:
            dims = [_onto_public(codes, labels, public) for (codes, labels), public in zip(dims, public_dims)]
        return _combine(dims)

    def _categorical_dim(self, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
        column = self.column(name)
        if column.codes is None:  # an integer column with declared categories: its values as text keys
            column = self._text_column(name)
        if column.codes is None:
            raise ValueError("not a categorical column")
        return column.codes, column.labels

    def _text_column(self, name: str) -> Column:
        """A column's values cast to text and coded like a string column ("0", "1": as declared
        categories are written), prepared once beside its numeric form."""
        if name not in self._as_text:
            text = pc.cast(self._table.column(name), pa.string())
            self._as_text[name] = _prepare_column(text, "string").reordered(self._order)
        return self._as_text[name]

    def _bin_dim(self, bins: tuple[float, ...], column: str) -> tuple[np.ndarray, tuple[str, ...]]:
        edges = np.asarray(bins, dtype=np.float64)
        values = self.column(column).numbers()
        index = np.searchsorted(edges, values, side="right") - 1
        index[values == edges[-1]] = len(edges) - 2  # the closed top edge
        inside = (index >= 0) & (index < len(edges) - 1)
        return np.where(inside, index, -1).astype(np.int64), tuple(keyspace.bin_labels(bins))

    # --- per-patient bound -------------------------------------------------------------------

    def _bound(self, mask: np.ndarray | None, limit: int) -> np.ndarray:
        """Indices of the chosen rows kept (`mask` None: every row): each patient's first `limit`
        (rows without a patient: none)."""
        chosen = self._has_patient if mask is None else mask & self._has_patient
        if limit >= self._most_rows:  # nobody has more rows than the bound: nothing to drop
            return np.flatnonzero(chosen)
        if mask is None or np.array_equal(chosen, self._has_patient):  # nothing filtered out: the same rows every time
            kept = self._kept_by_limit.get(limit)
            if kept is None:
                kept = self._first_rows(self._has_patient, limit)
                kept.setflags(write=False)  # shared by later queries
                if len(self._kept_by_limit) < _KEPT_CACHE:
                    self._kept_by_limit[limit] = kept
            return kept
        return self._first_rows(chosen, limit)

    def _first_rows(self, chosen: np.ndarray, limit: int) -> np.ndarray:
        taken = np.cumsum(chosen, dtype=np.int32)
        before = taken[self._segment_start] - chosen[self._segment_start]
        return np.flatnonzero(chosen & (taken - before <= limit))


def _group_by_patient(patients: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row order grouped by patient, shuffled within; patient code in that order, -1 when
    missing; the position where each row's patient segment starts)."""
    encoded = pc.dictionary_encode(patients.combine_chunks())
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    shuffled = fresh_rng().permutation(codes.size)
    order = shuffled[np.argsort(codes[shuffled], kind="stable")]
    grouped = codes[order]
    starts = np.concatenate(([True], grouped[1:] != grouped[:-1])) if grouped.size else np.zeros(0, dtype=bool)
    positions = np.arange(order.size)
    return order, grouped, np.maximum.accumulate(np.where(starts, positions, 0)) if order.size else positions


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


_COMPARE = {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}


def _prepare_column(column: pa.ChunkedArray, kind: str) -> Column:
    array = column.combine_chunks()
    null = array.is_null().to_numpy(zero_copy_only=False)
    if kind in ("integer", "float"):
        values = pc.cast(array, pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
        return Column(kind, null, values=values)
    if kind == "date":
        days = pc.cast(pc.cast(array, pa.date32()), pa.int32()).fill_null(0).to_numpy(zero_copy_only=False)
        return Column(kind, null, values=days.astype(np.float64))
    if kind == "boolean":
        codes = pc.cast(array, pa.int8()).fill_null(-1).to_numpy(zero_copy_only=False)
        return Column(kind, null, codes=codes, labels=tuple(_BOOLEAN_LABELS))
    if kind == "string":
        encoded = pc.dictionary_encode(array)
        codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        labels = encoded.dictionary.to_pylist()
        # Codes in sorted label order: cells come out in the order answers list them, so a
        # grouping whose keys all pass the threshold needs no re-coding of its rows.
        order = sorted(range(len(labels)), key=labels.__getitem__)
        rank = np.empty(len(labels) + 1, dtype=code_dtype(len(labels)))
        rank[order] = np.arange(len(labels))
        rank[-1] = -1  # null stays -1
        return Column(kind, null, codes=rank[codes], labels=tuple(labels[i] for i in order))
    return Column(kind, null)


def _as_number(value: object, kind: str) -> float:
    if kind == "date":
        return float((np.datetime64(parse_date(value), "D") - _EPOCH).astype(np.int64))
    return as_float(value)


def _code_mask(column: Column, op: str, wanted: list[object]) -> np.ndarray:
    labels = ["true" if v else "false" for v in wanted] if column.kind == "boolean" else [str(v) for v in wanted]
    position = {label: index for index, label in enumerate(column.labels)}
    hit_table = np.zeros(len(column.labels) + 1, dtype=bool)  # last slot: null (-1)
    for label in labels:
        if label in position:
            hit_table[position[label]] = True
    hit = hit_table[column.codes]
    return ~hit if op == "!=" else hit


def _onto_public(codes: np.ndarray, labels: tuple[str, ...], public: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Re-code a dimension onto its public labels; values outside them get -1 (dropped)."""
    index = {label: i for i, label in enumerate(public)}
    table = np.array([index.get(label, -1) for label in labels] + [-1], dtype=np.int64)
    return table[codes], tuple(public)


def code_dtype(labels: int) -> np.dtype:
    """The narrowest signed integer type for codes 0..labels-1 and -1."""
    return next(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64) if labels <= np.iinfo(t).max)


def count_codes(codes: np.ndarray, cells: int) -> np.ndarray:
    """Rows per code 0..cells-1 (codes must all lie in that range). np.bincount widens its input to
    int64 first; for a few cells over narrow codes, one comparison pass per code is several times
    faster."""
    if cells <= _FEW_CODES and codes.dtype.itemsize == 1:
        return np.array([np.count_nonzero(codes == code) for code in range(cells)], dtype=np.int64)
    return np.bincount(codes, minlength=cells).astype(np.int64, copy=False)


def _observed(codes: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The distinct codes present (sorted), each row's index among them, and the row count of each
    (None when not counted on the way)."""
    if cells <= 4 * codes.size + 1024:  # a counting pass beats a sort when the code space is small
        counts = count_codes(codes, cells)
        present = counts > 0
        if present.all():  # every code occurs: each row's index among them is its code
            return np.arange(cells), codes, counts
        remap = np.cumsum(present) - 1
        return np.flatnonzero(present), remap[codes], counts[present]
    observed, inverse = np.unique(codes, return_inverse=True)
    return observed, inverse.astype(np.int64), None


def _and(mask: np.ndarray | None, other: np.ndarray) -> np.ndarray:
    return other if mask is None else mask & other


def _combine(dims: list[tuple[np.ndarray, tuple[str, ...]]]) -> tuple[np.ndarray, Callable[[int], str], int]:
    """Mixed-radix cell codes over the dimensions, and the function that names a code."""
    if len(dims) == 1:  # one dimension: its codes are the cell codes (-1 already marks no cell)
        codes, labels = dims[0]
        return codes, (lambda cell: labels[cell]), max(len(labels), 1)
    code = np.zeros(dims[0][0].shape, dtype=np.int64)
    inside = np.ones(code.shape, dtype=bool)
    for codes, labels in dims:
        inside &= codes >= 0
        code = code * max(len(labels), 1) + codes
    sizes = [max(len(labels), 1) for _, labels in dims]

    def name(cell: int) -> str:
        parts = []
        for (_, labels), size in zip(reversed(dims), reversed(sizes)):
            cell, digit = divmod(cell, size)
            parts.append(labels[digit])
        return keyspace.SEPARATOR.join(reversed(parts))

    return np.where(inside, code, -1), name, math.prod(sizes)
