"""A raw column cast to its declared type, exactly: a cell that does not fit is an error naming the
column, its row and the rule, never the value (pyarrow's own messages quote the cell).

Row numbers count data rows from 1, header excluded.
"""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc

from cleanroom.domain.deid import ColumnType
from cleanroom.domain.errors import FieldViolation, bad_request

ARROW_TYPES = {
    ColumnType.INTEGER: pa.int64(),
    ColumnType.FLOAT: pa.float64(),
    ColumnType.STRING: pa.string(),
    ColumnType.DATE: pa.date32(),
    ColumnType.BOOLEAN: pa.bool_(),
    # A stream's TIME column is read as text (or as Parquet stores it); stream intake parses it
    # (cleanroom/datasets/stream_times.py) and stores int64 epoch seconds.
    ColumnType.TIMESTAMP: pa.string(),
}
_TYPE_WORDS = {
    ColumnType.INTEGER: "integer",
    ColumnType.FLOAT: "number",
    ColumnType.STRING: "UTF-8 text",
    ColumnType.DATE: "date (YYYY-MM-DD)",
    ColumnType.BOOLEAN: "boolean (true/false)",
    ColumnType.TIMESTAMP: "UTF-8 text",
}


def column_field(name: str) -> str:
    return f"columns[{name}]"


def _cast_exact(values: pa.Array, target: pa.DataType) -> pa.Array:
    # Numbers and booleans parse straight from bytes (non-UTF-8 bytes fail to parse anyway);
    # text must be valid UTF-8, and Arrow parses dates only from text.
    if pa.types.is_binary(values.type) and (target == pa.string() or pa.types.is_date(target)):
        values = pc.cast(values, pa.string())  # validates UTF-8
    return values if values.type == target else pc.cast(values, target, safe=True)


def _first_failing_row(values: pa.Array, target: pa.DataType) -> int:
    """Bisects to the first row that does not cast; pyarrow's errors do not say which."""
    low, high = 0, len(values)
    while high - low > 1:
        middle = (low + high) // 2
        try:
            _cast_exact(values.slice(low, middle - low), target)
            low = middle
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            high = middle
    return low


# An integer written as a decimal with a zero fraction ("97.0", "97.00", "97."), as spreadsheets
# and pandas' float columns write them; and a decimal whose fraction is not zero ("97.5").
_INTEGRAL_DECIMAL = r"^(-?[0-9]+)\.0*$"
_FRACTIONAL_DECIMAL = r"^-?[0-9]*\.[0-9]*[1-9][0-9]*$"


def _without_zero_fractions(values: pa.Array) -> pa.Array:
    """Text cells of an integer column with their zero fraction dropped ("97.0" -> "97"). Float
    cells (Parquet) need nothing: the safe cast takes integral values and refuses the rest."""
    if pa.types.is_binary(values.type) or pa.types.is_string(values.type):
        return pc.replace_substring_regex(values, pattern=_INTEGRAL_DECIMAL, replacement=r"\1")
    return values


def _has_fraction(cell: pa.Array) -> bool:
    """Whether a one-cell array holds a number with a non-zero fractional part."""
    if pa.types.is_floating(cell.type):
        number = cell[0].as_py()
        return number is not None and math.isfinite(number) and not number.is_integer()
    if pa.types.is_binary(cell.type) or pa.types.is_string(cell.type):
        return bool(pc.match_substring_regex(cell, _FRACTIONAL_DECIMAL)[0].as_py())
    return False


def _cast_declared(values: pa.Array, declared: ColumnType) -> tuple[pa.Array | None, pa.Array]:
    """(the cast column or None, the values a failing row should be looked for in)."""
    target = ARROW_TYPES[declared]
    try:
        return _cast_exact(values, target), values
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if declared is not ColumnType.INTEGER:
            return None, values
    values = _without_zero_fractions(values)  # only when the plain cast failed: it costs a pass
    try:
        return _cast_exact(values, target), values
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None, values


def cast_column(values: pa.Array, name: str, declared: ColumnType, first_row: int) -> pa.Array:
    cast, values = _cast_declared(values, declared)
    if cast is not None:
        return cast
    index = _first_failing_row(values, ARROW_TYPES[declared])
    message = f"row {first_row + index}: not a valid {_TYPE_WORDS[declared]}"
    if declared is ColumnType.INTEGER and _has_fraction(values.slice(index, 1)):
        message += ": the value has a fractional part"  # says why, never what
    violation = FieldViolation(column_field(name), message)
    raise bad_request("a value does not match its declared type", violation)
