"""The key broker: a key for a good quote, once; a specific refusal for everything else."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave_sim import (
    AttestationError,
    AttestationKey,
    BrokerDecision,
    EnclaveSimError,
    InMemoryNonceStore,
    KeyBroker,
    Quote,
    Reason,
    RootAuthority,
    WrappedForEnclave,
    canonical_json,
    make_quote,
    unwrap_in_enclave,
)
from enclave_sim.canonical import utc_now
from enclave_sim.signing import _message

MEASUREMENT = hashlib.sha256(b"trainer v1").hexdigest()
OTHER_MEASUREMENT = hashlib.sha256(b"trainer v1, patched").hexdigest()
WORKLOAD = hashlib.sha256(b"model+job+dataset").hexdigest()
DATASET_KEY = bytes(range(32))
CONTEXT = b"dataset:ds-1"
NOW = utc_now()
TAMPER_REASONS = {Reason.MALFORMED, Reason.NOT_SIMULATED_FLAG, Reason.UNTRUSTED_CERTIFICATE, Reason.BAD_SIGNATURE}


class Harness:
    """A pinned root, a certified launcher key and a broker with a fixed clock and a decision log."""

    def __init__(self, reserved: set[str] | None = None) -> None:
        self.root = RootAuthority.generate()
        self.attestation_key = AttestationKey.generate(self.root, now=NOW - timedelta(hours=1))
        self.reserved = {WORKLOAD} if reserved is None else reserved
        self.reservation_queries: list[str] = []
        self.decisions: list[BrokerDecision] = []
        self.broker = self.make_broker()

    def make_broker(self, **overrides: object) -> KeyBroker:
        options = dict(clock=lambda: NOW, on_decision=self.decisions.append) | overrides
        return KeyBroker(self.root.public_key_pem(), {MEASUREMENT}, self._reserved, InMemoryNonceStore(), **options)

    def _reserved(self, workload: str) -> bool:
        self.reservation_queries.append(workload)
        return workload in self.reserved

    def quote(self, measurement: str = MEASUREMENT, *, key: AttestationKey | None = None, at: datetime = NOW) -> tuple[Quote, X25519PrivateKey]:
        return make_quote(key or self.attestation_key, measurement, WORKLOAD, now=at)


def _refusal(broker: KeyBroker, quote_bytes: bytes) -> Reason:
    with pytest.raises(AttestationError) as caught:
        broker.release_key(quote_bytes, DATASET_KEY, context=CONTEXT)
    return caught.value.reason


def test_a_good_quote_gets_the_key_and_only_the_enclave_opens_it() -> None:
    harness = Harness()
    quote, ephemeral = harness.quote()
    wrapped = harness.broker.release_key(quote.to_bytes(), DATASET_KEY, context=CONTEXT)
    assert DATASET_KEY not in wrapped.to_bytes()
    received = WrappedForEnclave.from_bytes(wrapped.to_bytes())
    assert unwrap_in_enclave(received, ephemeral, Quote.from_bytes(quote.to_bytes()), context=CONTEXT) == DATASET_KEY
    assert harness.reservation_queries == [WORKLOAD]
    assert harness.decisions == [BrokerDecision(True, None, MEASUREMENT, WORKLOAD, NOW)]


def test_quote_round_trips_and_says_simulated() -> None:
    quote, _ = Harness().quote()
    data = quote.to_bytes()
    assert data.count(b'"simulated":true') == 2  # the quote and its embedded certificate
    assert Quote.from_bytes(data) == quote
    assert quote.signed_by_certified_key()


@pytest.fixture(scope="module")
def tamper_target() -> tuple[Harness, bytes]:
    harness = Harness()
    return harness, harness.quote()[0].to_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_quote_with_any_flipped_byte_gets_no_key(tamper_target: tuple[Harness, bytes], data: st.DataObject) -> None:
    harness, quote_bytes = tamper_target
    position = data.draw(st.integers(0, len(quote_bytes) - 1))
    tampered = bytearray(quote_bytes)
    tampered[position] ^= data.draw(st.integers(1, 255))
    assert _refusal(harness.make_broker(), bytes(tampered)) in TAMPER_REASONS


def test_a_changed_field_under_the_original_signature_is_a_bad_signature() -> None:
    harness = Harness()
    quote, _ = harness.quote()
    harness.reserved.add(OTHER_MEASUREMENT)
    for changed in (dataclasses.replace(quote, workload=OTHER_MEASUREMENT), dataclasses.replace(quote, issued_at=NOW - timedelta(seconds=1))):
        assert _refusal(harness.broker, changed.to_bytes()) is Reason.BAD_SIGNATURE
    other_signature = dataclasses.replace(quote, signature=harness.quote()[0].signature)
    assert _refusal(harness.broker, other_signature.to_bytes()) is Reason.BAD_SIGNATURE


def test_a_wrong_measurement_gets_no_key() -> None:
    harness = Harness()
    quote, _ = harness.quote(OTHER_MEASUREMENT)
    assert _refusal(harness.broker, quote.to_bytes()) is Reason.WRONG_MEASUREMENT
    assert harness.decisions[-1] == BrokerDecision(False, Reason.WRONG_MEASUREMENT, OTHER_MEASUREMENT, WORKLOAD, NOW)


def test_a_replayed_quote_gets_no_second_key() -> None:
    harness = Harness()
    quote_bytes = harness.quote()[0].to_bytes()
    harness.broker.release_key(quote_bytes, DATASET_KEY, context=CONTEXT)
    assert _refusal(harness.broker, quote_bytes) is Reason.REPLAYED_NONCE
    assert [d.released for d in harness.decisions] == [True, False]


def test_concurrent_replays_release_exactly_one_key() -> None:
    harness = Harness()
    quote_bytes = harness.quote()[0].to_bytes()
    outcomes: list[str] = []

    def attempt() -> None:
        try:
            harness.broker.release_key(quote_bytes, DATASET_KEY, context=CONTEXT)
            outcomes.append("released")
        except AttestationError as refusal:
            outcomes.append(refusal.reason.value)

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["REPLAYED_NONCE"] * 15 + ["released"]


def test_a_key_certified_by_another_root_gets_no_key() -> None:
    harness = Harness()
    foreign = AttestationKey.generate(RootAuthority.generate(), now=NOW - timedelta(hours=1))
    quote, _ = harness.quote(key=foreign)
    assert _refusal(harness.broker, quote.to_bytes()) is Reason.UNTRUSTED_CERTIFICATE


def test_a_self_made_certificate_naming_the_pinned_root_gets_no_key() -> None:
    harness = Harness()
    impostor = AttestationKey.generate(RootAuthority.generate(), now=NOW - timedelta(hours=1))
    forged = dataclasses.replace(impostor.certificate, issuer=harness.root.fingerprint)
    quote, _ = harness.quote(key=AttestationKey(impostor._private_key, forged))
    assert _refusal(harness.broker, quote.to_bytes()) is Reason.UNTRUSTED_CERTIFICATE


@pytest.mark.parametrize("start", [NOW - timedelta(hours=2), NOW + timedelta(minutes=1)])
def test_a_certificate_outside_its_validity_gets_no_key(start: datetime) -> None:
    harness = Harness()
    key = AttestationKey.generate(harness.root, validity=timedelta(hours=1), now=start)
    quote, _ = harness.quote(key=key, at=NOW)
    assert _refusal(harness.broker, quote.to_bytes()) is Reason.CERTIFICATE_EXPIRED


@pytest.mark.parametrize("age", [timedelta(minutes=5, seconds=1), timedelta(hours=3), -timedelta(seconds=31)])
def test_a_quote_outside_the_freshness_window_gets_no_key(age: timedelta) -> None:
    harness = Harness()
    quote, _ = harness.quote(at=NOW - age)
    assert _refusal(harness.broker, quote.to_bytes()) is Reason.STALE_QUOTE


@pytest.mark.parametrize("age", [timedelta(minutes=5), -timedelta(seconds=30), timedelta(0)])
def test_a_quote_at_the_edges_of_the_window_is_accepted(age: timedelta) -> None:
    harness = Harness()
    quote, ephemeral = harness.quote(at=NOW - age)
    wrapped = harness.broker.release_key(quote.to_bytes(), DATASET_KEY, context=CONTEXT)
    assert unwrap_in_enclave(wrapped, ephemeral, quote, context=CONTEXT) == DATASET_KEY


def test_no_reservation_no_key_and_the_nonce_survives_the_refusal() -> None:
    harness = Harness(reserved=set())
    quote, ephemeral = harness.quote()
    assert _refusal(harness.broker, quote.to_bytes()) is Reason.NO_RESERVATION
    assert harness.reservation_queries == [WORKLOAD]
    harness.reserved.add(WORKLOAD)  # the ledger reservation lands; the same fresh quote now works
    wrapped = harness.broker.release_key(quote.to_bytes(), DATASET_KEY, context=CONTEXT)
    assert unwrap_in_enclave(wrapped, ephemeral, quote, context=CONTEXT) == DATASET_KEY


def test_a_failing_reservation_lookup_fails_closed() -> None:
    harness = Harness()

    def lookup_fails(workload: str) -> bool:
        raise ConnectionError("ledger unavailable")

    broker = KeyBroker(harness.root.public_key_pem(), {MEASUREMENT}, lookup_fails, InMemoryNonceStore(), clock=lambda: NOW)
    with pytest.raises(ConnectionError):
        broker.release_key(harness.quote()[0].to_bytes(), DATASET_KEY, context=CONTEXT)


def test_a_failing_decision_hook_releases_nothing() -> None:
    harness = Harness()

    def audit_down(decision: BrokerDecision) -> None:
        raise OSError("audit log unavailable")

    with pytest.raises(OSError):
        harness.make_broker(on_decision=audit_down).release_key(harness.quote()[0].to_bytes(), DATASET_KEY, context=CONTEXT)


def _resign(key: Ed25519PrivateKey, payload: dict) -> bytes:
    return canonical_json({"payload": payload, "signature": key.sign(_message(payload["type"], payload)).hex()})


def test_a_properly_signed_quote_without_the_simulated_flag_is_refused() -> None:
    harness = Harness()
    private = Ed25519PrivateKey.generate()
    key = AttestationKey(private, harness.root.certify(private.public_key(), subject="x", not_before=NOW - timedelta(hours=1), not_after=NOW + timedelta(hours=1)))
    payload = harness.quote(key=key)[0].payload()
    for forged in ({**payload, "simulated": False}, {k: v for k, v in payload.items() if k != "simulated"}):
        data = _resign(private, forged)
        assert _refusal(harness.broker, data) is Reason.NOT_SIMULATED_FLAG
        with pytest.raises(EnclaveSimError) as caught:
            Quote.from_bytes(data)
        assert caught.value.reason is Reason.NOT_SIMULATED_FLAG


def test_another_statement_type_is_not_a_quote() -> None:
    harness = Harness()
    certificate_bytes = canonical_json(harness.attestation_key.certificate.to_json())
    assert _refusal(harness.broker, certificate_bytes) is Reason.MALFORMED
    assert harness.decisions[-1] == BrokerDecision(False, Reason.MALFORMED, None, None, NOW)


def test_unwrap_needs_the_right_ephemeral_key_quote_and_context() -> None:
    harness = Harness()
    quote, ephemeral = harness.quote()
    other_quote, other_ephemeral = harness.quote()
    wrapped = harness.broker.release_key(quote.to_bytes(), DATASET_KEY, context=CONTEXT)
    tampered = dataclasses.replace(wrapped, ciphertext=bytes([wrapped.ciphertext[0] ^ 1]) + wrapped.ciphertext[1:])
    attempts = [
        (wrapped, other_ephemeral, quote, CONTEXT),
        (wrapped, X25519PrivateKey.generate(), quote, CONTEXT),
        (wrapped, ephemeral, quote, b"dataset:ds-2"),
        (wrapped, ephemeral, quote, b""),
        (wrapped, ephemeral, other_quote, CONTEXT),
        (tampered, ephemeral, quote, CONTEXT),
    ]
    for candidate, private_key, claimed_quote, context in attempts:
        with pytest.raises(EnclaveSimError) as caught:
            unwrap_in_enclave(candidate, private_key, claimed_quote, context=context)
        assert caught.value.reason is Reason.UNWRAP_FAILED
    assert unwrap_in_enclave(wrapped, ephemeral, quote, context=CONTEXT) == DATASET_KEY


def test_each_release_uses_a_fresh_broker_key() -> None:
    harness = Harness()
    first = harness.broker.release_key(harness.quote()[0].to_bytes(), DATASET_KEY, context=CONTEXT)
    second = harness.broker.release_key(harness.quote()[0].to_bytes(), DATASET_KEY, context=CONTEXT)
    assert first.broker_public_key != second.broker_public_key and first.ciphertext != second.ciphertext


def test_wrapped_key_parser_refuses_unknown_versions_and_short_input() -> None:
    harness = Harness()
    data = harness.broker.release_key(harness.quote()[0].to_bytes(), DATASET_KEY, context=CONTEXT).to_bytes()
    for bad in (b"\x02" + data[1:], data[:61], b""):
        with pytest.raises(EnclaveSimError) as caught:
            WrappedForEnclave.from_bytes(bad)
        assert caught.value.reason is Reason.MALFORMED


def test_the_broker_refuses_a_malformed_allow_list() -> None:
    with pytest.raises(ValueError):
        KeyBroker(RootAuthority.generate().public_key_pem(), {"not-a-digest"}, lambda w: True, InMemoryNonceStore())


def test_in_memory_nonce_store_claims_once() -> None:
    store = InMemoryNonceStore()
    assert [store.claim("a"), store.claim("b"), store.claim("a")] == [True, True, False]
