"""`cleanroom releases list|show|verify`: what left the clean room, each release with its receipt.

Privacy officers and auditors see the releases over the datasets they govern, a manufacturer its
own. `verify` downloads every artefact from the store and checks it against the root you pinned
(see `cleanroom trust --help`): each check is printed with what it means; the exit status is 1
when any check fails.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cleanroom.cli import render
from cleanroom.cli.trust import PIN_ADVICE, read_pinned_root
from cleanroom.sdk import Client
from cleanroom.sdk.release_check import verified
from cleanroom.sdk.releases import KINDS, kind_name
from cleanroom.v1 import releases_pb2

ClientFactory = Callable[[argparse.Namespace], Client]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], client: ClientFactory) -> None:
    releases = sub.add_parser("releases", help="released jobs and statistics answers, with their receipts",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = releases.add_subparsers(dest="releases_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the releases you may see, oldest id first")
    listing.add_argument("--dataset", default="", metavar="datasets/ID", help="only releases over this dataset")
    listing.add_argument("--manufacturer", default="", metavar="principals/ID", help="only this manufacturer's releases")
    listing.add_argument("--kind", default="", choices=sorted(KINDS), help="only releases of this kind")
    listing.set_defaults(handler=lambda a: _list(client(a), a))
    show = actions.add_parser("show", help="one release: what it spent, its files, ledger events and audit entries")
    show.add_argument("name", metavar="releases/ID")
    show.set_defaults(handler=lambda a: _show(client(a).get_release(a.name)))
    verify = actions.add_parser("verify", help="check a release against the root you pinned, every check explained",
                                epilog=PIN_ADVICE, formatter_class=argparse.RawDescriptionHelpFormatter)
    verify.add_argument("name", metavar="releases/ID")
    verify.add_argument("--root-pem", required=True, help="the attestation root public key you pinned (PEM file)")
    verify.add_argument("--measurement", action="append", default=[], metavar="HEX",
                        help="an allowed measurement (repeatable); without it the server's published list is fetched")
    verify.set_defaults(handler=lambda a: _verify(client(a), a))


def _list(client: Client, args: argparse.Namespace) -> int:
    rows = [(r.name, kind_name(r.kind), ", ".join(r.datasets), r.manufacturer, r.released_at.ToJsonString(),
             f"{r.spent.epsilon:g}") for r in client.list_releases(dataset=args.dataset, manufacturer=args.manufacturer, kind=args.kind)]
    print(render.table(("release", "kind", "datasets", "manufacturer", "released", "ε"), rows) if rows else "no releases")
    return 0


def _show(release: releases_pb2.Release) -> int:
    lines = [f"release       {release.name}  ({kind_name(release.kind)}{': ' + release.summary if release.summary else ''})",
             f"source        {release.source}",
             f"datasets      {', '.join(release.datasets)}",
             f"manufacturer  {release.manufacturer}",
             f"released      {release.released_at.ToJsonString()}",
             f"spent         ε {release.spent.epsilon_exact}, δ {release.spent.delta_exact}",
             f"audit entries {', '.join(str(s) for s in release.audit_seqs) or '(none)'}",
             "", render.table(("file", "bytes", "sha256"), [(a.name, a.size_bytes, a.sha256) for a in release.artifacts])]
    if release.ledger_events:
        lines += ["", render.table(("ledger", "kind", "ε", "δ", "when"),
                                   [(e.seq, e.kind, e.amount.epsilon_exact, e.amount.delta_exact, e.time.ToJsonString())
                                    for e in release.ledger_events])]
    print("\n".join(lines))
    return 0


def _verify(client: Client, args: argparse.Namespace) -> int:
    pinned = read_pinned_root(args.root_pem)
    measurements = args.measurement or list(client.trust_bundle().allowed_measurements)
    checks = client.verify_release(args.name, pinned_root_pem=pinned, allowed_measurements=measurements)
    print(render.table(("check", "result", "why"), [(c.name, "passed" if c.passed else "FAILED", c.explanation) for c in checks]))
    ok = verified(checks)
    print(f"\n{args.name} {'verifies' if ok else 'does NOT verify'} against the pinned root")
    return 0 if ok else 1
