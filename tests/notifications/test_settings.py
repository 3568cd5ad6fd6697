"""Notification settings from flags, the environment and secret files: off by default, secrets never flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleanroom.cli.main import build_parser
from cleanroom.server.config import build_config
from tests.server.test_server_process import cli


def _config(tmp_path: Path, *flags: str, env: dict[str, str] | None = None):  # noqa: ANN202
    args = build_parser({}).parse_args(["serve", "--state-dir", str(tmp_path / "state"), *flags])
    return build_config(args, env or {})


def test_off_by_default(tmp_path) -> None:
    notify = _config(tmp_path).notify
    assert notify.channels == () and not notify.enabled and notify.thresholds == (0.5, 0.8, 0.95)


def test_email_and_webhook_from_flags_env_and_secret_files(tmp_path) -> None:
    secret = tmp_path / "hook.secret"
    secret.write_text("a-webhook-secret-of-some-length\n")
    notify = _config(tmp_path, "--smtp-host", "mail.hospital.test", "--smtp-starttls", "off", "--smtp-username", "cleanroom",
                     "--notify-from", "cleanroom@hospital.test", "--notify-to", "a@hospital.test, b@hospital.test",
                     "--webhook-url", "https://hooks.hospital.test/cleanroom", "--webhook-secret-file", str(secret),
                     "--notify-thresholds", "0.9,0.25", env={"CLEANROOM_SMTP_PASSWORD": "s3cret", "CLEANROOM_SMTP_PORT": "2525"}).notify
    assert notify.channels == ("email", "webhook")
    assert notify.smtp is not None and notify.smtp.port == 2525 and not notify.smtp.starttls and notify.smtp.password == "s3cret"
    assert notify.smtp.recipients == ("a@hospital.test", "b@hospital.test")
    assert notify.webhook is not None and notify.webhook.secret == b"a-webhook-secret-of-some-length"
    assert notify.thresholds == (0.25, 0.9)


@pytest.mark.parametrize("flags, env, says", [
    (("--smtp-host", "mail.test"), {}, "--notify-from and --notify-to"),
    (("--webhook-url", "https://hooks.test/x"), {}, "HMAC secret"),
    (("--webhook-url", "ftp://hooks.test/x"), {"CLEANROOM_WEBHOOK_SECRET": "x" * 20}, "http:// or https://"),
    (("--webhook-url", "https://hooks.test/x", "--webhook-secret-file", "/nonexistent/secret"), {}, "given by --webhook-secret-file"),
    (("--notify-thresholds", "0.5,1.5"), {}, "fractions above 0"),
    (("--smtp-host", "m", "--notify-from", "a@b", "--notify-to", "c@d", "--smtp-starttls", "maybe"), {}, "on or off"),
    (("--notify-interval", "0"), {}, "--notify-interval"),
])
def test_bad_settings_are_refused_with_a_clear_message(tmp_path, flags, env, says) -> None:
    with pytest.raises(SystemExit) as refused:
        _config(tmp_path, *flags, env=env)
    assert says in str(refused.value)


def test_a_password_typed_where_its_file_goes_is_not_echoed(tmp_path) -> None:
    with pytest.raises(SystemExit) as refused:  # argparse takes --smtp-password for --smtp-password-file
        _config(tmp_path, "--smtp-host", "m", "--notify-from", "a@b", "--notify-to", "c@d", "--smtp-password", "hunter2-Secret")
    assert "hunter2" not in str(refused.value) and "--smtp-password-file" in str(refused.value)


def test_serve_help_documents_every_setting_and_offers_no_secret_flag() -> None:
    shown = cli("serve", "--help").stdout
    for flag in ("--smtp-host", "--smtp-starttls", "--smtp-password-file", "--notify-to", "--webhook-url", "--webhook-secret-file",
                 "--notify-thresholds", "--chain-check-interval", "CLEANROOM_SMTP_PASSWORD", "CLEANROOM_WEBHOOK_SECRET"):
        assert flag in shown
    assert "--smtp-password " not in shown and "--webhook-secret " not in shown
