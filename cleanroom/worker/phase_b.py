"""Phase B, inside the data sandbox: decrypt, build examples, train or evaluate, write DP outputs.

Service code only: the model arrives as a validated exported graph, never as the manufacturer's
Python. Secrets arrive on stdin (never on disk): the dataset key wrapped to this run's ephemeral
X25519 key by the key broker, that ephemeral key, and the quote it was bound to. The plaintext
lives in memory only. Nothing this process prints reaches the manufacturer: the host keeps only
the files under /out that the release gate allows, and an exit status from a small set.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

IN = Path("/in/job")
# The worker's own stack on top of the trainer's: decryption (pycryptodome, cryptography), Arrow,
# and the attestation simulator. Anything else loaded here would be foreign and stops training.
WORKER_MODULES = ("Crypto", "cryptography", "_cffi_backend", "_openssl", "cffi", "pyarrow", "enclave_sim",
                  "pycparser", "cloudpickle", "google", "grpc", "_brotli", "zstandard", "yaml", "_yaml")
OUT = Path("/out")
EXIT_OK, EXIT_NO_DATA, EXIT_PRECONDITION, EXIT_FAILED = 0, 2, 3, 1
EVALUATION_OPTIONS = ("sensitivity_at_specificity", "specificity_at_sensitivity", "net_benefit_thresholds", "score_bins")


def main(inputs: Path = IN, out: Path = OUT) -> int:
    job = json.loads((inputs / "job.json").read_text())
    secrets = json.loads(sys.stdin.read())
    table = _decrypt_dataset(inputs / "dataset.blob", secrets, job["dataset_id"])
    examples = _examples(table, job)
    if examples is None:
        return EXIT_NO_DATA
    from cleanroom.domain.errors import CleanroomError

    try:
        outputs = _train(job, examples, inputs) if job["params"]["kind"] == "training" else _evaluate(job, examples, inputs)
    except CleanroomError:
        return EXIT_PRECONDITION  # e.g. δ not below 1/patients once rows were bounded
    _write(out, outputs)
    return EXIT_OK


def _decrypt_dataset(path: Path, secrets: dict[str, str], dataset_id: str) -> Any:
    import pyarrow.ipc as ipc
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    import enclave_sim
    from cleanroom import crypto

    quote = enclave_sim.Quote.from_bytes(bytes.fromhex(secrets["quote"]))
    ephemeral = X25519PrivateKey.from_private_bytes(bytes.fromhex(secrets["ephemeral_private_key"]))
    wrapped = enclave_sim.WrappedForEnclave.from_bytes(bytes.fromhex(secrets["wrapped_key"]))
    key = enclave_sim.unwrap_in_enclave(wrapped, ephemeral, quote, context=dataset_id.encode("ascii"))
    with path.open("rb") as sealed, ipc.open_stream(crypto.SealedReader(sealed, key, dataset_id)) as stream:
        return stream.read_all()


def _examples(table: Any, job: dict[str, Any]) -> dict[str, Any] | None:
    """Features, labels and patients; rows with a missing feature or an impossible label are dropped
    here, before any mechanism runs (a per-row filter keeps the patient-level guarantee)."""
    import numpy as np

    params = job["params"]
    X = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype("float32") for c in params["feature_columns"]])
    y = table.column(params["label_column"]).to_numpy(zero_copy_only=False).astype("float64")
    patient = np.asarray(table.column(job["patient_column"]).to_pylist(), dtype=object)
    keep = np.isfinite(X).all(axis=1) & np.isfinite(y)
    if job["task"] != "regression":
        keep &= (y >= 0) & (y < job["num_classes"]) & (y == np.round(y))
    if not keep.any():
        return None
    shape = (-1, *job["input_shape"])
    return {"X": X[keep].reshape(shape), "y": y[keep], "patient": patient[keep]}


def _allowed() -> tuple[str, ...]:
    from cleanroom.trainer.guard import DEFAULT_ALLOWED_MODULES

    return (*DEFAULT_ALLOWED_MODULES, *WORKER_MODULES)


def _program(inputs: Path) -> Any:
    from cleanroom.models.intake.artifact import read_artifact

    return read_artifact(inputs / "model.safetensors", max_bytes=1 << 31, max_header_bytes=16 << 20, max_tensors=4096, max_nodes=5000)


def _split(patient: Any, fraction: float) -> tuple[Any, Any]:
    """Held-out patients by a hash of the pseudonym: the split does not depend on any data value,
    so training and validation touch disjoint patients and compose in parallel."""
    import numpy as np

    bucket = np.array([int.from_bytes(hashlib.sha256(str(p).encode()).digest()[:4], "big") / 2**32 for p in patient])
    return bucket >= fraction, bucket < fraction


def _train(job: dict[str, Any], examples: dict[str, Any], inputs: Path) -> dict[str, bytes]:
    from safetensors.torch import save

    from cleanroom.trainer.dpsgd import train

    params, program = job["params"], _program(inputs)
    train_rows, held_out = _split(examples["patient"], float(params["validation_fraction"]))
    result = train(
        program, X=examples["X"][train_rows], y=examples["y"][train_rows], patient=examples["patient"][train_rows],
        task=job["task"], num_classes=job["num_classes"], trainable=job["trainable"],
        target_epsilon=float(params["target_epsilon"]), target_delta=float(params["target_delta"]),
        epochs=params["epochs"], expected_batch_patients=params["expected_batch_patients"],
        max_rows_per_patient=params["max_rows_per_patient"], learning_rate=float(params["learning_rate"]),
        optimizer=params["optimizer"], clipping_norm=float(params["clipping_norm"]), allowed_modules=_allowed(),
    )
    weights = save({k: v.contiguous() for k, v in result.trained_state.items()})
    # The receipt names the recipe that chose the optimisation settings when the service filled any
    # (cleanroom/domain/recipe.py); a request that set them all keeps the receipt it always had.
    recipe = {"recipe": params["recipe"]} if params.get("recipe") else {}
    summary = {"epsilon_spent": result.epsilon_spent, "delta": result.delta, "accountant": result.accountant,
               "dp_parameters": {**result.dp_parameters, "noise_multiplier": result.noise_multiplier,
                                 "sample_rate": result.sample_rate, "steps": result.steps, "delta": result.delta, **recipe}}
    outputs = {"weights.safetensors": weights}
    if held_out.any():
        evaluation = _evaluate_rows(job, examples, held_out, program, state=result.trained_state)
        outputs.update(_evaluation_files(evaluation, title="Validation on held-out patients"))
    outputs["result.json"] = json.dumps(summary, sort_keys=True).encode()
    return outputs


def _evaluate_rows(job: dict[str, Any], examples: dict[str, Any], rows: Any, program: Any, state: Any = None) -> Any:
    from cleanroom.trainer.evaluate import evaluate

    params = job["params"]
    # The report's named operating points, net-benefit thresholds and bin count: public request
    # parameters, each optional (the evaluator's defaults apply when a job does not carry them).
    options = {name: params[name] for name in EVALUATION_OPTIONS if params.get(name) not in (None, [], 0)}
    return evaluate(
        program, X=examples["X"][rows], y=examples["y"][rows], patient=examples["patient"][rows], task=job["task"],
        num_classes=job["num_classes"], target_epsilon=float(params["target_epsilon"]),
        target_delta=float(params["target_delta"]), metrics=job["metrics"],
        max_rows_per_patient=params["max_rows_per_patient"], state=state, allowed_modules=_allowed(), **options,
    )


def _evaluation_files(evaluation: Any, *, title: str) -> dict[str, bytes]:
    from cleanroom.trainer.report import render_html, render_json, report_data

    data = report_data(title=title, evaluation=evaluation)
    return {"metrics.json": render_json(data).encode(), "report.html": render_html(data).encode()}


def _evaluate(job: dict[str, Any], examples: dict[str, Any], inputs: Path) -> dict[str, bytes]:
    import numpy as np

    evaluation = _evaluate_rows(job, examples, np.ones(len(examples["y"]), dtype=bool), _program(inputs))
    summary = {"epsilon_spent": evaluation.epsilon_spent, "delta": evaluation.delta, "accountant": evaluation.accountant,
               "dp_parameters": {**evaluation.mechanism_parameters, "delta": evaluation.delta}}
    return {**_evaluation_files(evaluation, title="Validation of a pretrained model"),
            "result.json": json.dumps(summary, sort_keys=True, default=str).encode()}


def _write(out: Path, outputs: dict[str, bytes]) -> None:
    for name, data in outputs.items():
        (out / name).write_bytes(data)
