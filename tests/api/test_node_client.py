"""A non-Python client: tests/node/flow.js runs the manufacturer flow against a real server from
Node.js (protos loaded at run time, no generated code) and verifies a statistics receipt and a job
receipt from the rules of docs/api alone. The hospital and officer side is set up here in Python.

Then tests/node/verify.js re-checks the receipts it saved, offline: untouched they pass, and any one
tampered byte, file, request field, pinned root or allow-list makes it exit non-zero. And
tests/node/vectors.js reproduces every test vector of docs/api/vectors with the same Node code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import enclave_sim
from cleanroom.cli import samples
from cleanroom.domain.identity import Role
from cleanroom.sdk.schema import Schema
from tests.conftest import make_config, start_server
from tests.paths import REPO_ROOT
from tests.tools import binary, missing, needs

pytestmark = [needs("node"), pytest.mark.timeout(900)]
SERVER = needs("bwrap")  # the server's statistics worker and phase B run in bubblewrap

NODE_DIR = REPO_ROOT / "tests" / "node"
EXAMPLE = REPO_ROOT / "examples" / "breast-cancer-mlp"


def _node() -> str:
    node = binary("node")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing("node", f"{NODE_DIR / 'node_modules'} is not installed (npm ci --ignore-scripts --prefix tests/node)")
    return node


def test_the_node_implementation_reproduces_the_documented_test_vectors() -> None:
    result = subprocess.run([_node(), str(NODE_DIR / "vectors.js")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    for name in ("canonical-json", "decimal-text", "workload", "model-package", "receipts"):
        assert f"ok {name}.json:" in result.stdout


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    node = _node()
    base = tmp_path_factory.mktemp("node")
    running = start_server(make_config(base / "state", work_dir=base / "work"))
    try:
        _, owner_token = running.principal(Role.DATA_OWNER)
        maker_id, maker_token = running.principal(Role.MANUFACTURER)
        _, officer_token = running.principal(Role.PRIVACY_OFFICER)
        with running.client(owner_token) as owner, running.client(officer_token) as officer:
            dataset = owner.upload_dataset(samples.write_breast_cancer_csv(base / "bc.csv"), Schema(samples.breast_cancer_schema(), 5))
            officer.set_budget(dataset.name, epsilon=6, delta=1e-4, reason="total")
            officer.share_dataset(dataset.name, f"principals/{maker_id}", epsilon=5, delta=1e-4, reason="node client")
            officer.set_approval_policy(dataset.name, max_epsilon=3, auto_approve_epsilon=1.5, reason="routine")
        enclave = running.app.enclave
        root_pem = base / "root.pem"
        root_pem.write_bytes(enclave.root.public_key_pem())  # pinned out of band, as a manufacturer would
        out = base / "out"
        env = {**os.environ, "CLEANROOM_ADDRESS": running.address, "CLEANROOM_TOKEN": maker_token, "CLEANROOM_ROOT_PEM": str(root_pem),
               "CLEANROOM_MODEL_DIR": str(EXAMPLE), "CLEANROOM_FEATURES": ",".join(samples.feature_names()),
               "CLEANROOM_LABEL": "malignant", "CLEANROOM_MEAN_COLUMN": "mean_radius", "CLEANROOM_MEAN_BOUNDS": "0,40",
               "CLEANROOM_OUT": str(out)}
        result = subprocess.run([node, str(NODE_DIR / "flow.js")], env=env, capture_output=True, text=True, timeout=840)
        yield {"result": result, "out": out, "root_pem": root_pem, "measurement": enclave.measurement, "node": node, "base": base}
    finally:
        running.server.stop(grace=0)


@SERVER
def test_the_node_client_runs_the_manufacturer_flow_and_verifies_both_receipts(flow) -> None:
    result = flow["result"]
    assert result.returncode == 0, f"node flow.js failed:\n{result.stdout}\n{result.stderr}"
    print(result.stdout)  # what the Node client checked, for `pytest -s`
    lines = result.stdout.splitlines()
    for expected in ("ok who-am-I:", "ok trust bundle:", "ok datasets shared:", "ok statistics receipt verified:", "ok model submitted:",
                     "ok error path: SubmitEvaluation with ε -1 -> INVALID_ARGUMENT, ErrorInfo reason BAD_REQUEST, BadRequest field spec.target_epsilon",
                     "ok error path: GetJob of an unknown job -> NOT_FOUND", "ok downloaded metrics.json, receipt.json, report.html",
                     "ok job receipt verified:"):
        assert any(line.startswith(expected) for line in lines), f"{expected!r} not in:\n{result.stdout}"
    assert sum("x-request-id echoed" in line for line in lines) == 3  # on success and on both errors
    watched = next(line for line in lines if line.startswith("ok evaluation job"))
    assert "JOB_STATE_RUNNING" in watched and watched.endswith("JOB_STATE_RELEASED")
    hashed = next(line for line in lines if line.startswith("ok job parameters as hashed:"))
    assert '"target_epsilon":"1.0"' in hashed and '"target_delta":"0.00001"' in hashed  # the number-to-text rule
    assert "(zcdp-rdp: recomputed from ρ" in next(line for line in lines if line.startswith("ok job receipt verified:"))
    assert lines[-1] == "node client: every check passed"


def _verify(flow, folder: Path, *, root_pem: Path | None = None, measurement: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [flow["node"], str(NODE_DIR / "verify.js"), str(folder), str(root_pem or flow["root_pem"]), measurement or flow["measurement"]]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.fixture
def saved(flow, tmp_path) -> Path:
    assert flow["result"].returncode == 0, "the flow did not save its receipts"
    copy = tmp_path / "saved"
    shutil.copytree(flow["out"], copy)
    return copy


@SERVER
def test_saved_receipts_verify_offline(flow, saved) -> None:
    result = _verify(flow, saved)
    assert result.returncode == 0, result.stderr
    assert "verified statistics receipt" in result.stdout and "verified job receipt" in result.stdout


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@SERVER
@pytest.mark.parametrize("receipt", ["stats/receipt.json", "job/files/receipt.json"])
def test_any_one_flipped_byte_of_a_receipt_fails(flow, saved, receipt) -> None:
    original = (saved / receipt).read_bytes()
    for offset in [1, *range(37, len(original), len(original) // 9), len(original) - 3]:
        (saved / receipt).write_bytes(original)
        _flip(saved / receipt, offset)
        result = _verify(flow, saved)
        assert result.returncode != 0, f"byte {offset} of {receipt} flipped, yet it verified"
        assert "verification FAILED: " in result.stderr


def _replace(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


@SERVER
@pytest.mark.parametrize("tamper, check", [
    (lambda d: _flip(d / "job" / "files" / "metrics.json", 10), "RELEASED_FILES_MISMATCH"),
    (lambda d: (d / "job" / "files" / "report.html").unlink(), "RELEASED_FILES_MISMATCH"),
    (lambda d: _flip(d / "stats" / "answer.json", 5), "RELEASED_FILES_MISMATCH"),
    (lambda d: _replace(d / "job" / "request.json", b'"target_delta":0.00001', b'"target_delta":0.0001'), "WORKLOAD_MISMATCH"),
    (lambda d: _replace(d / "job" / "request.json", b'"target_epsilon":1', b'"target_epsilon":1.5'), "WORKLOAD_MISMATCH"),
], ids=["released-file-altered", "released-file-missing", "answer-altered", "another-delta", "another-epsilon"])
def test_tampered_files_or_requests_fail(flow, saved, tamper, check) -> None:
    tamper(saved)
    result = _verify(flow, saved)
    assert result.returncode != 0 and check in result.stderr, result.stderr


@SERVER
def test_another_root_or_measurement_fails(flow, saved, tmp_path) -> None:
    other = tmp_path / "other-root.pem"
    other.write_bytes(enclave_sim.RootAuthority.generate().public_key_pem())
    result = _verify(flow, saved, root_pem=other)
    assert result.returncode != 0 and "UNTRUSTED_CERTIFICATE" in result.stderr, result.stderr
    result = _verify(flow, saved, measurement="00" * 32)
    assert result.returncode != 0 and "WRONG_MEASUREMENT" in result.stderr, result.stderr
