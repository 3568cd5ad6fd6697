"""The credential checks, each against two replicas (credentials_world.World), each one table row.

Every response and error a caller sees is kept in `world.texts` (the responses that show a token
once, by design, are kept without it), every bearer token issued in `world.tokens`: the secrets
scan at the end looks for the one in the other.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc

from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.v1 import identity_pb2
from proof.credentials_world import World

EXPIRY_POLLS = 600  # a bound by count: a call plus 0.1 s each, at least 60 s for a 1 s lifetime
NON_ADMINS = ("data_owner", "manufacturer", "privacy_officer", "auditor")


@dataclass
class Row:
    check: str
    done: str
    result: str
    passed: bool


def refusal(world: World, label: str, call: Callable[[], Any]) -> CleanroomClientError | None:
    """The call's error (kept in world.texts), or None when it was answered."""
    try:
        world.said(label, call())
    except CleanroomClientError as error:
        world.said(f"{label} (error)", f"{error}\n{error.reason}\n{error.violations!r}\n{error.retry_after!r}")
        return error
    return None


def _issue(world: World, admin: Client, principal: str, lifetime: timedelta | None = None,
           request_id: str | None = None) -> tuple[str, str]:
    """(the bearer token, its record's name)."""
    issued = admin.issue_token(principal, lifetime=lifetime, request_id=request_id)
    world.tokens.append(issued.bearer_token)
    world.said("IssueToken (its token left out: shown once, by design)", issued.token)
    return issued.bearer_token, issued.token.name


def _principal(world: World, admin: Client, role: str) -> tuple[str, str]:
    made = admin.create_principal(f"proof {role}", role)
    world.tokens.append(made.token)
    world.said("CreatePrincipal (its token left out: shown once, by design)", made.principal)
    return made.principal.name, made.token


def issue_and_use(world: World) -> Row:
    with Client(world.a, world.admin_token) as admin:
        maker, _ = _principal(world, admin, "manufacturer")
        first, _ = _issue(world, admin, maker, timedelta(hours=1), request_id="proof-issue")
        again, _ = _issue(world, admin, maker, timedelta(hours=1), request_id="proof-issue")
        listed = list(admin.list_tokens(maker))
        world.said("ListTokens", listed)
    works = []
    for address in (world.a, world.b):
        with Client(address, first) as holder:
            works.append(holder.whoami().name == maker)
    hidden = first not in str(listed)
    ok = first == again and all(works) and hidden and len(listed) == 2
    return Row("issue", "IssueToken on A (lifetime 1 h), retried with the same request_id; WhoAmI with it on A and on B; ListTokens",
               f"same token on the retry: {first == again}; accepted on A and B: {all(works)}; ListTokens shows "
               f"{len(listed)} records and never a token: {hidden}", ok)


def revocation(world: World, rounds: int) -> Row:
    """Each round: a fresh token, used on B (so B has checked it), revoked on A, then at once on B."""
    refused, misses = 0, []
    with Client(world.a, world.admin_token) as admin:
        owner, _ = _principal(world, admin, "data_owner")
        for n in range(rounds):
            token, name = _issue(world, admin, owner)
            with Client(world.b, token) as on_b:
                for _ in range(3):
                    on_b.whoami()
                world.said("RevokeToken", admin.revoke_token(name))
                error = refusal(world, "WhoAmI on B after revocation on A", on_b.whoami)
            if error is not None and error.code is grpc.StatusCode.UNAUTHENTICATED and "expired" not in error.message:
                refused += 1
            else:
                misses.append(n)
        gone = admin.revoke_tokens_of(owner)
        world.said("RevokeToken (every token of a principal)", gone)
    left = [t for t in _all(world, owner) if not t.HasField("revoke_time")]
    ok = refused == rounds and not left
    return Row("revocation on every replica", f"{rounds} times: IssueToken on A, 3 WhoAmI on B, RevokeToken on A, "
               "then the next WhoAmI on B; then every token of the principal revoked at once",
               f"{refused} of {rounds} refused on the very next call on B (UNAUTHENTICATED); tokens left working: {len(left)}", ok)


def _all(world: World, principal: str) -> list[identity_pb2.Token]:
    with Client(world.a, world.admin_token) as admin:
        tokens = list(admin.list_tokens(principal))
    world.said("ListTokens", tokens)
    return tokens


def expiry(world: World) -> Row:
    with Client(world.a, world.admin_token) as admin:
        maker, _ = _principal(world, admin, "manufacturer")
        started = time.monotonic()
        token, _ = _issue(world, admin, maker, timedelta(seconds=1))
    messages, took = [], 0.0
    for address in (world.b, world.a):
        with Client(address, token) as holder:
            for _ in range(EXPIRY_POLLS):
                error = refusal(world, "WhoAmI with a 1 s token", holder.whoami)
                if error is not None:
                    messages.append((error.code, error.message))
                    break
                time.sleep(0.1)
        took = took or time.monotonic() - started
    ok = len(messages) == 2 and all(code is grpc.StatusCode.UNAUTHENTICATED and "expired" in text for code, text in messages)
    said = messages[0][1] if messages else "(never refused)"
    return Row("expiry", "IssueToken with a lifetime of 1 s; WhoAmI on B, then on A, every 0.1 s until refused",
               f"refused on both, UNAUTHENTICATED, {took:.1f} s after issue on B; message: \"{said}\"", ok)


def lock_out(world: World) -> Row:
    with Client(world.a, world.admin_token) as admin:
        me = admin.whoami().name
        refused = refusal(world, "RevokeToken of the last admin's tokens", lambda: admin.revoke_tokens_of(me))
        replacement, name = _issue(world, admin, me)
    with Client(world.b, replacement) as admin:
        old = [t for t in admin.list_tokens(me) if not t.HasField("revoke_time") and t.name != name]
        revoked = [admin.revoke_token(t.name) for t in old]
        world.said("RevokeToken", revoked)
    with Client(world.a, world.admin_token) as stale:
        gone = refusal(world, "WhoAmI with the revoked admin token", stale.whoami)
    world.admin_token = replacement
    ok = refused is not None and refused.code is grpc.StatusCode.FAILED_PRECONDITION and gone is not None and len(revoked) == 1
    return Row("no lock-out", "the only admin revokes its own tokens; then issues a replacement and revokes the old one",
               f"first refused ({refused.code.name if refused else 'answered'}); with a replacement the old token was revoked and then "
               f"refused ({gone.code.name if gone else 'answered'})", ok)


def roles(world: World) -> Row:
    refused, calls = 0, 0
    with Client(world.a, world.admin_token) as admin:
        made = [_principal(world, admin, role) for role in NON_ADMINS]
    for name, token in made:
        with Client(world.b, token) as other:
            for label, call in (("IssueToken", lambda: other.issue_token(name)), ("RevokeToken", lambda: other.revoke_tokens_of(name)),  # noqa: B023
                                ("ListTokens", lambda: list(other.list_tokens()))):  # noqa: B023
                calls += 1
                error = refusal(world, f"{label} by a non-admin", call)
                refused += error is not None and error.code is grpc.StatusCode.PERMISSION_DENIED
    return Row("only admins", f"IssueToken, RevokeToken and ListTokens by a {', '.join(NON_ADMINS)} on B",
               f"{refused} of {calls} PERMISSION_DENIED", refused == calls)


def bad_input(world: World) -> Row:
    from google.protobuf.duration_pb2 import Duration

    cases = [("negative lifetime", identity_pb2.IssueTokenRequest(request_id="p1", principal="principals/pany", lifetime=Duration(seconds=-1)),
              grpc.StatusCode.INVALID_ARGUMENT, ["lifetime"]),
             ("unknown token", identity_pb2.RevokeTokenRequest(request_id="p2", token="tokens/tnosuchtoken"), grpc.StatusCode.NOT_FOUND, []),
             ("not a token name", identity_pb2.RevokeTokenRequest(request_id="p3", token="datasets/d1"), grpc.StatusCode.INVALID_ARGUMENT, ["token"]),
             ("unknown principal", identity_pb2.IssueTokenRequest(request_id="p4", principal="principals/pnobody"), grpc.StatusCode.NOT_FOUND, [])]
    results = []
    with Client(world.a, world.admin_token) as admin:
        for label, request, code, fields in cases:
            method = admin.admin.IssueToken if isinstance(request, identity_pb2.IssueTokenRequest) else admin.admin.RevokeToken
            error = refusal(world, label, lambda: admin._call(method, request))  # noqa: B023
            results.append(error is not None and error.code is code and [v.field for v in error.violations] == fields)
    described = "; ".join(f"{c[0]}: {c[2].name}{' on ' + c[3][0] if c[3] else ''}" for c in cases)
    return Row("bad input", "IssueToken and RevokeToken with " + ", ".join(c[0] for c in cases),
               f"{sum(results)} of {len(cases)} as expected ({described})", all(results))


def rate_limit(world: World) -> Row:
    """On B, which has seen no failure yet: successes first (they never count), then failures."""
    with Client(world.b, world.admin_token) as admin, Client(world.b, "crt_proof-never-issued") as guesser, \
            Client(world.a, world.admin_token) as on_a:
        for _ in range(2 * world.limit):
            admin.whoami()
        failures = 0
        for _ in range(world.limit + 1):
            error = refusal(world, "WhoAmI with an unknown token", guesser.whoami)
            if error is None or error.code is not grpc.StatusCode.UNAUTHENTICATED:
                break
            failures += 1
        blocked = refusal(world, "WhoAmI with a valid token from a blocked address", admin.whoami)
        a_answers = on_a.whoami().name.startswith("principals/")
        delay = blocked.retry_after if blocked is not None and blocked.retry_after is not None else -1.0
        world.advance(delay + 0.5)
        after = refusal(world, "WhoAmI after the window", admin.whoami)
    ok = (failures == world.limit and blocked is not None and blocked.code is grpc.StatusCode.RESOURCE_EXHAUSTED
          and blocked.reason == "AUTH_RATE_LIMITED" and 0 < delay <= world.window and a_answers and after is None)
    return Row("failed-authentication limit", f"on B (limit {world.limit} per {world.window:g} s): {2 * world.limit} successful "
               "calls, then unknown tokens until refused, then a valid token; A meanwhile; then the window passes",
               f"{failures} failures answered UNAUTHENTICATED, then RESOURCE_EXHAUSTED ({blocked.reason if blocked else '-'}) with "
               f"RetryInfo {delay:.1f} s, a valid token too; A unaffected: {a_answers}; after the window: "
               f"{'answered' if after is None else after.code.name}", ok)


def metrics(world: World) -> Row:
    from prometheus_client.parser import text_string_to_metric_families

    text = world.metrics_b()
    world.said("B's /metrics", text)
    values = {(s.name, s.labels.get("reason", "")): s.value for family in text_string_to_metric_families(text)
              for s in family.samples if s.name in ("cleanroom_auth_failures_total", "cleanroom_auth_rate_limited_total")}
    failures = {reason: int(v) for (name, reason), v in values.items() if name == "cleanroom_auth_failures_total"}
    limited = int(values.get(("cleanroom_auth_rate_limited_total", ""), 0))
    ok = failures.get("unknown", 0) >= world.limit and failures.get("revoked", 0) >= 1 and failures.get("expired", 0) >= 1 and limited >= 1
    return Row("metrics", "B's /metrics scraped after the checks",
               f"cleanroom_auth_failures_total by reason {failures}; cleanroom_auth_rate_limited_total {limited}", ok)


def check_cost(world: World, calls: int) -> Row:
    """What checking every call against the database (no cache) costs: WhoAmI round trips on A,
    and the check alone in this process on the same database."""
    from cleanroom.crypto import LocalKeyFileProvider
    from cleanroom.identity.keyring import KeyService
    from cleanroom.identity.tokens import TokenService
    from cleanroom.storage.db import Database, default_url

    latencies = []
    with Client(world.a, world.admin_token) as admin:
        admin.whoami()
        for _ in range(calls):
            started = time.perf_counter()
            admin.whoami()
            latencies.append(time.perf_counter() - started)
    db = Database(default_url(world.state))
    try:
        tokens = TokenService(db, KeyService(db, LocalKeyFileProvider(world.state)))
        tokens.check(world.admin_token)
        started = time.perf_counter()
        for _ in range(calls * 5):
            tokens.check(world.admin_token)
        per_check = (time.perf_counter() - started) / (calls * 5)
    finally:
        db.dispose()
    p50, p99 = statistics.median(latencies), statistics.quantiles(latencies, n=100)[98]
    return Row("cost of checking every call", f"{calls} WhoAmI on A one after another; {calls * 5} token checks in-process (SQLite)",
               f"one check {per_check * 1e6:.0f} µs; WhoAmI p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms", True)
