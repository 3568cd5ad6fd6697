"""What must hold after the load, each a Check that says what it found.

The ledger replays to the balances: every budget row in the state's database equals the fold of
the ledger's events (cleanroom.domain.privacy.replay, the same rule the service applies), and
after a clean stop no reservation is left open. Every statistics answer the clients received has
its `stats.answer` audit entry, and every released job its `job.released` one. The audit chain
verifies (VerifyAuditLog), the server answers its health check and WhoAmI, and it stops cleanly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cleanroom.domain.privacy import replay
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.storage import audit_repo, privacy_repo
from cleanroom.storage.db import Database, default_url


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def database_url(state: Path) -> str:
    return default_url(state)


def ledger_replays(url: str, *, after_stop: bool = True) -> Check:
    """Budgets vs the replayed event log, read in one consistent snapshot."""
    db = Database(url)
    try:
        with db.read() as session:
            balances, events = privacy_repo.all_balances(session), privacy_repo.events(session)
            open_spends = privacy_repo.open_spends(session) if after_stop else []
    finally:
        db.dispose()
    replayed = replay(events)
    differing = sorted(b for b in balances.keys() | replayed.keys() if balances.get(b) != replayed.get(b))
    name = "the ledger replays to the balances"
    if differing:
        return Check(name, False, f"{len(differing)} of {len(balances)} budgets differ from the replay of {len(events)} "
                                  f"events (first: {differing[0]})")
    if open_spends:
        return Check(name, False, f"{len(open_spends)} reservations still open after a clean stop")
    return Check(name, True, f"{len(balances)} budgets equal the replay of {len(events)} ledger events; no reservation left open")


def audit_counts(url: str) -> tuple[int, set[str]]:
    """(stats.answer entries, targets of job.released entries) in the state's audit log."""
    db = Database(url)
    try:
        with db.read() as session:
            actions: Counter[str] = Counter()
            released: set[str] = set()
            for entry in audit_repo.entries(session):
                actions[entry.action] += 1
                if entry.action == "job.released":
                    released.add(entry.target)
    finally:
        db.dispose()
    return actions["stats.answer"], released


def answers_audited(answers: int, audited: int) -> Check:
    """Equal, not merely at least: an audited answer no client received would mean a lost reply."""
    name = "every statistics answer is audited"
    return Check(name, answers == audited, f"{answers} answers received, {audited} `stats.answer` audit entries")


def jobs_audited(jobs: dict[str, str], released_entries: set[str]) -> Check:
    released = {name for name, state in jobs.items() if state == "JOB_STATE_RELEASED"}
    missing, extra = released - released_entries, released_entries - released
    passed = not missing and not extra
    detail = f"{len(released)} jobs released, {len(released_entries)} `job.released` audit entries"
    if missing or extra:
        detail += f"; {len(missing)} released without an entry, {len(extra)} entries for no job the clients saw released"
    return Check("every released job is audited", passed, detail)


def jobs_released(jobs: dict[str, str]) -> Check:
    states = Counter(jobs.values())
    passed = bool(jobs) and set(states) == {"JOB_STATE_RELEASED"}
    detail = ", ".join(f"{count} {state.removeprefix('JOB_STATE_').lower()}" for state, count in sorted(states.items()))
    return Check("every submitted job released", passed, f"{len(jobs)} submitted: {detail or 'none'}")


def audit_chain(address: str, officer_token: str) -> Check:
    name = "the audit chain verifies (VerifyAuditLog)"
    try:
        with Client(address, officer_token, timeout=300) as officer:
            verdict = officer.verify_audit_log()
    except CleanroomClientError as error:
        return Check(name, False, f"VerifyAuditLog failed: {error.code.name}")
    detail = f"{verdict.entries} entries, head {verdict.head_seq}"
    return Check(name, verdict.ok, detail if verdict.ok else f"{detail}; first bad entry {verdict.first_bad_seq}: {verdict.problem}")


def healthy(address: str, token: str) -> Check:
    """The standard health check reports SERVING and an authenticated call still answers."""
    name = "the server is healthy after the load"
    with grpc.insecure_channel(address) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=60).status
        except grpc.RpcError as error:
            return Check(name, False, f"health check failed: {error.code().name}")
    try:
        with Client(address, token, timeout=60) as client:
            client.whoami()
    except CleanroomClientError as error:
        return Check(name, False, f"WhoAmI failed: {error.code.name}")
    serving = status == health_pb2.HealthCheckResponse.SERVING
    return Check(name, serving, f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}; WhoAmI answered")


def stopped_cleanly(exit_code: int) -> Check:
    return Check("the server stops cleanly (SIGTERM)", exit_code == 0, f"exit status {exit_code}")
