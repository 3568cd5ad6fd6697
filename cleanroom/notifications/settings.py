"""What the notifier is configured to do: SMTP, the webhook, thresholds and intervals.

Off by default: with neither an SMTP host nor a webhook URL configured nothing is derived or sent.
Secrets (the SMTP password, the webhook's HMAC secret) come from a file or an environment variable,
never from a flag, so they never show in a process listing. The flags are declared here and listed
by server/config.py with the rest; `from_raw` turns their values into `NotifySettings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

EMAIL = "email"
WEBHOOK = "webhook"
DEFAULT_THRESHOLDS = (0.5, 0.8, 0.95)
MAX_ATTEMPTS = 12          # then the message is abandoned (logged and counted)
MAX_RETRY_SECONDS = 3600.0  # the backoff doubles up to this

SMTP_PASSWORD_ENV = "CLEANROOM_SMTP_PASSWORD"
WEBHOOK_SECRET_ENV = "CLEANROOM_WEBHOOK_SECRET"

# (flag, environment variable, default, help): server/config.py makes a Setting of each.
FLAGS: tuple[tuple[str, str, str | None, str], ...] = (
    ("--smtp-host", "CLEANROOM_SMTP_HOST", None, "SMTP server for officer notifications; empty: no email"),
    ("--smtp-port", "CLEANROOM_SMTP_PORT", "587", "SMTP port"),
    ("--smtp-starttls", "CLEANROOM_SMTP_STARTTLS", "on", "on or off: upgrade the SMTP connection with STARTTLS"),
    ("--smtp-username", "CLEANROOM_SMTP_USERNAME", None, "SMTP login user; empty: no login"),
    ("--smtp-password-file", "CLEANROOM_SMTP_PASSWORD_FILE", None,
     f"file holding the SMTP password (or set {SMTP_PASSWORD_ENV}; never a flag)"),
    ("--notify-from", "CLEANROOM_NOTIFY_FROM", None, "From address of notification emails"),
    ("--notify-to", "CLEANROOM_NOTIFY_TO", None, "comma-separated officer addresses that notification emails go to"),
    ("--webhook-url", "CLEANROOM_WEBHOOK_URL", None, "http(s) URL that notifications are POSTed to as HMAC-signed JSON; empty: no webhook"),
    ("--webhook-secret-file", "CLEANROOM_WEBHOOK_SECRET_FILE", None,
     f"file holding the webhook's HMAC-SHA256 secret (or set {WEBHOOK_SECRET_ENV}; never a flag)"),
    ("--notify-thresholds", "CLEANROOM_NOTIFY_THRESHOLDS", ",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS),
     "comma-separated fractions of a budget's cap spent (dataset or share) that are each told once when crossed"),
    ("--chain-check-interval", "CLEANROOM_CHAIN_CHECK_INTERVAL", "300",
     "seconds between checks of the hash chain of the log of actions; a break is told once"),
    ("--notify-interval", "CLEANROOM_NOTIFY_INTERVAL", "10",
     "seconds between sweeps for new pending requests and budget crossings, and between deliveries"),
    ("--notify-retry-seconds", "CLEANROOM_NOTIFY_RETRY_SECONDS", "30",
     f"first retry delay of a failed delivery, doubling up to {MAX_RETRY_SECONDS:g} s; abandoned after {MAX_ATTEMPTS} tries"),
)


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 587
    starttls: bool = True
    username: str = ""
    password: str = ""
    sender: str = ""
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    secret: bytes


@dataclass(frozen=True)
class NotifySettings:
    smtp: SmtpSettings | None = None
    webhook: WebhookSettings | None = None
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    audit_check_seconds: float = 300.0
    interval_seconds: float = 10.0
    retry_seconds: float = 30.0

    @property
    def channels(self) -> tuple[str, ...]:
        return ((EMAIL,) if self.smtp is not None else ()) + ((WEBHOOK,) if self.webhook is not None else ())

    @property
    def enabled(self) -> bool:
        return bool(self.channels)

    def retry_delay(self, attempts: int) -> float:
        """Seconds before try number `attempts + 1`, after `attempts` failed ones."""
        return float(min(self.retry_seconds * 2 ** max(attempts - 1, 0), MAX_RETRY_SECONDS))


def from_raw(raw: Mapping[str, str | None], env: Mapping[str, str]) -> NotifySettings:
    """The settings from the flag/env values (keys as server/config.py names them) and the environment."""
    try:
        settings = NotifySettings(
            smtp=_smtp(raw, env), webhook=_webhook(raw, env), thresholds=_thresholds(raw["notify_thresholds"] or ""),
            audit_check_seconds=float(raw["chain_check_interval"] or 300), interval_seconds=float(raw["notify_interval"] or 10),
            retry_seconds=float(raw["notify_retry_seconds"] or 30))
    except ValueError as bad:
        raise SystemExit(f"notification settings: {bad}") from None
    check(settings)
    return settings


def check(settings: NotifySettings) -> None:
    for name, value in (("--chain-check-interval", settings.audit_check_seconds), ("--notify-interval", settings.interval_seconds),
                        ("--notify-retry-seconds", settings.retry_seconds)):
        if not 0.05 <= value <= 86_400:
            raise SystemExit(f"{name} must be 0.05 to 86400 seconds")
    if settings.smtp is not None and (not settings.smtp.sender or not settings.smtp.recipients):
        raise SystemExit("--smtp-host needs --notify-from and --notify-to")
    if settings.smtp is not None and not 0 < settings.smtp.port < 65536:
        raise SystemExit("--smtp-port must be 1 to 65535")
    if settings.webhook is not None:
        if urlsplit(settings.webhook.url).scheme not in ("http", "https") or not urlsplit(settings.webhook.url).hostname:
            raise SystemExit("--webhook-url must be an http:// or https:// URL")
        if len(settings.webhook.secret) < 16:
            raise SystemExit(f"the webhook needs an HMAC secret of at least 16 bytes (--webhook-secret-file or {WEBHOOK_SECRET_ENV})")


def _smtp(raw: Mapping[str, str | None], env: Mapping[str, str]) -> SmtpSettings | None:
    host = (raw["smtp_host"] or "").strip()
    if not host:
        return None
    starttls = (raw["smtp_starttls"] or "on").strip().lower()
    if starttls not in ("on", "off"):
        raise ValueError("--smtp-starttls must be on or off")
    recipients = tuple(a.strip() for a in (raw["notify_to"] or "").split(",") if a.strip())
    return SmtpSettings(host=host, port=int(raw["smtp_port"] or 587), starttls=starttls == "on", username=raw["smtp_username"] or "",
                        password=_secret(raw["smtp_password_file"], env.get(SMTP_PASSWORD_ENV, ""), "--smtp-password-file"),
                        sender=(raw["notify_from"] or "").strip(), recipients=recipients)


def _webhook(raw: Mapping[str, str | None], env: Mapping[str, str]) -> WebhookSettings | None:
    url = (raw["webhook_url"] or "").strip()
    if not url:
        return None
    return WebhookSettings(url=url, secret=_secret(raw["webhook_secret_file"], env.get(WEBHOOK_SECRET_ENV, ""), "--webhook-secret-file").encode())


def _secret(path: str | None, from_env: str, flag: str) -> str:
    """A secret from its file (first line, without the newline) or else from its variable. An
    error names the flag, not the value: a password typed where the path goes must not be echoed."""
    if not path:
        return from_env
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except OSError as unreadable:
        raise ValueError(f"cannot read the secret file given by {flag}: {unreadable.strerror}") from None
    return lines[0] if lines else ""


def _thresholds(text: str) -> tuple[float, ...]:
    values = tuple(sorted({float(part) for part in text.split(",") if part.strip()}))
    if any(not 0 < v <= 1 for v in values):
        raise ValueError("--notify-thresholds are fractions above 0 and at most 1, e.g. 0.5,0.8,0.95")
    return values
