"""`cleanroom privacy …` and `cleanroom audit …`: the privacy officer's and the auditor's commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from cleanroom.cli import render
from cleanroom.sdk import Client, audit_export
from cleanroom.v1 import privacy_pb2

ClientFactory = Callable[[argparse.Namespace], Client]


def _amount_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epsilon", type=float, required=True, help="ε (privacy loss), e.g. 3")
    parser.add_argument("--delta", type=float, required=True, help="δ, e.g. 1e-6; keep it well below 1/patients")


def _reason(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", required=True, help="why; recorded in the ledger and the audit log")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], client: ClientFactory) -> None:
    privacy = sub.add_parser("privacy", help="budgets, shares, approvals and the ledger (privacy officer)")
    actions = privacy.add_subparsers(dest="privacy_command", required=True, metavar="ACTION")

    share = _command(actions, "share", "share a dataset with a manufacturer and set that pair's cap",
                     lambda a: print(render.budget_table(client(a).share_dataset(a.dataset, a.manufacturer, epsilon=a.epsilon, delta=a.delta, reason=a.reason))))
    share.add_argument("dataset", help="datasets/{id}")
    share.add_argument("manufacturer", help="principals/{id}")
    _amount_options(share)
    _reason(share)

    budget = _command(actions, "budget", "set a cap (the whole dataset, or one manufacturer's share)",
                      lambda a: print(render.budget_table(client(a).set_budget(a.dataset, manufacturer=a.manufacturer or "", epsilon=a.epsilon, delta=a.delta, reason=a.reason))))
    budget.add_argument("dataset", help="datasets/{id}")
    budget.add_argument("--manufacturer", help="principals/{id}; omit for the dataset-wide cap")
    _amount_options(budget)
    _reason(budget)

    show = _command(actions, "show", "budgets of a dataset with what remains, as bars",
                    lambda a: print(render.budget_table(client(a).get_budgets(a.dataset))))
    show.add_argument("dataset", help="datasets/{id}")

    policy = _command(actions, "policy", "set a dataset's approval policy", _set_policy(client))
    policy.add_argument("dataset", help="datasets/{id}")
    policy.add_argument("--max-epsilon", type=float, required=True, help="largest ε one request may spend")
    policy.add_argument("--max-delta", type=float, default=0.0, help="largest δ per request (default 1/(10 x patients))")
    policy.add_argument("--auto-approve-epsilon", type=float, default=0.0, help="requests up to this ε skip the queue (0: none)")
    policy.add_argument("--stats-rows-per-patient", type=int, default=0,
                        help="statistics: most rows one patient contributes when a query does not say (default 1)")
    policy.add_argument("--require-privacy-audit", action="store_true",
                        help="training jobs release weights only after a one-run privacy audit (canaries in the "
                             "released run) finds no more leakage than the claimed ε; a failed audit fails the job")
    policy.add_argument("--approvals-required", type=int, default=0, choices=[0, 1, 2],
                        help="2: a request above the auto-approve line needs two different officers' approvals (default 1)")
    _reason(policy)

    for verb, state, what in (("pause", "paused", "pause a share: no new reservations; work already reserved runs on"),
                              ("resume", "active", "resume a paused share"),
                              ("withdraw", "withdrawn", "withdraw a share for good: the manufacturer no longer sees the dataset")):
        change = _command(actions, verb, what, _share_state(client, state))
        change.add_argument("dataset", help="datasets/{id}")
        change.add_argument("manufacturer", help="principals/{id}")
        _reason(change)

    estimate = _command(actions, "estimate", "dry run: cost, policy decision and what would remain", _estimate(client))
    estimate.add_argument("dataset", help="datasets/{id}")
    estimate.add_argument("--manufacturer", default="", help="principals/{id} (officers); manufacturers ask for themselves")
    _amount_options(estimate)

    ledger = _command(actions, "ledger", "ledger events, oldest first", _ledger(client))
    ledger.add_argument("--dataset", default="", help="only this dataset")
    ledger.add_argument("--manufacturer", default="", help="only this manufacturer")
    ledger.add_argument("--kind", default="", choices=["", "cap", "reserve", "commit", "refund"], help="only this kind")

    _command(actions, "pending", "requests waiting for approval, with cost and remaining budget", _pending(client))
    for verb in ("approve", "reject"):
        decide = _command(actions, verb, f"{verb} a pending request", _decide(client, verb))
        decide.add_argument("request", help="privacyRequests/{id}")
        _reason(decide)

    audit = sub.add_parser("audit", help="verify and export the tamper-evident audit log")
    audit_actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = _command(audit_actions, "verify", "check the hash chain; names the first bad entry", _verify(client))
    verify.add_argument("--anchor", default="", help="SEQ:HASH from an earlier verify, to catch a truncated log")
    export = _command(audit_actions, "export", "print the log as JSON lines (--signed: a signed export for a regulator)", _export(client))
    export.add_argument("--after", type=int, default=0, help="only entries after this seq")
    export.add_argument("--signed", action="store_true",
                        help="print one JSON document: your entries and the service's signature over them (see check-export)")
    check = _command(audit_actions, "check-export", "check a signed export against the root you pinned, every check explained",
                     lambda a: audit_export.main([a.export, a.root_pem]))
    check.add_argument("export", help="the file `audit export --signed` wrote")
    check.add_argument("--root-pem", required=True, help="the attestation root public key you pinned (PEM file)")


def _command(actions: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, handler: Callable[[argparse.Namespace], object]) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help, description=help)
    parser.set_defaults(handler=lambda a: handler(a) or 0)
    return parser


def _set_policy(client: ClientFactory) -> Callable[[argparse.Namespace], None]:
    def run(a: argparse.Namespace) -> None:
        p = client(a).set_approval_policy(a.dataset, max_epsilon=a.max_epsilon, max_delta=a.max_delta,
                                          auto_approve_epsilon=a.auto_approve_epsilon, reason=a.reason,
                                          stats_rows_per_patient=a.stats_rows_per_patient,
                                          require_privacy_audit=a.require_privacy_audit,
                                          approvals_required=a.approvals_required)
        audit = "; training weights released only after the one-run privacy audit" if p.require_privacy_audit else ""
        officers = "; two different officers approve what waits" if p.approvals_required > 1 else ""
        print(f"{p.dataset}: at most ε {p.max_epsilon_per_request:g}, δ {p.effective_max_delta:.2g} per request; "
              f"auto-approve up to ε {p.auto_approve_epsilon:g}; statistics bound {p.stats_rows_per_patient} row(s) per patient"
              f"{audit}{officers}")
    return run


def _share_state(client: ClientFactory, state: str) -> Callable[[argparse.Namespace], None]:
    def run(a: argparse.Namespace) -> None:
        report = client(a).set_share_state(a.dataset, a.manufacturer, state, reason=a.reason)
        print(render.budget_table(report))
        for b in report.budgets:
            if b.share_state:
                print(f"{b.name}: {b.share_state}" + (f" ({b.share_state_reason})" if b.share_state_reason else ""))
    return run


def _estimate(client: ClientFactory) -> Callable[[argparse.Namespace], None]:
    def run(a: argparse.Namespace) -> None:
        print(render.cost_estimate(client(a).estimate_cost(a.dataset, epsilon=a.epsilon, delta=a.delta, manufacturer=a.manufacturer)))
    return run


def _ledger(client: ClientFactory) -> Callable[[argparse.Namespace], None]:
    def run(a: argparse.Namespace) -> None:
        events = client(a).ledger(dataset=a.dataset, manufacturer=a.manufacturer, kind=a.kind)
        rows = [(e.seq, e.time.ToJsonString()[:19], e.kind, f"{e.amount.epsilon:g}", f"{e.amount.delta:.2g}",
                 e.budgets[-1] if e.budgets else "", e.mechanism or "-", e.reason or "-") for e in events]
        print(render.table(("seq", "time", "kind", "ε", "δ", "budget", "mechanism", "reason"), rows))
    return run


def _pending(client: ClientFactory) -> Callable[[argparse.Namespace], None]:
    def run(a: argparse.Namespace) -> None:
        rows: list[tuple[str, ...]] = []
        totals: list[privacy_pb2.PendingComposition] = []
        c, token = client(a), ""
        while True:
            page = c.pending_page(page_token=token)
            for r in page.requests:
                after = f"{min(b.remaining.epsilon for b in r.remaining_after):g}" if r.remaining_after else "does not fit"
                cohort = f"your part of {r.group}" if r.group else "-"  # other hospitals' parts are theirs to decide
                approvals = f"{len(r.approvals)}/{r.approvals_required}"
                rows.append((r.name, r.dataset, r.manufacturer, r.kind, f"{r.cost.epsilon:g}", after, approvals, cohort))
            totals.extend(page.compositions)
            if not page.next_page_token:
                break
            token = page.next_page_token
        print(render.table(("request", "dataset", "manufacturer", "kind", "ε", "ε left after", "approvals", "cohort"), rows))
        for composition in {t.dataset: t for t in totals}.values():  # each page repeats its datasets' composition
            left = min((b.remaining.epsilon for b in composition.remaining_after), default=0.0)
            unfit = f"; {len(composition.not_fitting)} would no longer fit" if composition.not_fitting else ""
            print(f"{composition.dataset}: approving all {len(composition.included)} pending leaves ε {left:g} on its tightest budget{unfit}")
    return run


def _decide(client: ClientFactory, verb: str) -> Callable[[argparse.Namespace], None]:
    def run(a: argparse.Namespace) -> None:
        c = client(a)
        decided = c.approve(a.request, a.reason) if verb == "approve" else c.reject(a.request, a.reason)
        print(f"{decided.name}: {decided.state}")
        if decided.state == "pending":
            print(f"approval {len(decided.approvals)} of {decided.approvals_required} recorded: a second officer must approve")
        elif decided.group and decided.state == "approved":
            print(f"part of the cohort request {decided.group}: its budget is reserved once every hospital's officers approve")
        elif decided.group:
            print(f"the whole cohort request {decided.group} is rejected: no hospital's budget was reserved")
    return run


def _verify(client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    def run(a: argparse.Namespace) -> int:
        seq, _, digest = a.anchor.partition(":")
        v = client(a).verify_audit_log(anchor_seq=int(seq or 0), anchor_hash=digest)
        if v.ok:
            print(f"audit log intact: {v.entries} entries; anchor for next time: {v.head_seq}:{v.head_hash}")
            return 0
        print(f"audit log BROKEN at entry {v.first_bad_seq}: {v.problem}", file=sys.stderr)
        return 3
    return run


def _export(client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    def run(a: argparse.Namespace) -> int:
        if a.signed and a.after:
            print("--signed covers every entry you may read; drop --after", file=sys.stderr)
            return 2
        if a.signed:
            sys.stdout.buffer.write(client(a).signed_audit_export())
            return 0
        for line in client(a).export_audit_log(a.after):
            print(line)
        return 0
    return run
