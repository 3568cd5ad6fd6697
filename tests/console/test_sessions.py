"""Sign-in, sessions and the protections every page has, against a real console and server."""

from __future__ import annotations

import re

from cleanroom.domain.identity import Role
from tests.console.harness import PASSWORD


def test_signing_in_sets_a_strict_cookie_and_every_answer_carries_a_nonce_policy(console) -> None:
    browser = console.anonymous()
    form = browser.get("/sign-in")
    assert form.status == 200
    policy = form.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", policy)
    assert nonce and "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert browser.get("/sign-in").headers["content-security-policy"] != policy  # a fresh nonce per answer
    officer = console.signed_in(Role.PRIVACY_OFFICER)
    assert officer.get("/").status == 303
    username = officer.username
    again = console.anonymous()
    page = again.get("/sign-in")
    answer = again.request("POST", "/sign-in", {"csrf": page.csrf(), "username": username, "method": "password",
                                                "secret": PASSWORD, "next": "/inbox"})
    assert answer.status == 303 and answer.location == "/inbox"
    cookie = next(c for c in answer.set_cookies if c.startswith("cleanroom_session="))
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")


def test_a_page_without_a_session_sends_the_browser_to_sign_in(console) -> None:
    answer = console.anonymous().get("/set-password")
    assert answer.status == 303 and answer.location.startswith("/sign-in?next=/set-password")


def test_a_form_without_the_sessions_csrf_token_is_refused_and_changes_nothing(console) -> None:
    officer = console.signed_in(Role.PRIVACY_OFFICER)
    forged = officer.request("POST", "/set-password", {"csrf": "forged", "new_password": "x" * 20, "again": "x" * 20})
    assert forged.status == 403
    missing = officer.request("POST", "/sign-out", {})
    assert missing.status == 303
    assert officer.get("/set-password").status == 200  # still signed in: a sign-out without the token did nothing


def test_wrong_credentials_and_a_forged_sign_in_form_do_not_sign_in(console) -> None:
    browser = console.anonymous()
    page = browser.get("/sign-in")
    wrong = browser.request("POST", "/sign-in", {"csrf": page.csrf(), "username": "nobody", "method": "password", "secret": "x" * 14})
    assert wrong.status == 303 and "error=" in wrong.location
    fresh = console.anonymous()
    forged = fresh.request("POST", "/sign-in", {"csrf": "made-up", "username": "nobody", "method": "password", "secret": "x"})
    assert forged.status == 303 and "expired" in forged.location
    assert "cleanroom_session" not in browser.cookies and "cleanroom_session" not in fresh.cookies


def test_sign_out_ends_the_session_and_revokes_its_api_token(console) -> None:
    officer = console.signed_in(Role.AUDITOR)
    session = next(iter(console.console.sessions._sessions.values()))
    out = officer.post("/sign-out", {}, csrf_from="/set-password")
    assert out.status == 303
    assert officer.get("/set-password").status == 303
    with console.running.client(session.token) as client:
        try:
            client.whoami()
            raise AssertionError("the session's API token still works after sign-out")
        except Exception as error:  # noqa: BLE001 - the SDK's error type
            assert "UNAUTHENTICATED" in str(error)


def test_an_idle_session_ends_and_its_token_is_revoked(console) -> None:
    auditor = console.signed_in(Role.AUDITOR)
    store = console.console.sessions
    (session,) = store._sessions.values()
    session.last_seen -= store.idle_seconds + 1  # as if it sat unused past the idle limit
    answer = auditor.get("/set-password")
    assert answer.status == 303 and "error=" in answer.location
    with console.running.client(session.token) as client:
        try:
            client.whoami()
            raise AssertionError("an idle session's token still works")
        except Exception as error:  # noqa: BLE001
            assert "UNAUTHENTICATED" in str(error)


def test_sign_in_never_redirects_off_the_console(console) -> None:
    principal_id, _token = console.running.principal(Role.AUDITOR)
    username, code = console.login_for(principal_id)
    browser = console.anonymous()
    page = browser.get("/sign-in?next=//evil.example/")
    answer = browser.request("POST", "/sign-in", {"csrf": page.csrf(), "username": username, "method": "code", "secret": code,
                                                  "next": "//evil.example/"})
    assert answer.location == "/set-password"
    done = browser.post("/set-password", {"new_password": PASSWORD, "again": PASSWORD})
    assert not done.location.startswith("//")
