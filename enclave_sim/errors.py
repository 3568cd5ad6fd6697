"""Errors of the enclave simulator: one root carrying a stable, enum-like reason.

The reason is what callers branch on and what metrics count; `detail` is for logs and names the
check that failed, never a secret or a data value.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    MALFORMED = "MALFORMED"  # not a well-formed, canonical statement of the expected type
    NOT_SIMULATED_FLAG = "NOT_SIMULATED_FLAG"  # `simulated: true` missing or false
    UNTRUSTED_CERTIFICATE = "UNTRUSTED_CERTIFICATE"  # certificate not signed by the pinned root
    CERTIFICATE_EXPIRED = "CERTIFICATE_EXPIRED"  # outside the certificate's validity period
    BAD_SIGNATURE = "BAD_SIGNATURE"  # statement not signed by the certified attestation key
    WRONG_MEASUREMENT = "WRONG_MEASUREMENT"  # measurement not in the allow-list
    STALE_QUOTE = "STALE_QUOTE"  # quote outside the freshness window (too old or future-dated)
    REPLAYED_NONCE = "REPLAYED_NONCE"  # quote nonce already used
    NO_RESERVATION = "NO_RESERVATION"  # no ledger reservation for the workload
    UNWRAP_FAILED = "UNWRAP_FAILED"  # wrapped key does not open with this key, quote and context
    WORKLOAD_MISMATCH = "WORKLOAD_MISMATCH"  # report's workload differs from the recomputed one
    NONCE_MISMATCH = "NONCE_MISMATCH"  # report's nonce differs from the expected one
    STALE_REPORT = "STALE_REPORT"  # report outside the freshness window
    RELEASED_FILES_MISMATCH = "RELEASED_FILES_MISMATCH"  # a file missing, extra or altered
    EPSILON_MISMATCH = "EPSILON_MISMATCH"  # stated epsilon differs from the recomputed one
    INSECURE_KEY_FILE = "INSECURE_KEY_FILE"  # key file readable by group/others, or a link


class EnclaveSimError(Exception):
    """Root of every enclave_sim error."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


class AttestationError(EnclaveSimError):
    """The key broker refused a quote: no key is released."""


class VerificationError(EnclaveSimError):
    """A result report failed verification: its outputs must not be trusted."""
