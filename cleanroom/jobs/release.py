"""The release gate (fail closed): nothing leaves phase B unless every check passes.

The worker's outputs are checked as untrusted input: exactly the allowed files; weights holding
exactly the allow-listed trainable tensors with the model's shapes, all finite, re-serialised by
this code; ε spent within the reservation; where a dataset's policy requires the one-run privacy
audit, its canary counts, with the bound recomputed here (domain/privacy_audit.py), show no more
leakage than the ε spent. Then the receipt is signed and verified against the same checks the SDK
runs, before a single byte is stored for download.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import enclave_sim
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.privacy import Privacy
from cleanroom.domain.privacy_audit import AuditResult

TRAINING_FILES = {"weights.safetensors", "result.json"}
TRAINING_OPTIONAL = {"metrics.json", "report.html"}
EVALUATION_FILES = {"metrics.json", "report.html", "result.json"}


class ReleaseRefused(CleanroomError):
    def __init__(self, why: str) -> None:
        super().__init__(ErrorCode.INTERNAL, f"release refused: {why}")


class AuditFailed(CleanroomError):
    """The released run's canaries show more leakage than the ε it spent: the weights stay here."""

    def __init__(self, audit: AuditResult) -> None:
        super().__init__(ErrorCode.INTERNAL, "the one-run privacy audit found more leakage than claimed")
        self.audit = audit


@dataclass(frozen=True)
class Checked:
    released: dict[str, bytes]     # what the manufacturer may download (result.json excluded)
    spent: Privacy
    accountant: str
    dp_parameters: dict[str, Any]


def check_outputs(kind: str, outputs: dict[str, bytes], *, trainable_shapes: dict[str, tuple[int, ...]], reserved: Privacy) -> Checked:
    required, optional = (TRAINING_FILES, TRAINING_OPTIONAL) if kind == "training" else (EVALUATION_FILES, set())
    names = set(outputs)
    if not required <= names or names - required - optional:
        raise ReleaseRefused("the worker's files are not exactly the allowed ones")
    result = _result(outputs["result.json"])
    spent = Privacy.cost(result["epsilon_spent"], result["delta"])
    if not spent.fits_in(reserved):
        raise ReleaseRefused("the worker spent more than was reserved")
    released = {n: d for n, d in outputs.items() if n != "result.json"}
    if kind == "training":
        released["weights.safetensors"] = _clean_weights(outputs["weights.safetensors"], trainable_shapes)
    return Checked(released, spent, result["accountant"], result["dp_parameters"])


def check_audit(checked: Checked, *, canaries: int) -> Checked:
    """The release gate's audit check, when the policy asked for `canaries` (0: none asked). The
    worker's counts are untrusted input: the bound is recomputed here against the ε and δ this job
    spends, and the receipt's dp_parameters carry the recomputed audit. Missing or malformed: refused."""
    if not canaries:
        return checked
    try:
        reported = AuditResult.from_json(checked.dp_parameters["privacy_audit"])
    except (KeyError, TypeError, ValueError):
        raise ReleaseRefused("the privacy audit the policy requires is missing or malformed") from None
    if reported.canaries != canaries:
        raise ReleaseRefused("the privacy audit did not run with the canaries asked")
    audit = replace(reported, claimed_epsilon=checked.spent.epsilon_value, delta=checked.spent.delta_value)
    if not audit.passed:
        raise AuditFailed(audit)
    return replace(checked, dp_parameters={**checked.dp_parameters, "privacy_audit": audit.to_json()})


def _result(data: bytes) -> dict[str, Any]:
    try:
        result = json.loads(data)
    except ValueError:
        result = None
    if not isinstance(result, dict) or not _well_formed(result):
        raise ReleaseRefused("the worker's result summary is malformed")
    return result


def _well_formed(result: dict[str, Any]) -> bool:
    try:
        return (isinstance(result["epsilon_spent"], (int, float)) and isinstance(result["delta"], (int, float))
                and isinstance(result["accountant"], str) and isinstance(result["dp_parameters"], dict)
                and math.isfinite(result["epsilon_spent"]))
    except KeyError:
        return False


def _clean_weights(data: bytes, shapes: dict[str, tuple[int, ...]]) -> bytes:
    """Exactly the trainable tensors, with their shapes, finite — and serialised again by us."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load, save

    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError):
        raise ReleaseRefused("the weights are not a valid safetensors file") from None
    if set(tensors) != set(shapes):
        raise ReleaseRefused("the weights are not exactly the allow-listed trainable tensors")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(shapes[name]) or not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise ReleaseRefused("a released tensor has the wrong shape or a non-finite value")
    return save({name: tensors[name].contiguous() for name in sorted(tensors)})


def dataset_commitment(sites: Sequence[tuple[str, str]], *, cohort: bool) -> str:
    """What the receipt commits to of the data read: one dataset's ciphertext sha256; for a cohort,
    sha256 over the sites' "dataset_id:ciphertext_sha256\\n" lines in request order (each hospital
    knows its own dataset's ciphertext digest; an auditor with all of them recomputes it)."""
    if not cohort:
        (_, digest), = sites
        return digest
    return enclave_sim.sha256_hex("".join(f"{dataset_id}:{digest}\n" for dataset_id, digest in sites).encode())


def canonical_parameters(value: Any) -> Any:
    """DP parameters as canonical JSON values: floats become exact decimal text."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return enclave_sim.decimal_text(value) if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return enclave_sim.decimal_text(value)
    if isinstance(value, dict):
        return {str(k): canonical_parameters(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical_parameters(v) for v in value]
    return str(value)
