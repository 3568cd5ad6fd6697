"""`make demo`'s web console: started against a real server, the printed one-time sign-ins work in
the real sign-in form, and the demo waits for a person only where one can answer."""

from __future__ import annotations

import io
import os
import re
import signal
import threading

from cleanroom.cli import demo
from cleanroom.cli.demo_console import KEEP_ENV, Person, create_sign_ins, hold, sign_in_text, start_console
from cleanroom.domain.identity import Role
from tests.console.harness import HttpSession

PRINTED = re.compile(r"^\s+(?P<who>.+?)\s+username (?P<username>\S+)\s+one-time code (?P<code>\S+)\s+\(valid until .+ UTC\)$")


class Terminal(io.StringIO):
    """A stdin that says it is a terminal, where a person has pressed Enter."""

    def isatty(self) -> bool:
        return True


def test_the_demo_prints_one_time_sign_ins_that_open_the_console(running, tmp_path, capsys) -> None:
    console = start_console(running.address, tmp_path, demo._root_pem(tmp_path / "state"), environ={})
    try:
        officer, _ = running.principal(Role.PRIVACY_OFFICER, "SNUH privacy office")
        hospital, _ = running.principal(Role.DATA_OWNER, "SNUH data team")
        people = [Person("privacy officer", f"principals/{officer}", "snuh.privacy"),
                  Person("hospital data team", f"principals/{hospital}", "snuh.data")]
        with running.client(running.admin_token) as admin:
            text = sign_in_text(console.url, create_sign_ins(admin, people))
        assert text.splitlines()[0] == f"Web console: http://127.0.0.1:{console.port}/sign-in"
        printed = [m.groupdict() for m in map(PRINTED.match, text.splitlines()) if m]
        assert [p["username"] for p in printed] == ["snuh.privacy", "snuh.data"]
        for entry, target in zip(printed, ("/inbox", "/hospital"), strict=True):
            browser = HttpSession("127.0.0.1", console.port)
            form = browser.get("/sign-in")
            answer = browser.request("POST", "/sign-in", {"csrf": form.csrf(), "username": entry["username"], "method": "code",
                                                          "secret": entry["code"], "next": "/"})
            assert answer.status == 303 and answer.location == "/set-password", entry
            chosen = browser.post("/set-password", {"new_password": "a long demo password", "again": "a long demo password"})
            assert chosen.status == 303 and chosen.location.startswith(target)
    finally:
        console.stop()


def test_the_console_waits_for_enter_in_a_terminal_and_not_in_a_pipe(running, tmp_path, capsys) -> None:
    console = start_console(running.address, tmp_path, demo._root_pem(tmp_path / "state"), environ={})
    try:
        assert hold(console, io.StringIO(""), environ={}) == "not a terminal"
        assert KEEP_ENV in capsys.readouterr().out  # says how to keep it up
        assert hold(console, Terminal("\n"), environ={}) == "Enter pressed"
        assert "until you press Enter" in capsys.readouterr().out
        before = signal.getsignal(signal.SIGTERM)
        stopper = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
        stopper.start()
        assert hold(console, io.StringIO(""), environ={KEEP_ENV: "1"}) == "stopped"  # SIGTERM ends the wait, not pytest
        stopper.join()
        assert signal.getsignal(signal.SIGTERM) == before  # the demo's own handling of SIGTERM is back
    finally:
        console.stop()
