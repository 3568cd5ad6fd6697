"""enclave_sim: a SIMULATION of trusted-execution-environment (TEE) attestation. Not a TEE.

Every certificate, quote and report it produces says `simulated: true`, and every parser refuses
one that does not.

What it models, and what the simulation still protects against:
- a tampered or substituted trainer (code, dependency versions or sandbox policy) as seen by the
  key broker: its measurement is not in the allow-list, so it gets no dataset key;
- replay: a quote's nonce releases a key once, and only while the quote is fresh;
- key release without a ledger reservation for the exact workload (model, job, dataset);
- results or receipts altered after signing: the SDK verifies the report, each released file's
  digest, the workload it recomputes itself and the epsilon it recomputes itself.

What it does NOT protect against:
- the host and its operator: they can read the simulated enclave's memory (the dataset key, the
  data) and the attestation private key, and so forge quotes and reports at will;
- a measurement is what the launcher says it measured, not what the CPU loaded.

A real TEE (AMD SEV-SNP, Intel TDX, AWS Nitro Enclaves) would replace the launcher's file-based
attestation key with a hardware-rooted one (the vendor's certificate chain) and the measurement
with the hardware's launch measurement; the broker, wrapping, reports and SDK checks keep their
shape.
"""

from enclave_sim.broker import BrokerDecision, InMemoryNonceStore, KeyBroker, NonceStore
from enclave_sim.canonical import canonical_json, decimal_text, format_time, parse_canonical, parse_time, sha256_hex
from enclave_sim.errors import AttestationError, EnclaveSimError, Reason, VerificationError
from enclave_sim.keys import AttestationCertificate, AttestationKey, RootAuthority, key_fingerprint, load_public_key_pem
from enclave_sim.measurement import (
    installed_versions,
    measure,
    measure_tree,
    model_package_digest,
    parse_locked_requirements,
    workload_hash,
)
from enclave_sim.quote import Quote, make_quote, new_nonce
from enclave_sim.report import ResultReport, parse_report, released_file_digests, sign_report
from enclave_sim.verify import VerifiedReport, verify_report
from enclave_sim.wrapping import WrappedForEnclave, unwrap_in_enclave, wrap_for_enclave

__all__ = [
    "AttestationCertificate",
    "AttestationError",
    "AttestationKey",
    "BrokerDecision",
    "EnclaveSimError",
    "InMemoryNonceStore",
    "KeyBroker",
    "NonceStore",
    "Quote",
    "Reason",
    "ResultReport",
    "RootAuthority",
    "VerificationError",
    "VerifiedReport",
    "WrappedForEnclave",
    "canonical_json",
    "decimal_text",
    "format_time",
    "installed_versions",
    "key_fingerprint",
    "load_public_key_pem",
    "make_quote",
    "measure",
    "measure_tree",
    "model_package_digest",
    "new_nonce",
    "parse_canonical",
    "parse_locked_requirements",
    "parse_report",
    "parse_time",
    "released_file_digests",
    "sha256_hex",
    "sign_report",
    "unwrap_in_enclave",
    "wrap_for_enclave",
    "verify_report",
    "workload_hash",
]
