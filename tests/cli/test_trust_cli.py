"""The trust root on the command line: `trust show` over the API, `trust export` from the state
directory, and a one-line refusal of a wrong --root-pem on every command that takes one."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cleanroom.attestation.enclave import root_directory
from cleanroom.cli import main as cli
from cleanroom.domain.identity import Role
from cleanroom.storage import privacy_repo


def _as(running, role: Role, *args: str) -> list[str]:
    _, token = running.principal(role)
    return ["--server", running.address, "--token", token, *args]


def test_trust_show_prints_the_bundle_and_the_root_pem_to_any_role(running, capsys) -> None:
    enclave = running.app.enclave
    assert cli.main(_as(running, Role.AUDITOR, "trust", "show")) == 0
    shown = capsys.readouterr().out
    assert enclave.root.fingerprint in shown and enclave.measurement in shown and "simulated             yes" in shown
    assert cli.main(_as(running, Role.MANUFACTURER, "trust", "show", "--pem")) == 0
    assert capsys.readouterr().out.encode() == enclave.root.public_key_pem()  # exactly the PEM: `> root.pem` works


def test_trust_export_reads_the_same_root_from_the_state_directory(running, tmp_path, capsys) -> None:
    assert cli.main(_as(running, Role.MANUFACTURER, "trust", "show", "--pem")) == 0
    over_the_api = capsys.readouterr().out
    running.server.stop(grace=0)  # the operator's path needs no running server
    assert cli.main(["trust", "export", "--state-dir", str(tmp_path / "state")]) == 0
    exported = capsys.readouterr()
    assert exported.out == over_the_api and running.app.enclave.root.fingerprint in exported.err


def test_trust_export_never_creates_a_root(tmp_path, capsys) -> None:
    assert cli.main(["trust", "export", "--state-dir", str(tmp_path / "typo")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no attestation root under") and err.count("\n") == 1
    assert not root_directory(tmp_path / "typo").exists()


def _private_key(running, tmp_path):
    return root_directory(tmp_path / "state") / "root-ed25519.pem"  # what the user passed


def _rsa_public_key(running, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    path = tmp_path / "rsa.pem"
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def _garbage(running, tmp_path):
    path = tmp_path / "garbage.pem"
    path.write_bytes(b"not a key\n")
    return path


def _missing(running, tmp_path):
    return tmp_path / "missing.pem"


@pytest.mark.parametrize("wrong, says", [
    (_private_key, "holds a PRIVATE key"),
    (_rsa_public_key, "is not an Ed25519 public key"),
    (_garbage, "is not an Ed25519 public key"),
    (_missing, "cannot read it (No such file or directory)"),
])
@pytest.mark.parametrize("command", [
    ("job", "download", "jobs/j1", "--package", "."),
    ("stats", "count", "datasets/d1", "--epsilon", "0.1"),
    ("stats", "verify", "answer.json"),
])
def test_a_wrong_root_pem_is_a_one_line_error_before_anything_else(running, tmp_path, capsys, wrong, says, command) -> None:
    with running.app.db.read() as session:
        events = len(privacy_repo.events(session))
    code = cli.main(_as(running, Role.MANUFACTURER, *command, "--root-pem", str(wrong(running, tmp_path))))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --root-pem ") and says in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and "NOT_FOUND" not in err  # checked before any call
    with running.app.db.read() as session:
        assert len(privacy_repo.events(session)) == events
