"""Cross-hospital linkage end to end over a real gRPC port (issue #15 item 2): two hospitals upload
the same person, the stored datasets (decrypted here with the service's own keys) carry the same
linkage pseudonym and never the identifier; KEK rotation re-wraps the linkage key without changing
it; bad linkage input is refused naming the column, never a value, and stores nothing; a
statistics query naming the linkage column is refused before any reservation."""

from __future__ import annotations

import csv
import hmac
from pathlib import Path

import grpc
import pyarrow as pa
import pytest

from cleanroom import crypto
from cleanroom.crypto import LocalKeyFileProvider
from cleanroom.domain.deid import NO_LINKAGE_NOTE
from cleanroom.domain.identity import Role
from cleanroom.identity.keyring import LINKAGE_KEY, KeyService
from cleanroom.sdk import CleanroomClientError
from cleanroom.sdk.schema import Schema, parse_schema
from cleanroom.statistics.engine import Filter, Query
from cleanroom.storage import dataset_repo, privacy_repo, secret_repo
from cleanroom.v1 import datasets_pb2

SHARED_PERSON = "900101-1234567"  # the same resident registration number at both hospitals
OTHER_PERSON = "851231-2345678"
COLUMNS = [
    {"name": "pid", "type": "string", "role": "patient_key"},
    {"name": "rrn", "type": "string", "role": "linkage_id"},
    {"name": "hr", "type": "float", "role": "feature"},
    {"name": "sex", "type": "integer", "role": "feature", "categories": [0, 1]},
    {"name": "y", "type": "integer", "role": "label", "label_classes": 2},
]


def _schema(linked: bool = True) -> Schema:
    columns = [dict(c) for c in COLUMNS]
    if not linked:
        columns[1]["role"] = "feature"
        columns = [c for c in columns if c["name"] != "rrn"]
    return parse_schema({"k_anonymity": 2, "columns": columns})


def _csv(path: Path, rows: list[list[object]], linked: bool = True) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([c["name"] for c in COLUMNS if linked or c["name"] != "rrn"])
        writer.writerows(rows if linked else [[r[0], *r[2:]] for r in rows])
    return path


def _rows(first_pid: str, identifier: str, others: int = 6) -> list[list[object]]:
    """Two rows of the planted person (their identifier written differently each time), then
    `others` patients of this hospital only, one with no identifier at all."""
    rows: list[list[object]] = [[first_pid, identifier, 70.0, 0, 1], [first_pid, f"  {identifier.upper()} ", 71.0, 0, 1]]
    for p in range(others):
        rows.append([f"{first_pid}-{p}", "" if p == 0 else f"{first_pid}-rrn-{p}", 60.0 + p, p % 2, p % 2])
    return rows


def _stored(running, dataset_name: str) -> pa.Table:
    reader = running.app.datasets.open_plaintext(dataset_name.removeprefix("datasets/"))
    with pa.ipc.open_stream(crypto.as_arrow_file(reader)) as stream:
        return stream.read_all()


def _dataset_key(running, dataset_name: str) -> bytes:
    dataset_id = dataset_name.removeprefix("datasets/")
    with running.app.db.read() as session:
        wrapped = dataset_repo.wrapped_dataset_key(session, dataset_id)
    assert wrapped is not None
    return running.app.keys.unwrap_dataset_key(dataset_id, wrapped)


def _hospital(running, name: str):
    owner_id, token = running.principal(Role.DATA_OWNER, name)
    return owner_id, running.client(token)


def _link_of(table: pa.Table, pid: str, running, owner_id: str) -> str:
    """The stored linkage pseudonym of a patient, found by the patient's own pseudonym."""
    pseudonym = hmac.digest(running.app.keys.pseudonym_key(owner_id), pid.encode(), "sha256").hex()[:32]
    links = {link for p, link in zip(table.column("pid").to_pylist(), table.column("rrn").to_pylist(), strict=True) if p == pseudonym}
    assert len(links) == 1
    return links.pop()


def test_the_same_person_at_two_hospitals_gets_one_linkage_pseudonym(running, tmp_path) -> None:
    a_id, a = _hospital(running, "Hospital A")
    b_id, b = _hospital(running, "Hospital B")
    with a, b:
        first = a.upload_dataset(_csv(tmp_path / "a.csv", _rows("A1", SHARED_PERSON)), _schema())
        second = b.upload_dataset(_csv(tmp_path / "b.csv", _rows("B7", SHARED_PERSON)), _schema())
        shown = a.get_dataset(first.name)
    table_a, table_b = _stored(running, first.name), _stored(running, second.name)
    link_a, link_b = _link_of(table_a, "A1", running, a_id), _link_of(table_b, "B7", running, b_id)
    assert link_a == link_b and link_a.startswith("lnk-")
    others = set(table_a.column("rrn").to_pylist()) - {link_a, ""}
    assert len(others) == 5 and not others & set(table_b.column("rrn").to_pylist())  # different people differ
    # Not any patient pseudonym of either hospital, nor an HMAC of the identifier under a hospital's
    # pseudonym key or a dataset key: only the service's linkage key makes it.
    patients = set(table_a.column("pid").to_pylist()) | set(table_b.column("pid").to_pylist())
    assert link_a not in patients and link_a.removeprefix("lnk-") not in patients
    for key in (running.app.keys.pseudonym_key(a_id), running.app.keys.pseudonym_key(b_id),
                _dataset_key(running, first.name), _dataset_key(running, second.name)):
        for text in (SHARED_PERSON, SHARED_PERSON.casefold()):
            digest = hmac.digest(key, text.encode(), "sha256").hex()
            assert digest[:32] != link_a.removeprefix("lnk-") and digest[:32] not in link_a
    # The identifier is dropped: not in the stored rows, nor anywhere in the state directory.
    assert SHARED_PERSON not in str(table_a.to_pydict()) + str(table_b.to_pydict())
    for path in running.app.config.state_dir.rglob("*"):
        if path.is_file():
            assert SHARED_PERSON.encode() not in path.read_bytes(), path.name
    # The report says linkage was declared and how many rows stay unlinked; GetDataset shows the
    # column with its role, never a value.
    report = first.intake_report
    assert (report.linkage_column, report.rows_without_linkage_id) == ("rrn", 1)
    assert NO_LINKAGE_NOTE not in report.notes and any("1 rows have no linkage identifier" in n for n in report.notes)
    roles = {c.name: c.role for c in shown.columns}
    assert roles["rrn"] == datasets_pb2.LINKAGE_ID and "lnk-" not in str(shown)


def test_without_a_linkage_column_the_report_says_patients_are_distinct_units(running, tmp_path) -> None:
    _, owner = _hospital(running, "Hospital C")
    with owner:
        dataset = owner.upload_dataset(_csv(tmp_path / "c.csv", _rows("C1", SHARED_PERSON), linked=False), _schema(linked=False))
    assert dataset.intake_report.linkage_column == "" and NO_LINKAGE_NOTE in dataset.intake_report.notes


def test_the_cli_flag_declares_the_linkage_column(running, tmp_path) -> None:
    _, owner = _hospital(running, "Hospital D")
    unlinked_schema = parse_schema({"k_anonymity": 2, "columns": [
        {**c, "role": "feature"} if c["name"] == "rrn" else c for c in COLUMNS]})
    with owner:
        dataset = owner.upload_dataset(_csv(tmp_path / "d.csv", _rows("D1", SHARED_PERSON)), unlinked_schema, linkage_column="rrn")
    assert dataset.intake_report.linkage_column == "rrn"


def test_kek_rotation_rewraps_the_linkage_key_and_keeps_the_pseudonyms(running, tmp_path) -> None:
    a_id, a = _hospital(running, "Hospital A")
    b_id, b = _hospital(running, "Hospital B")
    with a, b:
        before = a.upload_dataset(_csv(tmp_path / "a.csv", _rows("A1", SHARED_PERSON)), _schema())
        with running.app.db.read() as session:
            wrapped_before = secret_repo.get_secret(session, LINKAGE_KEY)
        with running.client(running.admin_token) as admin:
            admin.rotate_keys()
        after = b.upload_dataset(_csv(tmp_path / "b.csv", _rows("B1", SHARED_PERSON)), _schema())
    with running.app.db.read() as session:
        wrapped_after = secret_repo.get_secret(session, LINKAGE_KEY)
    assert wrapped_before is not None and wrapped_after not in (None, wrapped_before)  # re-wrapped
    # A fresh key service (no cached secret; the old KEK retired) unwraps the same key.
    fresh = KeyService(running.app.db, LocalKeyFileProvider(running.app.config.state_dir))
    assert fresh.linkage_key() == running.app.keys.linkage_key()
    assert _link_of(_stored(running, before.name), "A1", running, a_id) == _link_of(_stored(running, after.name), "B1", running, b_id)


def _refusal(call) -> CleanroomClientError:
    with pytest.raises(CleanroomClientError) as caught:
        call()
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return caught.value


@pytest.mark.parametrize("second", ["851231-2345678", ""], ids=["another identifier", "none"])
def test_a_patient_with_two_linkage_identifiers_is_refused_and_nothing_stored(running, tmp_path, second) -> None:
    _, owner = _hospital(running, "Hospital E")
    rows = [*_rows("E1", SHARED_PERSON), ["E1", second, 72.0, 0, 1]]
    with owner:
        error = _refusal(lambda: owner.upload_dataset(_csv(tmp_path / "e.csv", rows), _schema()))
        assert list(owner.list_datasets()) == []
    assert "columns[rrn]" in str(error) and "same one" in str(error)
    assert SHARED_PERSON not in str(error) and OTHER_PERSON not in str(error)


def test_two_linkage_columns_or_one_without_a_patient_key_are_refused(running, tmp_path) -> None:
    _, owner = _hospital(running, "Hospital F")
    two = parse_schema({"k_anonymity": 2, "columns": [*COLUMNS[:3], {"name": "sex", "type": "integer", "role": "linkage_id"}, COLUMNS[4]]})
    keyless = parse_schema({"k_anonymity": 2, "columns": [{**COLUMNS[0], "role": "feature"}, *COLUMNS[1:]]})
    with owner:
        path = _csv(tmp_path / "f.csv", _rows("F1", SHARED_PERSON))
        assert "at most one column may have role LINKAGE_ID" in str(_refusal(lambda: owner.upload_dataset(path, two)))
        assert "needs a PATIENT_KEY" in str(_refusal(lambda: owner.upload_dataset(path, keyless)))
        assert list(owner.list_datasets()) == []


@pytest.mark.parametrize("query", [
    Query(kind="count", column="rrn", epsilon=1.0, delta=1e-6),
    Query(kind="count", group_by="rrn", epsilon=1.0, delta=1e-6),
    Query(kind="count", epsilon=1.0, filters=(Filter("rrn", "==", "lnk-0"),)),
], ids=["column", "group_by", "filter"])
def test_a_statistics_query_naming_the_linkage_column_is_refused_before_any_reservation(running, tmp_path, query) -> None:
    _, owner = _hospital(running, "Hospital G")
    maker_id, maker_token = running.principal(Role.MANUFACTURER)
    _, officer_token = running.principal(Role.PRIVACY_OFFICER)
    with owner, running.client(maker_token) as maker, running.client(officer_token) as officer:
        dataset = owner.upload_dataset(_csv(tmp_path / "g.csv", _rows("G1", SHARED_PERSON, others=8)), _schema())
        officer.set_budget(dataset.name, epsilon=10, delta=1e-4, reason="total")
        officer.share_dataset(dataset.name, f"principals/{maker_id}", epsilon=5, delta=1e-4, reason="pilot")
        error = _refusal(lambda: maker.run_query(dataset.name, query))
    assert "the linkage column cannot be queried" in str(error)
    with running.app.db.read() as session:
        assert [e for e in privacy_repo.events(session) if e.kind.value == "reserve"] == []

