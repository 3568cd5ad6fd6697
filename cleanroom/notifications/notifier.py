"""The notifier: one background thread per replica that derives events into the outbox and delivers
what is due.

Every `interval_seconds` it sweeps the tables for new pending requests and budget crossings
(notifications/sweep.py), checks the audit chain when `audit_check_seconds` have passed, and sends
the due messages it manages to claim. Replicas share the work through the outbox alone
(storage/outbox_repo.py): an event is queued once, a message is sent by the replica that claims it.
A failed send is retried with a doubling delay and abandoned after MAX_ATTEMPTS tries. Nothing
here runs inside an RPC, so a slow or unreachable mail server never delays or fails one; the one
call an RPC makes (`tell_audit_break`) swallows its own errors.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from cleanroom.domain.audit import ChainVerdict, verify_chain
from cleanroom.notifications import channels, events, sweep
from cleanroom.notifications.events import Event
from cleanroom.notifications.settings import MAX_ATTEMPTS, NotifySettings
from cleanroom.observability.metrics import Metrics
from cleanroom.storage import audit_repo, outbox_repo
from cleanroom.storage.db import Database

log = logging.getLogger(__name__)

CLAIM_SECONDS = 4 * channels.TIMEOUT_SECONDS  # longer than any one send: a live replica's claim never expires mid-send
BATCH = 50


def utcnow() -> datetime:
    return datetime.now(UTC)


class Notifier:
    def __init__(self, db: Database, settings: NotifySettings, metrics: Metrics, *, owner: str) -> None:
        self._db = db
        self.settings = settings
        self._metrics = metrics
        self._owner = owner
        self._next_audit_check = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def start(self) -> None:
        """Starts the background thread; nothing when no channel is configured."""
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)
        self._thread.start()
        log.info("notifications on: %s", ", ".join(self.settings.channels))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(CLAIM_SECONDS)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the notifier; the next tick retries
                log.warning("notification sweep failed; will retry", exc_info=True)
            self._stop.wait(self.settings.interval_seconds)

    def tick(self) -> int:
        """One round: derive, check the audit chain if due, deliver. Returns the messages sent."""
        self.derive()
        if time.monotonic() >= self._next_audit_check:
            self.check_audit()
            self._next_audit_check = time.monotonic() + self.settings.audit_check_seconds
        return self.deliver_due()

    # --- queuing -------------------------------------------------------------------------------------

    def derive(self) -> int:
        """Queues the pending requests and budget crossings not queued yet; returns how many events."""
        channels_on = self.settings.channels
        with self._db.read() as session:
            candidates = [*sweep.pending_requests(session), *sweep.budget_crossings(session, self.settings.thresholds)]
            queued = outbox_repo.queued_keys(session, {c.key for c in candidates}, channels_on)
            new = [c.build(session) for c in candidates if c.key not in queued]
        self.queue(new)
        return len(new)

    def queue(self, new: Iterable[Event]) -> None:
        new = list(new)
        if not new or not self.enabled:
            return
        at = utcnow()
        with self._db.transaction() as session:
            for event in new:
                outbox_repo.enqueue(session, event_key=event.key, kind=event.kind, subject=event.subject, text=event.text,
                                    facts=event.facts, channels=self.settings.channels, at=at)

    def check_audit(self) -> ChainVerdict:
        verdict = self.verify_chain()
        if not verdict.ok:
            log.error("audit chain broken at entry %d: %s", verdict.first_bad_seq, verdict.problem)
            self.queue([events.audit_broken(verdict)])
        return verdict

    def verify_chain(self) -> ChainVerdict:
        """The chain up to the stored head, read first. Entries appended after that read are left to
        the next check: under READ COMMITTED (PostgreSQL) a later page may already hold them, which
        a walk to the end would take for entries past the head, a false alarm."""
        with self._db.read() as session:
            stored_head = audit_repo.head(session)
            entries = itertools.takewhile(lambda entry: entry.seq <= stored_head.seq, audit_repo.entries(session))
            return verify_chain(entries, stored_head=stored_head)

    def tell_audit_break(self) -> None:
        """VerifyAuditLog found a break: queue it now (the whole chain's verdict, not a caller's
        anchor's, so no caller can raise a false alarm). Never raises into the RPC."""
        if not self.enabled:
            return
        try:
            self.check_audit()
        except Exception:  # noqa: BLE001 - the periodic check will find it
            log.warning("could not queue the audit-break notification; the periodic check will", exc_info=True)

    # --- delivery ------------------------------------------------------------------------------------

    def deliver_due(self) -> int:
        sent = 0
        while not self._stop.is_set():
            with self._db.read() as session:
                due = outbox_repo.due_ids(session, utcnow(), limit=BATCH)
            for message_id in due:
                sent += self._deliver(message_id)
            if len(due) < BATCH:
                return sent
        return sent

    def _deliver(self, message_id: str) -> int:
        at = utcnow()
        with self._db.transaction() as session:
            message = outbox_repo.claim(session, message_id, owner=self._owner, at=at, until=at + timedelta(seconds=CLAIM_SECONDS))
        if message is None:
            return 0  # another replica holds it, or sent it meanwhile
        try:
            channels.deliver(message, self.settings.smtp, self.settings.webhook)
        except channels.DeliveryFailed as failed:
            self._failed(message, str(failed))
            return 0
        with self._db.transaction() as session:
            if not outbox_repo.mark_sent(session, message.id, owner=self._owner, at=utcnow()):
                log.warning("notification %s was sent after its claim had expired", message.id)
        self._metrics.notifications_sent.labels(message.channel).inc()
        log.info("notification sent by %s: %s", message.channel, message.event_key)
        return 1

    def _failed(self, message: outbox_repo.Message, error: str) -> None:
        tries = message.attempts + 1
        final = tries >= MAX_ATTEMPTS
        retry_at = None if final else utcnow() + timedelta(seconds=self.settings.retry_delay(tries))
        with self._db.transaction() as session:
            outbox_repo.mark_failed(session, message.id, owner=self._owner, retry_at=retry_at, error=error)
        self._metrics.notifications_failed.labels(message.channel).inc()
        if final:
            self._metrics.notifications_abandoned.labels(message.channel).inc()
            log.error("notification %s by %s abandoned after %d tries: %s", message.event_key, message.channel, tries, error)
        else:
            log.warning("notification %s by %s failed (try %d), retrying in %.0f s: %s", message.event_key, message.channel,
                        tries, self.settings.retry_delay(tries), error)
