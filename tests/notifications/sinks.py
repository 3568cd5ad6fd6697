"""Real receivers for the notification tests: an aiosmtpd SMTP server and an http.server webhook
receiver that checks each POST's HMAC signature the way an operator's endpoint would."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

SECRET = b"webhook-secret-for-tests-0123456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Collect:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        with self._lock:
            self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


class SmtpSink:
    """A real SMTP server on a loopback port; `start()` may come after the server first tried it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._collect = _Collect()
        self._controller: Controller | None = None

    @property
    def messages(self) -> list[Message]:
        return list(self._collect.messages)

    @property
    def envelopes(self) -> list[tuple[str, list[str]]]:
        return list(self._collect.envelopes)

    def start(self) -> SmtpSink:
        self._controller = Controller(self._collect, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    signed: bool  # the HMAC over "<t>.<body>" matched, and t is recent

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


def verify(secret: bytes, header: str, body: bytes, *, now: float, max_age: float = 300) -> bool:
    """The receiver's check: `t=<unix>,v1=<hex>`, HMAC-SHA256 over "<t>.<body>", at most max_age old."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if "t" not in parts or "v1" not in parts or not parts["t"].isdigit():
        return False
    expected = hmac.new(secret, parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(now - int(parts["t"])) <= max_age


class WebhookReceiver:
    """A real HTTP endpoint on a loopback port recording each POST and whether its signature held."""

    def __init__(self, secret: bytes = SECRET) -> None:
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        record = self._record

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's hook name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                signed = verify(secret, self.headers.get("X-Cleanroom-Signature", ""), body, now=time.time())
                record(Delivery(dict(self.headers.items()), body, signed))
                self.send_response(204 if signed else 401)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/cleanroom"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _record(self, delivery: Delivery) -> None:
        with self._lock:
            self.deliveries.append(delivery)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def wait_for(condition: Callable[[], bool], *, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
