"""Declared label classes (ColumnSpec.label_classes): validated at upload, enforced while ingesting,
stored, and shown. The job-side check (the model's num_classes must match) is in test_jobs_e2e."""

from __future__ import annotations

import grpc
import pyarrow as pa
import pytest

from cleanroom.datasets.deidentify import Pseudonymizer, deidentify_batch
from cleanroom.domain.deid import ColumnRole, ColumnSpec, ColumnType, validate_policy
from cleanroom.domain.errors import CleanroomError
from cleanroom.domain.identity import Role
from cleanroom.sdk.schema import SchemaError, parse_schema
from cleanroom.storage import dataset_repo
from tests.api.test_datasets_api import HEADER, _expect_error, _nothing_stored, _rows, _schema, _upload, _write_parquet

OUTCOME = HEADER.index("outcome")
CANARY_LABEL = 7331  # an out-of-domain label value that must never be echoed


@pytest.fixture
def owner(running):
    _, token = running.principal(Role.DATA_OWNER, "Hospital A")
    with running.client(token) as client:
        yield client


def _with_label(value: object, at: int = 20) -> list[list[object]]:
    rows = _rows()
    rows[at][OUTCOME] = value
    return rows


def test_declared_classes_are_stored_and_shown(running, owner, tmp_path) -> None:
    dataset = _upload(owner, tmp_path, schema=_schema(outcome={"label_classes": 2}))
    shown = {c.name: c.label_classes for c in dataset.columns}
    assert shown["outcome"] == 2 and shown["heart_rate"] == 0
    again = owner.get_dataset(dataset.name)  # read back from the database
    assert {c.name: c.label_classes for c in again.columns}["outcome"] == 2
    with running.app.db.read() as session:
        stored = dataset_repo.get_dataset(session, dataset.name.removeprefix("datasets/"))
    assert [c.label_classes for c in stored.columns if c.name == "outcome"] == [2]


def test_a_label_outside_the_declared_classes_refuses_the_upload_without_the_value(running, owner, tmp_path) -> None:
    error = _expect_error(lambda: _upload(owner, tmp_path, rows=_with_label(CANARY_LABEL),
                                          schema=_schema(outcome={"label_classes": 2})),
                          grpc.StatusCode.INVALID_ARGUMENT)
    assert [(v.field, v.description) for v in error.violations] == [
        ("columns[outcome]", "row 21: a label must be a class index from 0 to 1 (label_classes = 2)")]
    assert str(CANARY_LABEL) not in str(error)
    _nothing_stored(running, owner)


def test_a_negative_label_is_outside_too(running, owner, tmp_path) -> None:
    error = _expect_error(lambda: _upload(owner, tmp_path, rows=_with_label(-1, at=0),
                                          schema=_schema(outcome={"label_classes": 2})),
                          grpc.StatusCode.INVALID_ARGUMENT)
    assert [v.field for v in error.violations] == ["columns[outcome]"]
    _nothing_stored(running, owner)


def test_undeclared_classes_accept_any_integer_label(running, owner, tmp_path) -> None:
    dataset = _upload(owner, tmp_path, rows=_with_label(CANARY_LABEL))
    assert {c.name: c.label_classes for c in dataset.columns}["outcome"] == 0


def test_parquet_labels_are_checked_as_well(running, owner, tmp_path) -> None:
    path = _write_parquet(_with_label(5), tmp_path / "upload.parquet")
    error = _expect_error(lambda: owner.upload_dataset(path, _schema(outcome={"label_classes": 3})),
                          grpc.StatusCode.INVALID_ARGUMENT)
    assert [(v.field, v.description) for v in error.violations] == [
        ("columns[outcome]", "row 21: a label must be a class index from 0 to 2 (label_classes = 3)")]
    _nothing_stored(running, owner)


@pytest.mark.parametrize("changes, field, words", [
    ({"heart_rate": {"label_classes": 2}}, "columns[heart_rate].label_classes", "only LABEL columns"),
    ({"outcome": {"label_classes": -1}}, "columns[outcome].label_classes", "between 0"),
    ({"outcome": {"label_classes": 10001}}, "columns[outcome].label_classes", "10000"),
    ({"outcome": {"type": "float", "label_classes": 2}}, "columns[outcome].label_classes", "INTEGER or BOOLEAN"),
])
def test_bad_declarations_are_refused_before_reading_the_file(running, owner, tmp_path, changes, field, words) -> None:
    error = _expect_error(lambda: _upload(owner, tmp_path, schema=_schema(**changes)), grpc.StatusCode.INVALID_ARGUMENT)
    assert any(v.field == field and words in v.description for v in error.violations), error.violations
    _nothing_stored(running, owner)


def test_the_schema_file_reads_label_classes() -> None:
    columns = [{"name": "p", "type": "string", "role": "patient_key"},
               {"name": "y", "type": "integer", "role": "label", "label_classes": 4}]
    schema = parse_schema({"columns": columns})
    assert [c.label_classes for c in schema.columns] == [0, 4]
    columns[1]["label_classes"] = "four"
    with pytest.raises(SchemaError, match="label_classes"):
        parse_schema({"columns": columns})


# --- the check itself, on Arrow batches ----------------------------------------------------------


def _policy(label_type: ColumnType, classes: int):
    return validate_policy([ColumnSpec("pid", ColumnType.STRING, ColumnRole.PATIENT_KEY),
                            ColumnSpec("y", label_type, ColumnRole.LABEL, label_classes=classes)], 2)


def test_boolean_labels_count_as_zero_and_one() -> None:
    batch = pa.record_batch({"pid": ["a", "b", "c"], "y": [True, False, None]})
    result = deidentify_batch(batch, _policy(ColumnType.BOOLEAN, 2), Pseudonymizer(b"k" * 32))
    assert result.batch.column("y").to_pylist() == [True, False, None]  # missing labels pass
    with pytest.raises(CleanroomError) as err:
        deidentify_batch(batch, _policy(ColumnType.BOOLEAN, 1), Pseudonymizer(b"k" * 32), first_row=10)
    assert [(v.field, v.description) for v in err.value.violations] == [
        ("columns[y]", "row 10: a label must be a class index from 0 to 0 (label_classes = 1)")]


def test_integer_labels_at_the_edges() -> None:
    policy = _policy(ColumnType.INTEGER, 3)
    ok = pa.record_batch({"pid": ["a", "b", "c"], "y": pa.array([0, 2, None], pa.int64())})
    assert deidentify_batch(ok, policy, Pseudonymizer(b"k" * 32)).batch.num_rows == 3
    bad = pa.record_batch({"pid": ["a", "b"], "y": pa.array([2, 3], pa.int64())})
    with pytest.raises(CleanroomError) as err:
        deidentify_batch(bad, policy, Pseudonymizer(b"k" * 32))
    assert [v.description for v in err.value.violations] == [
        "row 2: a label must be a class index from 0 to 2 (label_classes = 3)"]


# --- storage: migration 0005 -----------------------------------------------------------------------


def test_migration_0005_gives_stored_columns_label_classes(tmp_path) -> None:
    import json

    from cleanroom.storage.db import migrate
    from tests.storage.test_storage import dataset_stored_before, stored_columns_json

    database, old = dataset_stored_before(tmp_path, "0004", "label_classes")
    # The reader takes a stored column without the key (today's table model no longer fits the old schema).
    assert {dataset_repo.column_from_json(c).label_classes for c in old} == {0}
    migrate(database.engine)
    with database.engine.connect() as connection:
        stored = json.loads(stored_columns_json(connection))
    assert all(c["label_classes"] == 0 for c in stored) and len(stored) == len(old)
    database.dispose()
