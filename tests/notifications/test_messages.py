"""The pure parts: which thresholds a balance has crossed, the retry schedule, the webhook signature."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from cleanroom.domain.privacy import Balance, Privacy
from cleanroom.notifications import events
from cleanroom.notifications.channels import signature, webhook_body
from cleanroom.notifications.settings import MAX_RETRY_SECONDS, NotifySettings
from cleanroom.storage.outbox_repo import Message
from tests.notifications.sinks import SECRET, verify


def test_a_threshold_counts_the_larger_of_the_epsilon_and_delta_fractions_spent() -> None:
    cap = Privacy.cost(4, 1e-5)
    assert events.crossed(Balance(cap, spent=Privacy.cost(1.9, 1e-7)), (0.5, 0.8)) == ()
    assert events.crossed(Balance(cap, spent=Privacy.cost(2, 1e-7)), (0.5, 0.8)) == (0.5,)
    assert events.crossed(Balance(cap, spent=Privacy.cost(0.1, 9e-6)), (0.5, 0.8)) == (0.5, 0.8)  # δ is 90 % spent
    assert events.crossed(Balance(cap, reserved=Privacy.cost(4, 1e-5)), (0.5,)) == ()  # reserved is not spent yet


def test_event_keys_are_the_same_for_the_same_thing() -> None:
    balance = Balance(Privacy.cost(4, 1e-5), spent=Privacy.cost(3, 0))
    one = events.budget_threshold("datasets/d1/manufacturers/p1", balance, 0.5, events.Names("Ward 3", "Acme"))
    two = events.budget_threshold("datasets/d1/manufacturers/p1", balance, 0.5, events.Names())
    assert one.key == two.key == "budget.threshold/datasets/d1/manufacturers/p1/0.5"
    assert '"Acme" (principals/p1)' in one.text and '"Ward 3" (datasets/d1)' in one.text and "75.0 %" in one.text


def test_retries_double_up_to_an_hour() -> None:
    settings = NotifySettings(retry_seconds=30)
    assert [settings.retry_delay(n) for n in (1, 2, 3)] == [30, 60, 120]
    assert settings.retry_delay(20) == MAX_RETRY_SECONDS


def test_the_webhook_signature_verifies_only_for_the_exact_body_secret_and_a_recent_time() -> None:
    message = Message("ntf1", "audit.broken/3", "webhook", "audit.broken", "Audit chain broken at entry 3", "text", {"first_bad_seq": 3},
                      0, datetime(2026, 12, 7, tzinfo=UTC))
    body, now = webhook_body(message), int(time.time())
    header = signature(SECRET, now, body)
    assert verify(SECRET, header, body, now=now)
    assert not verify(SECRET, header, body.replace(b"entry 3", b"entry 4"), now=now)  # a changed body
    assert not verify(b"another-secret-0123456789", header, body, now=now)
    assert not verify(SECRET, signature(SECRET, now - 3600, body), body, now=now)  # replayed an hour later
