"""What the SDK runs on a result report before trusting any released file.

It checks the signature chain to the pinned root, the measurement against the published
allow-list, the workload against the hash the SDK recomputed from its own package and request,
every released file's digest (no file missing, none extra), the nonce and age when asked, and
recomputes epsilon from the stated DP parameters with the stated accountant when given the means.
The DP accountant itself lives with the trainer; it is passed in as `epsilon_recomputer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclave_sim.canonical import is_hex, utc_now
from enclave_sim.errors import EnclaveSimError, Reason, VerificationError
from enclave_sim.keys import key_fingerprint, load_public_key_pem
from enclave_sim.report import ResultReport, parse_report, released_file_digests

EpsilonRecomputer = Callable[[Mapping[str, Any], str], float]
DEFAULT_CLOCK_SKEW = timedelta(seconds=30)


@dataclass(frozen=True)
class VerifiedReport:
    report: ResultReport
    root_fingerprint: str  # the pinned root it chained to
    epsilon_recomputed: float | None  # None when no recomputer was given


def verify_report(
    report_bytes: bytes,
    *,
    pinned_root_public_key_pem: bytes,
    allowed_measurements: Iterable[str],
    expected_workload: str,
    released_files: Mapping[str, bytes],
    expected_nonce: str | None = None,
    max_age: timedelta | None = None,
    epsilon_recomputer: EpsilonRecomputer | None = None,
    epsilon_tolerance: float = 1e-6,
    now: datetime | None = None,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
) -> VerifiedReport:
    """Return the verified report, or raise VerificationError naming the first failed check.

    `released_files` are the bytes the caller received (name -> contents). `epsilon_tolerance` is
    absolute. `max_age` bounds now - issued_at; None skips the time check.
    """
    root = _pinned_root(pinned_root_public_key_pem)
    report = _parse(report_bytes)
    _check_chain(report, root)
    _check_bindings(report, frozenset(allowed_measurements), expected_workload, expected_nonce)
    if max_age is not None:
        _check_age(report, now or utc_now(), max_age, clock_skew)
    _check_released_files(report, released_files)
    recomputed = None if epsilon_recomputer is None else _check_epsilon(report, epsilon_recomputer, epsilon_tolerance)
    return VerifiedReport(report=report, root_fingerprint=key_fingerprint(root), epsilon_recomputed=recomputed)


def _pinned_root(pem: bytes | str) -> Ed25519PublicKey:
    return load_public_key_pem(pem.encode("ascii") if isinstance(pem, str) else pem)


def _parse(report_bytes: bytes) -> ResultReport:
    try:
        return parse_report(report_bytes)
    except EnclaveSimError as exc:
        raise VerificationError(exc.reason, exc.detail) from None


def _check_chain(report: ResultReport, root: Ed25519PublicKey) -> None:
    """The pinned root certified the key, the key signed the report, the certificate was valid then.

    Validity is judged at the report's own (signed) time, and only once the signature is known
    good, so that a forged time reads as a bad signature.
    """
    try:
        report.certificate.check_issuer(root)
        if not report.signed_by_certified_key():
            raise VerificationError(Reason.BAD_SIGNATURE, "report is not signed by the certified attestation key")
        report.certificate.check_validity(report.issued_at)
    except VerificationError:
        raise
    except EnclaveSimError as exc:
        raise VerificationError(exc.reason, exc.detail) from None


def _check_bindings(report: ResultReport, allowed: frozenset[str], expected_workload: str, expected_nonce: str | None) -> None:
    if report.measurement not in allowed:
        raise VerificationError(Reason.WRONG_MEASUREMENT, "measurement is not in the published allow-list")
    if not is_hex(expected_workload, 32) or report.workload != expected_workload:
        raise VerificationError(Reason.WORKLOAD_MISMATCH, "report is for another workload")
    if expected_nonce is not None and report.nonce != expected_nonce:
        raise VerificationError(Reason.NONCE_MISMATCH, "report answers another request")


def _check_age(report: ResultReport, now: datetime, max_age: timedelta, clock_skew: timedelta) -> None:
    if not -clock_skew <= now - report.issued_at <= max_age:
        raise VerificationError(Reason.STALE_REPORT, f"report age {now - report.issued_at} outside the allowed window")


def _check_released_files(report: ResultReport, released_files: Mapping[str, bytes]) -> None:
    try:
        received = released_file_digests(released_files)
    except ValueError:
        raise VerificationError(Reason.RELEASED_FILES_MISMATCH, "a received file has an invalid name") from None
    signed = report.released_files
    missing = sorted(set(signed) - set(received))
    extra = sorted(set(received) - set(signed))
    altered = sorted(name for name in set(signed) & set(received) if signed[name] != received[name])
    if missing or extra or altered:
        raise VerificationError(Reason.RELEASED_FILES_MISMATCH, f"missing {missing}, not in report {extra}, altered {altered}")


def _check_epsilon(report: ResultReport, recompute: EpsilonRecomputer, tolerance: float) -> float:
    try:
        recomputed = float(recompute(report.dp_parameters, report.accountant))
    except Exception as exc:  # an accountant that cannot reproduce the figure is a failed check
        raise VerificationError(Reason.EPSILON_MISMATCH, f"epsilon could not be recomputed ({type(exc).__name__})") from None
    stated = float(Decimal(report.epsilon_spent))
    if not math.isfinite(recomputed) or abs(recomputed - stated) > tolerance:
        raise VerificationError(Reason.EPSILON_MISMATCH, f"stated epsilon {report.epsilon_spent}, recomputed {recomputed!r}")
    return recomputed
