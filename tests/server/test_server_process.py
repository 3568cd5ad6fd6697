"""The server as operators run it: a real process, the CLI, TLS and mutual TLS, SIGTERM."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cleanroom.domain.identity import Role
from cleanroom.sdk import CleanroomClientError, Client
from tests.api.test_datasets_api import SCHEMA, _rows, _write_csv
from tests.conftest import make_config, start_server
from tests.tools import needs


def cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cleanroom.cli.main", *args], capture_output=True, text=True, check=check,
                          env={**os.environ, **(env or {})}, timeout=60)


def _spawn_server(state_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    port_file = state_dir.parent / "port"
    port_file.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "cleanroom.cli.main", "serve", "--state-dir", str(state_dir), "--listen", "127.0.0.1:0",
         "--port-file", str(port_file), "--metrics-listen", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 30
    while not port_file.exists():
        assert process.poll() is None, process.stdout.read()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    return process, f"127.0.0.1:{port_file.read_text()}"


@needs("bwrap")
def test_cli_bootstrap_serve_and_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "state"
    token = cli("admin", "bootstrap", "--state-dir", str(state)).stdout.strip()
    process, address = _spawn_server(state)
    try:
        env = {"CLEANROOM_SERVER": address, "CLEANROOM_TOKEN": token}
        assert "(admin)" in cli("whoami", env=env).stdout
        created = cli("admin", "principal", "create", "--name", "Hospital", "--role", "data_owner", env=env).stdout
        owner_token = created.split("token: ")[1].strip()
        assert "Hospital" in cli("admin", "principal", "list", env=env).stdout
        denied = cli("admin", "principal", "list", env={**env, "CLEANROOM_TOKEN": owner_token}, check=False)
        assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr and "Traceback" not in denied.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "stopping gracefully" in output


def test_cli_upload_show_delete(tmp_path: Path, running) -> None:
    _, token = running.principal(Role.DATA_OWNER)
    env = {"CLEANROOM_SERVER": running.address, "CLEANROOM_TOKEN": token}
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    csv_path = _write_csv(tmp_path / "vitals.csv", _rows())
    uploaded = cli("dataset", "upload", str(csv_path), "--schema", str(schema), "--quiet", env=env).stdout
    assert "stored            36 of 37 rows, 12 patients" in uploaded
    name = uploaded.split()[1]
    assert name.startswith("datasets/")
    assert "heart_rate" in cli("dataset", "show", name, env=env).stdout
    assert name in cli("dataset", "list", env=env).stdout
    refused = cli("dataset", "delete", name, env=env, check=False)
    assert refused.returncode == 2 and name in cli("dataset", "list", env=env).stdout
    assert f"deleted {name}" in cli("dataset", "delete", name, "--yes", env=env).stdout
    assert name not in cli("dataset", "list", env=env).stdout


def test_help_explains_every_command() -> None:
    for args in (["--help"], ["dataset", "upload", "--help"], ["serve", "--help"], ["admin", "principal", "create", "--help"]):
        out = cli(*args).stdout
        assert "usage: cleanroom" in out
    assert "CLEANROOM_DATABASE_URL" in cli("serve", "--help").stdout


# --- TLS ------------------------------------------------------------------------------------------


def _key_and_cert(name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None, ca: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    issuer_cert, issuer_key = issuer or (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(path.with_suffix(".crt")), str(path.with_suffix(".key"))


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, tuple[str, str]]:
    ca = _key_and_cert("cleanroom test CA", ca=True)
    other_ca = _key_and_cert("someone else's CA", ca=True)
    return {
        "ca": _write(tmp_path / "ca", *ca),
        "server": _write(tmp_path / "server", *_key_and_cert("localhost", ca)),
        "client": _write(tmp_path / "client", *_key_and_cert("hospital", ca)),
        "stranger": _write(tmp_path / "stranger", *_key_and_cert("stranger", other_ca)),
    }


def _tls_server(tmp_path: Path, pki, mutual: bool):
    cert, key = pki["server"]
    config = make_config(tmp_path / "tls-state", tls_cert=Path(cert), tls_key=Path(key),
                         tls_client_ca=Path(pki["ca"][0]) if mutual else None)
    return start_server(config)


def test_tls(tmp_path: Path, pki) -> None:
    server = _tls_server(tmp_path, pki, mutual=False)
    target = f"localhost:{server.server.port}"
    try:
        with Client(target, server.admin_token, tls_ca=pki["ca"][0]) as client:
            assert client.whoami().display_name == "first admin"
        with Client(target, server.admin_token, timeout=3) as plaintext, pytest.raises(CleanroomClientError) as err:
            plaintext.whoami()
        assert err.value.code is grpc.StatusCode.UNAVAILABLE
    finally:
        server.server.stop(grace=0)


def test_mutual_tls_requires_a_client_certificate_from_the_ca(tmp_path: Path, pki) -> None:
    server = _tls_server(tmp_path, pki, mutual=True)
    target = f"localhost:{server.server.port}"
    ca = pki["ca"][0]
    try:
        cert, key = pki["client"]
        with Client(target, server.admin_token, tls_ca=ca, client_cert=cert, client_key=key) as client:
            assert client.whoami().display_name == "first admin"
        for cert, key in (pki["stranger"], (None, None)):
            with Client(target, server.admin_token, tls_ca=ca, client_cert=cert, client_key=key, timeout=3) as client:
                with pytest.raises(CleanroomClientError) as err:
                    client.whoami()
            assert err.value.code is grpc.StatusCode.UNAVAILABLE
    finally:
        server.server.stop(grace=0)
