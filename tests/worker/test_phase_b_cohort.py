"""Phase B end to end, in process, on a three-site job.json in the runner's contract.

Real parts: each site's table is an Arrow stream sealed with its own data key (crypto.seal_bytes),
the key wrapped to a fresh quote's ephemeral key (enclave_sim), the model an exported program in
the intake's artifact format, and phase_b.main reads /in/job and stdin as inside the sandbox. The
outputs then pass the real release gate (jobs.release.check_outputs).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from cryptography.hazmat.primitives import serialization
from safetensors.torch import load

import enclave_sim
from cleanroom import crypto
from cleanroom.domain.privacy import Privacy
from cleanroom.jobs import release
from cleanroom.models.intake.artifact import write_artifact
from cleanroom.trainer.guard import foreign_modules
from cleanroom.worker import phase_b
from tests.trainer.test_trainer_helpers import MLP, export
from tests.worker import cohort_data as data

PATIENTS, SHARED = 400, 30


@pytest.fixture(scope="module")
def attestation(tmp_path_factory) -> enclave_sim.AttestationKey:
    root = enclave_sim.RootAuthority.load_or_create(tmp_path_factory.mktemp("root"))
    return enclave_sim.AttestationKey.load_or_create(tmp_path_factory.mktemp("launcher"), root)


@pytest.fixture(scope="module")
def tables() -> list[pa.Table]:
    return [data.site_table(s, patients=PATIENTS, shared=SHARED, rows_per_shared=2) for s in range(3)]


def _stream(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _secret(attestation: enclave_sim.AttestationKey, key: bytes, dataset_id: str) -> dict[str, str]:
    quote, ephemeral = enclave_sim.make_quote(attestation, "ab" * 32, "cd" * 32)
    wrapped = enclave_sim.wrap_for_enclave(key, quote, context=dataset_id.encode("ascii"))
    raw = ephemeral.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return {"quote": quote.to_bytes().hex(), "ephemeral_private_key": raw.hex(), "wrapped_key": wrapped.to_bytes().hex()}


@pytest.fixture(autouse=True)
def _allowed_here(monkeypatch) -> None:
    """The test process holds pytest and friends: allow what is loaded now (the guard has its own tests)."""
    original = phase_b._allowed
    monkeypatch.setattr(phase_b, "_allowed", lambda: (*original(), *foreign_modules()))


def _run_job(tmp: Path, job: dict[str, Any], tables: list[pa.Table], attestation: enclave_sim.AttestationKey,
             monkeypatch: pytest.MonkeyPatch, *, swap_secrets: bool = False) -> tuple[int, dict[str, bytes]]:
    inputs, out = tmp / "in", tmp / "out"
    inputs.mkdir()
    out.mkdir()
    secrets = []
    for site, table in zip(job["sites"], tables):
        key = crypto.new_data_key()
        (inputs / site["blob"]).write_bytes(crypto.seal_bytes(_stream(table), key, site["dataset_id"]))
        secrets.append(_secret(attestation, key, site["dataset_id"]))
    if swap_secrets:
        secrets[0], secrets[1] = secrets[1], secrets[0]
    write_artifact(export(MLP(d_in=len(data.FEATURES), hidden=8), (len(data.FEATURES),)), inputs / "model.safetensors")
    (inputs / "job.json").write_text(json.dumps(job))
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({"sites": secrets})))
    code = phase_b.main(inputs, out)
    return code, {p.name: p.read_bytes() for p in out.iterdir()}


def _gate(kind: str, outputs: dict[str, bytes], job: dict[str, Any]) -> release.Checked:
    shapes = {k: tuple(v.shape) for k, v in load(outputs["weights.safetensors"]).items()} if kind == "training" else {}
    reserved = Privacy.cost(float(job["params"]["target_epsilon"]), float(job["params"]["target_delta"]))
    return release.check_outputs(kind, outputs, trainable_shapes=shapes, reserved=reserved)


def _no_linkage_pseudonym(outputs: dict[str, bytes]) -> None:
    for name, blob in outputs.items():
        assert b"link-" not in blob and b"L:" not in blob and b"shared" not in blob, name


def test_an_evaluation_over_three_sites_reports_each_site_and_the_pool(tmp_path, tables, attestation, monkeypatch) -> None:
    job = data.job("evaluation", roles=("train", "train", "validate"))
    code, outputs = _run_job(tmp_path, job, tables, attestation, monkeypatch)
    assert code == phase_b.EXIT_OK
    checked = _gate("evaluation", outputs, job)
    assert checked.spent.fits_in(Privacy.cost(2.0, 1e-6)) and checked.dp_parameters["per_site"].keys() == set(data.NAMES)
    report = json.loads(outputs["metrics.json"])
    assert report["cohort"]["never_seen"] == ["Hospital East"]
    assert report["cohort"]["never_seen_statement"] == ("The requester declares that the model never saw the data of "
                                                        "Hospital East: it is its external validation site.")
    assert report["cohort"]["linkage"].startswith("every site declared a linkage column")
    assert [s["name"] for s in report["evaluation"]["sites"]] == list(data.NAMES)
    for part in [report["evaluation"], *report["evaluation"]["sites"]]:
        for metric in ("auroc", "accuracy"):
            value, (lo, hi) = part["metrics"][metric]["value"], part["metrics"][metric]["ci95"]
            assert 0 <= lo <= value <= hi <= 1
    page = outputs["report.html"].decode()
    for text in (*data.NAMES, "Results by site", "pooled (all sites)", "never saw the data of Hospital East",
                 "a person treated at several sites is one privacy unit", "Hospital East (never seen)"):
        assert text in page, text
    _no_linkage_pseudonym(outputs)


def test_training_holds_out_whole_sites_and_validates_on_them(tmp_path, tables, attestation, monkeypatch) -> None:
    job = data.job("training", roles=("train", "validate", "validate"), linked=(True, True, False))
    code, outputs = _run_job(tmp_path, job, tables, attestation, monkeypatch)
    assert code == phase_b.EXIT_OK
    checked = _gate("training", outputs, job)
    assert set(checked.released) == {"weights.safetensors", "metrics.json", "report.html"}
    report = json.loads(outputs["metrics.json"])
    assert report["title"] == "External validation on held-out sites"
    assert [s["name"] for s in report["evaluation"]["sites"]] == ["Hospital South", "Hospital East"]
    assert report["cohort"]["never_seen"] == ["Hospital South", "Hospital East"]
    assert report["cohort"]["never_seen_statement"] == ("The model never saw the data of Hospital South and Hospital East: "
                                                        "they were held out whole as external validation sites.")
    assert "linked across Hospital North, Hospital South only" in report["cohort"]["linkage"]
    _no_linkage_pseudonym(outputs)


def test_held_out_sites_leave_out_persons_seen_in_training(tables) -> None:
    job = data.job("training", roles=("train", "validate", "train"))
    examples = phase_b._examples(tables, job)
    assert examples is not None
    train_rows, held_out = phase_b._held_out_sites(job, examples)
    assert (examples["site"][train_rows] != 1).all() and (examples["site"][held_out] == 1).all()
    assert not set(examples["patient"][train_rows]) & set(examples["patient"][held_out])
    south = examples["site"] == 1
    assert int((south & ~held_out).sum()) == SHARED * 2      # exactly the linked persons' rows are left out
    # Without linkage at South its planted persons are other units: all of South is validated.
    examples = phase_b._examples(tables, data.job("training", roles=("train", "validate", "train"), linked=(True, False, True)))
    assert examples is not None
    assert phase_b._held_out_sites(job, examples)[1].sum() == int((examples["site"] == 1).sum())


def test_without_held_out_sites_a_random_fraction_of_units_is_held_out(tables) -> None:
    examples = phase_b._examples(tables, data.job("training"))
    assert examples is not None
    train_rows, held_out = phase_b._split(examples["patient"], 0.2)
    assert not set(examples["patient"][train_rows]) & set(examples["patient"][held_out])
    assert 0.15 < held_out.mean() < 0.25


def test_a_single_site_report_is_as_before(tmp_path, tables, attestation, monkeypatch) -> None:
    job = data.job("evaluation", roles=("train",))
    code, outputs = _run_job(tmp_path, job, tables[:1], attestation, monkeypatch)
    assert code == phase_b.EXIT_OK
    report = json.loads(outputs["metrics.json"])
    assert "cohort" not in report and "sites" not in report["evaluation"] and report["privacy"]["unit"] == "patient"
    assert "per_site" not in report["evaluation"]["mechanism_parameters"]
    assert "Results by site" not in outputs["report.html"].decode()


def test_each_site_opens_with_its_own_key_only(tmp_path, tables, attestation, monkeypatch) -> None:
    job = data.job("evaluation")
    with pytest.raises(enclave_sim.EnclaveSimError):
        _run_job(tmp_path, job, tables, attestation, monkeypatch, swap_secrets=True)


def test_a_training_job_with_no_training_site_is_refused_before_training(tmp_path, tables, attestation, monkeypatch) -> None:
    job = data.job("training", roles=("validate", "validate", "validate"))
    code, outputs = _run_job(tmp_path, job, tables, attestation, monkeypatch)
    assert code == phase_b.EXIT_PRECONDITION and outputs == {}
