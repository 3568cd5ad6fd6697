"""Statistics allowances: one reservation in the ledger pays for a burst of auto-approved queries.

Reserving and committing in the database around every answer costs far more than the answer
(a warm worker answers in a few milliseconds). So the first auto-approved query of a manufacturer
on a dataset reserves an *allowance* of up to `queries` times its cost in one ledger transaction,
and later queries draw on it in memory. Each draw's audit entry is written by the group commit
before its answer leaves (the answer waits for its batch); the allowance is closed, committing
exactly what was drawn and refunding the rest, when it cannot cover the next query, after
`idle_seconds` without a query, and at shutdown. While a burst keeps using allowances up, each
next one is twice as large (up to MAX_GROWTH times); an idle close starts the pair small again.

Why this never under-charges: a query draws before its data is touched, and the whole allowance
is a reservation in the ledger from the start. After a crash the allowance is still open, so
start-up reconciliation commits it in full (it was marked decrypted before any draw touched
data) — an over-charge of the unused part, never an answer that was not paid for.

What is given up: the allowance's close trails its answers and is lost in a crash (the reservation
is then committed whole, as above); an allowance holds budget other holders of the dataset-wide
budget cannot use until it closes, so it takes at most a quarter of what that budget has left
(and this server's allowances on a dataset are closed and retried once when a reservation finds
the budget short).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cleanroom.domain.privacy import ZERO, Balance, Privacy
from cleanroom.privacy.ledger import BudgetExhausted, Ledger, SpendRequest
from cleanroom.storage.group_commit import GroupCommit

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

SYSTEM = "system"
DATASET_SHARE = 4  # an allowance takes at most 1/4 of what the dataset-wide budget has left
MAX_GROWTH = 16    # a sustained burst's allowances grow to at most 16 times the configured size
SWEEP_SECONDS = 0.25


def allowance_size(cost: Privacy, *, shape: Privacy, queries: int, dataset: Balance, share: Balance) -> Privacy:
    """Up to `queries` times `shape` (the largest query cost seen on this pair), within what the
    manufacturer's share has left and a DATASET_SHARE-th of what the dataset-wide budget has left;
    never below `cost`, the query that asks (the reservation then refuses if even that does not fit)."""
    def one(need: int, per_query: int, share_left: int, dataset_left: int) -> int:
        room = min(share_left, dataset_left // DATASET_SHARE)
        return max(min(per_query * queries, room), need)

    return Privacy(one(cost.epsilon, shape.epsilon, share.remaining.epsilon, dataset.remaining.epsilon),
                   one(cost.delta, shape.delta, share.remaining.delta, dataset.remaining.delta))


def _larger(a: Privacy, b: Privacy) -> Privacy:
    return Privacy(max(a.epsilon, b.epsilon), max(a.delta, b.delta))


@dataclass(eq=False)
class Allowance:
    spend_id: str
    dataset_id: str
    manufacturer_id: str
    granted: Privacy
    decrypted: bool
    last_used: float
    used: Privacy = ZERO
    in_flight: int = 0
    retired: bool = False         # takes no new draws; closed once nothing is in flight
    closed: bool = False
    opening: threading.Lock = field(default_factory=threading.Lock)

    def covers(self, cost: Privacy) -> bool:
        return not self.retired and (self.used + cost).fits_in(self.granted)


@dataclass(eq=False)
class Draw:
    """One query's share of an allowance; `opened` once its data was touched (then it is spent)."""

    allowance: Allowance
    cost: Privacy
    opened: bool = False

    @property
    def spend_id(self) -> str:
        return self.allowance.spend_id


class Allowances:
    def __init__(self, ledger: Ledger, journal: GroupCommit, *, queries: int, idle_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ledger, self._journal = ledger, journal
        self._queries, self._idle, self._clock = max(queries, 1), idle_seconds, clock
        self._open: dict[tuple[str, str], Allowance] = {}
        self._shape: dict[tuple[str, str], Privacy] = {}   # the largest query cost seen per pair
        self._growth: dict[tuple[str, str], int] = {}      # doublings earned by a burst that used allowances up
        self._lock = threading.Lock()
        self._opening: dict[tuple[str, str], threading.Lock] = {}
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="stats-allowances", daemon=True)
        self._sweeper.start()

    # --- drawing -------------------------------------------------------------------------------

    def draw(self, request: SpendRequest, *, warm: bool) -> Draw:
        """Draws `request.cost` from the pair's open allowance, reserving a new one when needed.
        Raises BudgetExhausted when not even this one query fits."""
        key = (request.dataset_id, request.manufacturer_id)
        drawn = self._draw_open(key, request.cost)
        if drawn is not None:
            return drawn
        with self._lock:
            opening = self._opening.setdefault(key, threading.Lock())
        with opening:  # one reservation per pair at a time; the others wait, then draw on it
            drawn = self._draw_open(key, request.cost)
            if drawn is not None:
                return drawn
            with self._lock:
                if key in self._open:  # used up by a burst still going on: the next one is larger
                    self._growth[key] = min(self._growth.get(key, 1) * 2, MAX_GROWTH)
            self._retire(key)
            try:
                allowance = self._reserve(key, request, warm=warm)
            except BudgetExhausted:
                # Budget this server holds in open allowances on the dataset may be what is
                # missing: close them (committing what they drew), then try once more.
                self.release_dataset(request.dataset_id)
                allowance = self._reserve(key, request, warm=warm)
            with self._lock:
                self._open[key] = allowance
                return self._take(allowance, request.cost)

    def _draw_open(self, key: tuple[str, str], cost: Privacy) -> Draw | None:
        with self._lock:
            allowance = self._open.get(key)
            if allowance is not None and allowance.covers(cost):
                return self._take(allowance, cost)
        return None

    def _take(self, allowance: Allowance, cost: Privacy) -> Draw:
        """Under the lock."""
        allowance.used += cost
        allowance.in_flight += 1
        allowance.last_used = self._clock()
        return Draw(allowance, cost)

    def _reserve(self, key: tuple[str, str], request: SpendRequest, *, warm: bool) -> Allowance:
        with self._lock:
            shape = _larger(self._shape.get(key, ZERO), request.cost)
            self._shape[key] = shape
            queries = self._queries * self._growth.get(key, 1)
        sized = SpendRequest(request.dataset_id, request.manufacturer_id, request.kind, "allowances/statistics", request.cost,
                             request.mechanism, request.workload, decrypted_on_reserve=warm)
        spend = self._ledger.reserve_sized(
            sized, lambda dataset, share: allowance_size(request.cost, shape=shape, queries=queries, dataset=dataset, share=share),
            actor_id=request.manufacturer_id)
        return Allowance(spend.id, request.dataset_id, request.manufacturer_id, spend.reserved, decrypted=warm, last_used=self._clock())

    def open_data(self, draw: Draw) -> None:
        """Just before the query's data is touched: the allowance is marked decrypted (once), so
        from here on a crash commits it in full."""
        allowance = draw.allowance
        with allowance.opening:
            if not allowance.decrypted:
                self._ledger.mark_decrypted(allowance.spend_id)
                allowance.decrypted = True
        draw.opened = True

    def finish(self, draw: Draw, *, spent: bool) -> None:
        """The query is over: an unspent draw (its data never touched) goes back to the allowance.
        Called after the query's own records were submitted, so they precede the allowance's close."""
        allowance = draw.allowance
        with self._lock:
            allowance.in_flight -= 1
            if not spent:
                allowance.used -= draw.cost
            close = allowance.retired and allowance.in_flight == 0 and not allowance.closed
            if close:
                allowance.closed = True
        if close:
            self._submit_close(allowance)

    def unused(self, dataset_id: str, manufacturer_id: str) -> Privacy:
        """What the pair's open allowance still holds (a dry run counts it as available)."""
        with self._lock:
            allowance = self._open.get((dataset_id, manufacturer_id))
            return allowance.granted - allowance.used if allowance is not None and not allowance.retired else ZERO

    # --- closing -------------------------------------------------------------------------------

    def _retire(self, key: tuple[str, str]) -> None:
        with self._lock:
            allowance = self._open.pop(key, None)
            if allowance is None:
                return
            allowance.retired = True
            close = allowance.in_flight == 0 and not allowance.closed
            if close:
                allowance.closed = True
        if close:
            self._submit_close(allowance)

    def _retire_dataset(self, dataset_id: str) -> None:
        with self._lock:
            keys = [k for k in self._open if k[0] == dataset_id]
        for key in keys:
            self._retire(key)

    def release_dataset(self, dataset_id: str) -> bool:
        """Closes this server's allowances on a dataset and waits until the ledger has them, so the
        budget they hold but did not use is free again; False when there were none (a job's
        reservation or an officer's cap change that found the budget short calls this, then retries)."""
        with self._lock:
            held = any(k[0] == dataset_id for k in self._open)
        if held:
            self._retire_dataset(dataset_id)
            self._journal.flush()
        return held

    def _submit_close(self, allowance: Allowance) -> None:
        used, spend_id = allowance.used, allowance.spend_id

        def settle(session: Session) -> None:
            self._ledger.settle_in(session, spend_id, used, reason="statistics allowance closed")

        self._journal.submit(settle)

    def sweep(self, now: float | None = None) -> int:
        """Closes allowances idle past the limit; returns how many."""
        now = self._clock() if now is None else now
        with self._lock:
            idle = [k for k, a in self._open.items() if a.in_flight == 0 and now - a.last_used >= self._idle]
            for key in idle:
                self._growth.pop(key, None)  # the burst is over: the next allowance starts small
        for key in idle:
            self._retire(key)
        return len(idle)

    def settle(self) -> None:
        """Closes every open allowance and waits until the ledger has them (tests, shutdown)."""
        with self._lock:
            keys = list(self._open)
        for key in keys:
            self._retire(key)
        self._journal.flush()

    def close(self) -> None:
        self._stop.set()
        self.settle()

    def _sweep_loop(self) -> None:
        while not self._stop.wait(SWEEP_SECONDS):
            try:
                self.sweep()
            except Exception as error:  # noqa: BLE001 - the sweeper must outlive one bad round
                log.warning("closing idle statistics allowances failed", extra={"error_type": type(error).__name__})
