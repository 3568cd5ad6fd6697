"""DP training and evaluation over stream windows.

- The batch-source refactor changed nothing for tables: a seeded run gives the weights it gave
  before sources existed (digest recorded at commit 14f328d), and train() equals train_source()
  over the in-memory source.
- Per-patient bounds under skew, by counting: one patient has 100 times the readings of the others
  (and about 100 times the candidate windows); over many steps it never gives more than k windows
  to a step, its clipped contribution has norm at most C, and it is sampled as often as any other.
- End to end through phase_b.main with a sealed stream table and a released key on stdin, as in the
  sandbox: training (stream source, held-out patients validated per window and per patient) and
  evaluation pass the real release gate; a cohort with a stream is refused as a precondition.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from cryptography.hazmat.primitives import serialization
from torch import nn

import enclave_sim
from cleanroom import crypto
from cleanroom.crypto.sealed_table import SealedTable
from cleanroom.domain.errors import CleanroomError
from cleanroom.domain.privacy import Privacy
from cleanroom.domain.streams import StreamDescription, ThresholdLabel, WindowSpec
from cleanroom.jobs import release
from cleanroom.models.intake.artifact import write_artifact
from cleanroom.trainer import dpsgd, noise, sampling, stream_evaluate
from cleanroom.trainer.graph import ExportedModel, Task
from cleanroom.trainer.guard import foreign_modules
from cleanroom.trainer.sources import Batch, Examples, InMemorySource
from cleanroom.worker import phase_b
from cleanroom.worker.stream_batches import StreamBatchSource
from cleanroom.worker.stream_source import StreamSite
from tests.crypto import stream_data
from tests.trainer.test_trainer_helpers import MLP, allowed_here, export, fixed_seed, separable_data

BINARY = Task("binary-classification", 2)
SPEC = WindowSpec(60, 30, 10, 0.5, ThresholdLabel("spo2", "below", 93.0, 20))
K = 3
HEAVY, TAGGED = "heavy", "pat-07"   # the heavy patient, and one ordinary patient to compare with
OFFSETS = {HEAVY: 1000.0, TAGGED: 2000.0}  # added to their heart rate: their windows are recognisable


class WindowNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(2 * SPEC.cells, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1) / 100.0)


def _window_program() -> torch.export.ExportedProgram:
    torch.manual_seed(0)
    return export(WindowNet(), (2, SPEC.cells))


# --- the in-memory source is the old path


# sha256 over the released tensors (sorted by name, raw float32 bytes) of the run below, computed with
# the trainer of commit 14f328d, before batch sources existed.
BEFORE_SOURCES = "51116cd5ad73235862d92c9cb6b5e6d6fc696b2fcd23ef1e9522b17c748594cf"


def _seeded_table_run(trainer: Any, **data: Any) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    program = export(MLP())
    result = trainer(program, task="binary-classification", num_classes=2, trainable=["*"], target_epsilon=3.0,
                     target_delta=1e-3, epochs=2, expected_batch_patients=12, max_rows_per_patient=3, learning_rate=0.5,
                     optimizer="sgd", clipping_norm=1.0, momentum=0.5, seed_source=fixed_seed(7),
                     noise_source=noise.TorchGaussian(torch.Generator().manual_seed(11)), allowed_modules=allowed_here(),
                     **data)
    return dict(result.trained_state)


def _table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, y = separable_data(240, seed=3)
    patient = np.repeat(np.arange(60), 4)
    patient[:40] = 0  # one heavy patient: the row choice draws from the rng too
    return X, y, patient


@pytest.fixture(scope="module")
def table_run() -> dict[str, torch.Tensor]:
    X, y, patient = _table()
    return _seeded_table_run(dpsgd.train, X=X, y=y, patient=patient)


def test_the_in_memory_source_gives_the_weights_of_the_trainer_before_sources(table_run) -> None:
    digest = hashlib.sha256()
    for name in sorted(table_run):
        digest.update(name.encode())
        digest.update(table_run[name].numpy().tobytes())
    assert digest.hexdigest() == BEFORE_SOURCES


def test_train_equals_train_source_over_the_in_memory_source(table_run) -> None:
    X, y, patient = _table()
    torch.manual_seed(0)
    model = ExportedModel(export(MLP()), task=BINARY, trainable=["*"])
    X_t, y_t = model.features(X), model.labels(y, len(X))
    source = InMemorySource(X_t, y_t, sampling.PatientIndex.build(patient))
    via_source = _seeded_table_run(lambda program, **kw: dpsgd.train_source(program, source, **kw))
    for name in table_run:
        assert torch.equal(table_run[name], via_source[name])


# --- a skewed stream


def _patient(name: str, n: int, seed: int) -> pa.Table:
    table = stream_data.readings(name, n, seed=seed)
    if name in OFFSETS:
        hr = table.column("hr")
        table = table.set_column(table.schema.get_field_index("hr"), "hr", pc.add(hr, pa.scalar(OFFSETS[name], pa.float32())))
    return table


@pytest.fixture(scope="module")
def skewed() -> tuple[bytes, bytes]:
    """30 patients of 3,000 readings (about 75 minutes) and one of 300,000 (about 5 days)."""
    key = crypto.new_data_key()
    patients = [_patient(f"pat-{i:02d}", 3_000, seed=i) for i in range(30)] + [_patient(HEAVY, 300_000, seed=99)]
    return stream_data.seal(patients, key), key


def _site(skewed: tuple[bytes, bytes]) -> StreamSite:
    blob, key = skewed
    table = SealedTable(io.BytesIO(blob), key, stream_data.BLOB_ID)
    return StreamSite(table, spec=SPEC, channels=["hr", "spo2"], label="spo2")


def _owner(X: torch.Tensor) -> np.ndarray:
    """Which tagged patient each window belongs to, from its heart-rate offset ("" for the others)."""
    level = X[:, 0, :].mean(dim=1).numpy()
    return np.where(level > 1500, TAGGED, np.where(level > 500, HEAVY, ""))


def test_a_patient_with_100x_the_data_gives_at_most_k_windows_and_is_sampled_like_anyone(skewed) -> None:
    with _site(skewed) as site:
        assert site.span(HEAVY).rows == 100 * site.span(TAGGED).rows
        assert len(site.starts(HEAVY)) > 50 * len(site.starts(TAGGED))
        source = StreamBatchSource(site, site.patients, task=BINARY.kind, num_classes=2)
        rng, steps, q = np.random.default_rng(5), 200, 0.5
        counts = {HEAVY: np.zeros(steps, dtype=np.int64), TAGGED: np.zeros(steps, dtype=np.int64)}
        for step in range(steps):
            examples = dpsgd.sample_examples(source, rng, sample_rate=q, max_rows=K)
            assert np.bincount(examples.batch.segments).max(initial=0) <= K
            owner = _owner(examples.X)
            for name in counts:
                counts[name][step] = int((owner == name).sum())
    for name, per_step in counts.items():
        assert per_step.max() == K, name          # never more than k, and k is reached
    heavy_rate, tagged_rate = ((c > 0).mean() for c in counts.values())
    slack = 4 * np.sqrt(q * (1 - q) / steps)      # four binomial standard deviations
    assert abs(heavy_rate - q) < slack and abs(tagged_rate - q) < slack
    assert abs(heavy_rate - tagged_rate) < np.sqrt(2) * slack
    # Given it is sampled, the heavy patient gives as many windows as an ordinary one, not 100x.
    assert counts[HEAVY][counts[HEAVY] > 0].mean() <= K


def test_the_heavy_patient_s_clipped_contribution_is_at_most_c(skewed) -> None:
    clip = 0.05
    model = ExportedModel(_window_program(), task=BINARY, trainable=["*"])
    master = model.initial_trainable()
    with _site(skewed) as site:
        source = StreamBatchSource(site, site.patients, task=BINARY.kind, num_classes=2)
        slot = site.patients.index(HEAVY)
        # The test stream has long sensor gaps: take the first draw whose k windows all have readings.
        draws = (source.batch(np.array([slot]), max_rows=K, rng=np.random.default_rng(seed)) for seed in range(50))
        examples = next(e for e in draws if len(e.y) == K)
    assert set(_owner(examples.X)) == {HEAVY}
    raw = model.per_example_grads(master, examples.X, examples.y)
    raw_norm = float(torch.sqrt(sum(g.sum(0).double().square().sum() for g in raw.values())))
    clipped = dpsgd.clipped_batch_sum(model, master, examples.X, examples.y, examples.batch, clipping_norm=clip,
                                      chunk_rows=1024)
    norm = float(torch.sqrt(sum(t.double().square().sum() for t in clipped.values())))
    assert raw_norm > 2 * clip                    # the bound binds: without clipping it would weigh more
    assert norm <= clip * (1 + 1e-5)


def test_a_step_reads_its_windows_not_the_stream(skewed) -> None:
    """The heavy patient holds most of the blob; its k windows in a step read a small part of it."""
    blob, key = skewed
    counting = stream_data.CountingFile(blob)
    with StreamSite(SealedTable(counting, key, stream_data.BLOB_ID), spec=SPEC, channels=["hr", "spo2"],
                    label="spo2") as site:
        assert site.span(HEAVY).rows > 0.7 * sum(site.span(p).rows for p in site.patients)
        source = StreamBatchSource(site, site.patients, task=BINARY.kind, num_classes=2)
        opened = counting.bytes_read
        examples = source.batch(np.array([site.patients.index(HEAVY)]), max_rows=K, rng=np.random.default_rng(3))
    assert 0 < len(examples.y) <= K          # a window without enough readings is dropped, never replaced
    assert counting.bytes_read - opened < 0.25 * len(blob)


# --- phase B end to end


def _secret(attestation: enclave_sim.AttestationKey, key: bytes, dataset_id: str) -> dict[str, str]:
    quote, ephemeral = enclave_sim.make_quote(attestation, "ab" * 32, "cd" * 32)
    wrapped = enclave_sim.wrap_for_enclave(key, quote, context=dataset_id.encode("ascii"))
    raw = ephemeral.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return {"quote": quote.to_bytes().hex(), "ephemeral_private_key": raw.hex(), "wrapped_key": wrapped.to_bytes().hex()}


@pytest.fixture(scope="module")
def attestation(tmp_path_factory) -> enclave_sim.AttestationKey:
    root = enclave_sim.RootAuthority.load_or_create(tmp_path_factory.mktemp("root"))
    return enclave_sim.AttestationKey.load_or_create(tmp_path_factory.mktemp("launcher"), root)


@pytest.fixture(scope="module")
def ward() -> list[pa.Table]:
    return [stream_data.readings(f"pat-{i:02d}", 300, seed=i) for i in range(60)]


@pytest.fixture(autouse=True)
def _allowed_here(monkeypatch) -> None:
    original = phase_b._allowed
    monkeypatch.setattr(phase_b, "_allowed", lambda: (*original(), *foreign_modules()))


def _job(kind: str, *, sites: int = 1) -> dict[str, Any]:
    params: dict[str, Any] = {"kind": kind, "feature_columns": ["hr", "spo2"], "label_column": "",
                              "windows": SPEC.to_json(), "target_epsilon": "2", "target_delta": "1e-4",
                              "max_rows_per_patient": K}
    if kind == "training":
        params.update(epochs=2, expected_batch_patients=10, learning_rate="0.1", optimizer="sgd", clipping_norm="1",
                      validation_fraction="0.3")
    else:
        params["metrics"] = ["accuracy", "auroc"]
    stream = StreamDescription("t", (("hr", "bpm"), ("spo2", "%")), 1, 0).to_json()
    site = {"dataset_id": stream_data.BLOB_ID, "name": "Ward A", "blob": "site0.blob", "columns": {},
            "patient_column": "pid", "linkage_column": None, "role": "train", "stream": stream}
    return {"params": params, "task": "binary-classification", "num_classes": 2, "input_shape": [2, SPEC.cells],
            "trainable": ["*"], "metrics": params.get("metrics", ["accuracy", "auroc"]),
            "dataset_id": stream_data.BLOB_ID, "sites": [dict(site, blob=f"site{i}.blob") for i in range(sites)]}


def _run(tmp: Path, job: dict[str, Any], patients: list[pa.Table], attestation: enclave_sim.AttestationKey,
         monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict[str, bytes]]:
    inputs, out = tmp / "in", tmp / "out"
    inputs.mkdir()
    out.mkdir()
    key = crypto.new_data_key()
    secrets = []
    for site in job["sites"]:
        (inputs / site["blob"]).write_bytes(stream_data.seal(patients, key))
        secrets.append(_secret(attestation, key, site["dataset_id"]))
    write_artifact(_window_program(), inputs / "model.safetensors")
    (inputs / "job.json").write_text(json.dumps(job))
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({"sites": secrets})))
    code = phase_b.main(inputs, out)
    return code, {p.name: p.read_bytes() for p in out.iterdir()}


def _gate(kind: str, outputs: dict[str, bytes]) -> release.Checked:
    from safetensors.torch import load

    shapes = {k: tuple(v.shape) for k, v in load(outputs["weights.safetensors"]).items()} if kind == "training" else {}
    return release.check_outputs(kind, outputs, trainable_shapes=shapes, reserved=Privacy.cost(2.0, 1e-4))


def _reports_both_views(outputs: dict[str, bytes]) -> dict[str, Any]:
    report = json.loads(outputs["metrics.json"])
    evaluation = report["evaluation"]
    for part in (evaluation, evaluation["per_patient"]):
        for metric in ("accuracy", "auroc"):
            value, (lo, hi) = part["metrics"][metric]["value"], part["metrics"][metric]["ci95"]
            assert 0 <= lo <= value <= hi <= 1
    params = evaluation["mechanism_parameters"]
    assert params["budget_parts"] == {"per_window": 0.5, "per_patient": 0.5}
    assert params["per_patient"]["max_rows_per_patient"] == 1 and params["max_rows_per_patient"] == K
    page = outputs["report.html"].decode()
    assert "Validation metrics per window" in page and "Validation metrics per patient" in page
    for blob in outputs.values():
        assert b"pat-" not in blob   # no pseudonym leaves the sandbox
    return report


def test_stream_training_through_phase_b_validates_per_window_and_per_patient(tmp_path, ward, attestation,
                                                                             monkeypatch) -> None:
    code, outputs = _run(tmp_path, _job("training"), ward, attestation, monkeypatch)
    assert code == phase_b.EXIT_OK
    checked = _gate("training", outputs)
    assert set(checked.released) == {"weights.safetensors", "metrics.json", "report.html"}
    result = json.loads(outputs["result.json"])
    held_out = sum(1 for p in range(60) if phase_b._split(np.asarray([f"S0:pat-{p:02d}"]), 0.3)[1][0])
    assert result["dp_parameters"]["n_patients"] == 60 - held_out   # stored training patients (public)
    assert result["dp_parameters"]["max_rows_per_patient"] == K
    assert result["dp_parameters"]["windows"] == SPEC.to_json()
    report = _reports_both_views(outputs)
    assert report["title"] == "Validation on held-out patients"


def test_stream_evaluation_through_phase_b_reports_per_window_and_per_patient(tmp_path, ward, attestation,
                                                                             monkeypatch) -> None:
    code, outputs = _run(tmp_path, _job("evaluation"), ward, attestation, monkeypatch)
    assert code == phase_b.EXIT_OK
    checked = _gate("evaluation", outputs)
    assert checked.dp_parameters["per_patient"]["rho"] == pytest.approx(checked.dp_parameters["rho"] / 2)
    assert _reports_both_views(outputs)["title"] == "Validation of a pretrained model"


def test_a_cohort_with_a_stream_is_a_precondition_failure(tmp_path, ward, attestation, monkeypatch) -> None:
    code, outputs = _run(tmp_path, _job("evaluation", sites=2), ward[:5], attestation, monkeypatch)
    assert code == phase_b.EXIT_PRECONDITION and outputs == {}


# --- the evaluator's two views, and the step's guard


def _scores(n_patients: int, per_patient: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    patient = np.repeat(np.arange(n_patients), per_patient)
    y = (rng.random(len(patient)) < 0.3).astype(np.float64)
    p = np.clip(0.5 * y + 0.5 * rng.random(len(patient)), 0, 1)
    return np.stack([1 - p, p], axis=1), y, patient


def test_a_patient_s_score_is_its_windows_mean_and_its_label_any_positive_window() -> None:
    outputs = np.array([[0.8, 0.2], [0.4, 0.6], [0.9, 0.1], [0.7, 0.3]])
    scores, labels = stream_evaluate.patient_rows(outputs, np.array([0, 1, 0, 0]), np.array([4, 4, 9, 9]))
    np.testing.assert_allclose(scores, [[0.6, 0.4], [0.8, 0.2]])
    assert labels.tolist() == [1.0, 0.0]


def test_per_window_and_per_patient_halve_the_budget_with_their_own_bounds() -> None:
    outputs, y, patient = _scores(400, K)
    result = stream_evaluate.evaluate_windows(BINARY, outputs, y, patient, wanted={"accuracy", "auroc"},
                                              target_epsilon=2.0, target_delta=1e-5, max_rows=K,
                                              rng=np.random.default_rng(0))
    params = result.mechanism_parameters
    assert result.per_patient is not None and result.epsilon_spent == pytest.approx(
        stream_evaluate.accounting.zcdp_epsilon(rho=params["rho"], delta=1e-5))
    window_stats, patient_stats = params["statistics"], params["per_patient"]["statistics"]
    assert sum(s["rho"] for s in window_stats.values()) == pytest.approx(params["rho"] / 2)
    assert sum(s["rho"] for s in patient_stats.values()) == pytest.approx(params["rho"] / 2)
    for name in window_stats:   # a patient moves the window statistics by k windows, the patient ones by one row
        assert window_stats[name]["l2_sensitivity"] == pytest.approx(K * patient_stats[name]["l2_sensitivity"])


def test_other_tasks_release_the_per_window_metrics_with_the_whole_budget() -> None:
    outputs, y, patient = _scores(300, K)
    result = stream_evaluate.evaluate_windows(Task("multiclass-classification", 2), outputs, y, patient,
                                              wanted={"accuracy"}, target_epsilon=2.0, target_delta=1e-5, max_rows=K,
                                              rng=np.random.default_rng(0))
    assert result.per_patient is None and "not released" in result.mechanism_parameters["per_patient"]
    assert sum(s["rho"] for s in result.mechanism_parameters["statistics"].values()) == pytest.approx(
        result.mechanism_parameters["rho"])


class _Greedy:
    """A broken source: one example more than the bound for every patient."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor) -> None:
        self.X, self.y = X, y

    @property
    def n_patients(self) -> int:
        return 20

    def batch(self, patients: np.ndarray, *, max_rows: int, rng: np.random.Generator) -> Examples:
        segments = np.repeat(np.arange(len(patients)), max_rows + 1)
        return Examples(self.X[: len(segments)], self.y[: len(segments)], Batch(np.arange(len(segments)), segments,
                                                                                 len(patients)))


def test_a_source_that_breaks_the_per_patient_bound_stops_training() -> None:
    X, y = separable_data(200, seed=1)
    with pytest.raises(CleanroomError, match="per-patient bound"):
        dpsgd.train_source(export(MLP()), _Greedy(torch.as_tensor(X), torch.as_tensor(y)), task=BINARY.kind,
                           num_classes=2, trainable=["*"], target_epsilon=2.0, target_delta=1e-3, epochs=1,
                           expected_batch_patients=10, max_rows_per_patient=2, learning_rate=0.1, optimizer="sgd",
                           clipping_norm=1.0, allowed_modules=allowed_here())
