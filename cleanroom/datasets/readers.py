"""Reading uploaded files (CSV, Parquet) into Arrow batches typed and ordered as the policy declares.

CSV is cut into blocks at line ends, and pyarrow's CSV reader parses each block straight into the
declared types (one pass, no intermediate byte columns). pyarrow's conversion errors quote the
offending cell and never give its row, so on a conversion error the same block is parsed again as
raw bytes and converted column by column (typed.cast_column), which names the column, the row
and the rule, never the value. Where that slower path accepts a value the typed reader refused
(it is a little more lenient, e.g. `tRuE`), its result is used: it defines what is valid.

Cutting at line ends matches pyarrow's own chunking (newlines_in_values=False, its default): a
quoted value may not hold a newline. A row must fit in MAX_ROW_BYTES.

Row numbers in errors count data rows from 1, header excluded; empty lines do not count.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cleanroom.datasets.typed import ARROW_TYPES, cast_column, column_field
from cleanroom.domain.deid import ColumnType, DeidPolicy
from cleanroom.domain.errors import CleanroomError, FieldViolation, bad_request

CSV_NULL_VALUES = ("", "NA", "N/A", "NULL", "null")
# The spellings of booleans that pyarrow's CSV reader takes as is; anything else goes through
# the cast (which also takes e.g. "tRuE"), so both paths accept the same set.
_TRUE_VALUES, _FALSE_VALUES = ["1", "true", "True", "TRUE"], ["0", "false", "False", "FALSE"]
MAX_ROW_BYTES = 16 << 20


def arrow_schema_for(policy: DeidPolicy) -> pa.Schema:
    """The Arrow schema of the input columns, in declared order."""
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.type]) for c in policy.columns])


def _check_columns(file_names: list[str], policy: DeidPolicy) -> None:
    declared = [c.name for c in policy.columns]
    present = set(file_names)
    violations = [FieldViolation(column_field(n), "declared but not in the file")
                  for n in declared if n not in present]
    if present.isdisjoint(declared):
        # Most likely a file without a header: its first row would be data, so do not echo it.
        message = "names none of the declared columns (no header row?)"
        violations.append(FieldViolation("file", message))
    else:
        violations += [FieldViolation(column_field(n), "in the file but not declared")
                       for n in dict.fromkeys(file_names) if n not in set(declared)]
        violations += [FieldViolation(column_field(n), "appears more than once in the file")
                       for n, count in Counter(file_names).items() if count > 1]
    if violations:
        raise bad_request("the file's columns do not match the declared columns", *violations)


def _typed_batch(raw: pa.RecordBatch, policy: DeidPolicy, first_row: int) -> pa.RecordBatch:
    arrays = [_typed_column(raw.column(c.name), c.name, c.type, first_row) for c in policy.columns]
    return pa.RecordBatch.from_arrays(arrays, names=[c.name for c in policy.columns])


def _typed_column(values: pa.Array, name: str, declared: ColumnType, first_row: int) -> pa.Array:
    if declared is ColumnType.TIMESTAMP and pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if declared is ColumnType.TIMESTAMP and not _is_text(values.type):
        return values  # a Parquet timestamp or integer column: stream intake reads it as it is
    return cast_column(values, name, declared, first_row)


def _is_text(kind: pa.DataType) -> bool:
    return any(is_(kind) for is_ in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary))


# ---------------------------------------------------------------- CSV


def _csv_error(error: Exception, file_names: list[str] | None) -> CleanroomError:
    """Maps pyarrow's CSV errors (which quote cells) to value-free ones."""
    text = str(error)
    if "Empty CSV file" in text:
        return bad_request("the file is empty")
    if isinstance(error, UnicodeDecodeError):
        return bad_request("the header is not valid UTF-8")
    counts = re.search(r"Expected (\d+) columns, got (\d+)", text)
    if counts:
        message = f"a row has {counts[2]} fields but the header has {counts[1]}"
        return bad_request("the file is not valid CSV", FieldViolation("file", message))
    column = re.search(r"In CSV column #(\d+)", text)
    if column and file_names and int(column[1]) < len(file_names):
        field = column_field(file_names[int(column[1])])
        return bad_request("a value does not match its declared type",
                           FieldViolation(field, "a value could not be read"))
    return bad_request("the file is not valid CSV")


def _row_too_long() -> CleanroomError:
    return bad_request("the file is not valid CSV",
                       FieldViolation("file", f"a row is longer than {MAX_ROW_BYTES:,} bytes"))


class ByteSource(Protocol):
    """What the CSV reader reads from: a file, or the upload stream as it arrives."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class CsvBlock:
    """Whole lines of a CSV file (header excluded), as cut by csv_blocks."""

    data: pa.Buffer


@dataclass(frozen=True)
class CsvLayout:
    """What parse_csv_blocks needs to know about the file: its header's names."""

    names: list[str]


def _is_blank(line: bytes) -> bool:
    return line.strip(b"\r\n") == b""


def _read_header(fileobj: ByteSource, read_size: int) -> tuple[bytes, bytes]:
    """(the header line, the bytes read past it); leading empty lines are skipped as pyarrow does."""
    pending = b""
    while True:
        end = pending.find(b"\n")
        if end >= 0:
            line, pending = pending[: end + 1], pending[end + 1 :]
            if _is_blank(line):
                continue
            return line, pending
        if len(pending) > MAX_ROW_BYTES:
            raise _row_too_long()
        data = fileobj.read(read_size)
        if not data:
            return pending, b""
        pending += data


def _header_names(header: bytes) -> list[str]:
    if _is_blank(header):
        raise bad_request("the file is empty")
    try:
        table = pacsv.read_csv(pa.py_buffer(header), read_options=pacsv.ReadOptions(use_threads=False))
        names: list[str] = table.schema.names  # decoded here, and may fail here
        return names
    except (pa.ArrowInvalid, UnicodeDecodeError) as error:
        raise _csv_error(error, None) from None


def csv_blocks(
    fileobj: ByteSource, policy: DeidPolicy, *, block_size: int = 1 << 20
) -> tuple[CsvLayout, Iterator[CsvBlock]]:
    """Checks the header against the policy, then cuts the rest into blocks of whole lines.

    Each block holds about `block_size` bytes (more when one row is longer); reading the stream
    is all the cutting costs, besides joining each block's last partial line to the next read.
    """
    header, rest = _read_header(fileobj, block_size)
    names = _header_names(header)
    _check_columns(names, policy)
    return CsvLayout(names), _blocks(fileobj, rest, block_size)


def _blocks(fileobj: ByteSource, pending: bytes, block_size: int) -> Iterator[CsvBlock]:
    read_pieces = getattr(fileobj, "read_pieces", None)  # UploadStream: chunks as they came
    while True:
        pieces = read_pieces(block_size) if read_pieces else [fileobj.read(block_size)]
        if not any(pieces):
            break
        pieces = [pending, *pieces] if pending else pieces
        cut = _last_line_end(pieces)
        if cut == 0:
            pending = b"".join(pieces)
            if len(pending) > MAX_ROW_BYTES:
                raise _row_too_long()
            continue
        joined = b"".join(pieces) if len(pieces) > 1 else pieces[0]  # one copy
        view = memoryview(joined)
        yield CsvBlock(pa.py_buffer(view[:cut]))
        pending = bytes(view[cut:])
    if pending and not _is_blank(pending):
        yield CsvBlock(pa.py_buffer(pending))


def _last_line_end(pieces: list[bytes]) -> int:
    """The offset just past the last newline in the pieces joined; 0 when there is none."""
    end = sum(len(p) for p in pieces)
    for piece in reversed(pieces):
        end -= len(piece)
        found = piece.rfind(b"\n")
        if found >= 0:
            return end + found + 1
    return 0


def _convert_options(policy: DeidPolicy, typed: bool) -> pacsv.ConvertOptions:
    types = {c.name: ARROW_TYPES[c.type] if typed else pa.binary() for c in policy.columns}
    return pacsv.ConvertOptions(column_types=types, include_columns=list(types),
                                null_values=list(CSV_NULL_VALUES), strings_can_be_null=True,
                                true_values=_TRUE_VALUES, false_values=_FALSE_VALUES)


def parse_csv_blocks(
    layout: CsvLayout, blocks: Iterable[CsvBlock], policy: DeidPolicy
) -> Iterator[pa.RecordBatch]:
    """One typed batch per block (empty blocks skipped), in declared column order.

    Split from csv_blocks so that a caller may cut and parse on different threads.
    """
    typed, raw = _convert_options(policy, True), _convert_options(policy, False)
    schema = arrow_schema_for(policy)
    first_row = 1
    for block in blocks:
        read = pacsv.ReadOptions(column_names=layout.names, block_size=block.data.size + 1)
        batch = _parse_typed(block, read, typed, layout, schema)
        if batch is None:
            # The row-naming path, outside the `except` that saw pyarrow's message (which quotes
            # the value and would ride along as __context__): raises a value-free error, or
            # accepts what the cast accepts.
            batch = _typed_batch(_raw_block(block, read, raw, layout, schema), policy, first_row)
        if batch.num_rows:
            yield batch
        first_row += batch.num_rows


def _parse_typed(block: CsvBlock, read: pacsv.ReadOptions, convert: pacsv.ConvertOptions, layout: CsvLayout,
                 schema: pa.Schema) -> pa.RecordBatch | None:
    """The block in its declared types; None on a conversion error (other errors raise, value-free)."""
    try:
        return _one_batch(pacsv.read_csv(block.data, read_options=read, convert_options=convert), schema)
    except pa.ArrowInvalid as error:
        if "conversion error" in str(error):
            return None
        raise _csv_error(error, layout.names) from None


def _raw_block(block: CsvBlock, read: pacsv.ReadOptions, convert: pacsv.ConvertOptions, layout: CsvLayout,
               schema: pa.Schema) -> pa.RecordBatch:
    try:
        table = pacsv.read_csv(block.data, read_options=read, convert_options=convert)
    except pa.ArrowInvalid as error:
        raise _csv_error(error, layout.names) from None
    return _one_batch(table, pa.schema([pa.field(name, pa.binary()) for name in schema.names]))


def _one_batch(table: pa.Table, schema: pa.Schema) -> pa.RecordBatch:
    """A read table as one batch (a block is parsed as one pyarrow block: no copy then)."""
    table = table.select(schema.names)
    if table.num_rows == 0:
        return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)
    batches = table.to_batches()
    return batches[0] if len(batches) == 1 else table.combine_chunks().to_batches()[0]


def read_csv_batches(
    fileobj: ByteSource, policy: DeidPolicy, *, block_size: int = 1 << 20
) -> Iterator[pa.RecordBatch]:
    """Streams a CSV file as batches typed and ordered as the policy declares."""
    layout, blocks = csv_blocks(fileobj, policy, block_size=block_size)
    return parse_csv_blocks(layout, blocks, policy)


# ---------------------------------------------------------------- Parquet

_PARQUET_COMPATIBLE = {
    # Float columns too: pandas writes an integer column with a missing value as floats. Each
    # value must still be integral (typed.cast_column refuses a fractional part).
    ColumnType.INTEGER: lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
    ColumnType.FLOAT: lambda t: any(is_(t) for is_ in (pa.types.is_floating, pa.types.is_integer,
                                                       pa.types.is_decimal)),
    ColumnType.STRING: lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    ColumnType.DATE: pa.types.is_date,
    ColumnType.BOOLEAN: pa.types.is_boolean,
    # ISO 8601 text, whole epoch seconds, or a Parquet timestamp (a zone on the type, or none: UTC)
    ColumnType.TIMESTAMP: lambda t: any(is_(t) for is_ in (pa.types.is_string, pa.types.is_large_string,
                                                           pa.types.is_integer, pa.types.is_timestamp)),
}


def _parquet_type_violations(schema: pa.Schema, policy: DeidPolicy) -> Iterable[FieldViolation]:
    for column in policy.columns:
        stored = schema.field(column.name).type
        if pa.types.is_dictionary(stored):
            stored = stored.value_type
        if not (pa.types.is_null(stored) or _PARQUET_COMPATIBLE[column.type](stored)):
            message = f"stored as {stored} but declared {column.type.name}"
            yield FieldViolation(column_field(column.name), message)


def _not_parquet() -> CleanroomError:
    return bad_request("the file is not a valid Parquet file")


def _open_parquet(seekable_file: BinaryIO | pa.NativeFile, policy: DeidPolicy) -> pq.ParquetFile:
    try:
        parquet = pq.ParquetFile(seekable_file)
    except (pa.ArrowException, OSError, ValueError):
        raise _not_parquet() from None
    _check_columns(parquet.schema_arrow.names, policy)
    violations = list(_parquet_type_violations(parquet.schema_arrow, policy))
    if violations:
        raise bad_request("a column's stored type does not match its declared type", *violations)
    return parquet


def _next_parquet_batch(batches: Iterator[pa.RecordBatch]) -> pa.RecordBatch | None:
    try:
        batch = next(batches, None)
        if batch is not None:
            # The reader does not check what it decoded: a corrupt file can hold dictionary
            # indices past the dictionary's end, which only failed later, deep in a cast (found
            # by fuzzing).
            batch.validate(full=True)
        return batch
    except (pa.ArrowException, OSError, ValueError):
        raise _not_parquet() from None


def read_parquet_batches(
    seekable_file: BinaryIO | pa.NativeFile, policy: DeidPolicy, *, batch_size: int = 65536
) -> Iterator[pa.RecordBatch]:
    """Streams a Parquet file as batches typed and ordered as the policy declares."""
    parquet = _open_parquet(seekable_file, policy)
    names = [c.name for c in policy.columns]
    batches = iter(parquet.iter_batches(batch_size=batch_size, columns=names))
    first_row = 1
    while (raw := _next_parquet_batch(batches)) is not None:
        if raw.num_rows:
            yield _typed_batch(raw, policy, first_row)
        first_row += raw.num_rows
