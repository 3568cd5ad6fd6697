"""A real console in front of a real gRPC server, and a cookie-keeping HTTP client for it.

`ConsoleWorld` starts the console (uvicorn on a free loopback port) against a `running` server;
`signed_in(role)` makes a principal of that role, gives it a console login and signs it in through
the real sign-in form, returning an `HttpSession` that carries the session cookie and reads each
page's CSRF token. No mocks: the same path a browser takes, minus the browser.
"""

from __future__ import annotations

import http.client
import re
import uuid
from dataclasses import dataclass, field
from html import unescape
from urllib.parse import urlencode, urlsplit

from cleanroom.console.config import ConsoleConfig
from cleanroom.console.serve import ConsoleServer
from cleanroom.domain.identity import Role

PASSWORD = "a long console password"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str
    set_cookies: list[str] = field(default_factory=list)

    @property
    def location(self) -> str:
        return self.headers.get("location", "")

    def csrf(self) -> str:
        match = _CSRF.search(self.body)
        assert match, "no CSRF field on this page"
        return unescape(match.group(1))


@dataclass
class HttpSession:
    host: str
    port: int
    cookies: dict[str, str] = field(default_factory=dict)
    principal: str = ""
    username: str = ""

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> Answer:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}
        body = urlencode(form) if form is not None else None
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode("utf-8", "replace"),
                        [v for k, v in response.getheaders() if k.lower() == "set-cookie"])
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                cookie, _, attributes = value.partition(";")
                key, _, val = cookie.partition("=")
                if "max-age=0" in attributes.lower() or 'expires=thu, 01 jan 1970' in attributes.lower():
                    self.cookies.pop(key.strip(), None)
                else:
                    self.cookies[key.strip()] = val.strip().strip('"')
        connection.close()
        return answer

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def post(self, path: str, form: dict[str, str], *, csrf_from: str | None = None) -> Answer:
        """POSTs `form` with the CSRF token read from `csrf_from` (a page path; default: `path` itself)."""
        token = self.get(csrf_from or path).csrf()
        return self.request("POST", path, {"csrf": token, **form})

    def follow(self, answer: Answer) -> Answer:
        while answer.status in (302, 303, 307):
            answer = self.get(urlsplit(answer.location).path + (f"?{urlsplit(answer.location).query}" if urlsplit(answer.location).query else ""))
        return answer


class ConsoleWorld:
    def __init__(self, running, **config: object) -> None:
        self.running = running
        self.server = ConsoleServer(ConsoleConfig(api=running.address, host="127.0.0.1", port=0, **config))  # type: ignore[arg-type]
        self.server.start()

    @property
    def console(self):
        return self.server.console

    def anonymous(self) -> HttpSession:
        return HttpSession("127.0.0.1", self.server.port)

    def login_for(self, principal_id: str, username: str | None = None) -> tuple[str, str]:
        """A console login for an existing principal: (username, one-time code)."""
        username = username or f"user.{uuid.uuid4().hex[:8]}"
        with self.running.client(self.running.admin_token) as admin:
            made = admin.create_console_login(f"principals/{principal_id}", username)
        return username, made.one_time_code

    def sign_in_as(self, principal_id: str) -> HttpSession:
        """Through the real forms: the one-time code, then choosing a password."""
        username, code = self.login_for(principal_id)
        browser = self.anonymous()
        form_page = browser.get("/sign-in")
        answer = browser.request("POST", "/sign-in", {"csrf": form_page.csrf(), "username": username, "method": "code",
                                                      "secret": code, "next": "/"})
        assert answer.status == 303 and answer.location.endswith("/set-password"), (answer.status, answer.location)
        done = browser.post("/set-password", {"new_password": PASSWORD, "again": PASSWORD})
        assert done.status == 303, done.body
        browser.principal, browser.username = f"principals/{principal_id}", username
        return browser

    def signed_in(self, role: Role, name: str | None = None) -> HttpSession:
        principal_id, _token = self.running.principal(role, name)
        return self.sign_in_as(principal_id)

    def stop(self) -> None:
        self.server.stop()
