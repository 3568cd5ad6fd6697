"""The key broker: releases a dataset key only to a quote it can trust, once.

It sits beside the KEK (the service unwraps the dataset key with the KEK and hands it here); the
simulated enclave never sees the KEK. For each quote it checks, in this order: the certificate
chains to the pinned root, the certified key signed the quote, the certificate is valid now, the quote is
fresh, its measurement is allowed, the ledger holds a reservation for its workload, and its nonce
was never used. Only then does it wrap the key to the quote's ephemeral X25519 key. Anything else
raises AttestationError with a reason; an unexpected exception (say the reservation lookup failing)
propagates, so the broker fails closed either way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclave_sim.canonical import is_hex, utc_now
from enclave_sim.errors import AttestationError, EnclaveSimError, Reason
from enclave_sim.keys import load_public_key_pem
from enclave_sim.quote import Quote
from enclave_sim.wrapping import WrappedForEnclave, wrap_for_enclave

DEFAULT_MAX_QUOTE_AGE = timedelta(minutes=5)
DEFAULT_CLOCK_SKEW = timedelta(seconds=30)


class NonceStore(Protocol):
    def claim(self, nonce: str) -> bool:
        """Atomically record `nonce`: True the first time, False ever after (a replay).

        A persistent store must keep a nonce at least max_quote_age + clock_skew after claiming
        it; older quotes are refused as stale anyway, so it may forget nonces after that.
        """
        ...


class InMemoryNonceStore:
    """Process-local nonce store: replays across a restart are caught only by quote freshness."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, nonce: str) -> bool:
        with self._lock:
            if nonce in self._seen:
                return False
            self._seen.add(nonce)
            return True


@dataclass(frozen=True)
class BrokerDecision:
    """One release or refusal, for metrics and audit. Carries hashes only, never key material.

    `measurement` and `workload` are what the quote claimed (None if it did not parse); they are
    authenticated only when `released` is True.
    """

    released: bool
    reason: Reason | None
    measurement: str | None
    workload: str | None
    at: datetime


class KeyBroker:
    def __init__(
        self,
        root_public_key: Ed25519PublicKey | bytes,
        allowed_measurements: Iterable[str],
        reservation_check: Callable[[str], bool],
        nonce_store: NonceStore,
        *,
        max_quote_age: timedelta = DEFAULT_MAX_QUOTE_AGE,
        clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
        clock: Callable[[], datetime] = utc_now,
        on_decision: Callable[[BrokerDecision], None] | None = None,
    ) -> None:
        self._root = root_public_key if isinstance(root_public_key, Ed25519PublicKey) else load_public_key_pem(root_public_key)
        self._allowed = frozenset(allowed_measurements)
        if not all(is_hex(m, 32) for m in self._allowed):
            raise ValueError("allowed measurements must be lower-case sha256 hex")
        self._reservation_check = reservation_check
        self._nonces = nonce_store
        self._max_age = max_quote_age
        self._skew = clock_skew
        self._clock = clock
        self._on_decision = on_decision

    def release_key(self, quote_bytes: bytes, dataset_key: bytes, *, context: bytes) -> WrappedForEnclave:
        """Wrap `dataset_key` to the quote's ephemeral key, or raise AttestationError (no key).

        `context` (e.g. the dataset id) is bound into the wrapping; the enclave must pass the same.
        The decision hook runs before the key is returned: if it raises, nothing is released.
        """
        quote: Quote | None = None
        now = self._clock()
        try:
            quote = _parse(quote_bytes)
            self._admit(quote, now)
            wrapped = _wrap(dataset_key, quote, context)
        except AttestationError as refusal:
            self._record(_refusal_decision(refusal, quote, now))
            raise
        self._record(BrokerDecision(True, None, quote.measurement, quote.workload, now))
        return wrapped

    def _check_chain(self, quote: Quote, now: datetime) -> None:
        """Root certified the key, the key signed the quote, the certificate is valid now."""
        try:
            quote.certificate.check_issuer(self._root)
            if not quote.signed_by_certified_key():
                raise AttestationError(Reason.BAD_SIGNATURE, "quote is not signed by the certified attestation key")
            quote.certificate.check_validity(now)
        except AttestationError:
            raise
        except EnclaveSimError as exc:
            raise AttestationError(exc.reason, exc.detail) from None

    def _admit(self, quote: Quote, now: datetime) -> None:
        self._check_chain(quote, now)
        if not -self._skew <= now - quote.issued_at <= self._max_age:
            raise AttestationError(Reason.STALE_QUOTE, f"quote age {now - quote.issued_at} outside the freshness window")
        if quote.measurement not in self._allowed:
            raise AttestationError(Reason.WRONG_MEASUREMENT, "measurement is not in the allow-list")
        if not self._reservation_check(quote.workload):
            raise AttestationError(Reason.NO_RESERVATION, "no ledger reservation for this workload")
        if not self._nonces.claim(quote.nonce):  # last, so a refused quote does not burn its nonce
            raise AttestationError(Reason.REPLAYED_NONCE, "quote nonce was already used")

    def _record(self, decision: BrokerDecision) -> None:
        if self._on_decision is not None:
            self._on_decision(decision)


def _parse(quote_bytes: bytes) -> Quote:
    try:
        return Quote.from_bytes(quote_bytes)
    except EnclaveSimError as exc:
        raise AttestationError(exc.reason, exc.detail) from None


def _wrap(dataset_key: bytes, quote: Quote, context: bytes) -> WrappedForEnclave:
    try:
        return wrap_for_enclave(dataset_key, quote, context=context)
    except EnclaveSimError as exc:
        raise AttestationError(exc.reason, exc.detail) from None


def _refusal_decision(refusal: AttestationError, quote: Quote | None, now: datetime) -> BrokerDecision:
    if quote is None:  # did not even parse: nothing claimed
        return BrokerDecision(False, refusal.reason, None, None, now)
    return BrokerDecision(False, refusal.reason, quote.measurement, quote.workload, now)
