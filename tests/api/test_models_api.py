"""Model submission over gRPC: sandboxed intake, stored versions, tenant isolation, the CLI."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cleanroom.domain.identity import Role
from cleanroom.models.intake.artifact import read_artifact
from cleanroom.sdk import CleanroomClientError
from cleanroom.v1 import models_pb2
from tests.paths import MODEL_PACKAGES
from tests.server.test_server_process import cli
from tests.tools import needs

MODELS = MODEL_PACKAGES


@pytest.fixture
def maker(running):
    maker_id, token = running.principal(Role.MANUFACTURER, "Acme")
    with running.client(token) as client:
        yield client, token


@needs("bwrap")
def test_submit_accepts_a_good_package_and_stores_its_program(running, maker, tmp_path) -> None:
    client, _ = maker
    progress: list[int] = []
    version = client.submit_model(MODELS / "mlp", progress=lambda sent, total: progress.append(sent))
    assert version.state == models_pb2.MODEL_STATE_ACCEPTED, version.intake_report
    assert version.display_name == "arrhythmia-mlp" and list(version.input_shape) == [30]
    assert version.intake_report.sandbox_backend in ("runsc", "bwrap")
    assert version.intake_report.parameter_count == 30 * 32 + 32 + 32 * 2 + 2
    assert version.intake_report.trainable_parameter_count == version.intake_report.parameter_count  # trainable = ["*"]
    assert progress
    samples = {(s.name, tuple(s.labels.values())): s.value for m in running.app.metrics.registry.collect() for s in m.samples}
    backend = version.intake_report.sandbox_backend
    assert samples[("cleanroom_sandbox_starts_total", (backend, "intake"))] == 1
    assert samples[("cleanroom_intake_submissions_total", ("accepted",))] == 1
    assert client.get_model(version.name) == version
    assert [m.name for m in client.list_models()] == [version.name]
    artifact = tmp_path / "artifact.safetensors"
    artifact.write_bytes(running.app.models.artifact_bytes(version.name.removeprefix("models/")))
    program = read_artifact(artifact, max_bytes=1 << 26, max_header_bytes=1 << 20, max_tensors=100, max_nodes=500)
    assert set(program.state_dict) >= {"0.weight", "2.bias"}
    # The stored program is sealed: the plaintext artifact is not in the state directory.
    for path in running.app.config.state_dir.rglob("*.blob"):
        assert artifact.read_bytes()[:64] not in path.read_bytes()


@needs("bwrap")
def test_a_model_that_casts_passes_real_intake_and_runs_in_the_trainer(running, maker, tmp_path) -> None:
    """`.to(dtype)` leaves aten._assert_tensor_metadata in torch 2.13's export; intake strips it
    (an assertion computes nothing) and the stored program trains like any other."""
    import torch

    from cleanroom.trainer.graph import ExportedModel, Task

    client, _ = maker
    version = client.submit_model(MODELS / "casting")
    assert version.state == models_pb2.MODEL_STATE_ACCEPTED, version.intake_report.findings
    assert "aten._to_copy.default" in version.intake_report.op_histogram
    assert not any("_assert" in op for op in version.intake_report.op_histogram)
    artifact = tmp_path / "artifact.safetensors"
    artifact.write_bytes(running.app.models.artifact_bytes(version.name.removeprefix("models/")))
    program = read_artifact(artifact, max_bytes=1 << 26, max_header_bytes=1 << 20, max_tensors=100, max_nodes=500)
    model = ExportedModel(program, task=Task("binary-classification", 2), trainable=["*"])
    grads = model.per_example_grads(model.initial_trainable(), torch.randn(5, 30), torch.tensor([0, 1, 1, 0, 1]))
    assert set(grads) == {"hidden.weight", "hidden.bias", "out.weight", "out.bias"}
    assert all(g.shape[0] == 5 and bool(torch.isfinite(g).all()) for g in grads.values())


def _batch_norm_package(directory: Path) -> Path:
    directory.mkdir()
    (directory / "cleanroom-model.toml").write_text(
        'name = "bn"\nversion = "1.0.0"\nentrypoint = "model:build_model"\ntask = "binary-classification"\n'
        'num_classes = 2\ninput_shape = [4]\n'
    )
    (directory / "model.py").write_text(
        "from torch import nn\n\n\ndef build_model():\n"
        "    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))\n"
    )
    return directory


@needs("bwrap")
def test_rejected_package_is_stored_with_its_reasons(maker, tmp_path) -> None:
    client, _ = maker
    version = client.submit_model(_batch_norm_package(tmp_path / "bn"))
    assert version.state == models_pb2.MODEL_STATE_REJECTED
    assert [f.code for f in version.intake_report.findings] == ["BATCH_NORM"]
    assert "GroupNorm" in version.intake_report.findings[0].message


def test_other_manufacturers_cannot_see_a_model(running, maker) -> None:
    client, _ = maker
    version = client.submit_model(MODELS / "mlp")
    _, token = running.principal(Role.MANUFACTURER, "Rival")
    with running.client(token) as rival:
        with pytest.raises(CleanroomClientError) as err:
            rival.get_model(version.name)
        assert err.value.code is grpc.StatusCode.NOT_FOUND
        assert list(rival.list_models()) == []


@needs("bwrap")
def test_cli_submit_and_show(running, maker, tmp_path) -> None:
    _, token = maker
    env = {"CLEANROOM_SERVER": running.address, "CLEANROOM_TOKEN": token}
    out = cli("model", "submit", str(MODELS / "cnn"), env=env).stdout
    assert "ACCEPTED" in out and "sandbox" in out
    name = out.split()[0]
    assert name in cli("model", "list", env=env).stdout
    refused = cli("model", "submit", str(_batch_norm_package(tmp_path / "bn")), env=env, check=False)
    assert refused.returncode == 4 and "BATCH_NORM" in refused.stdout
