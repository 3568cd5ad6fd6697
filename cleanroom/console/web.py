"""How a console page runs: the session, CSRF on every form, the API client, and API errors as pages.

A page handler is a plain function of a `Page` (it calls the blocking SDK, so it runs in a worker
thread). `page()` wraps it: no session sends the browser to sign in; a session that must choose a
password goes there first; a POST without this session's CSRF token is refused; an API error
becomes the page a person expects (403 for a role the API refuses, 404 for what the API says does
not exist, the API's own words for a refused action), never a stack trace.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from cleanroom.console.config import ConsoleConfig
from cleanroom.console.sessions import COOKIE, Session, SessionStore
from cleanroom.sdk import CleanroomClientError, Client

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "templates"
CSRF_FIELD = "csrf"

# What each role finds in the navigation (the API decides what each may actually do).
NAVIGATION: dict[str, tuple[tuple[str, str], ...]] = {
    "privacy_officer": (("/inbox", "Inbox"), ("/budgets", "Budgets"), ("/audit", "Audit log"), ("/releases", "Releases")),
    "auditor": (("/budgets", "Budgets"), ("/audit", "Audit log"), ("/releases", "Releases")),
    "data_owner": (("/hospital", "Datasets and shares"), ("/audit", "Audit log")),
    "manufacturer": (("/releases", "Releases"),),
    "admin": (),
}
HOME = {"privacy_officer": "/inbox", "auditor": "/audit", "data_owner": "/hospital", "manufacturer": "/releases"}


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(("html",)))
    env.globals["navigation"] = NAVIGATION
    return env


@dataclass
class Console:
    """What every page shares: settings, sessions, templates."""

    config: ConsoleConfig
    sessions: SessionStore
    templates: Environment = field(default_factory=environment)

    def client(self, token: str | None) -> Client:
        return Client(self.config.api, token, tls_ca=self.config.api_tls_ca, timeout=30)


class Redirect(Exception):
    """Raised by a handler to answer with a redirect (303 after a POST), optionally with a notice."""

    def __init__(self, url: str, notice: str = "", error: str = "") -> None:
        super().__init__(url)
        self.url, self.notice, self.error = url, notice, error


@dataclass
class Page:
    console: Console
    request: Request
    session: Session
    form: FormData | None
    client: Client
    notices: list[tuple[str, str]] = field(default_factory=list)  # (kind, text): "notice" or "error"

    @property
    def path_params(self) -> Mapping[str, Any]:
        return self.request.path_params

    @property
    def query(self) -> Mapping[str, str]:
        return self.request.query_params

    def field(self, name: str, default: str = "") -> str:
        value = self.form.get(name) if self.form is not None else None
        return value.strip() if isinstance(value, str) else default

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return render(self.console, self.request, template, status=status, session=self.session,
                      notices=self.notices, **context)


def render(console: Console, request: Request, template: str, *, status: int = 200, session: Session | None = None,
           notices: list[tuple[str, str]] | None = None, **context: Any) -> HTMLResponse:
    flashed = [("notice", request.query_params["notice"])] if request.query_params.get("notice") else []
    flashed += [("error", request.query_params["error"])] if request.query_params.get("error") else []
    html = console.templates.get_template(template).render(
        request=request, session=session, nonce=request.state.csp_nonce, csrf=session.csrf if session else "",
        notices=[*flashed, *(notices or [])], path=request.url.path, **context)
    return HTMLResponse(html, status_code=status)


def redirect(url: str, *, notice: str = "", error: str = "") -> RedirectResponse:
    """303 (after a POST the browser GETs the target); a short notice rides in the query string."""
    if notice or error:
        url += ("&" if "?" in url else "?") + (f"notice={quote(notice)}" if notice else f"error={quote(error)}")
    return RedirectResponse(url, status_code=303)


Handler = Callable[[Page], Response]


def page(console: Console, handler: Handler) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        session, idled = console.sessions.get(request.cookies.get(COOKIE))
        if idled is not None:
            await run_in_threadpool(end_session_token, console, idled)
        if session is None:
            target = request.url.path if request.method == "GET" else "/"
            reason = "your session ended after a period without use; sign in again" if idled else ""
            return redirect(f"/sign-in?next={quote(target)}", error=reason)
        if session.must_set_password and request.url.path != "/set-password":
            return redirect("/set-password")
        form = await request.form() if request.method == "POST" else None
        if form is not None:
            presented = form.get(CSRF_FIELD)
            if not session.csrf_matches(presented if isinstance(presented, str) else None):
                return render(console, request, "error.html", status=403, session=session, title="Form expired",
                              message="This form is out of date or did not come from the console. Go back, reload the page and try again.")
        return await run_in_threadpool(_run, console, handler, request, session, form)

    return endpoint


def _run(console: Console, handler: Handler, request: Request, session: Session, form: FormData | None) -> Response:
    with console.client(session.token) as client:
        try:
            return handler(Page(console, request, session, form, client))
        except Redirect as done:
            return redirect(done.url, notice=done.notice, error=done.error)
        except CleanroomClientError as error:
            return api_error_page(console, request, session, error)


def api_error_page(console: Console, request: Request, session: Session, error: CleanroomClientError) -> Response:
    if error.code is grpc.StatusCode.UNAUTHENTICATED:
        console.sessions.end(session.id)
        return redirect("/sign-in", error="your session has ended (signed out or revoked); sign in again")
    if request.method == "POST" and error.code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND):
        back = request.headers.get("referer") or request.url.path
        return redirect(_same_origin_path(back, request), error=_words(error))
    status, title = {
        grpc.StatusCode.PERMISSION_DENIED: (403, "Not for your role"),
        grpc.StatusCode.NOT_FOUND: (404, "Not found"),
        grpc.StatusCode.INVALID_ARGUMENT: (400, "That request was not accepted"),
        grpc.StatusCode.FAILED_PRECONDITION: (409, "That cannot be done now"),
    }.get(error.code, (502, "The service could not answer"))
    message = _words(error) if status != 502 else "The clean-room service did not answer. Try again in a moment."
    if status == 403:
        message = "Your role may not see this page or take this action."
    if status == 404:
        message = "There is nothing here, or it is not visible to you."
    return render(console, request, "error.html", status=status, session=session, title=title, message=message)


def _words(error: CleanroomClientError) -> str:
    return " ".join([error.message, *(f"({v.field}: {v.description})" for v in error.violations)])


def _same_origin_path(url: str, request: Request) -> str:
    origin = f"{request.url.scheme}://{request.url.netloc}"
    path = url.removeprefix(origin)
    return path.split("?", 1)[0] if path.startswith("/") and not path.startswith("//") else "/"


def end_session_token(console: Console, session: Session) -> None:
    """Revokes a session's API token (sign-out, idle expiry); the token expires by itself anyway."""
    try:
        with console.client(session.token) as client:
            client.sign_out(session.token_name)
    except CleanroomClientError:
        log.info("a console session's token was already gone", extra={"principal": session.principal})


def new_presession() -> str:
    return secrets.token_urlsafe(24)
