"""`cleanroom admin console-login`: give a principal a sign-in for the web console (admin role).

Prints the username and a one-time code (valid 24 hours, shown once). The person signs in at the
console's /sign-in page with them and is then asked to choose a password. Run it again for the same
principal to issue a fresh code (a forgotten password); the old code stops working.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cleanroom.sdk import Client

ClientFactory = Callable[[argparse.Namespace], Client]


def register(admin: argparse._SubParsersAction[argparse.ArgumentParser], client: ClientFactory) -> None:
    login = admin.add_parser("console-login", help="give a principal a web-console sign-in (a one-time code)",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    login.add_argument("--principal", required=True, metavar="principals/ID", help="whom the login signs in as")
    login.add_argument("--username", required=True, help="3 to 64 of a-z 0-9 . _ -")
    login.add_argument("--console-url", default="", metavar="URL",
                       help="the console's address, to print the sign-in page (e.g. http://127.0.0.1:8443)")
    login.set_defaults(handler=lambda a: _create(client(a), a.principal, a.username, a.console_url))


def _create(client: Client, principal: str, username: str, console_url: str) -> int:
    made = client.create_console_login(principal, username)
    where = f"{console_url.rstrip('/')}/sign-in" if console_url else "the console's /sign-in page"
    print(f"console login {made.login.username} for {made.login.principal}")
    print(f"sign in at {where} with username {made.login.username} and one-time code:")
    print(made.one_time_code)
    print(f"(valid until {made.code_expire_time.ToJsonString()}; the first sign-in asks for a password)")
    return 0
