"""Phase B, inside the data sandbox: decrypt, build examples, train or evaluate, write DP outputs.

Service code only: the model arrives as a validated exported graph, never as the manufacturer's
Python. Secrets arrive on stdin (never on disk): per site, the dataset key wrapped to this run's
ephemeral X25519 key by the key broker, that ephemeral key, and the quote it was bound to. The
plaintext lives in memory only. Nothing this process prints reaches the manufacturer: the host
keeps only the files under /out that the release gate allows, and an exit status from a small set.

Every job is a cohort of one or more sites (job.json "sites", in request order). Each site's rows
are read through its own column mapping onto the study's names and get a privacy unit
(domain.cohort.unit_key: the linkage pseudonym where the site declared linkage, else the patient
qualified by the site) and a site index. The trainer and the evaluator bound, sample and clip by
unit, so a linked person's rows at all sites together respect the per-patient bound.

A site whose entry carries "stream" holds a sealed stream table: such a job takes the stream path
(stream_jobs.py: windows cut on demand, never the whole dataset in memory).
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
    secrets = json.loads(sys.stdin.read())["sites"]
    if len(secrets) != len(job["sites"]):
        return EXIT_FAILED
    if any("stream" in site for site in job["sites"]):
        from cleanroom.worker import stream_jobs

        return stream_jobs.main(job, secrets, inputs, out)
    tables = [_decrypt_dataset(inputs / site["blob"], secret, site["dataset_id"])
              for site, secret in zip(job["sites"], secrets, strict=True)]
    examples = _examples(tables, job)
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

    from cleanroom import crypto
    from cleanroom.worker.keys import unwrap_site_key

    key = unwrap_site_key(secrets, dataset_id)
    with path.open("rb") as sealed, ipc.open_stream(crypto.SealedReader(sealed, key, dataset_id)) as stream:
        return stream.read_all()


def _examples(tables: list[Any], job: dict[str, Any]) -> dict[str, Any] | None:
    """Features, labels, privacy units and site indices of every site's rows, in site order."""
    import numpy as np

    parts = [_site_examples(table, site, index, job) for index, (table, site) in enumerate(zip(tables, job["sites"], strict=True))]
    if not any(len(p["y"]) for p in parts):
        return None
    examples = {k: np.concatenate([p[k] for p in parts]) for k in ("X", "y", "site")}
    examples["patient"] = _merged_units(np.concatenate([p["unit"] for p in parts]),
                                        np.concatenate([p["local"] for p in parts]))
    return examples


def _site_examples(table: Any, site: dict[str, Any], index: int, job: dict[str, Any]) -> dict[str, Any]:
    """One site's rows under the study's column names. Rows with a missing feature or an impossible
    label are dropped here, before any mechanism runs (a per-row filter keeps the patient-level
    guarantee)."""
    import numpy as np

    from cleanroom.domain.cohort import unit_key

    params, columns = job["params"], site["columns"]

    def column(study_name: str) -> Any:
        return table.column(columns.get(study_name, study_name)).to_numpy(zero_copy_only=False)

    X = np.column_stack([column(c).astype("float32") for c in params["feature_columns"]])
    y = column(params["label_column"]).astype("float64")
    patients = table.column(site["patient_column"]).to_pylist()
    links = table.column(site["linkage_column"]).to_pylist() if site.get("linkage_column") else [None] * len(patients)
    keep = np.isfinite(X).all(axis=1) & np.isfinite(y)
    if job["task"] != "regression":
        keep &= (y >= 0) & (y < job["num_classes"]) & (y == np.round(y))
    unit = np.asarray([unit_key(index, str(p), None if lk is None else str(lk)) for p, lk in zip(patients, links)], dtype=object)
    local = np.asarray([unit_key(index, str(p), None) for p in patients], dtype=object)
    shape = (-1, *job["input_shape"])
    return {"X": X[keep].reshape(shape), "y": y[keep], "unit": unit[keep], "local": local[keep],
            "site": np.full(int(keep.sum()), index, dtype=np.int64)}


def _merged_units(unit: Any, local: Any) -> Any:
    """Each row's privacy unit: its unit_key, except that a site's patient whose rows carry two
    linkage values (or a value on some rows only) is never split: every unit such a patient
    touches becomes one (connected components of patients and linkage pseudonyms), named by its
    smallest key. With consistent data this is unit_key unchanged."""
    import numpy as np

    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for u, p in zip(unit, local):
        a, b = find(u), find(p)
        if a != b:
            parent[max(a, b)] = min(a, b)
    # "L:..." sorts before "S...", so a linked person's unit stays its linkage key.
    return np.asarray([find(u) for u in unit], dtype=object)


def _allowed() -> tuple[str, ...]:
    from cleanroom.trainer.guard import DEFAULT_ALLOWED_MODULES

    return (*DEFAULT_ALLOWED_MODULES, *WORKER_MODULES)


def _program(inputs: Path) -> Any:
    from cleanroom.models.intake.artifact import read_artifact

    return read_artifact(inputs / "model.safetensors", max_bytes=1 << 31, max_header_bytes=16 << 20, max_tensors=4096, max_nodes=5000)


def _split(patient: Any, fraction: float) -> tuple[Any, Any]:
    """Held-out units by a hash of the unit: the split does not depend on any data value, so
    training and validation touch disjoint units and compose in parallel."""
    import numpy as np

    bucket = np.array([int.from_bytes(hashlib.sha256(str(p).encode()).digest()[:4], "big") / 2**32 for p in patient])
    return bucket >= fraction, bucket < fraction


def _held_out_sites(job: dict[str, Any], examples: dict[str, Any]) -> tuple[Any, Any]:
    """Training rows: the TRAIN sites' rows. Validation rows: the VALIDATE sites' rows of units
    that have no row at any TRAIN site (a linked person seen in training is left out of the
    external validation), so the two touch disjoint units and compose in parallel."""
    import numpy as np

    validate = np.asarray([s["role"] == "validate" for s in job["sites"]])
    at_validate = validate[examples["site"]]
    seen = set(examples["patient"][~at_validate])
    unseen = np.asarray([u not in seen for u in examples["patient"]], dtype=bool)
    return ~at_validate, at_validate & unseen


def _validate_sites(job: dict[str, Any]) -> list[int]:
    return [i for i, s in enumerate(job["sites"]) if s["role"] == "validate"]


def _train(job: dict[str, Any], examples: dict[str, Any], inputs: Path) -> dict[str, bytes]:
    from cleanroom.domain.errors import bad_request
    from cleanroom.trainer.dpsgd import train

    params, program = job["params"], _program(inputs)
    held_out_sites = _validate_sites(job)
    if len(held_out_sites) == len(job["sites"]):
        raise bad_request("a training job needs at least one training site")
    if held_out_sites:
        train_rows, held_out = _held_out_sites(job, examples)
    else:
        train_rows, held_out = _split(examples["patient"], float(params["validation_fraction"]))
    result = train(
        program, X=examples["X"][train_rows], y=examples["y"][train_rows], patient=examples["patient"][train_rows],
        task=job["task"], num_classes=job["num_classes"], trainable=job["trainable"],
        target_epsilon=float(params["target_epsilon"]), target_delta=float(params["target_delta"]),
        epochs=params["epochs"], expected_batch_patients=params["expected_batch_patients"],
        max_rows_per_patient=params["max_rows_per_patient"], learning_rate=float(params["learning_rate"]),
        optimizer=params["optimizer"], clipping_norm=float(params["clipping_norm"]), allowed_modules=_allowed(),
        audit_canaries=audit_canaries(job),
    )
    summary = _training_summary(result, params)
    outputs = {"weights.safetensors": _weights(result)}
    if held_out_sites:
        # Whole held-out sites: evaluated per site when there are several (public: the request's roles).
        evaluation = _evaluate_rows(job, examples, held_out, program, state=result.trained_state, sites=held_out_sites)
        outputs.update(_evaluation_files(evaluation, job, title="External validation on held-out sites"))
    elif held_out.any():
        evaluation = _evaluate_rows(job, examples, held_out, program, state=result.trained_state, sites=[])
        outputs.update(_evaluation_files(evaluation, job, title="Validation on held-out patients"))
    outputs["result.json"] = json.dumps(summary, sort_keys=True).encode()
    return outputs


def audit_canaries(job: dict[str, Any]) -> int:
    """The one-run privacy audit's canary count when the runner asks for it (job.json "privacy_audit",
    set when a site's policy requires it), else 0. The canaries ride in the released run itself."""
    audit = job.get("privacy_audit")
    return int(audit["canaries"]) if isinstance(audit, dict) else 0


def _weights(result: Any) -> bytes:
    from safetensors.torch import save

    return bytes(save({k: v.contiguous() for k, v in result.trained_state.items()}))


def _training_summary(result: Any, params: dict[str, Any]) -> dict[str, Any]:
    """result.json of a training job (tables and streams)."""
    # The receipt names the recipe that chose the optimisation settings when the service filled any
    # (cleanroom/domain/recipe.py); a request that set them all keeps the receipt it always had.
    recipe = {"recipe": params["recipe"]} if params.get("recipe") else {}
    return {"epsilon_spent": result.epsilon_spent, "delta": result.delta, "accountant": result.accountant,
            "dp_parameters": {**result.dp_parameters, "noise_multiplier": result.noise_multiplier,
                              "sample_rate": result.sample_rate, "steps": result.steps, "delta": result.delta, **recipe}}


def _evaluation_options(params: dict[str, Any]) -> dict[str, Any]:
    """The report's named operating points, net-benefit thresholds and bin count: public request
    parameters, each optional (the evaluator's defaults apply when a job does not carry them)."""
    return {name: params[name] for name in EVALUATION_OPTIONS if params.get(name) not in (None, [], 0)}


def _evaluate_rows(job: dict[str, Any], examples: dict[str, Any], rows: Any, program: Any, *, sites: list[int],
                   state: Any = None) -> Any:
    """The DP evaluation of the given rows; per site (and pooled) over `sites` when it names two or
    more of the job's sites (every evaluated row must be at one of them)."""
    import numpy as np

    from cleanroom.trainer.evaluate import evaluate

    params = job["params"]
    options = _evaluation_options(params)
    position = np.full(len(job["sites"]), -1, dtype=np.int64)
    position[sites] = np.arange(len(sites))
    return evaluate(
        program, X=examples["X"][rows], y=examples["y"][rows], patient=examples["patient"][rows], task=job["task"],
        num_classes=job["num_classes"], target_epsilon=float(params["target_epsilon"]),
        target_delta=float(params["target_delta"]), metrics=job["metrics"],
        max_rows_per_patient=params["max_rows_per_patient"], state=state, allowed_modules=_allowed(),
        site=position[examples["site"][rows]], site_names=[job["sites"][i]["name"] for i in sites] if len(sites) > 1 else [],
        **options,
    )


def _cohort(job: dict[str, Any]) -> Any:
    """What a multi-site report says about its sites; None for one site (the report as it was)."""
    from cleanroom.domain.cohort import linkage_statement
    from cleanroom.trainer.report import Cohort

    sites = job["sites"]
    if len(sites) < 2:
        return None
    names = [s["name"] for s in sites]
    return Cohort(tuple((s["name"], s["role"]) for s in sites),
                  linkage_statement(names, [bool(s.get("linkage_column")) for s in sites]),
                  declared=job["params"]["kind"] != "training")


def _evaluation_files(evaluation: Any, job: dict[str, Any], *, title: str) -> dict[str, bytes]:
    from cleanroom.trainer.report import render_html, render_json, report_data

    data = report_data(title=title, evaluation=evaluation, cohort=_cohort(job))
    return {"metrics.json": render_json(data).encode(), "report.html": render_html(data).encode()}


def _evaluate(job: dict[str, Any], examples: dict[str, Any], inputs: Path) -> dict[str, bytes]:
    import numpy as np

    sites = list(range(len(job["sites"])))
    evaluation = _evaluate_rows(job, examples, np.ones(len(examples["y"]), dtype=bool), _program(inputs), sites=sites)
    summary = {"epsilon_spent": evaluation.epsilon_spent, "delta": evaluation.delta, "accountant": evaluation.accountant,
               "dp_parameters": {**evaluation.mechanism_parameters, "delta": evaluation.delta}}
    return {**_evaluation_files(evaluation, job, title="Validation of a pretrained model"),
            "result.json": json.dumps(summary, sort_keys=True, default=str).encode()}


def _write(out: Path, outputs: dict[str, bytes]) -> None:
    for name, data in outputs.items():
        (out / name).write_bytes(data)
