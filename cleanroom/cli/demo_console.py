"""The web console in `make demo`: started in the demo's process against the demo's server, with a
one-time sign-in for the story's privacy officer and hospital, printed near the end of the run.

The console lives as long as the demo's server. When the demo runs in a terminal it waits for Enter
before stopping both, so a person can open the console; otherwise (CI, a pipe) it stops at once,
unless CLEANROOM_DEMO_KEEP_CONSOLE=1 asks it to wait for Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cleanroom.console.config import ConsoleConfig
from cleanroom.console.serve import ConsoleServer
from cleanroom.sdk import Client

KEEP_ENV = "CLEANROOM_DEMO_KEEP_CONSOLE"
PORT_ENV = "CLEANROOM_DEMO_CONSOLE_PORT"  # 0 or unset: any free port (the address is printed)


@dataclass(frozen=True)
class Person:
    """Someone of the demo's story who gets a console sign-in."""

    who: str         # e.g. "privacy officer"
    principal: str   # "principals/{id}"
    username: str


@dataclass(frozen=True)
class SignIn:
    person: Person
    one_time_code: str
    expires: str     # UTC, for the printout


def start_console(address: str, workdir: Path, pinned_root: bytes, environ: Mapping[str, str] = os.environ) -> ConsoleServer:
    """The console in a thread of this process; release pages check receipts against the pinned root."""
    root = workdir / "pinned-root.pem"
    root.write_bytes(pinned_root)
    port = environ.get(PORT_ENV, "0")
    server = ConsoleServer(ConsoleConfig(api=address, host="127.0.0.1", port=int(port) if port.isdigit() else 0, trust_root=root))
    server.start()
    return server


def create_sign_ins(admin: Client, people: list[Person]) -> list[SignIn]:
    made = [(person, admin.create_console_login(person.principal, person.username)) for person in people]
    return [SignIn(person, answer.one_time_code, answer.code_expire_time.ToDatetime().strftime("%Y-%m-%d %H:%M UTC"))
            for person, answer in made]


def sign_in_text(url: str, sign_ins: list[SignIn]) -> str:
    lines = [f"Web console: {url}/sign-in", "  Sign in with 'one-time code'; the first sign-in asks each person to choose a password."]
    for entry in sign_ins:
        lines.append(f"  {entry.person.who:<18} username {entry.person.username:<16} one-time code {entry.one_time_code}"
                     f"  (valid until {entry.expires})")
    return "\n".join(lines)


def hold(console: ConsoleServer, stdin: TextIO, environ: Mapping[str, str] = os.environ) -> str:
    """Keeps the console (and the demo's server) up while a person may use it; returns why it stopped."""
    if stdin.isatty():
        print(f"The console stays up until you press Enter here (or Ctrl-C): {console.url}", flush=True)
        try:
            stdin.readline()
        except KeyboardInterrupt:
            pass
        return "Enter pressed"
    if environ.get(KEEP_ENV, "") not in ("", "0"):
        print(f"The console stays up until Ctrl-C or SIGTERM ({KEEP_ENV} is set): {console.url}", flush=True)
        _wait_for_stop()
        return "stopped"
    print(f"Input is not a terminal, so the console stops with the server now; run the demo in a terminal, "
          f"or set {KEEP_ENV}=1, to keep it up.", flush=True)
    return "not a terminal"


def _wait_for_stop() -> None:
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
