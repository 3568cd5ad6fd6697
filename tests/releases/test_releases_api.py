"""Releases over gRPC: a real training job and real statistics answers become releases that the
dataset's officer and auditor and the manufacturer can read, download and verify; another
organisation's officer and another manufacturer find none; a byte flipped in a stored artefact
fails exactly its digest check; a receipt with a changed ε fails its signature check."""

from __future__ import annotations

import re

import grpc
import pytest
from sqlalchemy import update

from cleanroom.cli import main as cli
from cleanroom.domain.identity import Role
from cleanroom.domain.organisations import OrgKind
from cleanroom.sdk import CleanroomClientError
from cleanroom.sdk.release_check import verified, verify_release
from cleanroom.statistics.engine import Query
from cleanroom.storage import audit_repo, dataset_repo
from cleanroom.storage.tables import AnswerReleaseRow
from cleanroom.v1 import jobs_pb2, releases_pb2
from tests.jobs.study import FEATURES, breast_cancer_study
from tests.releases.tamper import flipped_artifact
from tests.tools import needs

pytestmark = needs("bwrap")  # the server's sandboxes (tests/tools.py)

MEAN = Query(kind="mean", column="mean_radius", bounds=(0.0, 40.0), epsilon=0.5)
ABOVE_AUTO_APPROVAL = Query(kind="count", epsilon=2.0)  # the study's policy auto-approves up to ε 1.5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One study (tests/jobs/study.py), one small training job and two statistics answers (one
    from the allowance, one an officer approved), and the people who look at them."""
    with breast_cancer_study(tmp_path_factory.mktemp("releases")) as study:
        running, maker = study["running"], study["maker"]
        app = running.app
        with app.db.read() as session:
            hospital = dataset_repo.get_dataset(session, study["dataset"].removeprefix("datasets/")).organisation_id
        other = app.principals.create_organisation("Another hospital", OrgKind.HOSPITAL, actor="test")
        people = {"officer": (Role.PRIVACY_OFFICER, hospital), "auditor": (Role.AUDITOR, hospital),
                  "other_officer": (Role.PRIVACY_OFFICER, other.id), "other_maker": (Role.MANUFACTURER, None),
                  "owner": (Role.DATA_OWNER, hospital)}
        clients = {}
        for name, (role, organisation) in people.items():
            _, token = app.principals.create(name, role, actor="test", organisation_id=organisation)
            clients[name] = running.client(token)
            study[f"{name}_token"] = token
        spec = jobs_pb2.TrainingSpec(model=study["model"], dataset=study["dataset"], feature_columns=FEATURES, label_column="malignant",
                                     target_epsilon=1.0, target_delta=1e-5, epochs=1, expected_batch_patients=64, learning_rate=0.1,
                                     optimizer="sgd", clipping_norm=1.0, validation_fraction=0.2)
        job = maker.wait_job(maker.train(spec).name, timeout=300)
        assert job.state == jobs_pb2.JOB_STATE_RELEASED, jobs_pb2.JobFailure.Name(job.failure)
        maker.run_query(study["dataset"], MEAN)
        with pytest.raises(CleanroomClientError):
            maker.run_query(study["dataset"], ABOVE_AUTO_APPROVAL)  # waits for the officer
        pending = next(clients["officer"].pending_requests()).name
        clients["officer"].approve(pending, "routine")
        maker.run_query(study["dataset"], ABOVE_AUTO_APPROVAL, privacy_request=pending)
        try:
            yield {**study, **clients, "job": job, "root": app.enclave.root.public_key_pem(), "measurements": [app.enclave.measurement]}
        finally:
            for client in clients.values():
                client.close()


def _by_kind(client) -> dict[int, list[releases_pb2.Release]]:
    found: dict[int, list[releases_pb2.Release]] = {}
    for release in client.list_releases():
        found.setdefault(release.kind, []).append(release)
    return found


def _job_release(world) -> str:
    return "releases/" + world["job"].name.removeprefix("jobs/")


def _verify(world, client, name: str) -> dict[str, tuple[bool, str]]:
    checks = client.verify_release(name, pinned_root_pem=world["root"], allowed_measurements=world["measurements"])
    return {c.name: (c.passed, c.explanation) for c in checks}


def test_the_releases_appear_for_the_officer_the_auditor_and_the_manufacturer(world) -> None:
    listings = {who: _by_kind(world[who]) for who in ("officer", "auditor", "maker")}
    for who, found in listings.items():
        assert len(found.get(releases_pb2.RELEASE_KIND_TRAINING, [])) == 1, who
        assert len(found.get(releases_pb2.RELEASE_KIND_STATISTICS, [])) == 2, who
    assert listings["officer"] == listings["auditor"] == listings["maker"]
    assert [r.name for r in world["officer"].list_releases(kind="statistics", page_size=1)] == \
        [r.name for r in listings["officer"][releases_pb2.RELEASE_KIND_STATISTICS]]  # one per page, every page
    job = world["auditor"].get_release(_job_release(world))
    assert job.source == world["job"].name and job.datasets == [world["dataset"]] and job.manufacturer == world["maker"].whoami().name
    assert {a.name for a in job.artifacts} == {"weights.safetensors", "metrics.json", "report.html", "receipt.json"}
    assert 0 < job.spent.epsilon <= 1.0 and job.receipt.startswith(b"{")
    assert {e.kind for e in job.ledger_events} >= {"reserve", "commit"}
    assert _actions(world, job.audit_seqs) >= {"job.submit", "job.released"}
    for answer in listings["officer"][releases_pb2.RELEASE_KIND_STATISTICS]:
        page = world["officer"].get_release(answer.name)
        assert {a.name for a in page.artifacts} == {"answer.json", "receipt.json"} and page.summary in ("mean", "count")
        assert _actions(world, page.audit_seqs) == {"stats.answer"} and page.ledger_events
    assert [r.name for r in world["officer"].list_releases(dataset="datasets/d0000000000000000")] == []


def _actions(world, seqs) -> set[str]:
    with world["running"].app.db.read() as session:
        return {e.action for e in audit_repo.entries(session) if e.seq in set(seqs)}


def test_another_organisations_officer_and_another_manufacturer_find_nothing(world) -> None:
    name = _job_release(world)
    for who in ("other_officer", "other_maker"):
        assert list(world[who].list_releases()) == []
        for call in (lambda c: c.get_release(name), lambda c: c.download_release_artifact(name, "receipt.json")):
            with pytest.raises(CleanroomClientError) as refused:
                call(world[who])
            with pytest.raises(CleanroomClientError) as missing:
                world[who].get_release("releases/j0000000000000000")
            assert refused.value.code is missing.value.code is grpc.StatusCode.NOT_FOUND
            assert refused.value.message == missing.value.message  # absent, exactly like a missing one
    with pytest.raises(CleanroomClientError) as denied:
        world["owner"].get_release(name)
    assert denied.value.code is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(CleanroomClientError) as malformed:
        world["officer"].get_release("jobs/" + name)
    assert malformed.value.code is grpc.StatusCode.INVALID_ARGUMENT and malformed.value.violations[0].field == "name"
    with pytest.raises(CleanroomClientError) as no_file:
        world["officer"].download_release_artifact(name, "../../state/keys")
    assert no_file.value.code is grpc.StatusCode.NOT_FOUND


def test_every_release_verifies_for_the_auditor(world) -> None:
    for release in world["auditor"].list_releases():
        checks = _verify(world, world["auditor"], release.name)
        assert all(passed for passed, _ in checks.values()), checks
        expected = {"signature", "measurement", "workload", "files", "epsilon"}
        assert expected < set(checks) and any(name.startswith("digest:") for name in checks)
    files = _verify(world, world["maker"], _job_release(world))
    assert {n for n in files if n.startswith("digest:")} == {"digest:weights.safetensors", "digest:metrics.json", "digest:report.html"}


def test_a_byte_flipped_in_a_stored_artefact_fails_only_its_digest_check(world) -> None:
    with flipped_artifact(world["running"].app, world["job"].name.removeprefix("jobs/"), "weights.safetensors"):
        checks = _verify(world, world["auditor"], _job_release(world))
    failed = {name for name, (passed, _) in checks.items() if not passed}
    assert failed == {"digest:weights.safetensors"}, checks
    assert "altered" in checks["digest:weights.safetensors"][1]
    assert all(passed for passed, _ in _verify(world, world["auditor"], _job_release(world)).values())  # restored


def test_an_altered_stored_answer_fails_only_its_digest_check(world) -> None:
    app = world["running"].app
    name = next(world["officer"].list_releases(kind="statistics")).name
    release_id = name.removeprefix("releases/")
    with app.db.read() as session:
        original = session.get(AnswerReleaseRow, release_id).answer_json
    with app.db.transaction() as session:
        session.execute(update(AnswerReleaseRow).where(AnswerReleaseRow.id == release_id).values(answer_json=original.replace(b"0", b"1", 1)))
    try:
        checks = _verify(world, world["officer"], name)
    finally:
        with app.db.transaction() as session:
            session.execute(update(AnswerReleaseRow).where(AnswerReleaseRow.id == release_id).values(answer_json=original))
    assert {n for n, (passed, _) in checks.items() if not passed} == {"digest:answer.json"}, checks


def test_a_receipt_with_a_changed_epsilon_fails_the_signature_check(world) -> None:
    client = world["auditor"]
    release = client.get_release(_job_release(world))
    files = client.download_release(release)
    assert verified(verify_release(release, files, pinned_root_pem=world["root"], allowed_measurements=world["measurements"]))
    receipt = files["receipt.json"]
    assert receipt is not None
    changed = re.sub(rb'"epsilon_spent":"[0-9.]+"', b'"epsilon_spent":"0.01"', receipt)
    assert changed != receipt
    checks = {c.name: c for c in verify_release(release, {**files, "receipt.json": changed}, pinned_root_pem=world["root"],
                                                   allowed_measurements=world["measurements"])}
    assert not checks["signature"].passed and "altered after signing" in checks["signature"].explanation
    assert not checks["epsilon"].passed  # 0.01 is not what the mechanism parameters give
    assert checks["measurement"].passed and checks["workload"].passed


def test_the_cli_lists_shows_and_verifies_a_release(world, tmp_path, capsys) -> None:
    connection = ["--server", world["running"].address, "--token", world["auditor_token"]]
    root = tmp_path / "root.pem"
    root.write_bytes(world["root"])
    name = _job_release(world)
    assert cli.main([*connection, "releases", "list", "--kind", "training"]) == 0
    assert name in capsys.readouterr().out
    assert cli.main([*connection, "releases", "show", name]) == 0
    shown = capsys.readouterr().out
    assert "weights.safetensors" in shown and world["job"].name in shown
    assert cli.main([*connection, "releases", "verify", name, "--root-pem", str(root)]) == 0
    assert f"{name} verifies against the pinned root" in capsys.readouterr().out
