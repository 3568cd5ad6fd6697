"""examples/wellness-cnn1d: it passes the real model intake (phase A in a sandbox), its input scaling
is fixed published constants, and patient-level DP-SGD over windows of the generated wellness
stream teaches it to find desaturation windows on held-out patients."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cleanroom.cli import stream_samples
from cleanroom.domain.streams import ThresholdLabel, WindowSpec
from cleanroom.models.intake.artifact import read_artifact
from cleanroom.models.intake.pack import pack_package
from cleanroom.models.intake.service import ModelIntake
from cleanroom.trainer import dpsgd, noise, windows
from tests.paths import REPO_ROOT
from tests.tools import needs
from tests.trainer.test_trainer_helpers import allowed_here, fixed_seed

PACKAGE = REPO_ROOT / "examples" / "wellness-cnn1d"
CHANNELS = ("heart_rate", "spo2", "steps")
# The demo's windows: 10 minutes of 5 s cells, positive when SpO2 stays below 90 for 30 s.
SPEC = WindowSpec(600, 300, 5, 0.5, ThresholdLabel("spo2", "below", 90.0, 30))
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("wellness_cnn1d_model", PACKAGE / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _export(model: torch.nn.Module) -> torch.export.ExportedProgram:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(model.eval(), (torch.zeros(1, 3, SPEC.cells),)).run_decompositions()


@needs("bwrap")
@pytest.mark.timeout(300)
def test_the_package_passes_model_intake_in_a_sandbox(tmp_path: Path) -> None:
    archive = tmp_path / "package.zip"
    archive.write_bytes(pack_package(PACKAGE))
    outcome = ModelIntake().run(archive, tmp_path / "work")
    report = outcome.report
    assert outcome.accepted, report.summary_line() + report.manufacturer_traceback
    assert report.manifest["input_shape"] == [3, SPEC.cells] and report.output_shape == [1, 2]
    assert report.parameter_count == sum(p.numel() for p in _module().build_model().parameters())
    assert all(not name.startswith("scaling") for name in report.trainable)  # buffers, not parameters
    assert outcome.artifact_path is not None
    program = read_artifact(outcome.artifact_path, max_bytes=1 << 30, max_header_bytes=1 << 24, max_tensors=4096,
                            max_nodes=5000)
    assert not any("batch_norm" in str(node.target) for node in program.graph.nodes)


def test_scaling_is_fixed_published_constants() -> None:
    module = _module()
    model = module.build_model()
    scaling = model.scaling
    assert not list(scaling.parameters()), "scaling must not be trainable"
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    low = torch.tensor([[60.0], [90.0], [0.0]]).expand(3, SPEC.cells)[None]  # resting HR floor, hypoxaemia, rest
    high = torch.tensor([[100.0], [100.0], [120.0]]).expand(3, SPEC.cells)[None]
    assert torch.allclose(scaling(low), torch.full_like(low, -1.0)) and torch.allclose(scaling(high), torch.ones_like(high))
    both = torch.cat([low, high, 3 * low])
    assert torch.allclose(scaling(both)[:1], scaling(low))  # no batch statistics


def _windows(size: stream_samples.StreamSize) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every window of every generated patient: X (n, 3, 120), y, patient index, the patient's condition."""
    xs, ys, who, condition = [], [], [], []
    for index in range(size.patients):
        rng = stream_samples.patient_rng(size, index)
        patient = stream_samples.draw_patient(size, index, rng)
        columns = stream_samples.readings(patient, size, rng)
        values = {c: np.where(columns[c] < 0, np.nan, columns[c]).astype(np.float32) for c in CHANNELS}
        readings = windows.Readings.from_columns(columns["time"], values, channels=CHANNELS, label="spo2")
        times = columns["time"]
        X, y = windows.cut(readings, windows.window_starts(int(times[0]), int(times[-1]), SPEC), SPEC)
        xs.append(X)
        ys.append(y)
        who.append(np.full(len(y), index))
        condition.append(patient.condition)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(who), np.asarray(condition)


@pytest.mark.timeout(300)
def test_dp_training_finds_desaturation_windows_on_held_out_patients() -> None:
    """Seeded throughout (initial weights, sampling, noise), so the outcome is fixed; at ε = 8 on
    40 patients most seeds reach 0.9-0.98, so a failure here means the training or the windows broke."""
    X, y, who, condition = _windows(stream_samples.StreamSize(patients=60, days=1.0, seed=3))
    train = who < 40
    assert 0.005 < y.mean() < 0.2 and condition[:40].any() and condition[40:].any()
    torch.manual_seed(1)
    model = _module().build_model()
    result = dpsgd.train(_export(model), X=X[train], y=y[train].astype(np.int64), patient=who[train],
                         task="binary-classification", num_classes=2, trainable=["*"], target_epsilon=8.0,
                         target_delta=1e-5, epochs=12, expected_batch_patients=16, max_rows_per_patient=16,
                         learning_rate=0.01, optimizer="adam", clipping_norm=1.0, seed_source=fixed_seed(6),
                         noise_source=noise.TorchGaussian(torch.Generator().manual_seed(6)), allowed_modules=allowed_here())
    model.load_state_dict({**model.state_dict(), **result.trained_state})
    with torch.no_grad():
        scores = torch.softmax(model(torch.as_tensor(X[~train])), dim=-1)[:, 1].numpy()
    assert result.steps >= 20 and result.epsilon_spent <= 8.0
    assert roc_auc_score(y[~train], scores) > 0.85  # chance is 0.5
