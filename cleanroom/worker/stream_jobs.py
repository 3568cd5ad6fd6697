"""Phase B over a stream site: windowed DP training and evaluation, the dataset never whole in memory.

A site whose job.json entry carries "stream" holds a sealed stream table (worker/stream_source.py).
Its examples are windows (the job's params "windows", domain.streams.WindowSpec) cut on demand:

- training: patients are split by a hash of their privacy unit, as phase_b._split does for tables
  (held-out patients never train); DP-SGD (trainer.dpsgd.train_source) samples the training
  patients by slot, at most max_rows_per_patient windows each per step (worker/stream_batches.py);
  the held-out patients are then evaluated as below with the trained weights;
- evaluation: at most max_rows_per_patient windows of every patient, metrics per window and per
  patient (trainer/stream_evaluate.py), half of the budget each.

The patient count the trainer uses is the number of stored patients in the split (public, from the
sealed index), whether or not every patient has a window that passes coverage.

One stream site per job: a cohort with a stream site is refused (a precondition exit) until
several streams' privacy units are merged the way phase_b merges tables'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cleanroom.worker import phase_b


def main(job: dict[str, Any], secrets: list[dict[str, str]], inputs: Path, out: Path) -> int:
    from cleanroom.domain.errors import CleanroomError

    if len(job["sites"]) != 1 or "stream" not in job["sites"][0] or not job["params"].get("windows"):
        return phase_b.EXIT_PRECONDITION  # a cohort with a stream, or a stream job without windows
    try:
        site = _open(job, secrets[0], inputs)
    except KeyError:
        return phase_b.EXIT_PRECONDITION  # the stream lacks a column the job names
    with site:
        if not site.patients:
            return phase_b.EXIT_NO_DATA
        try:
            outputs = _train(job, site, inputs) if job["params"]["kind"] == "training" else _evaluate(job, site, inputs)
        except CleanroomError:
            return phase_b.EXIT_PRECONDITION  # e.g. δ not below 1/patients
    phase_b._write(out, outputs)
    return phase_b.EXIT_OK


def _open(job: dict[str, Any], secrets: dict[str, str], inputs: Path) -> Any:
    from cleanroom.worker.stream_source import open_site

    site = job["sites"][0]
    return open_site(inputs / site["blob"], secrets, site, job)


def _source(job: dict[str, Any], site: Any, patients: list[str]) -> Any:
    from cleanroom.worker.stream_batches import StreamBatchSource

    return StreamBatchSource(site, patients, task=job["task"], num_classes=job["num_classes"])


def split_patients(patients: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Training and held-out pseudonyms: phase_b._split over each patient's privacy unit (the unit
    key of a site's patient, as a one-site table job names it)."""
    import numpy as np

    from cleanroom.domain.cohort import unit_key

    train, held_out = phase_b._split(np.asarray([unit_key(0, p, None) for p in patients], dtype=object), fraction)
    return [p for p, t in zip(patients, train) if t], [p for p, h in zip(patients, held_out) if h]


def _train(job: dict[str, Any], site: Any, inputs: Path) -> dict[str, bytes]:
    import json

    from cleanroom.trainer.dpsgd import train_source

    params, program = job["params"], phase_b._program(inputs)
    train_patients, held_out = split_patients(site.patients, float(params["validation_fraction"]))
    result = train_source(
        program, _source(job, site, train_patients), task=job["task"], num_classes=job["num_classes"],
        trainable=job["trainable"], target_epsilon=float(params["target_epsilon"]),
        target_delta=float(params["target_delta"]), epochs=params["epochs"],
        expected_batch_patients=params["expected_batch_patients"], max_rows_per_patient=params["max_rows_per_patient"],
        learning_rate=float(params["learning_rate"]), optimizer=params["optimizer"],
        clipping_norm=float(params["clipping_norm"]), allowed_modules=phase_b._allowed(),
        audit_canaries=phase_b.audit_canaries(job),
    )
    summary = phase_b._training_summary(result, params)
    summary["dp_parameters"].update(_examples_are_windows(params))
    outputs = {"weights.safetensors": phase_b._weights(result)}
    if held_out:
        evaluation = _evaluation(job, site, held_out, program, state=result.trained_state)
        outputs.update(phase_b._evaluation_files(evaluation, job, title="Validation on held-out patients"))
    outputs["result.json"] = json.dumps(summary, sort_keys=True).encode()
    return outputs


def _evaluation(job: dict[str, Any], site: Any, patients: list[str], program: Any, *, state: Any = None) -> Any:
    from cleanroom.trainer.stream_evaluate import evaluate_source

    params = job["params"]
    return evaluate_source(
        program, _source(job, site, patients), task=job["task"], num_classes=job["num_classes"],
        target_epsilon=float(params["target_epsilon"]), target_delta=float(params["target_delta"]),
        metrics=job["metrics"], max_rows_per_patient=params["max_rows_per_patient"], state=state,
        allowed_modules=phase_b._allowed(), **phase_b._evaluation_options(params),
    )


def _evaluate(job: dict[str, Any], site: Any, inputs: Path) -> dict[str, bytes]:
    import json

    evaluation = _evaluation(job, site, site.patients, phase_b._program(inputs))
    summary = {"epsilon_spent": evaluation.epsilon_spent, "delta": evaluation.delta, "accountant": evaluation.accountant,
               "dp_parameters": {**evaluation.mechanism_parameters, "delta": evaluation.delta,
                                 **_examples_are_windows(job["params"])}}
    return {**phase_b._evaluation_files(evaluation, job, title="Validation of a pretrained model"),
            "result.json": json.dumps(summary, sort_keys=True, default=str).encode()}


def _examples_are_windows(params: dict[str, Any]) -> dict[str, Any]:
    """What the receipt says an example was (public: the request's window spec)."""
    return {"examples": "windows of the patient's stream, at most max_rows_per_patient per patient",
            "windows": params["windows"]}
