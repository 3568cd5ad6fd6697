"""Declared column categories (ColumnSpec.categories): validated at upload, enforced while ingesting,
stored, shown, and a public key space for statistics (a grouped count answers every declared key,
empty ones too, without a τ-threshold or δ)."""

from __future__ import annotations

import json

import grpc
import pyarrow as pa
import pytest

from cleanroom.datasets.deidentify import Pseudonymizer, deidentify_batch
from cleanroom.domain.deid import ColumnRole, ColumnSpec, ColumnType, validate_policy
from cleanroom.domain.errors import CleanroomError
from cleanroom.domain.identity import Role
from cleanroom.sdk.schema import SchemaError, parse_schema
from cleanroom.statistics.engine import Query, run_query, validate_query
from cleanroom.storage import dataset_repo
from tests.api.test_datasets_api import CANARIES, HEADER, _expect_error, _nothing_stored, _rows, _schema, _upload
from tests.conftest import make_config, start_server

OUTCOME, NOTE = HEADER.index("outcome"), HEADER.index("note")
CANARY_CODE = 7331  # an undeclared integer value that must never be echoed


@pytest.fixture
def owner(running):
    _, token = running.principal(Role.DATA_OWNER, "Hospital A")
    with running.client(token) as client:
        yield client


def _with(column: int, value: object, at: int = 20) -> list[list[object]]:
    rows = _rows()
    rows[at][column] = value
    return rows


# --- upload: declared, stored, shown, enforced ---------------------------------------------------


def test_declared_categories_are_stored_and_shown(running, owner, tmp_path) -> None:
    dataset = _upload(owner, tmp_path, schema=_schema(outcome={"categories": [0, 1, 2]}))
    assert {c.name: list(c.categories) for c in dataset.columns}["outcome"] == ["0", "1", "2"]
    again = owner.get_dataset(dataset.name)  # read back from the database
    assert {c.name: list(c.categories) for c in again.columns}["outcome"] == ["0", "1", "2"]
    with running.app.db.read() as session:
        stored = dataset_repo.get_dataset(session, dataset.name.removeprefix("datasets/"))
    assert {c.name: c.categories for c in stored.columns}["outcome"] == ("0", "1", "2")


def test_an_integer_outside_the_declared_categories_refuses_the_upload_without_the_value(running, owner, tmp_path) -> None:
    error = _expect_error(lambda: _upload(owner, tmp_path, rows=_with(OUTCOME, CANARY_CODE),
                                          schema=_schema(outcome={"categories": [0, 1]})),
                          grpc.StatusCode.INVALID_ARGUMENT)
    assert [(v.field, v.description) for v in error.violations] == [
        ("columns[outcome]", "row 21: not one of the 2 categories declared for this column")]
    assert str(CANARY_CODE) not in str(error)
    _nothing_stored(running, owner)


def test_a_text_outside_the_declared_categories_is_refused_too(running, owner, tmp_path) -> None:
    # Row 1's note holds a canary; every other note is "stable" or "ok".
    error = _expect_error(lambda: _upload(owner, tmp_path, schema=_schema(note={"categories": ["stable", "ok"]})),
                          grpc.StatusCode.INVALID_ARGUMENT)
    assert [(v.field, v.description) for v in error.violations] == [
        ("columns[note]", "row 1: not one of the 2 categories declared for this column")]
    assert CANARIES["note"] not in str(error)
    _nothing_stored(running, owner)


def test_integral_decimals_and_missing_values_are_within_the_categories(running, owner, tmp_path) -> None:
    rows = _with(OUTCOME, "1.0")
    rows[21][OUTCOME] = ""
    dataset = _upload(owner, tmp_path, rows=rows, schema=_schema(outcome={"categories": [0, 1]}))
    assert dataset.intake_report.rows_stored == 36


@pytest.mark.parametrize("changes, words", [
    ({"age": {"categories": [40, 41]}}, "only FEATURE or LABEL"),
    ({"patient_id": {"categories": ["a"]}}, "only FEATURE or LABEL"),
    ({"heart_rate": {"categories": [60, 61]}}, "INTEGER or STRING columns, not FLOAT"),
    ({"outcome": {"categories": [0, 1, 0]}}, "declared twice"),
    ({"outcome": {"categories": ["01", "1"]}}, "whole numbers written plainly"),
    ({"outcome": {"categories": ["one"]}}, "whole numbers written plainly"),
    ({"note": {"categories": [""]}}, "1 to 256 characters"),
    ({"note": {"categories": [str(i) for i in range(1001)]}}, "at most 1000"),
])
def test_bad_declarations_are_refused_before_reading_the_file(running, owner, tmp_path, changes, words) -> None:
    error = _expect_error(lambda: _upload(owner, tmp_path, schema=_schema(**changes)), grpc.StatusCode.INVALID_ARGUMENT)
    (column,) = changes
    assert any(v.field == f"columns[{column}].categories" and words in v.description for v in error.violations), error.violations
    _nothing_stored(running, owner)


def test_the_schema_file_reads_categories() -> None:
    columns = [{"name": "p", "type": "string", "role": "patient_key"},
               {"name": "sex", "type": "integer", "role": "feature", "categories": [0, 1]},
               {"name": "ward", "type": "string", "role": "feature", "categories": ["A", "B"]}]
    schema = parse_schema({"columns": columns})
    assert [list(c.categories) for c in schema.columns] == [[], ["0", "1"], ["A", "B"]]
    for bad in ([], [True, False], [0.5], "0,1"):
        columns[1]["categories"] = bad
        with pytest.raises(SchemaError, match="categories"):
            parse_schema({"columns": columns})


def test_the_check_on_arrow_batches_names_the_first_row_outside() -> None:
    policy = validate_policy([ColumnSpec("pid", ColumnType.STRING, ColumnRole.PATIENT_KEY),
                              ColumnSpec("sex", ColumnType.INTEGER, ColumnRole.FEATURE, categories=("0", "1"))], 2)
    ok = pa.record_batch({"pid": ["a", "b", "c"], "sex": pa.array([0, 1, None], pa.int64())})
    assert deidentify_batch(ok, policy, Pseudonymizer(b"k" * 32)).batch.num_rows == 3
    bad = pa.record_batch({"pid": ["a", "b", "c"], "sex": pa.array([1, -1, 2], pa.int64())})
    with pytest.raises(CleanroomError) as err:
        deidentify_batch(bad, policy, Pseudonymizer(b"k" * 32), first_row=10)
    assert [(v.field, v.description) for v in err.value.violations] == [
        ("columns[sex]", "row 11: not one of the 2 categories declared for this column")]


# --- statistics: a public key space ----------------------------------------------------------------


def test_only_a_declared_key_list_makes_a_number_column_groupable() -> None:
    schema = [("patient", "string"), ("sex", "integer")]
    query = Query(kind="count", group_by="sex", epsilon=1.0)
    with pytest.raises(CleanroomError) as err:
        validate_query(query, schema, patient_column="patient")
    assert "group_by" in {v.field for v in err.value.violations}
    validate_query(query, schema, patient_column="patient", public_group_keys={"sex": ["0", "1"]})  # no δ needed


def test_the_engine_answers_every_declared_key_in_declared_order() -> None:
    table = pa.table({"patient": [f"p{i}" for i in range(400)], "sex": pa.array([i % 2 for i in range(400)], pa.int64())})
    keys = {"sex": ["1", "0", "2"]}
    answer = run_query(table, Query(kind="count", group_by="sex", epsilon=2.0), patient_column="patient", public_group_keys=keys)
    assert [c.key for c in answer.cells] == [("1",), ("0",), ("2",)]
    assert answer.delta == 0 and "threshold" not in answer.mechanism.name
    assert [abs(c.value - n) < 30 for c, n in zip(answer.cells, (200, 200, 0))] == [True] * 3
    histogram = run_query(table, Query(kind="histogram", column="sex", epsilon=2.0), patient_column="patient", public_group_keys=keys)
    assert [c.key for c in histogram.cells] == [("1",), ("0",), ("2",)]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A dataset with declared categories on its integer label, shared with a manufacturer."""
    base = tmp_path_factory.mktemp("categories")
    running = start_server(make_config(base / "state", work_dir=base / "work"))
    _, owner_token = running.principal(Role.DATA_OWNER)
    maker_id, maker_token = running.principal(Role.MANUFACTURER)
    _, officer_token = running.principal(Role.PRIVACY_OFFICER)
    owner, maker, officer = (running.client(t) for t in (owner_token, maker_token, officer_token))
    dataset = _upload(owner, base, schema=_schema(outcome={"categories": [0, 1, 2]})).name
    officer.set_budget(dataset, epsilon=10, delta=1e-4, reason="total")
    officer.share_dataset(dataset, f"principals/{maker_id}", epsilon=5, delta=1e-4, reason="pilot")
    officer.set_approval_policy(dataset, max_epsilon=3, auto_approve_epsilon=2, reason="routine")
    yield {"running": running, "maker": maker, "officer": officer, "dataset": dataset}
    for client in (owner, maker, officer):
        client.close()
    running.server.stop(grace=0)


def test_a_grouped_count_over_declared_integer_categories_answers_every_key_without_a_threshold(shared) -> None:
    maker, dataset = shared["maker"], shared["dataset"]
    query = Query(kind="count", group_by="outcome", epsilon=1.0)  # δ = 0: the key space is public
    estimate = maker.estimate_query(dataset, query)
    assert estimate.delta == 0 and "select.threshold" not in estimate.expected_error
    answer = maker.run_query(dataset, query)
    assert [list(c.key) for c in answer.cells] == [["0"], ["1"], ["2"]]  # "2" never occurs: noise only
    assert answer.delta == 0 and "threshold" not in answer.mechanism
    mean = maker.run_query(dataset, Query(kind="mean", column="heart_rate", group_by="outcome", bounds=(0.0, 200.0), epsilon=1.0))
    assert [list(c.key) for c in mean.cells] == [["0"], ["1"], ["2"]]


def test_a_number_column_without_declared_categories_still_cannot_be_grouped(shared) -> None:
    maker, dataset = shared["maker"], shared["dataset"]
    ledger = list(shared["officer"].ledger(dataset=dataset))
    with pytest.raises(Exception) as err:
        maker.run_query(dataset, Query(kind="count", group_by="heart_rate", epsilon=1.0, delta=1e-6))
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in err.value.violations] == ["group_by"]
    assert list(shared["officer"].ledger(dataset=dataset)) == ledger


# --- storage: migration 0007 -----------------------------------------------------------------------


def test_migration_0007_gives_stored_columns_categories(tmp_path) -> None:
    from cleanroom.storage.db import migrate
    from tests.storage.test_storage import dataset_stored_before, stored_columns_json

    database, old = dataset_stored_before(tmp_path, "0006", "categories")
    # The reader takes a stored column without the key (today's table model no longer fits the old schema).
    assert {dataset_repo.column_from_json(c).categories for c in old} == {()}
    migrate(database.engine)
    with database.engine.connect() as connection:
        stored = json.loads(stored_columns_json(connection))
    assert all(c["categories"] == [] for c in stored) and len(stored) == len(old)
    database.dispose()
