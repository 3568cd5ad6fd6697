"""No secret in any output (issue #20, part 5): the scanner finds every spelling it claims to, and a
real server session of every role (proof/secrets_scan.py) leaks no token or key into a response,
an error's message, details or trailing metadata, the CLI's output, /metrics or the server's log.
The session's own captured texts with one secret planted show the check failing."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from proof.secrets_scan import Secret, SessionResult, encodings, run_session, scan
from tests.tools import needs

KEY = Secret("key", os.urandom(32))
TOKEN = Secret("token", b"crt_" + os.urandom(24).hex().encode(), token=True)


@pytest.mark.parametrize("secret", [KEY, TOKEN], ids=["key", "token"])
def test_every_spelling_is_found_and_nothing_else(secret: Secret) -> None:
    for name, spelled in encodings(secret).items():
        findings = scan({"log": b"2026-12-07 INFO something " + spelled + b" happened"}, [secret])
        assert {(f.text, f.secret) for f in findings} == {("log", secret.label)}, name
        assert name in {f.encoding for f in findings}
    assert scan({"log": "nothing here", "other": os.urandom(4096)}, [secret]) == []
    expected = {"raw", "hex", "HEX", "base64", "base64 padded", "base64url", "base64url padded"}
    assert expected <= set(encodings(secret)) and ("sha256 hex" in encodings(secret)) == secret.token


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4, 5])
def test_a_secret_inside_a_longer_encoded_blob_is_found(offset: int) -> None:
    blob = os.urandom(offset) + KEY.value + os.urandom(7)
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        assert scan({"response": b'{"blob": "' + encode(blob) + b'"}'}, [KEY]), (offset, encode)
    assert scan({"hashed": hashlib.sha256(TOKEN.value).hexdigest().upper()}, [TOKEN])


def test_a_secret_too_short_to_scan_for_is_refused() -> None:
    with pytest.raises(ValueError, match="too short"):
        scan({"x": "y"}, [Secret("pin", b"1234")])


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> SessionResult:
    return run_session(tmp_path_factory.mktemp("secrets-scan"))


@needs("bwrap")
def test_no_secret_in_any_output(session: SessionResult) -> None:
    assert session.findings == [], "\n".join(f"{f.secret} in {f.text} ({f.encoding})" for f in session.findings)


@needs("bwrap")
def test_the_session_covered_what_it_claims(session: SessionResult) -> None:
    texts = {label.split(" ", 1)[1]: text for label, text in session.capture.texts.items()}
    assert b"cleanroom_" in texts["metrics scrape"] and len(texts["server log"]) > 1000
    assert b"MODEL_STATE_ACCEPTED" in texts["submit model"], texts["submit model"][:2000]
    assert b'"cells"' in texts["stats query"] and b'"expectedError"' in texts["estimate query"]
    assert b'"budgets"' in texts["estimate cost"] or b"cost" in texts["estimate cost"].lower()
    assert texts["export audit"].count(b"\n") > 10
    failures = [t for label, t in texts.items() if label.startswith("whoami with") or label.startswith("whoami without")]
    assert len(failures) == 6 and all(b"UNAUTHENTICATED" in t for t in failures)
    assert b"PERMISSION_DENIED" in texts["set budget as a manufacturer (error)"]
    assert b"INVALID_ARGUMENT" in texts["share with a bad amount (error)"]
    assert texts["cli whoami stdout"] and texts["cli bad token stderr"]
    labels = [s.label for s in session.secrets]
    assert sum(label.startswith("KEK") for label in labels) == 2  # the first and the rotated one
    assert "service secret token-root" in labels
    assert any(label.startswith("dataset key") for label in labels) and any(label.startswith("model key") for label in labels)
    assert sum(label.startswith("private key") for label in labels) == 2  # the enclave root and the launcher
    assert sum(s.token for s in session.secrets) == 5  # the admin's and one per role
    assert session.bytes > 50_000


@needs("bwrap")
@pytest.mark.parametrize("pick", ["token", "dataset key", "KEK", "private key", "service secret"])
def test_a_planted_secret_is_caught_in_the_real_outputs(session: SessionResult, pick: str) -> None:
    """The check can fail: the real captured log with one secret written into it, URL-safe base64
    in the middle of a line, as a careless debug line would."""
    secret = next(s for s in session.secrets if s.label.startswith(pick))
    label = next(label for label in session.capture.texts if label.endswith("server log"))
    log = session.capture.texts[label]
    planted = {**session.capture.texts, label: log[: len(log) // 2] + b" debug=" + base64.urlsafe_b64encode(secret.value) + log[len(log) // 2:]}
    findings = scan(planted, session.secrets)
    assert {(f.text, f.secret) for f in findings} == {(label, secret.label)}
