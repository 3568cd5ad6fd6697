"""De-identification transforms on Arrow record batches (the policy is cleanroom.domain.deid).

Everything is vectorised with pyarrow.compute; the only Python loop runs over the unique patient
keys of a batch (for the HMAC). Errors never carry a data value: pyarrow's own messages quote
the offending cell, so they are translated here into column names, row numbers and rules, and
raised `from None` so the original text does not ride along as the cause.

Row numbers in errors count data rows from 1, header excluded. Reading files into typed batches
is cleanroom.datasets.readers, casting a column to its declared type cleanroom.datasets.typed;
cleanroom.datasets.deidentify re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

from cleanroom.datasets.pseudonyms import LinkagePseudonymizer, Pseudonymizer
from cleanroom.datasets.typed import ARROW_TYPES, cast_column, column_field
from cleanroom.domain.deid import (
    IDENTIFIER_PATTERNS,
    AgeBand,
    ColumnSpec,
    ColumnType,
    DateTruncation,
    DeidPolicy,
    PrefixTruncation,
    Suppress,
    Treatment,
    stored_columns,
)
from cleanroom.domain.errors import CleanroomError, FieldViolation, bad_request

CSV_NULL_VALUES = ("", "NA", "N/A", "NULL", "null")

_ISO_DATE_PREFIX = r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])(?:$|[T ])"
_COMPACT_ROWS = 1 << 20  # undeduplicated (class, patient) pairs: 8 MiB


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


# ---------------------------------------------------------------- generalisation


@dataclass(frozen=True)
class DeidBatchResult:
    batch: pa.RecordBatch
    rows_without_patient_key: int  # dropped: their contribution cannot be bounded per patient
    # The batch's pseudonyms, dictionary-encoded (distinct ones once), for
    # EquivalenceClassCounter.update: it spares hashing every row's pseudonym again.
    patients: pa.DictionaryArray | None = None
    rows_without_linkage_id: int = 0  # kept rows stored unlinked (an empty linkage pseudonym)


def _value_error(column: str, row: int, rule: str) -> CleanroomError:
    violation = FieldViolation(column_field(column), f"row {row}: {rule}")
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
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.type]) for c in stored_columns(policy)])


def _check_label_domain(values: pa.Array, column: ColumnSpec, first_row: int) -> None:
    """A declared classification label holds class indices 0..label_classes-1 (missing values pass:
    training drops those rows); the error names the column, the row and the rule, never the value."""
    classes = column.label_classes
    numbers = pc.cast(values, pa.int64()) if pa.types.is_boolean(values.type) else values
    outside = pc.or_(pc.less(numbers, _int(0)), pc.greater_equal(numbers, _int(classes)))
    row = _first_row_where(outside)
    if row is not None:
        rule = f"row {first_row + row}: a label must be a class index from 0 to {classes - 1} (label_classes = {classes})"
        raise bad_request("a label is outside the classes declared for its column; nothing was stored",
                          FieldViolation(column_field(column.name), rule))


def _check_categories(values: pa.Array, column: ColumnSpec, first_row: int) -> None:
    """A column with declared categories holds only those (missing values pass: statistics drop
    them); the error names the column, the row and the rule, never the value."""
    kind = pa.int64() if column.type is ColumnType.INTEGER else pa.string()
    declared = pa.array([int(c) if column.type is ColumnType.INTEGER else c for c in column.categories], kind)
    outside = pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=declared)))
    row = _first_row_where(outside)
    if row is not None:
        rule = f"row {first_row + row}: not one of the {len(declared)} categories declared for this column"
        raise bad_request("a value is outside the categories declared for its column; nothing was stored",
                          FieldViolation(column_field(column.name), rule))


def deidentify_batch(
    batch: pa.RecordBatch,
    policy: DeidPolicy,
    pseudonymizer: Pseudonymizer,
    *,
    first_row: int = 1,
    linkage: LinkagePseudonymizer | None = None,
) -> DeidBatchResult:
    """Drops identifiers, pseudonymises the patient key (and the linkage identifier, with
    `linkage`, required when the policy declares one), generalises quasi-identifiers.

    `first_row` is the file row number of the batch's first row, for error messages.
    """
    arrays = []
    for column in stored_columns(policy):
        values = batch.column(column.name)
        treatment = column.role.spec.treatment
        if treatment is Treatment.LINK:
            if linkage is None:
                raise ValueError("the policy declares a linkage column: pass the linkage pseudonymizer")
            arrays.append(linkage.pseudonymize(values))
        elif treatment is Treatment.PSEUDONYMIZE:
            pseudonyms = pseudonymizer.pseudonymize_encoded(values)
            arrays.append(pseudonyms.dictionary_decode())
            if column.role.spec.privacy_unit:
                patients = pseudonyms
        elif treatment is Treatment.GENERALIZE:
            arrays.append(_generalize(values, column, first_row))
        else:
            arrays.append(cast_column(values, column.name, column.type, first_row))
            if column.label_classes:
                _check_label_domain(arrays[-1], column, first_row)
            if column.categories:
                _check_categories(arrays[-1], column, first_row)
    result = pa.RecordBatch.from_arrays(arrays, schema=stored_arrow_schema(policy))
    keys = batch.column(policy.patient_key.name)
    if keys.null_count == 0:
        return _with_linkage(DeidBatchResult(result, 0, patients), policy)  # the usual batch: spare a copy of it
    valid = pc.is_valid(keys)
    kept = result.filter(valid)
    return _with_linkage(DeidBatchResult(kept, batch.num_rows - kept.num_rows, patients.filter(valid)), policy)


def _with_linkage(result: DeidBatchResult, policy: DeidPolicy) -> DeidBatchResult:
    unlinked = unlinked_rows(result.batch, policy)
    return replace(result, rows_without_linkage_id=unlinked) if unlinked else result


def unlinked_rows(batch: pa.RecordBatch, policy: DeidPolicy) -> int:
    """The de-identified rows left unlinked (an empty linkage pseudonym); 0 without a linkage column."""
    column = policy.linkage
    if column is None or batch.num_rows == 0:
        return 0
    return int(pc.sum(pc.equal(batch.column(column.name), _text(""))).as_py() or 0)


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


class _Interned:
    """Dense int32 ids for distinct strings, in order of first appearance, kept in Arrow."""

    def __init__(self) -> None:
        self.values = pa.array([], pa.string())  # id -> string

    def ids_of(self, strings: pa.Array) -> pa.Array:
        """Each string's id (new strings get the next ids); nulls stay null."""
        encoded = strings.dictionary_encode()
        return self.ids_of_distinct(encoded.dictionary).take(encoded.indices)

    def ids_of_distinct(self, uniques: pa.Array) -> pa.Array:
        """The ids of distinct strings (new strings get the next ids)."""
        positions = pc.index_in(uniques, value_set=self.values)
        unknown = pc.is_null(positions)
        if pc.any(unknown).as_py():
            # New strings go to the end, in order: their ids follow from that.
            appended = pc.add(pc.cumulative_sum(pc.cast(unknown, pa.int32())), _int32(len(self.values) - 1))
            positions = pc.coalesce(positions, appended)
            self.values = pa.concat_arrays([self.values, uniques.filter(unknown)])
        return positions


class EquivalenceClassCounter:
    """Distinct patients per equivalence class, over de-identified batches.

    Each class and each patient gets a small integer id (looked up in Arrow against those seen so
    far, once per distinct value of a batch), so a (class, patient)
    pair is one int64: 8 bytes, where a pseudonym alone takes 36. Pairs are deduplicated
    (pc.unique) whenever the undeduplicated tail outgrows the distinct ones, so memory follows
    distinct patients and pairs, not rows.
    """

    def __init__(self, policy: DeidPolicy) -> None:
        self._columns = tuple(c.name for c in policy.quasi_identifiers)
        self._patient = policy.patient_key.name
        self._class_keys = _Interned()  # class key -> class id
        # pseudonym -> patient id: 36 bytes a patient. An Arrow set lookup rebuilds its hash of
        # every patient seen once a batch; still cheaper than a dict up to ~100k patients, as the
        # Pseudonymizer's cache does.
        self._patients = _Interned()
        self._pairs = pa.array([], pa.int64())  # distinct class_id << 32 | patient_id
        self._pending: list[pa.Array] = []
        self._pending_rows = 0
        self._per_class: tuple[pa.Array, pa.Array] | None = None  # until the next update

    def update(self, batch: pa.RecordBatch, patients: pa.DictionaryArray | None = None) -> pa.Array:
        """Counts the batch; returns each row's class id, for suppress_small_classes.

        `patients`, the batch's patient column dictionary-encoded (DeidBatchResult.patients),
        spares encoding it here.
        """
        self._per_class = None
        ids = self._ids_of(class_keys(batch, self._columns))
        if patients is None:
            patients = self._patient_ids(batch.column(self._patient))
        else:
            patients = self._patient_ids_of_distinct(patients.dictionary).take(patients.indices)
        pairs = pc.add(pc.shift_left(pc.cast(ids, pa.int64()), _int(32)), pc.cast(patients, pa.int64()))
        if pairs.null_count:
            pairs = pairs.drop_null()  # rows without a patient count for no patient
        self._pending.append(pairs)
        self._pending_rows += len(pairs)
        if self._pending_rows > max(_COMPACT_ROWS, len(self._pairs)):
            self._compact()
        return ids

    def _ids_of(self, keys: pa.Array) -> pa.Array:
        return self._class_keys.ids_of(keys)

    def _patient_ids(self, values: pa.Array | pa.ChunkedArray) -> pa.Array:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        encoded = pc.cast(values, pa.string()).dictionary_encode()  # nulls stay null in the indices
        return self._patient_ids_of_distinct(encoded.dictionary).take(encoded.indices)

    def _patient_ids_of_distinct(self, uniques: pa.Array) -> pa.Array:
        return self._patients.ids_of_distinct(uniques)

    def _compact(self) -> None:
        if not self._pending:
            return
        self._pairs = pc.unique(pa.chunked_array([self._pairs, *self._pending], pa.int64()))
        self._pending, self._pending_rows = [], 0

    def _patients_per_class(self) -> tuple[pa.Array, pa.Array]:
        """(class ids, distinct patients in each)."""
        if self._per_class is None:
            self._compact()
            counts = pc.value_counts(pc.cast(pc.shift_right(self._pairs, _int(32)), pa.int32()))
            self._per_class = (counts.field("values"), counts.field("counts"))
        return self._per_class

    def small_classes(self, k: int) -> SmallClasses:
        classes, patients = self._patients_per_class()
        ids = classes.filter(pc.less(patients, _int(k)))
        keys = self._class_keys.values.take(ids)
        return SmallClasses(self._columns, keys, ids)

    def class_count(self) -> int:
        return len(self._class_keys.values)  # every class seen holds a pair

    def patient_count(self) -> int:
        self._compact()
        return int(pc.count_distinct(pc.bit_wise_and(self._pairs, _int(0xFFFFFFFF))).as_py())

    def patients_outside(self, small: SmallClasses) -> int:
        """Distinct patients with a row in a class that is not small: those a dataset keeps."""
        self._compact()
        classes = pc.cast(pc.shift_right(self._pairs, _int(32)), pa.int32())
        kept = self._pairs.filter(pc.invert(pc.is_in(classes, value_set=small.ids)))
        return int(pc.count_distinct(pc.bit_wise_and(kept, _int(0xFFFFFFFF))).as_py())


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
    violations = []
    for column in policy.columns:
        if column.type is not ColumnType.STRING or not column.role.spec.scanned_for_identifiers:
            continue
        values = batch.column(column.name)
        if not pc.any(pc.match_substring_regex(values, _ANY_IDENTIFIER)).as_py():
            continue  # the usual case: one regex pass instead of one per kind
        for kind, pattern in IDENTIFIER_PATTERNS:
            if pc.any(pc.match_substring_regex(values, pattern)).as_py():
                message = (f"contains what look like {kind}; "
                           "declare the column DIRECT_IDENTIFIER or remove them")
                violations.append(FieldViolation(column_field(column.name), message))
    return violations
