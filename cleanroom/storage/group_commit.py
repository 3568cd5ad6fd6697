"""Group commit: records written in batches by one thread.

A writer thread commits all that has queued meanwhile in one transaction (audit entries as one
multi-row insert under one lock of the chain's head), so under load the per-transaction cost is
paid once per batch rather than once per answer. Audit before release: a statistics answer
`commit`s its audit entry, which queues it and waits until its batch is committed, so the answer
leaves only once its entry is durable; while one batch is written the next fills, and a waiting
caller cuts the writer's lingering short. Records nobody waits for (the first answer to a
request_id, an allowance's close) are `submit`ted and trail: a crash can lose them, never a
privacy cost (the budget an answer drew on is held by a reservation committed in the ledger
beforehand, and start-up reconciliation commits that reservation in full:
cleanroom.statistics.allowance).

Items are written in the order submitted. Three kinds: an audit `Record`, an `Answered` first
answer for the idempotency table, or any callable taking the session (a ledger settlement).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from cleanroom.domain.idempotency import RequestKey
from cleanroom.storage import audit_repo, request_repo
from cleanroom.storage.db import Database

log = logging.getLogger(__name__)

MAX_BATCH = 1024
LINGER_SECONDS = 0.05  # after the first item, wait this long for more: fewer, larger transactions


@dataclass(frozen=True)
class Answered:
    """The first answer to a request_id, stored after it was returned."""

    key: RequestKey
    fingerprint: str
    response: bytes


Item = audit_repo.Record | Answered | Callable[[Session], None]


class NotCommitted(Exception):
    """What `commit` waited for was not written (too slow, or the write failed)."""


MAX_FAILED = 4096  # sequence numbers of items given up on, kept for callers still waiting


class GroupCommit:
    def __init__(self, db: Database, *, name: str = "group-commit", linger: float = LINGER_SECONDS) -> None:
        self._db, self._linger = db, linger
        self._flushing = 0    # callers waiting in flush(): write at once, no lingering
        self._queue: deque[Item] = deque()
        self._changed = threading.Condition()
        self._submitted = 0   # items ever queued
        self._written = 0     # items ever settled (committed, or given up on and logged)
        self._failed: deque[int] = deque(maxlen=MAX_FAILED)  # sequence numbers (1-based) given up on
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, *items: Item) -> None:
        """Queues items to be written soon; nobody waits for them."""
        with self._changed:
            self._enqueue(items)

    def commit(self, *items: Item, timeout: float = 60.0) -> None:
        """Queues items and waits until the batch holding them is committed. Raises NotCommitted
        when it was not (a write that failed, or `timeout`): then they may never be written."""
        with self._changed:
            first = self._submitted + 1
            last = self._enqueue(items)
            self._flushing += 1  # someone waits: the writer does not linger
            self._changed.notify_all()
            try:
                done = self._changed.wait_for(lambda: self._written >= last, timeout)
            finally:
                self._flushing -= 1
            if not done:
                raise NotCommitted("the group commit did not write in time")
            if any(first <= seq <= last for seq in self._failed):
                raise NotCommitted("the group commit could not write a record")

    def _enqueue(self, items: Sequence[Item]) -> int:
        """Under the lock; the sequence number of the last item queued."""
        if self._stopping:
            raise RuntimeError("the group commit is closed")
        was_empty = not self._queue
        self._queue.extend(items)
        self._submitted += len(items)
        # Only a first item or a full batch changes what the writer does: waking it for each
        # item while it lingers would cost a thread switch (and the interpreter lock) per item.
        if was_empty or len(self._queue) >= MAX_BATCH:
            self._changed.notify_all()
        return self._submitted

    def flush(self, timeout: float = 60.0) -> bool:
        """Waits until everything submitted so far is written; False if that took too long."""
        with self._changed:
            target = self._submitted
            self._flushing += 1
            self._changed.notify_all()
            try:
                return self._changed.wait_for(lambda: self._written >= target, timeout)
            finally:
                self._flushing -= 1

    def close(self, timeout: float = 60.0) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._stopping)
                if not self._queue:
                    return  # stopping, and nothing left
                # Linger for company unless someone waits, we are stopping, or the batch is full.
                self._changed.wait_for(lambda: self._flushing or self._stopping or len(self._queue) >= MAX_BATCH, self._linger)
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
                first = self._written + 1
            failed = [first + i for i in self._write(batch)]
            with self._changed:
                self._failed.extend(failed)
                self._written += len(batch)
                self._changed.notify_all()

    def _write(self, batch: list[Item]) -> list[int]:
        """Writes a batch; the positions of the items that could not be written."""
        try:
            with self._db.transaction() as session:
                write_in(session, batch)
            return []
        except Exception as error:  # noqa: BLE001 - one bad item must not lose the rest
            log.warning("a group commit failed; writing its items one by one", extra={"error_type": type(error).__name__})
        failed = []
        for position, item in enumerate(batch):
            try:
                with self._db.transaction() as session:
                    write_in(session, [item])
            except Exception as single:  # noqa: BLE001 - logged by type only: never a data value
                log.error("a group-committed record could not be written", extra={"error_type": type(single).__name__})
                failed.append(position)
        return failed


def write_in(session: Session, items: Sequence[Item]) -> None:
    """Writes items in order, each run of one kind in one statement where it can."""
    for kind, run in itertools.groupby(items, key=type):
        group = list(run)
        if kind is audit_repo.Record:
            audit_repo.append_many(session, [r for r in group if isinstance(r, audit_repo.Record)])
        elif kind is Answered:
            request_repo.store_answered(session, [(a.key, a.fingerprint, a.response) for a in group
                                                  if isinstance(a, Answered)])
        else:
            for write in group:
                assert not isinstance(write, audit_repo.Record | Answered)
                write(session)
