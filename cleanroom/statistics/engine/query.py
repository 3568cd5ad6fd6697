"""A statistics query as a caller states it, and its validation against the stored schema.

Light on purpose (stdlib and cleanroom.domain only): the SDK builds queries with it without
loading the engine's numpy, pyarrow or OpenDP. What a kind needs (a column, bounds, bins, levels)
is its spec in cleanroom.statistics.engine.kinds.

Validation never quotes a value: violations name the field and the rule only, because a filter
value or a column's content may be the very thing the clean room must not echo.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import SupportsFloat, SupportsIndex

from cleanroom.domain.deid import ColumnType
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.stream_views import StreamView
from cleanroom.statistics.engine.kinds import KIND_NAMES, find_kind

KINDS = KIND_NAMES  # the kinds' names, in the registry's order
OPS = ("==", "!=", "<", "<=", ">", ">=", "in")
NOISES = ("laplace", "gaussian")
NUMERIC_TYPES = ("integer", "float")
MAX_ROWS_PER_PATIENT = 10_000
MAX_BINS = 1_000
MAX_QUANTILES = 20
MAX_IN_VALUES = 1_000
MAX_EPSILON = 100.0

Schema = Sequence[tuple[str, "str | ColumnType"]]


@dataclass(frozen=True)
class Filter:
    """`column op value`; `in` takes a list. Applied before any per-patient bounding."""

    column: str
    op: str
    value: object

    def values(self) -> list[object]:
        """The items of an `in` filter's value; the one value of any other, as a list."""
        if self.op != "in":
            return [self.value]
        if not isinstance(self.value, Iterable):
            raise TypeError("an in filter takes a list of values")
        return list(self.value)


@dataclass(frozen=True, kw_only=True)
class Query:
    """One DP statistic. ε (and δ) are the query's total; the engine splits them across steps.

    `kind` is a StatKind (or its name: StatKind is a str); validation refuses any other name.

    `bounds` are public clamping bounds (lo, hi). With `estimate_bounds`, `bounds_epsilon` (a part
    of `epsilon`, default a quarter) buys DP bounds first. `bins` are public histogram edges for a
    numeric column. `max_rows_per_patient` overrides the dataset policy's per-patient row limit.
    `stream_view` names the derived table a query over a stream reads (cleanroom.domain.stream_views);
    its columns are then the view's.
    """

    kind: str
    epsilon: float
    delta: float = 0.0
    column: str | None = None
    group_by: str | None = None
    filters: tuple[Filter, ...] = ()
    bounds: tuple[float, float] | None = None
    estimate_bounds: bool = False
    bounds_epsilon: float | None = None
    bins: tuple[float, ...] | None = None
    quantiles: tuple[float, ...] = (0.5,)
    max_rows_per_patient: int | None = None
    noise: str = "laplace"
    stream_view: StreamView | None = None

    def require_column(self) -> str:
        """The measured column of a validated query whose kind needs one."""
        if self.column is None:
            raise ValueError("this query names no column")
        return self.column

    @property
    def bounds_share(self) -> float:
        """The ε spent on bounds estimation (0 when bounds are public)."""
        if not self.estimate_bounds:
            return 0.0
        return self.bounds_epsilon if self.bounds_epsilon is not None else self.epsilon / 4


@dataclass
class _Violations:
    items: list[FieldViolation] = field(default_factory=list)
    labelled: Mapping[str, str] = field(default_factory=dict)  # generalised column -> why it is text

    def add(self, name: str, rule: str) -> None:
        self.items.append(FieldViolation(name, rule))

    def add_not_numeric(self, name: str, column: str | None, rule: str) -> None:
        """A refusal of numeric use, led by the reason when the column is a generalised one."""
        reason = self.labelled.get(column or "")
        self.add(name, f"{reason}: {rule}" if reason else rule)


def column_types(schema: Schema) -> dict[str, str]:
    """Schema entries as lower-case type words ("integer", "float", "string", "date", "boolean")."""
    return {name: (kind.name.lower() if isinstance(kind, ColumnType) else str(kind)) for name, kind in schema}


def keyspace_is_public(query: Query, types: Mapping[str, str], public_group_keys: Mapping[str, Sequence[str]] | None) -> bool:
    """True when every key a grouped answer can have is public (no τ-threshold needed)."""
    public = public_group_keys or {}
    if query.group_by is not None and query.group_by not in public:
        return False
    if _binned(query) and query.bins is None:
        return types.get(query.column or "") == "boolean" or query.column in public
    return True


def _binned(query: Query) -> bool:
    spec = find_kind(query.kind)
    return spec is not None and spec.binned


def _gaussian_applies(query: Query) -> bool:
    # A selection (a quantile's exponential mechanism) is pure ε; there is no additive noise to pick.
    spec = find_kind(query.kind)
    return query.noise == "gaussian" and (spec is None or spec.additive)


def needs_delta(query: Query, types: Mapping[str, str], public_group_keys: Mapping[str, Sequence[str]] | None) -> bool:
    return _gaussian_applies(query) or not keyspace_is_public(query, types, public_group_keys)


def validate_query(
    query: Query,
    schema: Schema,
    *,
    patient_column: str | None = None,
    public_group_keys: Mapping[str, Sequence[str]] | None = None,
    stored_as_labels: Mapping[str, str] | None = None,
    linkage_column: str | None = None,
) -> None:
    """Raise BAD_REQUEST with one FieldViolation per problem; names fields, never values.

    `stored_as_labels` says, per generalised column, why it is text although declared a number
    (cleanroom.domain.deid.stored_as_labels): refusals of numeric use then give that reason.
    Neither the patient key nor the linkage column (cross-hospital linkage pseudonyms) may be a
    query's column, group key or filter: a count of distinct pseudonyms, a group per pseudonym or
    a filter on one would single people out."""
    types = column_types(schema)
    v = _Violations(labelled=stored_as_labels or {})
    hidden = {name: why for name, why in ((patient_column, "the patient key column cannot be queried"),
                                          (linkage_column, "the linkage column cannot be queried")) if name}
    _check_kind(query, types, hidden, public_group_keys, v)
    _check_privacy(query, types, public_group_keys, v)
    _check_bounds(query, types, v)
    _check_shape(query, types, public_group_keys, v)
    for index, flt in enumerate(query.filters):
        _check_filter(index, flt, types, hidden, v)
    if v.items:
        raise bad_request("the statistics query is invalid", *v.items)


def _check_column(name: str, column: object, types: Mapping[str, str], hidden: Mapping[str, str], v: _Violations) -> bool:
    """`hidden`: the columns no query may read (patient key, linkage), each with its refusal."""
    if not isinstance(column, str) or column not in types:
        v.add(name, "must name a stored column of the dataset")
        return False
    if column in hidden:
        v.add(name, hidden[column])
        return False
    return True


def is_categorical(column: str, types: Mapping[str, str], public_group_keys: Mapping[str, Sequence[str]] | None) -> bool:
    """A string column, or one whose key list the data owner declared (e.g. sex coded 0/1)."""
    return types.get(column) == "string" or column in (public_group_keys or {})


def _check_kind(query: Query, types: Mapping[str, str], hidden: Mapping[str, str],
                public_keys: Mapping[str, Sequence[str]] | None, v: _Violations) -> None:
    spec = find_kind(query.kind)
    if spec is None:
        v.add("kind", "must be one of " + ", ".join(KINDS))
        return
    if query.column is None:
        if spec.column_required:
            v.add("column", f"is required for a {query.kind} query")
    elif _check_column("column", query.column, types, hidden, v):
        kind = types[query.column]
        if spec.numeric and kind not in NUMERIC_TYPES:
            v.add_not_numeric("column", query.column, f"a {query.kind} needs a numeric (integer or float) column")
        if spec.binned and kind not in (*NUMERIC_TYPES, "string", "boolean"):
            v.add("column", f"a {query.kind} needs a string, boolean or numeric column")
    if query.group_by is not None and _check_column("group_by", query.group_by, types, hidden, v):
        if not is_categorical(query.group_by, types, public_keys):
            v.add("group_by", "must name a categorical column: a string column, or one whose categories "
                              "the data owner declared at upload")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_amounts(query: Query, v: _Violations) -> bool:
    if not _finite(query.epsilon) or not 0 < query.epsilon <= MAX_EPSILON:
        v.add("epsilon", f"must be a finite number above 0 and at most {MAX_EPSILON:g}")
    if not _finite(query.delta) or not 0 <= query.delta < 1:
        v.add("delta", "must be a finite number of at least 0 and below 1")
        return False
    return True


def _check_privacy(query: Query, types: Mapping[str, str], public_keys: Mapping[str, Sequence[str]] | None, v: _Violations) -> None:
    if _check_amounts(query, v) and query.delta == 0 and find_kind(query.kind) is not None and needs_delta(query, types, public_keys):
        v.add("delta", "must be above 0: gaussian noise or groups with non-public keys need a δ")
    if query.noise not in NOISES:
        v.add("noise", "must be one of " + ", ".join(NOISES))
    rows = query.max_rows_per_patient
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= MAX_ROWS_PER_PATIENT):
        v.add("max_rows_per_patient", f"must be an integer from 1 to {MAX_ROWS_PER_PATIENT}")


def _check_bounds(query: Query, types: Mapping[str, str], v: _Violations) -> None:
    spec = find_kind(query.kind)
    if spec is None or not spec.numeric:
        if query.bounds is not None or query.estimate_bounds:
            v.add("bounds", f"a {query.kind} query takes no bounds")
        return
    if query.estimate_bounds:
        if query.bounds is not None:
            v.add("bounds", "give public bounds or ask for their estimation, not both")
        share = query.bounds_share
        if not _finite(share) or not 0 < share < (query.epsilon if _finite(query.epsilon) else 0):
            v.add("bounds_epsilon", "must be above 0 and below epsilon")
        return
    bounds = query.bounds
    if bounds is None:
        v.add("bounds", "public clamping bounds (lo, hi) are required, or set estimate_bounds")
    elif not isinstance(bounds, (tuple, list)) or len(bounds) != 2 or not all(_finite(b) for b in bounds):
        v.add("bounds", "must be two finite numbers (lo, hi)")
    elif not bounds[0] < bounds[1]:
        v.add("bounds", "lo must be below hi")
    elif max(abs(bounds[0]), abs(bounds[1])) > 2.0**60:
        v.add("bounds", "must lie within ±2^60")


def _check_shape(query: Query, types: Mapping[str, str], public_keys: Mapping[str, Sequence[str]] | None, v: _Violations) -> None:
    spec = find_kind(query.kind)
    numeric_histogram = _binned(query) and types.get(query.column or "") in NUMERIC_TYPES
    if numeric_histogram and query.bins is None and query.column in (public_keys or {}):
        pass  # a declared categorical integer column: one bar per declared category
    elif numeric_histogram:
        bins = query.bins
        ok = isinstance(bins, (tuple, list)) and 2 <= len(bins) <= MAX_BINS + 1 and all(_finite(b) for b in bins)
        if bins is None or not ok or any(a >= b for a, b in zip(bins, bins[1:])):
            v.add("bins", f"a numeric histogram needs 2 to {MAX_BINS + 1} finite, increasing edges")
    elif query.bins is not None:
        v.add_not_numeric("bins", query.column, "only a histogram over a numeric column takes bins")
    if spec is not None and spec.per_level:
        levels = query.quantiles
        ok = isinstance(levels, (tuple, list)) and 1 <= len(levels) <= MAX_QUANTILES and all(_finite(q) and 0 < q < 1 for q in levels)
        if not ok or len(set(levels)) != len(levels):
            v.add("quantiles", f"must be 1 to {MAX_QUANTILES} distinct levels strictly between 0 and 1")


def _check_filter(index: int, flt: object, types: Mapping[str, str], hidden: Mapping[str, str], v: _Violations) -> None:
    name = f"filters[{index}]"
    if not isinstance(flt, Filter):
        v.add(name, "must be a Filter(column, op, value)")
        return
    if not _check_column(name + ".column", flt.column, types, hidden, v):
        return
    kind = types[flt.column]
    if kind not in (*NUMERIC_TYPES, "string", "boolean", "date"):
        v.add(name + ".column", "this column's type cannot be filtered")
    elif flt.op not in OPS:
        v.add(name + ".op", "must be one of " + " ".join(OPS))
    elif kind in ("string", "boolean") and flt.op not in ("==", "!=", "in"):
        v.add_not_numeric(name + ".op", flt.column, f"a {kind} column takes only ==, != or in")
    elif not _filter_value_ok(flt, kind):
        v.add(name + ".value", f"must be a {kind} value" + (" list (1 to 1000 items)" if flt.op == "in" else ""))


def _filter_value_ok(flt: Filter, kind: str) -> bool:
    if flt.op != "in":
        return _scalar_ok(flt.value, kind)
    values = flt.value
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        return False
    values = list(values)
    return 1 <= len(values) <= MAX_IN_VALUES and all(_scalar_ok(x, kind) for x in values)


def _scalar_ok(value: object, kind: str) -> bool:
    if kind in NUMERIC_TYPES:
        return _finite(value)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    return parse_date(value) is not None


def parse_date(value: object) -> _dt.date | None:
    """A filter's date: a `date` or an ISO "YYYY-MM-DD" string; None when neither."""
    if isinstance(value, _dt.datetime):
        return None
    if isinstance(value, _dt.date):
        return value
    if isinstance(value, str):
        try:
            return _dt.date.fromisoformat(value) if len(value) == 10 else None
        except ValueError:
            return None
    return None


def as_float(value: object) -> float:
    """A numeric filter value (validated: an int or a float) as a float; float()'s own TypeError otherwise."""
    if isinstance(value, (SupportsFloat, SupportsIndex, str, bytes)):
        return float(value)
    raise TypeError("a numeric filter value must be a number")


def may_need_delta(query: Query) -> bool:
    """Without a schema: δ is charged whenever some key space could turn out not to be public."""
    return _gaussian_applies(query) or query.group_by is not None or _binned(query)


def check_privacy_amounts(query: Query) -> None:
    """ε and δ range checks alone (for a cost estimate without the dataset's schema)."""
    v = _Violations()
    _check_amounts(query, v)
    if v.items:
        raise bad_request("the statistics query is invalid", *v.items)
