"""Structured JSON logs, one object a line, with the request id of the call that caused them.

The request id comes from the caller's `x-request-id` metadata or is made up at the first hop; it
follows the call into jobs and workers. Log records never carry a token or a data value: the
service logs identifiers (dataset ids, request ids) and counts, and error details are written by
code that knows what it is allowed to say.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from datetime import UTC, datetime

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_TOKEN = re.compile(r"crt_[A-Za-z0-9_\-]{10,}")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def new_request_id() -> str:
    return uuid.uuid4().hex


def clean_request_id(value: str | None) -> str:
    """Accepts a caller's id only if it is short and plain; otherwise makes a new one."""
    if value and len(value) <= 64 and re.fullmatch(r"[A-Za-z0-9._:\-]+", value):
        return value
    return new_request_id()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _TOKEN.sub("crt_[redacted]", record.getMessage()),
        }
        if request_id.get():
            entry["request_id"] = request_id.get()
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        entry.update({k: _TOKEN.sub("crt_[redacted]", v) if isinstance(v, str) else v for k, v in extras.items()})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
