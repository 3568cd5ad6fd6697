"""Executes a de-identification policy (cleanroom.domain.deid) on Arrow record batches.

Everything is vectorised with pyarrow.compute; the only Python loop runs over the unique patient
keys of a batch (for the HMAC). Errors never carry a data value: pyarrow's own messages quote
the offending cell, so they are translated here into column names, row numbers and rules, and
raised `from None` so the original text does not ride along as the cause.

Row numbers in errors count data rows from 1, header excluded.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cleanroom.domain.deid import (
    IDENTIFIER_PATTERNS,
    AgeBand,
    ColumnRole,
    ColumnSpec,
    ColumnType,
    DateTruncation,
    DeidPolicy,
    PrefixTruncation,
    Suppress,
    stored_columns,
)
from cleanroom.domain.errors import CleanroomError, FieldViolation, bad_request

PSEUDONYM_HEX_CHARS = 32  # 128 bits of HMAC-SHA256
MIN_KEY_BYTES = 16
CSV_NULL_VALUES = ("", "NA", "N/A", "NULL", "null")

_ARROW_TYPES = {
    ColumnType.INTEGER: pa.int64(),
    ColumnType.FLOAT: pa.float64(),
    ColumnType.STRING: pa.string(),
    ColumnType.DATE: pa.date32(),
    ColumnType.BOOLEAN: pa.bool_(),
}
_TYPE_WORDS = {
    ColumnType.INTEGER: "integer",
    ColumnType.FLOAT: "number",
    ColumnType.STRING: "UTF-8 text",
    ColumnType.DATE: "date (YYYY-MM-DD)",
    ColumnType.BOOLEAN: "boolean (true/false)",
}
_ISO_DATE_PREFIX = r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])(?:$|[T ])"
_CLASS_COLUMN, _PATIENT_COLUMN = "class", "patient"
_COMPACT_ROWS = 1 << 19  # (int32, 32-character pseudonym) pairs: ~20 MiB


def _column_field(name: str) -> str:
    return f"columns[{name}]"


# pyarrow converts untyped Python scalars slowly (~0.05 ms each: it retries a failed pandas
# import every time), which dominates on small batches; pass typed Arrow scalars instead.
def _text(value: str) -> pa.Scalar:
    return pa.scalar(value, pa.string())


def _int(value: int) -> pa.Scalar:
    return pa.scalar(value, pa.int64())


def _int32(value: int) -> pa.Scalar:
    return pa.scalar(value, pa.int32())


def _float(value: float) -> pa.Scalar:
    return pa.scalar(float(value), pa.float64())


# ---------------------------------------------------------------- pseudonyms


class Pseudonymizer:
    """Keyed HMAC-SHA256 of each value's UTF-8 string form, hex, truncated to 32 characters.

    Remembers up to `cache_size` pseudonyms, in Arrow: one upload's batches mostly repeat the
    same patients, and a vectorised lookup is far cheaper than an HMAC (or a Python dict lookup
    per value). Use one instance per upload.
    """

    def __init__(self, key: bytes, *, cache_size: int = 1 << 18) -> None:
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the pseudonymisation key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self._cache_size = cache_size
        self._forget()

    def pseudonymize(self, values: pa.Array | pa.ChunkedArray) -> pa.Array:
        """One HMAC per unique value (dictionary-encode, hash the dictionary, take); nulls stay."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        strings = values if values.type == pa.string() else pc.cast(values, pa.string())
        encoded = strings.dictionary_encode()
        return self._lookup(encoded.dictionary).take(encoded.indices)

    def _lookup(self, uniques: pa.Array) -> pa.Array:
        """Pseudonyms of distinct values: cached ones looked up in Arrow, new ones HMACed."""
        if len(self._known) + len(uniques) > self._cache_size:
            self._forget()
        positions = pc.index_in(uniques, value_set=self._known)
        unknown = pc.is_null(positions)
        new = uniques.filter(unknown)
        if len(new):
            # New values go to the end of the cache, in order: their positions follow from that.
            appended = pc.add(pc.cumulative_sum(pc.cast(unknown, pa.int32())), _int32(len(self._known) - 1))
            positions = pc.coalesce(positions, appended)
            digests = pa.array([self._digest(v) for v in new.to_pylist()], pa.string())
            self._known = pa.concat_arrays([self._known, new])
            self._pseudonyms = pa.concat_arrays([self._pseudonyms, digests])
        return self._pseudonyms.take(positions)

    def _forget(self) -> None:
        self._known = pa.array([], pa.string())  # values, aligned with their pseudonyms
        self._pseudonyms = pa.array([], pa.string())

    def _digest(self, value: str) -> str:
        return hmac.digest(self._key, value.encode("utf-8"), "sha256").hex()[:PSEUDONYM_HEX_CHARS]


# ---------------------------------------------------------------- generalisation


@dataclass(frozen=True)
class DeidBatchResult:
    batch: pa.RecordBatch
    rows_without_patient_key: int  # dropped: their contribution cannot be bounded per patient


def _value_error(column: str, row: int, rule: str) -> CleanroomError:
    violation = FieldViolation(_column_field(column), f"row {row}: {rule}")
    return bad_request("a value cannot be de-identified", violation)


def _first_row_where(mask: pa.Array) -> int | None:
    index = pc.index(mask, True).as_py()
    return None if index < 0 else index


def _age_band(values: pa.Array, rule: AgeBand, column: str, first_row: int) -> pa.Array:
    ages = pc.floor(pc.cast(values, pa.float64()))
    ages = pc.if_else(pc.is_nan(ages), pa.scalar(None, pa.float64()), ages)
    negative = _first_row_where(pc.less(ages, _float(0)))
    if negative is not None:
        raise _value_error(column, first_row + negative, "an age must not be negative")
    top, width = _int(rule.top_code), _int(rule.width)
    capped = pc.min_element_wise(ages, _float(rule.top_code), skip_nulls=False)  # keep nulls
    years = pc.cast(capped, pa.int64())
    lower = pc.multiply(pc.divide(years, width), width)  # integer division: ages are ≥ 0
    upper = pc.min_element_wise(pc.add(lower, _int(rule.width - 1)),
                                _int(rule.top_code - 1), skip_nulls=False)
    lower_text, upper_text = pc.cast(lower, pa.string()), pc.cast(upper, pa.string())
    band = pc.if_else(pc.equal(lower, upper), lower_text,
                      pc.binary_join_element_wise(lower_text, upper_text, _text("-")))
    return pc.if_else(pc.greater_equal(years, top), _text(f"{rule.top_code}+"), band)


def _truncate_date(values: pa.Array, rule: DateTruncation, column: str, first_row: int) -> pa.Array:
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        not_iso = pc.invert(pc.match_substring_regex(values, _ISO_DATE_PREFIX))
        bad = _first_row_where(not_iso)
        if bad is not None:
            raise _value_error(column, first_row + bad, "not an ISO 8601 date (YYYY-MM-DD)")
    text = pc.cast(values, pa.string())  # date32 prints as YYYY-MM-DD
    return pc.utf8_slice_codeunits(text, 0, 7 if rule.precision == "month" else 4)


def _mask_prefix(values: pa.Array, rule: PrefixTruncation) -> pa.Array:
    text = pc.cast(values, pa.string())
    kept = pc.utf8_slice_codeunits(text, 0, rule.keep)
    return pc.binary_join_element_wise(kept, _stars(pc.utf8_length(text), rule.keep), _text(""))


def _stars(lengths: pa.Array, keep: int) -> pa.Array:
    """'*' for each character past `keep`, nulls kept: one mask per distinct length, then take
    (a regex replacing every character costs several times more)."""
    masked = pc.max_element_wise(pc.subtract(lengths, _int(keep)), _int(0))
    distinct = pc.unique(masked).drop_null()
    masks = pa.array(["*" * n for n in distinct.to_pylist()], pa.string())
    return masks.take(pc.index_in(masked, value_set=distinct))


def _generalize(values: pa.Array, column: ColumnSpec, first_row: int) -> pa.Array:
    """Generalises each distinct value once (ages, dates and postcodes repeat a lot), then
    spreads the results over the rows; a refused value is looked up again to name its row."""
    if isinstance(column.generalization, Suppress):
        return pa.repeat(_text("*"), len(values))  # missing values too
    encoded = values.dictionary_encode()  # nulls stay in the indices, and come back null
    try:
        distinct = _generalize_values(encoded.dictionary, column, first_row)
    except CleanroomError:
        _generalize_values(values, column, first_row)  # raises too, with the row number
        raise
    return distinct.take(encoded.indices)


def _generalize_values(values: pa.Array, column: ColumnSpec, first_row: int) -> pa.Array:
    rule = column.generalization
    if isinstance(rule, AgeBand):
        return _age_band(values, rule, column.name, first_row)
    if isinstance(rule, DateTruncation):
        return _truncate_date(values, rule, column.name, first_row)
    if isinstance(rule, PrefixTruncation):
        return _mask_prefix(values, rule)
    raise TypeError(f"no executor for generalization {type(rule).__name__}")


def stored_arrow_schema(policy: DeidPolicy) -> pa.Schema:
    """The Arrow schema of de-identified batches (see cleanroom.domain.deid.stored_columns)."""
    return pa.schema([pa.field(c.name, _ARROW_TYPES[c.type]) for c in stored_columns(policy)])


def deidentify_batch(
    batch: pa.RecordBatch, policy: DeidPolicy, pseudonymizer: Pseudonymizer, *, first_row: int = 1
) -> DeidBatchResult:
    """Drops identifiers, pseudonymises the patient key, generalises quasi-identifiers.

    `first_row` is the file row number of the batch's first row, for error messages.
    """
    arrays = []
    for column in stored_columns(policy):
        values = batch.column(column.name)
        if column.role is ColumnRole.PATIENT_KEY:
            arrays.append(pseudonymizer.pseudonymize(values))
        elif column.role is ColumnRole.QUASI_IDENTIFIER:
            arrays.append(_generalize(values, column, first_row))
        else:
            arrays.append(_cast_column(values, column.name, column.type, first_row))
    result = pa.RecordBatch.from_arrays(arrays, schema=stored_arrow_schema(policy))
    keys = batch.column(policy.patient_key.name)
    if keys.null_count == 0:
        return DeidBatchResult(result, 0)  # the usual batch: spare a copy of it
    kept = result.filter(pc.is_valid(keys))
    return DeidBatchResult(kept, batch.num_rows - kept.num_rows)


# ---------------------------------------------------------------- k-anonymity


def _length_prefixed(values: pa.Array) -> pa.Array:
    """"<length>:<value>", or "~" for null: self-delimiting, whatever characters values hold."""
    lengths = pc.cast(pc.utf8_length(values), pa.string())
    return pc.fill_null(pc.binary_join_element_wise(lengths, values, _text(":")), _text("~"))


def class_keys(batch: pa.RecordBatch, columns: tuple[str, ...]) -> pa.Array:
    """One string per row naming its equivalence class over the generalised `columns`."""
    if not columns:
        return pa.repeat(_text(""), batch.num_rows)
    return pc.binary_join_element_wise(*(_prefixed_column(batch.column(name)) for name in columns), _text(""))


def _prefixed_column(values: pa.Array) -> pa.Array:
    # Generalised values repeat a lot: prefix each distinct value once, then spread them out.
    encoded = pc.cast(values, pa.string()).dictionary_encode(null_encoding="encode")
    return _length_prefixed(encoded.dictionary).take(encoded.indices)


@dataclass(frozen=True, eq=False)
class SmallClasses:
    """Equivalence classes with fewer than k distinct patients: class_keys strings, and the ids
    their counter gave them (see EquivalenceClassCounter.update)."""

    columns: tuple[str, ...]
    keys: pa.Array
    ids: pa.Array

    def __len__(self) -> int:
        return len(self.keys)


class EquivalenceClassCounter:
    """Distinct patients per equivalence class, over de-identified batches.

    Each class gets a small integer id (one dict lookup per distinct class of a batch), so the
    (class, patient) pairs it keeps are (int32, string). It deduplicates them with group_by
    whenever the undeduplicated tail outgrows a threshold, so memory follows distinct pairs, not
    rows (a group_by per small batch would cost more in Acero start-up than in work).
    """

    def __init__(self, policy: DeidPolicy) -> None:
        self._columns = tuple(c.name for c in policy.quasi_identifiers)
        self._patient = policy.patient_key.name
        self._class_ids: dict[str, int] = {}  # class key -> id, ids in insertion order
        self._pairs = _distinct_pairs([])
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._per_class: pa.Table | None = None  # until the next update

    def update(self, batch: pa.RecordBatch) -> pa.Array:
        """Counts the batch; returns each row's class id, for suppress_small_classes."""
        self._per_class = None
        ids = self._ids_of(class_keys(batch, self._columns))
        pairs = pa.table({_CLASS_COLUMN: ids, _PATIENT_COLUMN: batch.column(self._patient)})
        self._pending.append(pairs)
        self._pending_rows += pairs.num_rows
        if self._pending_rows > max(_COMPACT_ROWS, self._pairs.num_rows):
            self._compact()
        return ids

    def _ids_of(self, keys: pa.Array) -> pa.Array:
        encoded = keys.dictionary_encode()
        ids = self._class_ids
        distinct = [ids.setdefault(key, len(ids)) for key in encoded.dictionary.to_pylist()]
        return pa.array(distinct, pa.int32()).take(encoded.indices)

    def _compact(self) -> None:
        if not self._pending:
            return
        self._pairs = _distinct_pairs([self._pairs, *self._pending])
        self._pending, self._pending_rows = [], 0

    def _patients_per_class(self) -> pa.Table:
        if self._per_class is None:
            self._compact()
            self._per_class = self._pairs.group_by(_CLASS_COLUMN).aggregate([(_PATIENT_COLUMN, "count")])
        return self._per_class

    def small_classes(self, k: int) -> SmallClasses:
        counts = self._patients_per_class()
        small = counts.filter(pc.less(counts[f"{_PATIENT_COLUMN}_count"], _int(k)))
        ids = small[_CLASS_COLUMN].combine_chunks()
        keys = pa.array(list(self._class_ids), pa.string()).take(ids)
        return SmallClasses(self._columns, keys, ids)

    def class_count(self) -> int:
        return len(self._class_ids)  # every class seen holds a pair

    def patient_count(self) -> int:
        self._compact()
        return pc.count_distinct(self._pairs[_PATIENT_COLUMN]).as_py()

    def patients_outside(self, small: SmallClasses) -> int:
        """Distinct patients with a row in a class that is not small: those a dataset keeps."""
        self._compact()
        in_small = pc.is_in(self._pairs[_CLASS_COLUMN], value_set=small.ids)
        return pc.count_distinct(self._pairs.filter(pc.invert(in_small))[_PATIENT_COLUMN]).as_py()


def _distinct_pairs(tables: list[pa.Table]) -> pa.Table:
    schema = pa.schema([(_CLASS_COLUMN, pa.int32()), (_PATIENT_COLUMN, pa.string())])
    if not tables:
        return schema.empty_table()
    merged = pa.concat_tables([t.select(schema.names).cast(schema) for t in tables])
    return merged.group_by([_CLASS_COLUMN, _PATIENT_COLUMN]).aggregate([]).select(schema.names)


def suppress_small_classes(
    batch: pa.RecordBatch, small_classes: SmallClasses, class_ids: pa.Array | None = None
) -> tuple[pa.RecordBatch, int]:
    """Removes the rows of a de-identified batch that fall in a small class; returns the count.

    `class_ids`, the batch's ids from EquivalenceClassCounter.update, spares rebuilding its keys.
    """
    if len(small_classes) == 0 or batch.num_rows == 0:
        return batch, 0
    if class_ids is None:
        in_small = pc.is_in(class_keys(batch, small_classes.columns), value_set=small_classes.keys)
    else:
        in_small = pc.is_in(class_ids, value_set=small_classes.ids)
    if not pc.any(in_small).as_py():
        return batch, 0  # the usual batch: spare a copy of it
    kept = batch.filter(pc.invert(in_small))
    return kept, batch.num_rows - kept.num_rows


# ---------------------------------------------------------------- identifier scan

_ANY_IDENTIFIER = "|".join(f"(?:{pattern})" for _, pattern in IDENTIFIER_PATTERNS)


def scan_for_identifiers(batch: pa.RecordBatch, policy: DeidPolicy) -> list[FieldViolation]:
    """Looks for RRNs, phone numbers and e-mail addresses in kept STRING columns (raw input).

    One violation per column and kind; never the value or the row.
    """
    exempt = (ColumnRole.DIRECT_IDENTIFIER, ColumnRole.PATIENT_KEY)
    violations = []
    for column in policy.columns:
        if column.type is not ColumnType.STRING or column.role in exempt:
            continue
        values = batch.column(column.name)
        if not pc.any(pc.match_substring_regex(values, _ANY_IDENTIFIER)).as_py():
            continue  # the usual case: one regex pass instead of one per kind
        for kind, pattern in IDENTIFIER_PATTERNS:
            if pc.any(pc.match_substring_regex(values, pattern)).as_py():
                message = (f"contains what look like {kind}; "
                           "declare the column DIRECT_IDENTIFIER or remove them")
                violations.append(FieldViolation(_column_field(column.name), message))
    return violations


# ---------------------------------------------------------------- reading files


def arrow_schema_for(policy: DeidPolicy) -> pa.Schema:
    """The Arrow schema of the input columns, in declared order."""
    return pa.schema([pa.field(c.name, _ARROW_TYPES[c.type]) for c in policy.columns])


def _check_columns(file_names: list[str], policy: DeidPolicy) -> None:
    declared = [c.name for c in policy.columns]
    present = set(file_names)
    violations = [FieldViolation(_column_field(n), "declared but not in the file")
                  for n in declared if n not in present]
    if present.isdisjoint(declared):
        # Most likely a file without a header: its first row would be data, so do not echo it.
        message = "names none of the declared columns (no header row?)"
        violations.append(FieldViolation("file", message))
    else:
        violations += [FieldViolation(_column_field(n), "in the file but not declared")
                       for n in dict.fromkeys(file_names) if n not in set(declared)]
        violations += [FieldViolation(_column_field(n), "appears more than once in the file")
                       for n, count in Counter(file_names).items() if count > 1]
    if violations:
        raise bad_request("the file's columns do not match the declared columns", *violations)


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


def _cast_column(values: pa.Array, name: str, declared: ColumnType, first_row: int) -> pa.Array:
    target = _ARROW_TYPES[declared]
    try:
        return _cast_exact(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        row = first_row + _first_failing_row(values, target)
    message = f"row {row}: not a valid {_TYPE_WORDS[declared]}"
    violation = FieldViolation(_column_field(name), message)
    raise bad_request("a value does not match its declared type", violation)


def _typed_batch(raw: pa.RecordBatch, policy: DeidPolicy, first_row: int) -> pa.RecordBatch:
    arrays = [_cast_column(raw.column(c.name), c.name, c.type, first_row) for c in policy.columns]
    return pa.RecordBatch.from_arrays(arrays, schema=arrow_schema_for(policy))


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
        field = _column_field(file_names[int(column[1])])
        return bad_request("a value does not match its declared type",
                           FieldViolation(field, "a value could not be read"))
    return bad_request("the file is not valid CSV")


def _open_csv(
    fileobj: BinaryIO, policy: DeidPolicy, block_size: int
) -> tuple[pacsv.CSVStreamingReader, list[str]]:
    # Read declared columns as raw bytes and convert them ourselves, so a conversion failure
    # can be pinned to a row (pyarrow's CSV errors name the value, never the row).
    convert = pacsv.ConvertOptions(
        column_types={c.name: pa.binary() for c in policy.columns},
        null_values=list(CSV_NULL_VALUES),
        strings_can_be_null=True,
    )
    try:
        reader = pacsv.open_csv(fileobj, read_options=pacsv.ReadOptions(block_size=block_size),
                                convert_options=convert)
        return reader, reader.schema.names  # names are decoded (and may fail) lazily
    except (pa.ArrowInvalid, UnicodeDecodeError) as error:
        raise _csv_error(error, None) from None


def _next_csv_batch(reader: pacsv.CSVStreamingReader, names: list[str]) -> pa.RecordBatch | None:
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None
    except pa.ArrowInvalid as error:
        raise _csv_error(error, names) from None


def read_csv_batches(
    fileobj: BinaryIO, policy: DeidPolicy, *, block_size: int = 1 << 20
) -> Iterator[pa.RecordBatch]:
    """Streams a CSV file as batches typed and ordered as the policy declares."""
    return typed_csv_batches(raw_csv_batches(fileobj, policy, block_size=block_size), policy)


def raw_csv_batches(
    fileobj: BinaryIO, policy: DeidPolicy, *, block_size: int = 1 << 20
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """The declared columns as bytes, batch by batch, each with the row number of its first row.

    typed_csv_batches converts them: split in two so that a caller may parse and convert on
    different threads.
    """
    reader, names = _open_csv(fileobj, policy, block_size)
    _check_columns(names, policy)
    first_row = 1
    while (raw := _next_csv_batch(reader, names)) is not None:
        if raw.num_rows:
            yield first_row, raw
        first_row += raw.num_rows


def typed_csv_batches(
    raw_batches: Iterable[tuple[int, pa.RecordBatch]], policy: DeidPolicy
) -> Iterator[pa.RecordBatch]:
    for first_row, raw in raw_batches:
        yield _typed_batch(raw, policy, first_row)


_PARQUET_COMPATIBLE = {
    ColumnType.INTEGER: pa.types.is_integer,
    ColumnType.FLOAT: lambda t: any(is_(t) for is_ in (pa.types.is_floating, pa.types.is_integer,
                                                       pa.types.is_decimal)),
    ColumnType.STRING: lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    ColumnType.DATE: pa.types.is_date,
    ColumnType.BOOLEAN: pa.types.is_boolean,
}


def _parquet_type_violations(schema: pa.Schema, policy: DeidPolicy) -> Iterable[FieldViolation]:
    for column in policy.columns:
        stored = schema.field(column.name).type
        if pa.types.is_dictionary(stored):
            stored = stored.value_type
        if not (pa.types.is_null(stored) or _PARQUET_COMPATIBLE[column.type](stored)):
            message = f"stored as {stored} but declared {column.type.name}"
            yield FieldViolation(_column_field(column.name), message)


def _not_parquet() -> CleanroomError:
    return bad_request("the file is not a valid Parquet file")


def _open_parquet(seekable_file: BinaryIO, policy: DeidPolicy) -> pq.ParquetFile:
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
        return next(batches, None)
    except (pa.ArrowException, OSError, ValueError):
        raise _not_parquet() from None


def read_parquet_batches(
    seekable_file: BinaryIO, policy: DeidPolicy, *, batch_size: int = 65536
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
