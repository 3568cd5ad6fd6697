"""Arrow execution of de-identification policies (cleanroom.datasets.deidentify)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import math
import traceback
from collections import defaultdict
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleanroom.datasets import deidentify as deid_module
from cleanroom.datasets.deidentify import (
    EquivalenceClassCounter,
    Pseudonymizer,
    arrow_schema_for,
    deidentify_batch,
    read_csv_batches,
    read_parquet_batches,
    scan_for_identifiers,
    stored_arrow_schema,
    suppress_small_classes,
)
from cleanroom.domain.deid import (
    AgeBand,
    ColumnRole,
    ColumnSpec,
    ColumnType,
    DateTruncation,
    PrefixTruncation,
    Suppress,
    validate_policy,
)
from cleanroom.domain.errors import CleanroomError, ErrorCode

T, R = ColumnType, ColumnRole
KEY = b"k" * 32


def policy_of(*columns: ColumnSpec, k: int = 2):
    return validate_policy(columns, k)


def pid(type_: ColumnType = T.STRING) -> ColumnSpec:
    return ColumnSpec("pid", type_, R.PATIENT_KEY)


def qi(name, type_, rule) -> ColumnSpec:
    return ColumnSpec(name, type_, R.QUASI_IDENTIFIER, rule)


def assert_no_leak(error: CleanroomError, canary: str) -> None:
    """The canary must appear nowhere: message, violations, or a logged traceback."""
    texts = [str(error), error.message, *traceback.format_exception(error)]
    texts += [f"{v.field} {v.description}" for v in error.violations]
    assert all(canary not in text for text in texts)


def raised(fn, *args, **kwargs) -> CleanroomError:
    with pytest.raises(CleanroomError) as caught:
        result = fn(*args, **kwargs)
        if hasattr(result, "__next__"):
            list(result)
    assert caught.value.code is ErrorCode.BAD_REQUEST
    return caught.value


def violations(error: CleanroomError) -> set[tuple[str, str]]:
    return {(v.field, v.description) for v in error.violations}


# ---------------------------------------------------------------- pseudonyms


def test_pseudonyms_are_keyed_hmac_sha256_truncated():
    out = Pseudonymizer(KEY).pseudonymize(pa.array(["p1", None, "p2"]))
    expected = hmac.new(KEY, b"p1", hashlib.sha256).hexdigest()[:32]
    assert out.to_pylist()[0] == expected
    assert out.to_pylist()[1] is None
    assert len(out.to_pylist()[2]) == 32 and out[0] != out[2]


def test_pseudonyms_deterministic_per_key_different_across_keys():
    values = pa.array(["alice", "bob", "alice"])
    first = Pseudonymizer(KEY).pseudonymize(values).to_pylist()
    again = Pseudonymizer(KEY).pseudonymize(values).to_pylist()
    other = Pseudonymizer(b"o" * 32).pseudonymize(values).to_pylist()
    assert first == again and first[0] == first[2]
    assert set(first).isdisjoint(other)
    assert set(first).isdisjoint(values.to_pylist())


def test_pseudonyms_consistent_across_batches_and_types():
    pseudonymizer = Pseudonymizer(KEY, cache_size=1)  # also across cache evictions
    batch_one = pseudonymizer.pseudonymize(pa.array([101, 202]))
    batch_two = pseudonymizer.pseudonymize(pa.chunked_array([["202", "101"]]))
    assert batch_one.to_pylist() == batch_two.to_pylist()[::-1]


def test_one_hmac_per_unique_value(monkeypatch):
    calls = []
    real = hmac.digest
    monkeypatch.setattr(deid_module.hmac, "digest", lambda *a: calls.append(1) or real(*a))
    pseudonymizer = Pseudonymizer(KEY)
    pseudonymizer.pseudonymize(pa.array([f"p{i % 50}" for i in range(10_000)]))
    pseudonymizer.pseudonymize(pa.array([f"p{i % 60}" for i in range(10_000)]))
    assert len(calls) == 60


def test_pseudonym_cache_is_bounded(monkeypatch):
    calls = []
    real = hmac.digest
    monkeypatch.setattr(deid_module.hmac, "digest", lambda *a: calls.append(1) or real(*a))
    pseudonymizer = Pseudonymizer(KEY, cache_size=4)
    for values in (["a", "b", "c"], ["d", "e", "f"], ["a", "b", "c"]):
        pseudonymizer.pseudonymize(pa.array(values))
    assert len(calls) == 9  # the cache was emptied rather than grown past its bound


def test_pseudonymizer_refuses_a_short_key():
    with pytest.raises(ValueError):
        Pseudonymizer(b"short")


# ---------------------------------------------------------------- generalisation


def deidentified(values: pa.Array, column: ColumnSpec) -> list:
    policy = policy_of(pid(), column)
    batch = pa.RecordBatch.from_arrays([pa.array(["p"] * len(values)), values],
                                       names=["pid", column.name])
    return deidentify_batch(batch, policy, Pseudonymizer(KEY)).batch.column(column.name).to_pylist()


def test_age_bands_and_top_code():
    ages = pa.array([0, 9.5, 10, 49.9, 89, 90, 120, None, math.nan, math.inf])
    assert deidentified(ages, qi("age", T.FLOAT, AgeBand(10))) == [
        "0-9", "0-9", "10-19", "40-49", "80-89", "90+", "90+", None, None, "90+"]


def test_age_band_stops_below_an_unaligned_top_code():
    ages = pa.array([79, 80, 84, 85], pa.int64())
    assert deidentified(ages, qi("age", T.INTEGER, AgeBand(10, 85))) == [
        "70-79", "80-84", "80-84", "85+"]
    assert deidentified(ages, qi("age", T.INTEGER, AgeBand(1))) == ["79", "80", "84", "85"]


def test_negative_age_names_column_and_row_not_value():
    ages = pa.array([30, -4242], pa.int64())
    policy = policy_of(pid(), qi("age", T.INTEGER, AgeBand(10)))
    batch = pa.RecordBatch.from_arrays([pa.array(["a", "b"]), ages], names=["pid", "age"])
    error = raised(deidentify_batch, batch, policy, Pseudonymizer(KEY), first_row=11)
    assert violations(error) == {("columns[age]", "row 12: an age must not be negative")}
    assert_no_leak(error, "4242")


@pytest.mark.parametrize("precision, expected", [("month", "2024-03"), ("year", "2024")])
def test_dates_truncated(precision, expected):
    dates = pa.array([dt.date(2024, 3, 15), None], pa.date32())
    assert deidentified(dates, qi("d", T.DATE, DateTruncation(precision))) == [expected, None]
    strings = pa.array(["2024-03-15", "2024-03-01T10:00:00+09:00", None])
    assert deidentified(strings, qi("d", T.STRING, DateTruncation(precision))) == [
        expected, expected, None]


def test_non_iso_date_strings_refused_without_value():
    strings = pa.array(["2024-03-15", "15/03/CANARY"])
    policy = policy_of(pid(), qi("d", T.STRING, DateTruncation("year")))
    batch = pa.RecordBatch.from_arrays([pa.array(["a", "b"]), strings], names=["pid", "d"])
    error = raised(deidentify_batch, batch, policy, Pseudonymizer(KEY))
    assert violations(error) == {("columns[d]", "row 2: not an ISO 8601 date (YYYY-MM-DD)")}
    assert_no_leak(error, "CANARY")


def test_prefix_masking():
    column = qi("zip", T.STRING, PrefixTruncation(3))
    values = pa.array(["06236", "12", "", None, "서울특별시", "abc\nd"])
    assert deidentified(values, column) == ["062**", "12", "", None, "서울특**", "abc**"]
    assert deidentified(pa.array(["06236"]), qi("zip", T.STRING, PrefixTruncation(0))) == ["*****"]
    assert deidentified(pa.array([12345]), qi("zip", T.INTEGER, PrefixTruncation(2))) == ["12***"]


def test_suppress_replaces_everything_including_missing():
    values = pa.array(["F", None, "M"])
    assert deidentified(values, qi("sex", T.STRING, Suppress())) == ["*", "*", "*"]


def test_deidentify_batch_schema_order_and_dropped_rows():
    policy = policy_of(
        ColumnSpec("hr", T.FLOAT, R.FEATURE),
        ColumnSpec("name", T.STRING, R.DIRECT_IDENTIFIER),
        qi("age", T.INTEGER, AgeBand(10)),
        pid(T.INTEGER),
        ColumnSpec("y", T.BOOLEAN, R.LABEL),
    )
    batch = pa.RecordBatch.from_pydict({
        "hr": [60.5, 70.0, 80.0], "name": ["Ann", "Bob", "Cy"], "age": [41, 52, 63],
        "pid": [7, None, 9], "y": [True, False, None]}, schema=arrow_schema_for(policy))
    result = deidentify_batch(batch, policy, Pseudonymizer(KEY))
    assert result.rows_without_patient_key == 1
    assert result.batch.schema == stored_arrow_schema(policy)
    assert result.batch.schema.names == ["hr", "age", "pid", "y"]
    rows = result.batch.to_pylist()
    assert [(r["hr"], r["age"], r["y"]) for r in rows] == [
        (60.5, "40-49", True), (80.0, "60-69", None)]
    assert rows[0]["pid"] == Pseudonymizer(KEY).pseudonymize(pa.array(["7"]))[0].as_py()


# ---------------------------------------------------------------- k-anonymity

AGE_POLICY = policy_of(pid(), qi("age", T.INTEGER, AgeBand(10)), k=2)


def deid_batch(pids: list, ages: list, policy=AGE_POLICY) -> pa.RecordBatch:
    raw = pa.RecordBatch.from_pydict({"pid": pids, "age": ages}, schema=arrow_schema_for(policy))
    return deidentify_batch(raw, policy, Pseudonymizer(KEY)).batch


def test_class_of_many_rows_from_one_patient_is_small():
    batch = deid_batch(["a"] * 5 + ["b", "c"], [41] * 5 + [55, 57])
    counter = EquivalenceClassCounter(AGE_POLICY)
    counter.update(batch)
    small = counter.small_classes(2)
    assert len(small) == 1 and counter.class_count() == 2 and counter.patient_count() == 3
    kept, removed = suppress_small_classes(batch, small)
    assert removed == 5 and kept.column("age").to_pylist() == ["50-59", "50-59"]


def test_classes_spanning_batches_count_patients_once():
    counter = EquivalenceClassCounter(AGE_POLICY)
    counter.update(deid_batch(["a", "a"], [41, 42]))
    counter.update(deid_batch(["a"], [43]))  # same patient again: still one
    counter.update(deid_batch(["b"], [61]))
    assert {k for k in counter.small_classes(2).keys.to_pylist()} == {"5:40-49", "5:60-69"}
    counter.update(deid_batch(["c"], [65]))  # a second patient in 60-69
    assert counter.small_classes(2).keys.to_pylist() == ["5:40-49"]
    assert counter.class_count() == 2


def test_no_quasi_identifiers_is_one_class_that_needs_k_patients():
    policy = policy_of(pid(), ColumnSpec("hr", T.FLOAT, R.FEATURE), k=3)
    raw = pa.RecordBatch.from_pydict({"pid": ["a", "b", "a"], "hr": [1.0, 2.0, 3.0]},
                                     schema=arrow_schema_for(policy))
    batch = deidentify_batch(raw, policy, Pseudonymizer(KEY)).batch
    counter = EquivalenceClassCounter(policy)
    counter.update(batch)
    assert counter.class_count() == 1
    assert suppress_small_classes(batch, counter.small_classes(3))[1] == 3
    assert suppress_small_classes(batch, counter.small_classes(2))[1] == 0


def test_class_keys_cannot_collide_through_separators():
    rule = PrefixTruncation(10)
    policy = policy_of(pid(), qi("a", T.STRING, rule), qi("b", T.STRING, rule), k=2)
    raw = pa.RecordBatch.from_pydict(
        {"pid": ["p1", "p2", "p3"], "a": ["x\x1f", "x", None], "b": ["y", "\x1fy", "~"]},
        schema=arrow_schema_for(policy))
    counter = EquivalenceClassCounter(policy)
    counter.update(deidentify_batch(raw, policy, Pseudonymizer(KEY)).batch)
    assert counter.class_count() == 3


class_rows = st.lists(st.tuples(st.sampled_from("abcdefg"), st.integers(0, 60)), max_size=80)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=class_rows, split=st.integers(0, 80), k=st.integers(2, 4))
def test_suppression_removes_exactly_the_small_classes(rows, split, k):
    batches = [deid_batch([p for p, _ in part], [a for _, a in part])
               for part in (rows[:split], rows[split:])]
    counter = EquivalenceClassCounter(AGE_POLICY)
    for batch in batches:
        counter.update(batch)
    patients = defaultdict(set)  # reference: band -> patients, from the raw rows
    for patient, age in rows:
        patients[age // 10].add(patient)
    expected_kept = sum(1 for _, age in rows if len(patients[age // 10]) >= k)
    small = counter.small_classes(k)
    assert len(small) == sum(1 for members in patients.values() if len(members) < k)
    kept = [suppress_small_classes(batch, small)[0] for batch in batches]
    assert sum(b.num_rows for b in kept) == expected_kept


# ---------------------------------------------------------------- identifier scan

SCAN_POLICY = policy_of(
    pid(),
    ColumnSpec("name", T.STRING, R.DIRECT_IDENTIFIER),
    ColumnSpec("notes", T.STRING, R.FEATURE),
    qi("region", T.STRING, PrefixTruncation(2)),
    ColumnSpec("label", T.STRING, R.LABEL),
)


def scan(column: str, values: list[str]) -> set[tuple[str, str]]:
    data = {c.name: ["fine"] * len(values) for c in SCAN_POLICY.columns}
    data[column] = values
    batch = pa.RecordBatch.from_pydict(data, schema=arrow_schema_for(SCAN_POLICY))
    return {(v.field, v.description) for v in scan_for_identifiers(batch, SCAN_POLICY)}


@pytest.mark.parametrize("kind, planted", [
    ("resident registration numbers", "900101-1234567"),
    ("resident registration numbers", "RRN 8512312234567 on file"),
    ("phone numbers", "call 010-1234-5678"),
    ("phone numbers", "01012345678"),
    ("phone numbers", "office 02-123-4567"),
    ("phone numbers", "(031) 123-4567"),
    ("phone numbers", "+82 10 1234 5678"),
    ("phone numbers", "+82-2-123-4567"),
    ("phone numbers", "+1 555 123 4567"),
    ("phone numbers", "+44 20 7946 0958"),
    ("e-mail addresses", "write to kim.minsu@hospital.co.kr"),
])
@pytest.mark.parametrize("column", ["notes", "region", "label"])
def test_scan_finds_identifiers_and_names_the_column(kind, planted, column):
    found = scan(column, ["nothing here", planted, None])
    assert len(found) == 1
    field, description = found.pop()
    assert field == f"columns[{column}]" and kind in description
    assert planted not in description and "1234" not in description


@pytest.mark.parametrize("ordinary", [
    "3.14159", "0.9001011234567", "2024-03-15", "2024-03-15T10:20:30+09:00", "1234567890123",
    "9913011234567", "hello world", "score +5 points", "1e+10", "12.5 +- 0.3", "1,234,567",
    "v1.2.3", "010", "@handle", "BP 120/80", "lot 20240315-01",
])
def test_scan_ignores_ordinary_values(ordinary):
    assert scan("notes", [ordinary]) == set()


def test_scan_skips_identifier_and_key_columns_and_reports_each_kind_once():
    assert scan("name", ["900101-1234567"]) == set()
    assert scan("pid", ["a@b.com"]) == set()
    found = scan("notes", ["a@b.com", "c@d.org", "900101-1234567"])
    assert {d.split(";")[0] for _, d in found} == {
        "contains what look like e-mail addresses",
        "contains what look like Korean resident registration numbers"}


# ---------------------------------------------------------------- CSV

CSV_POLICY = policy_of(
    pid(),
    ColumnSpec("name", T.STRING, R.DIRECT_IDENTIFIER),
    ColumnSpec("hr", T.FLOAT, R.FEATURE),
    ColumnSpec("n", T.INTEGER, R.FEATURE),
    ColumnSpec("seen", T.DATE, R.FEATURE),
    ColumnSpec("ok", T.BOOLEAN, R.LABEL),
)
HEADER = "name,ok,pid,hr,n,seen\n"


def read_csv(text: str | bytes, policy=CSV_POLICY, **kwargs) -> list[pa.RecordBatch]:
    data = text.encode() if isinstance(text, str) else text
    return list(read_csv_batches(io.BytesIO(data), policy, **kwargs))


def test_arrow_schema_for_policy():
    assert arrow_schema_for(CSV_POLICY) == pa.schema([
        ("pid", pa.string()), ("name", pa.string()), ("hr", pa.float64()),
        ("n", pa.int64()), ("seen", pa.date32()), ("ok", pa.bool_())])


def test_csv_is_typed_and_reordered_as_declared():
    batches = read_csv(HEADER + "Ann,true,p1,61.5,3,2024-01-02\nBob,,p2,NA,,\n")
    table = pa.Table.from_batches(batches)
    assert table.schema == arrow_schema_for(CSV_POLICY)
    assert table.to_pylist() == [
        {"pid": "p1", "name": "Ann", "hr": 61.5, "n": 3, "seen": dt.date(2024, 1, 2), "ok": True},
        {"pid": "p2", "name": "Bob", "hr": None, "n": None, "seen": None, "ok": None}]


def test_csv_header_must_match_declared_columns():
    error = raised(read_csv, "name,ok,pid,hr,seen,extra,extra\n")
    assert violations(error) == {
        ("columns[n]", "declared but not in the file"),
        ("columns[extra]", "in the file but not declared"),
        ("columns[extra]", "appears more than once in the file")}


def test_csv_without_header_does_not_echo_its_first_row():
    error = raised(read_csv, "CANARY-Kim,true,p1,61.5,3,2024-01-02\n")
    assert ("file", "names none of the declared columns (no header row?)") in violations(error)
    assert_no_leak(error, "CANARY")


@pytest.mark.parametrize("text", ["", "\n"])
def test_empty_csv(text):
    assert raised(read_csv, text).message == "the file is empty"


def test_header_only_csv_yields_no_batches():
    assert read_csv(HEADER) == []


def test_conversion_error_names_column_and_row_not_value():
    rows = "".join(f"n{i},true,p{i},{i}.5,{i},2024-01-02\n" for i in range(2000))
    text = HEADER + rows + "x,true,p,CANARY42,1,2024-01-02\n"
    error = raised(read_csv, text, block_size=4096)  # the bad row is far past the first batch
    assert error.message == "a value does not match its declared type"
    assert violations(error) == {("columns[hr]", "row 2001: not a valid number")}
    assert_no_leak(error, "CANARY42")


@pytest.mark.parametrize("column, cell, expected", [
    ("n", "4.5", "not a valid integer: the value has a fractional part"),
    ("n", "4.5e1", "not a valid integer"),
    ("seen", "2024-02-30", "not a valid date (YYYY-MM-DD)"),
    ("ok", "maybe", "not a valid boolean (true/false)"),
])
def test_conversion_errors_for_each_type(column, cell, expected):
    values = {"name": "a", "ok": "true", "pid": "p", "hr": "1", "n": "1", "seen": "2024-01-01"}
    good = ",".join(values.values()) + "\n"
    values[column] = cell
    error = raised(read_csv, HEADER + good + ",".join(values.values()) + "\n")
    assert violations(error) == {(f"columns[{column}]", f"row 2: {expected}")}
    assert_no_leak(error, cell)


@pytest.mark.parametrize("block_size", [1 << 20, 64])  # in the one block, or in a later one
def test_integral_decimals_in_an_integer_column_are_integers(block_size):
    cells = ["97.0", "97.00", "-3.", "0.000", "12"]
    rows = "".join(f"a,true,p{i},1,{cell},2024-01-01\n" for i, cell in enumerate(cells))
    table = pa.Table.from_batches(read_csv(HEADER + rows, block_size=block_size))
    assert table.column("n").type == pa.int64()
    assert table.column("n").to_pylist() == [97, 97, -3, 0, 12]


@pytest.mark.parametrize("cell", ["97.5", "97.05", ".5", "-0.25"])
def test_a_fractional_integer_is_refused_saying_why_but_not_what(cell):
    text = HEADER + "a,true,p,1,97.0,2024-01-01\n" + f"a,true,p,1,{cell},2024-01-01\n"
    error = raised(read_csv, text)
    assert violations(error) == {("columns[n]", "row 2: not a valid integer: the value has a fractional part")}
    assert_no_leak(error, cell)


def test_invalid_utf8_in_a_string_column_names_the_row():
    error = raised(read_csv, HEADER.encode() + b"CANARY\xff,true,p,1,1,2024-01-01\n")
    assert violations(error) == {("columns[name]", "row 1: not a valid UTF-8 text")}
    assert_no_leak(error, "CANARY")


@pytest.mark.parametrize("good_rows", [0, 3000])  # in the first block, or a later one
def test_ragged_row_reported_without_its_content(good_rows):
    rows = "a,true,p,1,1,2024-01-01\n" * good_rows
    text = HEADER + rows + "a,true,p,1,1,2024-01-01,CANARY7\n"
    error = raised(read_csv, text, block_size=4096)
    assert violations(error) == {("file", "a row has 7 fields but the header has 6")}
    assert_no_leak(error, "CANARY7")


def test_csv_batches_follow_block_size():
    rows = "".join(f"n{i},false,p{i},{i},{i},2024-01-02\n" for i in range(3000))
    batches = read_csv(HEADER + rows, block_size=8192)
    assert len(batches) > 1 and sum(b.num_rows for b in batches) == 3000
    assert pa.Table.from_batches(batches).column("n").to_pylist() == list(range(3000))


# ---------------------------------------------------------------- Parquet


def parquet_file(table: pa.Table) -> io.BytesIO:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    sink.seek(0)
    return sink


PARQUET_TABLE = pa.table({
    "ok": pa.array([True, None]), "n": pa.array([1, 2], pa.int32()),
    "seen": pa.array([dt.date(2024, 1, 2), None], pa.date32()), "hr": pa.array([1.5, None]),
    "pid": pa.array(["p1", "p2"]).dictionary_encode(), "name": pa.array(["Ann", "Bob"])})


def test_parquet_round_trip_typed_and_reordered():
    batches = list(read_parquet_batches(parquet_file(PARQUET_TABLE), CSV_POLICY))
    table = pa.Table.from_batches(batches)
    assert table.schema == arrow_schema_for(CSV_POLICY)
    assert table.to_pylist()[0] == {"pid": "p1", "name": "Ann", "hr": 1.5, "n": 1,
                                    "seen": dt.date(2024, 1, 2), "ok": True}


def test_parquet_type_mismatch():
    table = PARQUET_TABLE.set_column(3, "hr", pa.array(["1.5", "x"]))
    error = raised(read_parquet_batches, parquet_file(table), CSV_POLICY)
    assert violations(error) == {("columns[hr]", "stored as string but declared FLOAT")}


def test_parquet_value_out_of_range_names_row_not_value():
    table = PARQUET_TABLE.set_column(1, "n", pa.array([1, 18446744073709551615], pa.uint64()))
    error = raised(read_parquet_batches, parquet_file(table), CSV_POLICY)
    assert violations(error) == {("columns[n]", "row 2: not a valid integer")}
    assert_no_leak(error, "18446744073709551615")


def test_parquet_float_column_feeds_an_integer_column_when_integral():
    table = PARQUET_TABLE.set_column(1, "n", pa.array([97.0, None]))  # pandas' ints with a gap
    batches = list(read_parquet_batches(parquet_file(table), CSV_POLICY))
    assert pa.Table.from_batches(batches).column("n").to_pylist() == [97, None]


@pytest.mark.parametrize("value, rule", [
    (97.5, "not a valid integer: the value has a fractional part"),
    (math.nan, "not a valid integer"),
    (math.inf, "not a valid integer"),
    (1e30, "not a valid integer"),
])
def test_parquet_float_that_is_no_integer_names_row_and_rule(value, rule):
    table = PARQUET_TABLE.set_column(1, "n", pa.array([1.0, value]))
    error = raised(read_parquet_batches, parquet_file(table), CSV_POLICY)
    assert violations(error) == {("columns[n]", f"row 2: {rule}")}
    assert_no_leak(error, "97.5")


def test_parquet_columns_must_match():
    table = PARQUET_TABLE.drop_columns(["name"]).append_column("extra", pa.array([1, 2]))
    error = raised(read_parquet_batches, parquet_file(table), CSV_POLICY)
    assert violations(error) == {("columns[name]", "declared but not in the file"),
                                 ("columns[extra]", "in the file but not declared")}


@pytest.mark.parametrize("data", [b"", b"PAR1 not really", HEADER.encode()])
def test_not_a_parquet_file(data):
    error = raised(read_parquet_batches, io.BytesIO(data), CSV_POLICY)
    assert error.message == "the file is not a valid Parquet file"


def test_parquet_decimal_feeds_a_float_column_and_rows_count_across_batches():
    table = PARQUET_TABLE.set_column(
        3, "hr", pa.array([Decimal("1.00"), Decimal("2.00")], pa.decimal128(10, 2)))
    batches = list(read_parquet_batches(parquet_file(table), CSV_POLICY, batch_size=1))
    assert [b.column("hr").to_pylist() for b in batches] == [[1.0], [2.0]]
    bad = PARQUET_TABLE.set_column(1, "n", pa.array([1, 2**63], pa.uint64()))
    error = raised(read_parquet_batches, parquet_file(bad), CSV_POLICY, batch_size=1)
    assert violations(error) == {("columns[n]", "row 2: not a valid integer")}


def test_csv_header_that_is_not_utf8():
    error = raised(read_csv, b"CANARY\xff,b\n1,2\n")
    assert error.message == "the header is not valid UTF-8"
    assert_no_leak(error, "CANARY")


def test_pyarrow_conversion_messages_are_mapped_without_the_value():
    message = "In CSV column #1: CSV conversion error to double: invalid value 'CANARY9'"
    error = deid_module._csv_error(pa.ArrowInvalid(message), ["pid", "hr"])
    assert violations(error) == {("columns[hr]", "a value could not be read")}
    assert_no_leak(error, "CANARY9")
    unknown = deid_module._csv_error(pa.ArrowInvalid("odd failure near 'CANARY9'"), ["pid"])
    assert unknown.message == "the file is not valid CSV" and not unknown.violations
    assert_no_leak(unknown, "CANARY9")
