"""A retryable call's identity (pure): who called, which method, and the request_id they chose.

A retry with the same key gets the first answer (cleanroom/server/idempotency.py); the claim and
the answer are stored under it (cleanroom/storage/request_repo.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestKey:
    principal_id: str
    method: str
    request_id: str
