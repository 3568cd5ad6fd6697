"""The notification outbox (migration 0015): queued once per event and channel, claimed by one replica.

Queuing is an insert that ignores a duplicate (event_key, channel), so replicas deriving the same
event at the same moment queue it once. Claiming is a conditional update (the row is pending, due,
and unclaimed or its claim has expired), so two replicas never both hold a message; the claim
expires so a replica that died mid-send does not strand it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, func, or_, select, update
from sqlalchemy.orm import Session

from cleanroom.storage.db import affected_rows, insert_ignoring_duplicates
from cleanroom.storage.tables import NotificationRow

PENDING, SENT, ABANDONED = "pending", "sent", "abandoned"


@dataclass(frozen=True)
class Message:
    id: str
    event_key: str
    channel: str
    kind: str
    subject: str
    text: str
    facts: dict[str, Any]
    attempts: int
    created_at: datetime


def queued_keys(session: Session, keys: Collection[str], channels: Sequence[str]) -> set[str]:
    """The keys among `keys` already queued on every one of `channels`."""
    found: set[str] = set()
    ordered = sorted(keys)
    for start in range(0, len(ordered), 500):  # bounded IN lists
        query = (select(NotificationRow.event_key)
                 .where(NotificationRow.event_key.in_(ordered[start:start + 500]), NotificationRow.channel.in_(channels))
                 .group_by(NotificationRow.event_key).having(func.count() == len(channels)))
        found.update(session.scalars(query))
    return found


def enqueue(session: Session, *, event_key: str, kind: str, subject: str, text: str, facts: dict[str, Any],
            channels: Sequence[str], at: datetime) -> None:
    """One pending row per channel; a row already there (another replica's, an earlier sweep's) stays as it is."""
    session.execute(insert_ignoring_duplicates(session, cast(Table, NotificationRow.__table__)), [
        {"id": "ntf" + secrets.token_hex(12), "event_key": event_key[:200], "channel": channel, "kind": kind,
         "subject": subject[:300], "text": text, "facts_json": json.dumps(facts, sort_keys=True), "state": PENDING,
         "attempts": 0, "created_at": at, "next_attempt_at": at, "claimed_by": None, "claim_expires_at": None,
         "sent_at": None, "last_error": ""}
        for channel in channels
    ])


def _claimable(at: datetime) -> Any:
    return (NotificationRow.state == PENDING, NotificationRow.next_attempt_at <= at,
            or_(NotificationRow.claimed_by.is_(None), NotificationRow.claim_expires_at <= at))


def due_ids(session: Session, at: datetime, *, limit: int) -> list[str]:
    query = select(NotificationRow.id).where(*_claimable(at)).order_by(NotificationRow.created_at, NotificationRow.id).limit(limit)
    return list(session.scalars(query))


def claim(session: Session, message_id: str, *, owner: str, at: datetime, until: datetime) -> Message | None:
    """The message, now held by `owner` until `until`; None when another replica holds it or it is no longer due."""
    result = session.execute(update(NotificationRow).where(NotificationRow.id == message_id, *_claimable(at))
                             .values(claimed_by=owner, claim_expires_at=until))
    if affected_rows(result) != 1:
        return None
    row = session.get(NotificationRow, message_id)
    assert row is not None
    return Message(row.id, row.event_key, row.channel, row.kind, row.subject, row.text, json.loads(row.facts_json),
                   row.attempts, row.created_at)


def mark_sent(session: Session, message_id: str, *, owner: str, at: datetime) -> bool:
    result = session.execute(update(NotificationRow).where(NotificationRow.id == message_id, NotificationRow.claimed_by == owner)
                             .values(state=SENT, sent_at=at, attempts=NotificationRow.attempts + 1, claimed_by=None,
                                     claim_expires_at=None, last_error=""))
    return affected_rows(result) == 1


def mark_failed(session: Session, message_id: str, *, owner: str, retry_at: datetime | None, error: str) -> bool:
    """Counts the failed try; `retry_at` None abandons the message."""
    values: dict[str, Any] = {"attempts": NotificationRow.attempts + 1, "claimed_by": None, "claim_expires_at": None,
                              "last_error": error[:300]}
    values.update({"state": ABANDONED} if retry_at is None else {"next_attempt_at": retry_at})
    result = session.execute(update(NotificationRow).where(NotificationRow.id == message_id, NotificationRow.claimed_by == owner)
                             .values(**values))
    return affected_rows(result) == 1
