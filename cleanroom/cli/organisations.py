"""`cleanroom admin organisation …`: hospitals and manufacturers (admin role).

Every principal belongs to an organisation. A hospital's data owners see its datasets only, its
privacy officers and auditors govern them only; the operator organisation's officers and auditors
act platform-wide. `cleanroom admin principal create --organisation organisations/{id}` puts a new
principal in an existing organisation; without it a data owner or manufacturer gets one of its own.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cleanroom.cli import render
from cleanroom.sdk import Client
from cleanroom.sdk.client import ORGANISATION_KINDS
from cleanroom.v1 import identity_pb2

ClientFactory = Callable[[argparse.Namespace], Client]
EPILOG = ("A data owner belongs to a hospital, a manufacturer to a manufacturer organisation, an admin to the "
          "operator; a privacy officer or auditor to a hospital (its datasets only) or to the operator (every dataset).")


def kind_name(kind: int) -> str:
    return identity_pb2.OrganisationKind.Name(kind).removeprefix("ORGANISATION_KIND_").lower()  # type: ignore[arg-type]


def register(admin: argparse._SubParsersAction[argparse.ArgumentParser], client: ClientFactory) -> None:
    organisation = admin.add_parser("organisation", help="create and list organisations (hospitals, manufacturers)",
                                    description="every principal belongs to an organisation; a hospital's officers and auditors "
                                                "govern its datasets only, the operator's every dataset", epilog=EPILOG)
    actions = organisation.add_subparsers(dest="organisation_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a hospital or manufacturer organisation",
                                description="create a hospital or manufacturer organisation; then create its principals "
                                            "with `cleanroom admin principal create --organisation NAME`", epilog=EPILOG)
    create.add_argument("--name", required=True, help="display name, e.g. 'Seoul General Hospital'")
    create.add_argument("--kind", required=True, choices=sorted(ORGANISATION_KINDS), help="what the organisation is")
    create.set_defaults(handler=lambda a: _create(client(a), a.name, a.kind))
    listing = actions.add_parser("list", help="list organisations (the operator included)")
    listing.set_defaults(handler=lambda a: _list(client(a)))


def _create(client: Client, name: str, kind: str) -> int:
    created = client.create_organisation(name, kind)
    print(f"created {created.name} ({kind_name(created.kind)}): {created.display_name}")
    return 0


def _list(client: Client) -> int:
    rows = [(o.name, o.display_name, kind_name(o.kind)) for o in client.list_organisations()]
    print(render.table(("name", "display name", "kind"), rows))
    return 0
