"""Officer notifications end to end: a real server, a real SMTP server (aiosmtpd) and a real
webhook endpoint that checks each signature. Intervals are shortened through the configuration."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from sqlalchemy import Row, select, text

from cleanroom.domain.approvals import PrivacyRequest
from cleanroom.domain.identity import Principal, Role
from cleanroom.domain.privacy import Privacy
from cleanroom.notifications.settings import NotifySettings, SmtpSettings, WebhookSettings
from cleanroom.privacy.ledger import SpendRequest
from cleanroom.sdk import Client
from cleanroom.server.app import App
from cleanroom.storage import audit_repo
from cleanroom.storage.tables import NotificationRow
from tests.api.test_datasets_api import CANARIES, _rows, _schema, _write_csv
from tests.conftest import Running, make_config, start_server
from tests.notifications.sinks import SECRET, SmtpSink, WebhookReceiver, wait_for

RECIPIENTS = ("officer@hospital.test", "dpo@hospital.test")
SETTLE_SECONDS = 1.0  # ten sweeps of the 0.1 s interval: long enough for a duplicate to show


def notify_settings(*, smtp_port: int | None = None, webhook: WebhookReceiver | None = None) -> NotifySettings:
    smtp = SmtpSettings(host="127.0.0.1", port=smtp_port, starttls=False, sender="cleanroom@hospital.test",
                        recipients=RECIPIENTS) if smtp_port else None
    return NotifySettings(smtp=smtp, webhook=WebhookSettings(webhook.url, SECRET) if webhook else None, thresholds=(0.5, 0.8),
                          audit_check_seconds=0.3, interval_seconds=0.1, retry_seconds=0.3)


@dataclass
class World:
    servers: list[Running]
    dataset_id: str
    maker: Principal
    officer_token: str
    clients: list[Client] = field(default_factory=list)

    @property
    def app(self) -> App:  # the first replica's
        return self.servers[0].app

    def submit(self, epsilon: float, reference: str = "jobs/x") -> PrivacyRequest:
        return self.app.approvals.submit(self.maker, SpendRequest(self.dataset_id, self.maker.id, "training", reference,
                                                                  Privacy.cost(epsilon, 1e-6)))

    def spend(self, epsilon: float) -> None:
        """A reservation committed in full, as a released job's is."""
        spend = self.app.ledger.reserve(SpendRequest(self.dataset_id, self.maker.id, "statistics", f"q/{epsilon}",
                                                     Privacy.cost(epsilon, 1e-6)), actor_id=self.maker.id)
        self.app.ledger.release(spend.id, Privacy.cost(epsilon, 1e-6))

    def outbox(self) -> list[Row[tuple[str, str, str, int, str]]]:
        """(event_key, channel, state, attempts, last_error) of every queued message."""
        n = NotificationRow
        query = select(n.event_key, n.channel, n.state, n.attempts, n.last_error).order_by(n.event_key, n.channel)
        with self.app.db.read() as session:
            return list(session.execute(query).all())


def build_world(tmp_path: Path, settings: NotifySettings, *, replicas: int = 1, database_url: str | None = None) -> World:
    """A hospital's dataset (budget ε 10, the maker's share ε 4, auto-approval up to ε 1) on
    `replicas` servers sharing one database."""
    state = tmp_path / "state"
    overrides: dict[str, object] = {"notify": settings}
    if database_url:
        overrides["database_url"] = database_url
    servers = [start_server(make_config(state, **overrides)) for _ in range(replicas)]
    first = servers[0]
    _, owner_token = first.principal(Role.DATA_OWNER, "Hospital")
    _, officer_token = first.principal(Role.PRIVACY_OFFICER, "Officer")
    maker_id, _ = first.principal(Role.MANUFACTURER, "Acme Devices")
    with Client(first.address, owner_token) as owner:
        dataset = owner.upload_dataset(_write_csv(tmp_path / "d.csv", _rows(40, 2)), _schema())
    with Client(first.address, officer_token) as officer:
        officer.set_budget(dataset.name, epsilon=10, delta=1e-4, reason="hospital total")
        officer.share_dataset(dataset.name, f"principals/{maker_id}", epsilon=4, delta=1e-4, reason="pilot")
        officer.set_approval_policy(dataset.name, max_epsilon=3, auto_approve_epsilon=1, reason="routine work")
    return World(servers, dataset.name.removeprefix("datasets/"), first.app.principals.get(maker_id), officer_token)


@pytest.fixture
def sinks() -> Iterator[tuple[SmtpSink, WebhookReceiver]]:
    smtp, webhook = SmtpSink().start(), WebhookReceiver()
    yield smtp, webhook
    smtp.stop()
    webhook.stop()


@pytest.fixture
def stop_servers() -> Iterator[list[World]]:
    worlds: list[World] = []
    yield worlds
    for world in worlds:
        for server in world.servers:
            server.server.stop(grace=0)


def _events(smtp: SmtpSink) -> list[str]:
    return sorted(str(m["X-Cleanroom-Event"]) for m in smtp.messages)


def _no_data_values(*texts: str) -> None:
    for canary in CANARIES.values():
        assert all(canary not in t for t in texts), f"a data value ({canary}) reached a notification"


def test_a_request_above_the_auto_approve_line_is_told_once_by_email_and_webhook(tmp_path, database_url, sinks, stop_servers) -> None:
    smtp, webhook = sinks
    world = build_world(tmp_path, notify_settings(smtp_port=smtp.port, webhook=webhook), database_url=database_url)
    stop_servers.append(world)
    small = world.submit(0.5, "jobs/small")
    assert small.state.value == "approved"  # within the auto-approve line: nobody needs to be told
    pending = world.submit(2, "jobs/big")
    assert pending.state.value == "pending"
    wait_for(lambda: len(smtp.messages) >= 1 and len(webhook.deliveries) >= 1, what="the email and the webhook")
    time.sleep(SETTLE_SECONDS)
    assert len(smtp.messages) == 1 and len(webhook.deliveries) == 1
    email, hook = smtp.messages[0], webhook.deliveries[0]
    assert pending.resource_name in email["Subject"] and smtp.envelopes[0][1] == list(RECIPIENTS)
    body = email.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert f"datasets/{world.dataset_id}" in body and "Acme Devices" in body and "ε = 2" in body and "waits for a privacy officer" in body
    assert hook.signed, "the webhook's HMAC signature must verify with the shared secret"
    assert hook.json["kind"] == "request.pending" and hook.json["facts"]["request"] == pending.resource_name
    assert hook.json["facts"]["epsilon"] == pytest.approx(2)
    _no_data_values(body, hook.body.decode())
    assert [r.state for r in world.outbox()] == ["sent", "sent"]
    assert _counter(world.app, "cleanroom_notifications_sent_total", "email") == 1


def test_each_budget_threshold_is_told_once(tmp_path, sinks, stop_servers) -> None:
    smtp, webhook = sinks
    world = build_world(tmp_path, notify_settings(smtp_port=smtp.port, webhook=webhook))
    stop_servers.append(world)
    share = f"datasets/{world.dataset_id}/manufacturers/{world.maker.id}"
    world.spend(2.2)  # the share (ε 4) is 55 % spent, the dataset (ε 10) 22 %
    wait_for(lambda: len(smtp.messages) >= 1, what="the 50 % email")
    world.spend(1.2)  # the share 85 %, the dataset 34 %
    wait_for(lambda: len(smtp.messages) >= 2 and len(webhook.deliveries) >= 2, what="the 80 % email and both webhooks")
    time.sleep(SETTLE_SECONDS)
    assert _events(smtp) == [f"budget.threshold/{share}/0.5", f"budget.threshold/{share}/0.8"]
    assert sorted(d.json["facts"]["threshold"] for d in webhook.deliveries) == [0.5, 0.8]
    assert all(d.signed for d in webhook.deliveries)
    subjects = sorted(str(m["Subject"]) for m in smtp.messages)
    assert subjects[0].startswith("Budget 50 % spent") and subjects[1].startswith("Budget 80 % spent")
    body = smtp.messages[-1].get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "Acme Devices" in body and "spent ε = 3.4" in body


def test_a_tampered_audit_entry_is_told_once(tmp_path, sinks, stop_servers) -> None:
    smtp, webhook = sinks
    world = build_world(tmp_path, notify_settings(smtp_port=smtp.port, webhook=webhook))
    stop_servers.append(world)
    time.sleep(0.5)  # a check of the intact chain has run: nothing to tell
    assert smtp.messages == []
    with world.app.db.engine.begin() as connection:  # an attacker with database access edits history
        connection.execute(text("UPDATE audit_entries SET actor = 'principals/mallory' WHERE seq = 3"))
    wait_for(lambda: len(smtp.messages) >= 1 and len(webhook.deliveries) >= 1, what="the audit-failure notification")
    auditor_id, auditor_token = world.servers[0].principal(Role.AUDITOR, "Regulator")
    with Client(world.servers[0].address, auditor_token) as auditor:
        assert auditor.verify_audit_log().ok is False  # VerifyAuditLog finds the same break: not told again
    time.sleep(SETTLE_SECONDS)
    assert _events(smtp) == ["audit.broken/3"] and len(webhook.deliveries) == 1
    assert "Audit chain broken at entry 3" in str(smtp.messages[0]["Subject"])
    assert webhook.deliveries[0].json["facts"]["first_bad_seq"] == 3 and webhook.deliveries[0].signed


def test_verify_audit_log_tells_a_break_at_once_and_a_callers_bogus_anchor_raises_no_alarm(tmp_path, sinks, stop_servers) -> None:
    smtp, webhook = sinks
    settings = replace(notify_settings(smtp_port=smtp.port, webhook=webhook), audit_check_seconds=3600)  # checked at start only
    world = build_world(tmp_path, settings)
    stop_servers.append(world)
    _, auditor_token = world.servers[0].principal(Role.AUDITOR, "Regulator")
    with Client(world.servers[0].address, auditor_token) as auditor:
        assert auditor.verify_audit_log(anchor_seq=2, anchor_hash="f" * 64).ok is False  # the caller's anchor is wrong, the chain is not
        time.sleep(SETTLE_SECONDS)
        assert smtp.messages == [] and webhook.deliveries == []
        with world.app.db.engine.begin() as connection:
            connection.execute(text("UPDATE audit_entries SET details_json = '{}' WHERE seq = 4"))
        assert auditor.verify_audit_log().ok is False
        wait_for(lambda: len(smtp.messages) >= 1 and len(webhook.deliveries) >= 1, what="the break told through VerifyAuditLog")
    assert _events(smtp) == ["audit.broken/4"]


def test_the_audit_check_raises_no_alarm_while_entries_are_appended(tmp_path, database_url, stop_servers) -> None:
    """Under PostgreSQL's READ COMMITTED a walk to the end sees entries appended after it read the
    head; the check must verify the chain as far as that head, not call the difference a break."""
    webhook = WebhookReceiver()
    world = build_world(tmp_path, replace(notify_settings(webhook=webhook), audit_check_seconds=3600), database_url=database_url)
    stop_servers.append(world)
    stop = threading.Event()

    def append() -> None:
        while not stop.is_set():
            with world.app.db.transaction() as session:
                audit_repo.append(session, actor="system", action="test.append", target="tests/race")

    writer = threading.Thread(target=append)
    writer.start()
    try:
        verdicts = [world.app.notifier.verify_chain() for _ in range(40)]  # type: ignore[union-attr]
    finally:
        stop.set()
        writer.join()
        webhook.stop()
    assert all(v.ok for v in verdicts), next(v.problem for v in verdicts if not v.ok)


def test_a_mail_server_that_was_down_gets_the_message_after_a_retry(tmp_path, stop_servers) -> None:
    smtp = SmtpSink()  # its port is chosen, nothing listens yet
    world = build_world(tmp_path, notify_settings(smtp_port=smtp.port))
    stop_servers.append(world)
    pending = world.submit(2)
    wait_for(lambda: _counter(world.app, "cleanroom_notifications_failed_total", "email") >= 1, what="a failed delivery")
    [row] = world.outbox()
    assert row.state == "pending" and row.attempts >= 1 and "SMTP" in row.last_error
    smtp.start()
    try:
        wait_for(lambda: len(smtp.messages) >= 1, what="the email after the retry")
        time.sleep(SETTLE_SECONDS)
        assert len(smtp.messages) == 1 and pending.resource_name in str(smtp.messages[0]["Subject"])
        [row] = world.outbox()
        assert row.state == "sent" and row.attempts >= 2
    finally:
        smtp.stop()


def test_two_replicas_on_one_database_send_each_message_once(tmp_path, database_url, sinks, stop_servers) -> None:
    smtp, webhook = sinks
    world = build_world(tmp_path, notify_settings(smtp_port=smtp.port, webhook=webhook), replicas=2, database_url=database_url)
    stop_servers.append(world)
    assert len({s.app.notifier.enabled for s in world.servers}) == 1 and world.servers[0].address != world.servers[1].address
    requests = [world.submit(1.5, f"jobs/{i}") for i in range(3)]
    world.spend(2.2)  # one threshold crossed: the share's 50 %
    expected = sorted([f"request.pending/{r.resource_name}" for r in requests]
                      + [f"budget.threshold/datasets/{world.dataset_id}/manufacturers/{world.maker.id}/0.5"])
    wait_for(lambda: len(smtp.messages) >= 4 and len(webhook.deliveries) >= 4, what="four emails and four webhooks")
    time.sleep(SETTLE_SECONDS)
    assert _events(smtp) == expected
    assert sorted(d.headers["X-Cleanroom-Event"] for d in webhook.deliveries) == expected
    sent = sum(_counter(s.app, "cleanroom_notifications_sent_total", channel) for s in world.servers for channel in ("email", "webhook"))
    assert sent == 8


def test_notifications_are_off_by_default(running) -> None:
    assert running.app.config.notify.channels == () and not running.app.notifier.enabled
    assert running.app.notifier._thread is None  # noqa: SLF001 - nothing runs, nothing is queued


def _counter(app: App, name: str, channel: str) -> float:
    value = app.metrics.registry.get_sample_value(name, {"channel": channel})
    return value or 0.0
