"""Signing in and out, choosing a password, and the home page that sends each role to its work."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cleanroom.console.sessions import COOKIE
from cleanroom.console.web import HOME, Console, Page, Redirect, end_session_token, new_presession, page, redirect, render
from cleanroom.sdk import CleanroomClientError
from cleanroom.v1 import common_pb2, identity_pb2

PRESESSION = "cleanroom_presign"  # the sign-in form's CSRF value (double-submitted: cookie and field)


def routes(console: Console) -> list[Route]:
    async def sign_in_form(request: Request) -> Response:
        token = new_presession()
        response = render(console, request, "sign_in.html", title="Sign in", presession=token,
                          next=_local(request.query_params.get("next", "/")))
        _cookie(console, response, PRESESSION, token, max_age=1800)
        return response

    async def sign_in(request: Request) -> Response:
        form = await request.form()
        cookie, field = request.cookies.get(PRESESSION), form.get("csrf")
        if not cookie or not isinstance(field, str) or field != cookie:
            return redirect("/sign-in", error="the sign-in form expired; please try again")
        username, secret = str(form.get("username", "")).strip(), str(form.get("secret", ""))
        with_code = form.get("method") == "code"
        try:
            answer = await run_in_threadpool(_sign_in, console, username, secret, with_code)
        except CleanroomClientError as error:
            return redirect("/sign-in", error=error.message)
        session = console.sessions.create(
            token=answer.bearer_token, token_name=answer.token.name, principal=answer.principal.name,
            display_name=answer.principal.display_name, role=_role(answer.principal.role),
            organisation=answer.principal.organisation, must_set_password=answer.must_set_password)
        target = "/set-password" if session.must_set_password else _local(str(form.get("next", "/")))
        response = redirect(target)
        _cookie(console, response, COOKIE, session.id)
        response.delete_cookie(PRESESSION, path="/")
        return response

    async def sign_out(request: Request) -> Response:
        session, _idled = console.sessions.get(request.cookies.get(COOKIE))
        form = await request.form()
        presented = form.get("csrf")
        if session is not None and not session.csrf_matches(presented if isinstance(presented, str) else None):
            return redirect("/", error="that sign-out did not come from this console; use the Sign out button")
        if session is not None:
            console.sessions.end(session.id)
            await run_in_threadpool(end_session_token, console, session)
        response = redirect("/sign-in", notice="signed out")
        response.delete_cookie(COOKIE, path="/")
        return response

    return [
        Route("/", page(console, _home)),
        Route("/sign-in", sign_in_form, methods=["GET"]),
        Route("/sign-in", sign_in, methods=["POST"]),
        Route("/sign-out", sign_out, methods=["POST"]),
        Route("/set-password", page(console, _password_form), methods=["GET"]),
        Route("/set-password", page(console, _set_password), methods=["POST"]),
    ]


def _sign_in(console: Console, username: str, secret: str, with_code: bool) -> identity_pb2.SignInResponse:
    with console.client(None) as client:
        if with_code:
            return client.sign_in(username, one_time_code=secret)
        return client.sign_in(username, password=secret)


def _role(value: int) -> str:
    return str(common_pb2.Role.Name(value)).lower()  # type: ignore[arg-type]


def _local(target: str) -> str:
    """Only a path on this console: never an open redirect to another site."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _cookie(console: Console, response: Response, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=console.config.secure_cookies, httponly=True,
                        samesite="strict")


def _home(p: Page) -> Response:
    target = HOME.get(p.session.role)
    if target:
        raise Redirect(target)
    return p.render("home.html", title="Console")


def _password_form(p: Page) -> Response:
    return p.render("set_password.html", title="Choose a password")


def _set_password(p: Page) -> Response:
    new, again = p.field("new_password"), p.field("again")
    if new != again:
        raise Redirect("/set-password", error="the two passwords differ")
    p.client.set_console_password(new)
    p.session.must_set_password = False
    raise Redirect(HOME.get(p.session.role, "/"), notice="password set")



