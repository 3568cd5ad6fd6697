"""Retries of a mutating call with the same request_id get the first answer, and change nothing.

The first call claims (principal, method, request_id) with a fingerprint of the request; the answer
is stored when the call succeeds and the claim is released when it fails, so a failed call can be
retried. The same id with a different request is refused rather than silently answered.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request
from cleanroom.domain.idempotency import RequestKey
from cleanroom.storage import request_repo
from cleanroom.storage.db import Database
from cleanroom.storage.group_commit import Answered, GroupCommit

M = TypeVar("M", bound=Message)

MAX_REQUEST_ID = 128
RECENT_ANSWERS = 10_000  # answers kept in memory; far more than one group commit can leave unwritten


def fingerprint(request: Message, request_id_path: tuple[str, ...] = ("request_id",)) -> str:
    """SHA-256 of the request without its request_id."""
    copy = type(request)()
    copy.CopyFrom(request)
    holder = copy
    for part in request_id_path[:-1]:
        holder = getattr(holder, part)
    holder.ClearField(request_id_path[-1])
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def check_request_id(request_id: str, field: str = "request_id") -> None:
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise bad_request("request_id must be at most 128 printable characters", FieldViolation(field, "invalid"))


class Idempotency:
    def __init__(self, db: Database, owner: str | None = None) -> None:
        self._db = db
        self._owner = owner  # this server's instance id: its claims are recovered only if its lease expires

    def run(
        self,
        key: RequestKey,
        request_fingerprint: str,
        response_type: type[M],
        compute: Callable[[], M],
    ) -> M:
        if not key.request_id:
            return compute()  # the caller opted out of retry safety
        previous = self._claim(key, request_fingerprint, response_type)
        if previous is not None:
            return previous
        try:
            response = compute()
        except BaseException:
            with self._db.transaction() as session:
                request_repo.release_request(session, key)
            raise
        with self._db.transaction() as session:
            request_repo.complete_request(session, key, response.SerializeToString())
        return response

    def _claim(self, key: RequestKey, request_fingerprint: str, response_type: type[M]) -> M | None:
        with self._db.transaction() as session:
            existing = request_repo.claim_request(session, key, request_fingerprint, self._owner)
            if existing is None:
                return None
            earlier = (existing.fingerprint, existing.response)
        return _first_answer(earlier, request_fingerprint, response_type)


class JournalledIdempotency:
    """The same contract for calls whose records trail their answer (statistics queries), without
    a write before the answer: the claim is held in memory, a retry finds a recent answer in
    memory and an older one in the database, and the first answer is stored by the group commit.

    What this gives up: two servers sharing a database could each answer one request_id once (two
    answers, each paid for: never less privacy accounting, only more), and a crash before the
    group commit writes the answer lets a retry be answered and paid for again.
    """

    def __init__(self, db: Database, journal: GroupCommit) -> None:
        self._db, self._journal = db, journal
        self._lock = threading.Lock()
        self._in_flight: set[RequestKey] = set()
        self._recent: OrderedDict[RequestKey, tuple[str, bytes]] = OrderedDict()

    def run(self, key: RequestKey, request_fingerprint: str, response_type: type[M], compute: Callable[[], M]) -> M:
        if not key.request_id:
            return compute()
        with self._lock:
            recent = self._recent.get(key)
            if recent is None and key in self._in_flight:
                raise CleanroomError(ErrorCode.REQUEST_IN_PROGRESS, "a request with this request_id is in progress")
            if recent is None:
                self._in_flight.add(key)
        if recent is not None:
            return _first_answer(recent, request_fingerprint, response_type)
        try:
            earlier = request_repo.stored_request(self._db.lookup(), key)
            if earlier is not None:
                return _first_answer(earlier, request_fingerprint, response_type)
            response = compute()
            data = response.SerializeToString()
            with self._lock:
                self._recent[key] = (request_fingerprint, data)
                if len(self._recent) > RECENT_ANSWERS:
                    self._recent.popitem(last=False)
            self._journal.submit(Answered(key, request_fingerprint, data))
            return response
        finally:
            with self._lock:
                self._in_flight.discard(key)


def _first_answer(earlier: tuple[str, bytes | None], request_fingerprint: str, response_type: type[M]) -> M:
    stored_fingerprint, stored = earlier
    if stored_fingerprint != request_fingerprint:
        raise CleanroomError(ErrorCode.REQUEST_ID_REUSED, "this request_id was already used for a different request")
    if stored is None:
        raise CleanroomError(ErrorCode.REQUEST_IN_PROGRESS, "a request with this request_id is in progress")
    return response_type.FromString(stored)
