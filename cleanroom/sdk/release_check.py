"""Check a release against a pinned trust root, every check named and explained in plain words.

For an auditor, an officer's console page or a manufacturer: given a release (ReleaseService's
GetRelease), the bytes of its artefacts as downloaded from the store (None for one that could not
be read back intact) and the root you pinned, each check passes or fails on its own, so a page can
say exactly what holds and what does not: the receipt's signature chain, the code measurement, the
workload recomputed from the model digest, parameters and datasets the release names, every
released file's digest, and ε recomputed from the receipt's mechanism parameters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import enclave_sim
from cleanroom.domain.releases import RECEIPT_FILE
from cleanroom.statistics.engine.codec import stats_workload
from cleanroom.v1 import releases_pb2

EPSILON_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Check:
    name: str          # "signature", "measurement", "workload", "files", "digest:<file>", "epsilon"
    passed: bool
    explanation: str


def verify_release(release: releases_pb2.Release, files: Mapping[str, bytes | None], *, pinned_root_pem: bytes,
                   allowed_measurements: Iterable[str]) -> list[Check]:
    """Every check of the release, in a fixed order; the release verifies when every one passed."""
    receipt = files.get(RECEIPT_FILE) or release.receipt
    try:
        report = enclave_sim.parse_report(receipt)
    except enclave_sim.EnclaveSimError as error:
        unread = "the receipt could not be read, so this cannot be checked"
        return [Check("signature", False, f"the receipt is not a well-formed signed report ({error.reason.value})"),
                *(Check(name, False, unread) for name in ("measurement", "workload", "files", "epsilon"))]
    released = {name: data for name, data in files.items() if name != RECEIPT_FILE}
    return [_signature(report, pinned_root_pem), _measurement(report, set(allowed_measurements)), _workload(report, release),
            _files(report, release), *_digests(report, released), _epsilon(report, release)]


def verified(checks: Iterable[Check]) -> bool:
    return all(check.passed for check in checks)


def _signature(report: enclave_sim.ResultReport, pinned_root_pem: bytes) -> Check:
    try:
        root = enclave_sim.load_public_key_pem(pinned_root_pem)
        report.certificate.check_issuer(root)
        if not report.signed_by_certified_key():
            return Check("signature", False, "the receipt's signature does not match its contents: it was altered after signing")
        report.certificate.check_validity(report.issued_at)
    except enclave_sim.EnclaveSimError as error:
        return Check("signature", False, f"the receipt does not chain to the pinned root ({error.reason.value})")
    return Check("signature", True, f"signed by an attestation key the pinned root {enclave_sim.key_fingerprint(root)[:16]} "
                                    f"certified, at {enclave_sim.format_time(report.issued_at)}")


def _measurement(report: enclave_sim.ResultReport, allowed: set[str]) -> Check:
    if report.measurement in allowed:
        return Check("measurement", True, f"the code that ran ({report.measurement[:16]}…) is in the published allow-list")
    return Check("measurement", False, f"the code that ran ({report.measurement[:16]}…) is not in the published allow-list")


def _workload(report: enclave_sim.ResultReport, release: releases_pb2.Release) -> Check:
    stated = release.workload
    try:
        if stated.model:
            parameters = json.loads(stated.parameters_json)
            expected = enclave_sim.workload_hash(stated.model_sha256, parameters, stated.dataset_key)
            what = f"model package {stated.model_sha256[:16]}…, the job's parameters and dataset {stated.dataset_key}"
        else:
            expected = stats_workload(stated.dataset_key)
            what = f"the statistics service over dataset {stated.dataset_key}"
    except (ValueError, TypeError):
        return Check("workload", False, "the release's model, parameters or datasets are malformed, so the workload cannot be recomputed")
    if report.workload == expected:
        return Check("workload", True, f"the receipt is for {what}, as recomputed here")
    return Check("workload", False, f"the receipt is for another workload than {what}")


def _files(report: enclave_sim.ResultReport, release: releases_pb2.Release) -> Check:
    listed = {a.name for a in release.artifacts} - {RECEIPT_FILE}
    signed = set(report.released_files)
    if listed == signed:
        return Check("files", True, f"the receipt signs exactly the {len(signed)} released file(s): {', '.join(sorted(signed))}")
    return Check("files", False, f"the receipt signs {sorted(signed)} but the release lists {sorted(listed)}")


def _digests(report: enclave_sim.ResultReport, released: Mapping[str, bytes | None]) -> list[Check]:
    checks = []
    for name in sorted(set(report.released_files) | set(released)):
        label, data, signed = f"digest:{name}", released.get(name), report.released_files.get(name)
        if signed is None:
            checks.append(Check(label, False, f"{name} was released but the receipt does not sign it"))
        elif data is None:
            checks.append(Check(label, False, f"the stored bytes of {name} could not be read back intact: the store was altered or lost them"))
        elif enclave_sim.sha256_hex(data) != signed:
            checks.append(Check(label, False, f"the stored bytes of {name} differ from the ones the receipt signs: altered after release"))
        else:
            checks.append(Check(label, True, f"{name} ({len(data)} bytes) is byte for byte the file the receipt signs"))
    return checks


def _epsilon(report: enclave_sim.ResultReport, release: releases_pb2.Release) -> Check:
    stated = float(Decimal(report.epsilon_spent))
    try:
        recomputed = _recomputer(report.accountant)(report.dp_parameters)
    except (KeyError, ValueError, TypeError, enclave_sim.EnclaveSimError):
        return Check("epsilon", False, f"ε could not be recomputed from the receipt's parameters (accountant {report.accountant})")
    if not math.isfinite(recomputed) or abs(recomputed - stated) > EPSILON_TOLERANCE:
        return Check("epsilon", False, f"the receipt states ε = {report.epsilon_spent}, its mechanism parameters give {recomputed:.6f}")
    if release.HasField("spent") and stated > release.spent.epsilon + EPSILON_TOLERANCE:
        return Check("epsilon", False, f"the receipt states ε = {report.epsilon_spent}, more than the ledger charged ({release.spent.epsilon})")
    return Check("epsilon", True, f"ε = {report.epsilon_spent} recomputed from the mechanism parameters ({report.accountant}), "
                                  "within what the ledger charged")


def _recomputer(accountant: str) -> Callable[[Mapping[str, Any]], float]:
    if accountant == "basic":  # a statistics answer: its steps' ε add up (basic composition)
        return basic_composition_epsilon
    from cleanroom.sdk.verify import recompute_epsilon

    return lambda parameters: recompute_epsilon(parameters, accountant)


def basic_composition_epsilon(parameters: Mapping[str, Any]) -> float:
    steps = [float(Decimal(str(value))) for key, value in parameters.items() if key.endswith(".epsilon")]
    if not steps:
        raise ValueError("no step states its ε")
    return math.fsum(steps)
