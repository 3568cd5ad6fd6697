"""Group keys: which cell each row falls in, and the public key space when there is one.

A key is a tuple of strings: (group,), (bin,), (group, bin) or () when ungrouped. Rows carry it
joined by an ASCII unit separator so one Arrow string column can be encoded and counted.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.statistics.engine.kinds import kind_spec
from cleanroom.statistics.engine.query import Query

SEPARATOR = "\x1f"
KEY_COLUMN = "__cleanroom_key__"
CODE_COLUMN = "__cleanroom_code__"
MAX_PUBLIC_CELLS = 100_000


def bin_labels(edges: Sequence[float]) -> list[str]:
    """"[a, b)" per bin; the last bin is closed so the top edge counts."""
    last = len(edges) - 2
    text = [_edge_text(e) for e in edges]
    return [f"[{a}, {b}" + ("]" if i == last else ")") for i, (a, b) in enumerate(zip(text, text[1:]))]


def _edge_text(edge: float) -> str:
    # repr of a plain int or float: the shortest text that round-trips, so labels never collide.
    return repr(int(edge)) if isinstance(edge, (int, np.integer)) else repr(float(edge))


def _histogram_keys(table: pa.Table, query: Query) -> pa.Array:
    column = table.column(query.column).combine_chunks()
    if query.bins is None:
        return pc.cast(column, pa.string())  # strings as they are; booleans as "true"/"false"
    edges = np.asarray(query.bins, dtype=np.float64)
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = len(edges) - 2  # the closed top edge
    inside = (index >= 0) & (index < len(edges) - 1)
    labels = np.asarray(bin_labels(query.bins), dtype=object)
    return pa.array(labels[np.where(inside, index, 0)], pa.string(), mask=~inside)


def with_row_keys(table: pa.Table, query: Query) -> pa.Table:
    """The table with a key column (null where a row belongs to no cell, e.g. outside the bins)."""
    parts = []
    if query.group_by is not None:
        parts.append(pc.cast(table.column(query.group_by).combine_chunks(), pa.string()))
    if kind_spec(query.kind).binned:
        parts.append(_histogram_keys(table, query))
    if not parts:
        key = pa.repeat(pa.scalar("", pa.string()), table.num_rows)  # one cell: the whole table
    elif len(parts) == 1:
        key = parts[0]
    else:
        key = pc.binary_join_element_wise(*parts, SEPARATOR)
    return table.append_column(KEY_COLUMN, key)


def public_dims(query: Query, types: Mapping[str, str], public_group_keys: Mapping[str, Sequence[str]] | None) -> list[list[str]]:
    """The public labels of each key dimension (group, then bin), in key-space order: a public key
    list's own order (age bands ascending, declared categories as declared)."""
    public = public_group_keys or {}
    dims: list[list[str]] = []
    if query.group_by is not None:
        dims.append(_in_order(public[query.group_by]))
    if kind_spec(query.kind).binned:
        if query.bins is not None:
            dims.append(bin_labels(query.bins))
        elif types.get(query.column or "") == "boolean":
            dims.append(["false", "true"])
        else:
            dims.append(_in_order(public[query.require_column()]))
    return dims


def _in_order(keys: Sequence[object]) -> list[str]:
    return list(dict.fromkeys(str(k) for k in keys))


def check_cells(public_dims: list[list[str]] | None) -> None:
    """A public key space answers every one of its cells: refuse one past MAX_PUBLIC_CELLS."""
    cells = math.prod(len(d) for d in public_dims) if public_dims else 1
    if cells > MAX_PUBLIC_CELLS:
        raise bad_request("the query has too many cells", FieldViolation("group_by", f"at most {MAX_PUBLIC_CELLS} cells"))


def public_keyspace(query: Query, types: Mapping[str, str], public_group_keys: Mapping[str, Sequence[str]] | None) -> list[str]:
    """Every key an answer over a public key space will carry (each gets a noisy value)."""
    dims = public_dims(query, types, public_group_keys)
    if not dims:
        return [""]
    return [SEPARATOR.join(parts) for parts in itertools.product(*dims)]


def with_public_codes(table: pa.Table, keyspace: Sequence[str]) -> pa.Table:
    """Index of each row's key in the public key space; rows outside it get null (then dropped)."""
    codes = pc.index_in(table.column(KEY_COLUMN), value_set=pa.array(list(keyspace), pa.string()))
    return table.append_column(CODE_COLUMN, codes)


def codes_and_keys(table: pa.Table, keyspace: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """Per-row cell index and the keys the indices point to (observed keys when not public)."""
    if keyspace is not None:
        codes = table.column(CODE_COLUMN).to_numpy().astype(np.int64) if table.num_rows else np.zeros(0, np.int64)
        return codes, list(keyspace)
    encoded = pc.dictionary_encode(table.column(KEY_COLUMN).combine_chunks())
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, encoded.dictionary.to_pylist()


def split_key(key: str, query: Query) -> tuple[str, ...]:
    dims = (query.group_by is not None) + kind_spec(query.kind).binned
    if dims == 0:
        return ()
    return (key,) if dims == 1 else tuple(key.split(SEPARATOR, 1))
