"""Deriving events from the tables, idempotently: any replica may run it at any time.

Nothing here hooks into the code paths that change state (approvals, the ledger): a sweep reads
what is pending and what is spent, and the outbox's unique key makes a later sweep (or another
replica) find the event already queued. Keys are cheap to compute; the message (with the names
it reads) is built only for a key not queued yet. A request that waited and was decided between
two sweeps is not told: an officer has already dealt with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy.orm import Session

from cleanroom.domain.approvals import PrivacyRequest
from cleanroom.domain.privacy import Balance
from cleanroom.notifications import events
from cleanroom.notifications.events import Event, Names
from cleanroom.storage import dataset_repo, principal_repo, privacy_repo

PAGE = 500


@dataclass(frozen=True)
class Candidate:
    key: str
    build: Callable[[Session], Event]


def pending_requests(session: Session) -> Iterator[Candidate]:
    after: str | None = None
    while page := privacy_repo.pending_requests(session, dataset_ids=None, after_id=after, limit=PAGE):
        for request in page:
            yield Candidate(events.pending_key(request), _pending_builder(request))
        after = page[-1].id


def budget_crossings(session: Session, thresholds: tuple[float, ...]) -> Iterator[Candidate]:
    for budget_id, balance in sorted(privacy_repo.all_balances(session).items()):
        for threshold in events.crossed(balance, thresholds):
            yield Candidate(events.threshold_key(budget_id, threshold), _threshold_builder(budget_id, balance, threshold))


def _pending_builder(request: PrivacyRequest) -> Callable[[Session], Event]:
    return lambda session: events.pending_request(request, names(session, request.dataset_id, request.manufacturer_id))


def _threshold_builder(budget_id: str, balance: Balance, threshold: float) -> Callable[[Session], Event]:
    dataset_id, _, manufacturer_id = budget_id.removeprefix("datasets/").partition("/manufacturers/")
    return lambda session: events.budget_threshold(budget_id, balance, threshold, names(session, dataset_id, manufacturer_id))


def names(session: Session, dataset_id: str, manufacturer_id: str) -> Names:
    dataset = dataset_repo.get_dataset(session, dataset_id)
    maker = principal_repo.get_principal(session, manufacturer_id) if manufacturer_id else None
    return Names(dataset=dataset.display_name if dataset is not None else "",
                 manufacturer=maker.display_name if maker is not None else "")
