"""The console's audit pages against a real console and server: entries appear, filter and page;
the integrity check says OK, and after a real edit of a stored entry names the seq where the chain
breaks; the signed export verifies against the pinned root and a modified one does not; a
hospital's data owner sees only its own entries."""

from __future__ import annotations

import json
import re

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import update

from cleanroom.cli import main as cli
from cleanroom.domain.identity import Role
from cleanroom.domain.organisations import OrgKind
from cleanroom.sdk.audit_export import CHECKS, verify_audit_export
from cleanroom.sdk.audit_export import main as audit_export_main
from cleanroom.storage import audit_repo
from cleanroom.storage.tables import AuditEntryRow
from cleanroom.v1 import privacy_pb2


def _seqs(body: str) -> list[int]:
    return [int(s) for s in re.findall(r'<tr id="seq-(\d+)">', body)]


def _append(running, count: int, action: str = "test.marker") -> None:
    with running.app.db.transaction() as session:
        for i in range(count):
            audit_repo.append(session, actor="system", action=action, target=f"tests/{i}", details={"n": i})


def test_entries_appear_newest_first_filter_and_page(console) -> None:
    running = console.running
    _append(running, 55)
    _append(running, 2, action="test.other")
    officer = console.signed_in(Role.PRIVACY_OFFICER)
    first = officer.get("/audit")
    assert first.status == 200
    shown = _seqs(first.body)
    assert len(shown) == 50 and shown == sorted(shown, reverse=True)  # one page, newest first
    with running.app.db.read() as session:
        head = audit_repo.head(session).seq
    assert shown[0] == head and "page 1 of" in first.body and 'rel="next"' in first.body
    older = officer.get(re.search(r'href="(/audit\?[^"]*page=2)"', first.body).group(1).replace("&amp;", "&"))
    assert _seqs(older.body) and max(_seqs(older.body)) < min(shown)
    only = officer.get("/audit?action=test.other")
    assert len(_seqs(only.body)) == 2 and "2 matching entries" in only.body
    text = officer.get("/audit?q=TESTS/54")  # free text, any case, over action, actor and target
    assert len(_seqs(text.body)) == 1 and "tests/54" in text.body
    searched = officer.get("/audit?q=test.marker")  # 55 matches: the next page keeps the search
    assert "q=test.marker&amp;page=2" in searched.body
    assert set(re.findall(r"<td>(test\.\w+)</td>", officer.get("/audit?q=test.marker&page=2").body)) == {"test.marker"}
    assert _seqs(officer.get("/audit?action=test.marker&target=tests/1").body)  # filters combine
    assert _seqs(officer.get("/audit?since=2999-01-01").body) == []
    bad = officer.get("/audit?since=yesterday&page=zz")
    assert bad.status == 200 and "must be a date" in bad.body and len(_seqs(bad.body)) == 50
    entry = officer.get(f"/audit/entries/{shown[-1]}")
    assert entry.status == 200 and "✔ matches" in entry.body
    assert officer.get(f"/audit/entries/{head + 1000}").status == 404


def test_the_integrity_check_says_ok_then_names_the_entry_a_real_edit_broke(console) -> None:
    running = console.running
    _append(running, 5)
    auditor = console.signed_in(Role.AUDITOR)
    ok = auditor.get("/audit/verify")
    assert ok.status == 200 and "✔ Intact" in ok.body and "BROKEN" not in ok.body
    anchor = re.search(r"<code>(\d+:[0-9a-f]{64})</code>", ok.body).group(1)
    assert "✔ Intact" in auditor.get(f"/audit/verify?anchor={anchor}").body
    with running.app.db.read() as session:
        victim = next(e for e in audit_repo.entries(session) if e.action == "test.marker" and e.details == {"n": 2}).seq
    with running.app.db.transaction() as session:  # an insider edits a stored entry
        session.execute(update(AuditEntryRow).where(AuditEntryRow.seq == victim).values(details_json=json.dumps({"n": 3})))
    broken = auditor.get("/audit/verify")
    assert broken.status == 200 and "✘ BROKEN" in broken.body and "✔ Intact" not in broken.body
    assert f'breaks at entry <a href="/audit/entries/{victim}">{victim}</a>' in broken.body
    assert "edited" in broken.body
    page = auditor.get(f"/audit/entries/{victim}")
    assert "does not match" in page.body
    assert "an anchor is" in auditor.get("/audit/verify?anchor=nonsense").body


def test_the_signed_export_verifies_against_the_pinned_root_and_a_modified_one_does_not(console, tmp_path, capsys) -> None:
    running = console.running
    _append(running, 3)
    root = running.app.enclave.root.public_key_pem()
    auditor = console.signed_in(Role.AUDITOR)
    answer = auditor.get("/audit/export")
    assert answer.status == 200 and "attachment" in answer.headers["content-disposition"]
    document = answer.body.encode("utf-8")
    checks = verify_audit_export(document, pinned_root_pem=root)
    assert [c.name for c in checks] == list(CHECKS) and all(c.passed for c in checks), checks
    parsed = json.loads(document)
    assert parsed["statement"]["payload"]["exporter"] == auditor.principal
    assert parsed["statement"]["payload"]["entries"] == len(parsed["entries"]) > 3

    edited = json.loads(document)
    edited["entries"][1] = edited["entries"][1].replace('"n":1', '"n":7') if '"n":1' in edited["entries"][1] else \
        edited["entries"][1].replace('"actor":"', '"actor":"x', 1)
    failed = {c.name for c in verify_audit_export(json.dumps(edited).encode(), pinned_root_pem=root) if not c.passed}
    assert {"digest", "entry hashes"} <= failed and "signature" not in failed

    (tmp_path / "root.pem").write_bytes(root)
    (tmp_path / "good.json").write_bytes(document)
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    assert audit_export_main([str(tmp_path / "good.json"), str(tmp_path / "root.pem")]) == 0  # the regulator's command
    assert audit_export_main([str(tmp_path / "edited.json"), str(tmp_path / "root.pem")]) == 1
    assert "FAIL digest" in capsys.readouterr().out

    dropped = json.loads(document)
    del dropped["entries"][0]
    assert "digest" in {c.name for c in verify_audit_export(json.dumps(dropped).encode(), pinned_root_pem=root) if not c.passed}

    restated = json.loads(document)
    restated["statement"]["payload"]["exporter"] = "principals/p0000000000000000"
    assert {c.name for c in verify_audit_export(json.dumps(restated).encode(), pinned_root_pem=root) if not c.passed} == {"signature"}

    other_root = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.PEM,
                                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    assert not next(c for c in verify_audit_export(document, pinned_root_pem=other_root) if c.name == "certificate").passed
    assert not any(c.passed for c in verify_audit_export(b"not json", pinned_root_pem=root))
    with running.app.db.read() as session:
        assert any(e.action == "audit.export_signed" and e.actor == auditor.principal for e in audit_repo.entries(session))


def test_a_negative_through_seq_is_a_clear_bad_request(console) -> None:
    running = console.running
    _, token = running.principal(Role.AUDITOR)
    with running.client(token) as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.audit.SignAuditExport(privacy_pb2.SignAuditExportRequest(through_seq=-1), metadata=client._metadata)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "through_seq" in refused.value.details()


def test_a_hospitals_data_owner_sees_only_its_own_entries_and_may_not_run_the_check(console) -> None:
    running = console.running
    app = running.app
    hospital = app.principals.create_organisation("Hospital A", OrgKind.HOSPITAL, actor="test")
    other = app.principals.create_organisation("Hospital B", OrgKind.HOSPITAL, actor="test")
    owner, _ = app.principals.create("owner a", Role.DATA_OWNER, actor="test", organisation_id=hospital.id)
    stranger, _ = app.principals.create("owner b", Role.DATA_OWNER, actor="test", organisation_id=other.id)
    browser = console.sign_in_as(owner.id)
    page = browser.get("/audit")
    assert page.status == 200 and f"principals/{owner.id}" in page.body
    assert f"principals/{stranger.id}" not in page.body and "tests/" not in page.body
    assert browser.get("/audit/verify").status == 403  # the API keeps the chain check to officers and auditors
    with running.app.db.read() as session:
        strangers = [e.seq for e in audit_repo.entries(session) if e.target == f"principals/{stranger.id}"]
    assert browser.get(f"/audit/entries/{strangers[0]}").status == 404
    document = browser.get("/audit/export").body.encode()
    assert all(c.passed for c in verify_audit_export(document, pinned_root_pem=app.enclave.root.public_key_pem()))
    assert f"principals/{stranger.id}" not in document.decode()


def test_the_cli_writes_a_signed_export_and_checks_it(console, tmp_path, capsysbinary) -> None:
    running = console.running
    _, token = running.principal(Role.AUDITOR)
    connection = ["--server", running.address, "--token", token]
    assert cli.main([*connection, "audit", "export", "--signed"]) == 0
    document = capsysbinary.readouterr().out
    (tmp_path / "export.json").write_bytes(document)
    (tmp_path / "root.pem").write_bytes(running.app.enclave.root.public_key_pem())
    assert cli.main(["audit", "check-export", str(tmp_path / "export.json"), "--root-pem", str(tmp_path / "root.pem")]) == 0
    assert b"the export verifies against the pinned root" in capsysbinary.readouterr().out
    (tmp_path / "export.json").write_bytes(document.replace(b'"seq\\":1', b'"seq\\":9', 1))
    assert cli.main(["audit", "check-export", str(tmp_path / "export.json"), "--root-pem", str(tmp_path / "root.pem")]) == 1
    assert cli.main([*connection, "audit", "export", "--signed", "--after", "3"]) == 2
