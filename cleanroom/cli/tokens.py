"""`cleanroom admin token issue|revoke|list`: bearer tokens with an expiry, and their revocation (admin role).

A principal's first token comes with it (`cleanroom admin principal create`); an admin issues more,
each shown once, and revokes any of them. A revoked token fails on its very next call, on every
replica; an expired one answers UNAUTHENTICATED saying it expired. The last working admin token
cannot be revoked: issue a replacement first.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Literal

from cleanroom.cli import render
from cleanroom.sdk import Client
from cleanroom.v1 import identity_pb2

ClientFactory = Callable[[argparse.Namespace], Client]
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
EPILOG = ("Lifetimes: a number with a unit, s, m, h or d (e.g. 90d, 12h); 1 s to 3650 days. Without one a token "
          "never expires. Tokens are shown once and never stored; `list` shows when each was made, expires and was revoked.")


def lifetime(text: str) -> timedelta:
    """argparse type: "90d", "12h", "30m", "45s" or plain seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError("a lifetime is a positive number with a unit: s, m, h or d (e.g. 90d)")
    return timedelta(seconds=float(match[1]) * UNITS[match[2] or "s"])


def register(admin: argparse._SubParsersAction[argparse.ArgumentParser], client: ClientFactory) -> None:
    token = admin.add_parser("token", help="issue, revoke and list bearer tokens", description=__doc__,
                             epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    issue = actions.add_parser("issue", help="issue another token for a principal and print it once",
                               description="issue another token for a principal (e.g. to rotate one: issue, switch, "
                                           "then revoke the old one) and print it once", epilog=EPILOG)
    issue.add_argument("--principal", required=True, metavar="principals/ID", help="whom the token authenticates")
    issue.add_argument("--lifetime", type=lifetime, help="how long it works, e.g. 90d; default: no expiry")
    issue.set_defaults(handler=lambda a: _issue(client(a), a.principal, a.lifetime))
    revoke = actions.add_parser("revoke", help="revoke one token, or every token of a principal",
                                description="revoke a token (tokens/ID) or, with --principal, every token of a principal; "
                                            "the token fails on its next call on every server replica", epilog=EPILOG)
    target = revoke.add_mutually_exclusive_group(required=True)
    # dest is not "token": that is the caller's own bearer token (--token)
    target.add_argument("token_name", nargs="?", metavar="tokens/ID", help="the token to revoke (from `cleanroom admin token list`)")
    target.add_argument("--principal", metavar="principals/ID", help="revoke every token of this principal")
    revoke.set_defaults(handler=lambda a: _revoke(client(a), a.token_name, a.principal))
    listing = actions.add_parser("list", help="list tokens: made, expires, revoked (never the token)", epilog=EPILOG)
    listing.add_argument("--principal", default="", metavar="principals/ID", help="only this principal's tokens")
    listing.set_defaults(handler=lambda a: _list(client(a), a.principal))


def _when(message: identity_pb2.Token, field: Literal["create_time", "expire_time", "revoke_time"], otherwise: str) -> str:
    return getattr(message, field).ToJsonString() if message.HasField(field) else otherwise


def _issue(client: Client, principal: str, life: timedelta | None) -> int:
    issued = client.issue_token(principal, lifetime=life)
    print(f"issued {issued.token.name} for {issued.token.principal}, expires {_when(issued.token, 'expire_time', 'never')}")
    print(f"token: {issued.bearer_token}")
    return 0


def _revoke(client: Client, token: str | None, principal: str | None) -> int:
    revoked = [client.revoke_token(token)] if token else client.revoke_tokens_of(principal or "")
    for record in revoked:
        print(f"revoked {record.name} ({record.principal}) at {_when(record, 'revoke_time', '?')}")
    if not revoked:
        print(f"{principal} had no working token to revoke")
    return 0


def _list(client: Client, principal: str) -> int:
    rows = [(t.name, t.principal, _when(t, "create_time", ""), _when(t, "expire_time", "never"), _when(t, "revoke_time", "-"),
             t.created_by) for t in client.list_tokens(principal)]
    print(render.table(("name", "principal", "created", "expires", "revoked", "issued by"), rows))
    return 0
