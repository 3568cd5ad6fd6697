"""Verify a released result before trusting it: the SDK side of the privacy receipt.

Everything that can be recomputed is recomputed from what the manufacturer holds itself: the
package digest from its own package directory, the workload hash from that digest, its own job
parameters and the dataset id, each released file's digest from the bytes it downloaded, and ε
from the stated DP parameters with an independent call to the same accountant. The signature
chain must end at the root the caller pinned (not at whatever the server sends today), and the
measurement must be in the published allow-list.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import enclave_sim
from cleanroom.models.intake.limits import IntakeLimits
from cleanroom.models.intake.pack import pack_package
from cleanroom.models.intake.package import load_package


def package_digest(directory: str | Path) -> str:
    """The digest the service computes for the same package (over every file, not the zip bytes)."""
    return load_package(pack_package(Path(directory)), IntakeLimits()).digest


def recompute_epsilon(parameters: Mapping[str, Any], accountant: str) -> float:
    """ε from the report's DP parameters, with Opacus's accountants (never GDP)."""
    if accountant in ("prv", "rdp"):
        from opacus.accountants import PRVAccountant, RDPAccountant

        sigma, q = float(parameters["noise_multiplier"]), float(parameters["sample_rate"])
        steps, delta = int(parameters["steps"]), float(parameters["delta"])
        counter = PRVAccountant() if accountant == "prv" else RDPAccountant()
        counter.history = [(sigma, q, steps)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # RDP's "optimal order at the edge" only means a looser bound
            return float(counter.get_epsilon(delta=delta))
    if accountant == "zcdp-rdp":
        from cleanroom.trainer.accounting import zcdp_epsilon

        return zcdp_epsilon(rho=float(parameters["rho"]), delta=float(parameters["delta"]))
    raise enclave_sim.VerificationError(enclave_sim.Reason.EPSILON_MISMATCH, f"unknown accountant {accountant!r}")


def verify_release(
    report: bytes,
    *,
    files: Mapping[str, bytes],
    package_directory: str | Path,
    job_parameters: Mapping[str, Any],
    dataset_id: str,
    pinned_root_pem: bytes,
    allowed_measurements: Iterable[str],
    expected_nonce: str | None = None,
    max_age: timedelta | None = None,
) -> enclave_sim.VerifiedReport:
    """Raises enclave_sim.VerificationError naming the first check that failed."""
    workload = enclave_sim.workload_hash(package_digest(package_directory), job_parameters, dataset_id)
    return enclave_sim.verify_report(
        report,
        pinned_root_public_key_pem=pinned_root_pem,
        allowed_measurements=allowed_measurements,
        expected_workload=workload,
        released_files=files,
        expected_nonce=expected_nonce,
        max_age=max_age,
        epsilon_recomputer=recompute_epsilon,
        epsilon_tolerance=1e-6,
    )


def job_parameters(job: Any) -> dict[str, Any]:
    """The canonical parameters of a job from its echoed spec (TrainingSpec or EvaluationSpec): as the
    SDK sent them, with what the service's recipe filled and the recipe's name."""
    from cleanroom.wire import jobs as jobspec

    return jobspec.params_from_job(job).to_json()


def sent_parameters(job: Any, spec: Any) -> dict[str, Any]:
    """The canonical parameters of the request you sent, with what the service's recipe filled."""
    from dataclasses import replace

    from cleanroom.domain.job_params import TrainingParams
    from cleanroom.domain.recipe import left_out
    from cleanroom.wire import jobs as jobspec

    if not hasattr(spec, "epochs"):
        return jobspec.evaluation_params_from_proto(spec).to_json()
    sent = jobspec.training_params_from_proto(spec)
    missing = left_out(epochs=sent.epochs, expected_batch_patients=sent.expected_batch_patients, learning_rate=sent.learning_rate,
                       optimizer=sent.optimizer, clipping_norm=sent.clipping_norm)
    echoed = jobspec.params_from_job(job) if job.WhichOneof("spec") == "training" else None
    if missing and isinstance(echoed, TrainingParams) and echoed.recipe:
        sent = replace(sent, recipe=echoed.recipe, **{name: getattr(echoed, name) for name in missing})
    return sent.to_json()


def workload_dataset(spec: Any) -> str:
    """The dataset argument of a job's workload hash: its dataset id, or for a cohort the order-free
    name of its sites' datasets (cleanroom.domain.cohort.cohort_key)."""
    from cleanroom.domain.cohort import cohort_key

    if len(spec.cohort):
        return cohort_key(site.dataset.removeprefix("datasets/") for site in spec.cohort)
    return str(spec.dataset.removeprefix("datasets/"))


def verify_job(job: Any, files: Mapping[str, bytes], *, package_directory: str | Path, pinned_root_pem: bytes,
               allowed_measurements: Iterable[str], spec: Any = None) -> enclave_sim.VerifiedReport:
    """Verifies a released job's receipt against the files downloaded and the caller's own request.

    Pass the `spec` you submitted to recompute the workload from your own request (a cohort's from
    its sites and their column mappings too); without it the spec echoed in the job is used (weaker: it trusts the server's echo of your request). A training
    spec that left recipe fields out (0 or "") takes those, and the recipe's name, from the job's
    echo: only what you left out; every field you set is yours.
    """
    if spec is not None:
        params = sent_parameters(job, spec)
    else:
        params = job_parameters(job)
    source = spec if spec is not None else (job.training if job.WhichOneof("spec") == "training" else job.evaluation)
    released = {name: data for name, data in files.items() if name != "receipt.json"}
    return verify_release(
        files["receipt.json"], files=released, package_directory=package_directory, job_parameters=params,
        dataset_id=workload_dataset(source), pinned_root_pem=pinned_root_pem,
        allowed_measurements=allowed_measurements,
    )
