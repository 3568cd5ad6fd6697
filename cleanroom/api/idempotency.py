"""Retries of a mutating call with the same request_id get the first answer, and change nothing.

The first call claims (principal, method, request_id) with a fingerprint of the request; the answer
is stored when the call succeeds and the claim is released when it fails, so a failed call can be
retried. The same id with a different request is refused rather than silently answered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request
from cleanroom.storage import repos
from cleanroom.storage.db import Database

M = TypeVar("M", bound=Message)

MAX_REQUEST_ID = 128


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
    def __init__(self, db: Database) -> None:
        self._db = db

    def run(
        self,
        key: repos.RequestKey,
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
                repos.release_request(session, key)
            raise
        with self._db.transaction() as session:
            repos.complete_request(session, key, response.SerializeToString())
        return response

    def _claim(self, key: repos.RequestKey, request_fingerprint: str, response_type: type[M]) -> M | None:
        with self._db.transaction() as session:
            existing = repos.claim_request(session, key, request_fingerprint)
            if existing is None:
                return None
            stored_fingerprint, stored = existing.fingerprint, existing.response
        if stored_fingerprint != request_fingerprint:
            raise CleanroomError(
                ErrorCode.REQUEST_ID_REUSED, "this request_id was already used for a different request"
            )
        if stored is None:
            raise CleanroomError(ErrorCode.REQUEST_IN_PROGRESS, "a request with this request_id is in progress")
        return response_type.FromString(stored)
