"""Delivery: an email through the configured SMTP server, or an HMAC-signed JSON POST to the webhook.

A send either returns or raises DeliveryFailed with a short reason (never a secret); the notifier
retries it later. The webhook body is signed with HMAC-SHA256 over "<timestamp>.<body>", sent as
`X-Cleanroom-Signature: t=<timestamp>,v1=<hex>`: the receiver checks it with the shared secret and
may refuse old timestamps (replays); `X-Cleanroom-Event` is the event key, for de-duplication.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from cleanroom.notifications.settings import EMAIL, SmtpSettings, WebhookSettings
from cleanroom.storage.outbox_repo import Message

TIMEOUT_SECONDS = 15.0
SIGNATURE_HEADER = "X-Cleanroom-Signature"
EVENT_HEADER = "X-Cleanroom-Event"
# Headers stay on one line up to RFC 5322's 998 characters: an event key is one long token, which
# the default 78-character folding would turn into encoded words a mail filter could not match.
UNFOLDED = policy.SMTP.clone(max_line_length=998)


class DeliveryFailed(Exception):
    """A send that did not go through; its text is safe to store and log."""


def send_email(smtp: SmtpSettings, message: Message) -> None:
    email = EmailMessage(policy=UNFOLDED)
    email["From"] = smtp.sender
    email["To"] = ", ".join(smtp.recipients)
    email["Subject"] = message.subject
    email["Date"] = formatdate(localtime=False)
    email["Message-ID"] = make_msgid(idstring=message.id, domain="cleanroom.invalid")
    email[EVENT_HEADER] = message.event_key
    email.set_content(f"{message.text}\n\n-- \nCleanroom notification ({message.kind}); event {message.event_key}\n")
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=TIMEOUT_SECONDS) as client:
            if smtp.starttls:
                client.starttls(context=ssl.create_default_context())
            if smtp.username:
                client.login(smtp.username, smtp.password)
            client.send_message(email)
    except (OSError, smtplib.SMTPException) as error:
        raise DeliveryFailed(f"SMTP {smtp.host}:{smtp.port}: {type(error).__name__}: {_short(error)}") from None


def webhook_body(message: Message) -> bytes:
    return json.dumps({"event": message.event_key, "kind": message.kind, "subject": message.subject, "text": message.text,
                       "facts": message.facts, "created_at": message.created_at.isoformat()},
                      sort_keys=True, ensure_ascii=False).encode("utf-8")


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The header value for a body sent at `timestamp` (Unix seconds)."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def send_webhook(webhook: WebhookSettings, message: Message) -> None:
    body = webhook_body(message)
    request = urllib.request.Request(webhook.url, data=body, method="POST", headers={
        "Content-Type": "application/json", SIGNATURE_HEADER: signature(webhook.secret, int(time.time()), body),
        EVENT_HEADER: message.event_key, "User-Agent": "cleanroom-notifier"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310 - an operator's http(s) URL
            status = response.status
    except urllib.error.HTTPError as error:
        raise DeliveryFailed(f"webhook answered HTTP {error.code}") from None
    except (OSError, ValueError) as error:
        raise DeliveryFailed(f"webhook: {type(error).__name__}: {_short(error)}") from None
    if not 200 <= status < 300:
        raise DeliveryFailed(f"webhook answered HTTP {status}")


def deliver(message: Message, smtp: SmtpSettings | None, webhook: WebhookSettings | None) -> None:
    """Sends on the message's channel; a channel no longer configured fails (and is retried, then abandoned)."""
    if message.channel == EMAIL:
        if smtp is None:
            raise DeliveryFailed("email is no longer configured on this server")
        send_email(smtp, message)
    else:
        if webhook is None:
            raise DeliveryFailed("the webhook is no longer configured on this server")
        send_webhook(webhook, message)


def _short(error: BaseException) -> str:
    return str(error).replace("\n", " ")[:160]
