"""`cleanroom`: run the server, manage principals and datasets. A thin layer over cleanroom.sdk."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from google.protobuf import json_format

import enclave_sim
from cleanroom.cli import console as cli_console
from cleanroom.cli import console_logins as cli_console_logins
from cleanroom.cli import jobs as cli_jobs
from cleanroom.cli import models as cli_models
from cleanroom.cli import organisations as cli_organisations
from cleanroom.cli import privacy as cli_privacy
from cleanroom.cli import releases as cli_releases
from cleanroom.cli import render
from cleanroom.cli import stats as cli_stats
from cleanroom.cli import streams as cli_streams
from cleanroom.cli import tokens as cli_tokens
from cleanroom.cli import trust as cli_trust
from cleanroom.sdk import CleanroomClientError, Client, load_schema
from cleanroom.sdk.client import ROLES
from cleanroom.sdk.schema import SchemaError

EPILOG = """environment: CLEANROOM_SERVER (host:port), CLEANROOM_TOKEN (bearer token),
CLEANROOM_TLS_CA, CLEANROOM_CLIENT_CERT, CLEANROOM_CLIENT_KEY. Server settings: see `cleanroom serve --help`."""


def _client(args: argparse.Namespace) -> Client:
    return Client(args.server, args.token, tls_ca=args.tls_ca, client_cert=args.client_cert, client_key=args.client_key)


def _print_json(message: object) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True))  # type: ignore[arg-type]


# --- commands ----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from cleanroom.api.server import serve_forever
    from cleanroom.server.serve import run_server

    return run_server(args, os.environ, serve=serve_forever)


def cmd_doctor(args: argparse.Namespace) -> int:
    from cleanroom.server.config import build_config
    from cleanroom.server.selfcheck import run_checks

    checks = run_checks(build_config(args, os.environ))
    print(render.table(("check", "status", "detail"), [(c.name, c.status, c.detail) for c in checks]))
    failed = [c.name for c in checks if c.required and not c.ok]
    if failed:
        print(f"\n`cleanroom serve` would refuse to start: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from cleanroom.server.serve import bootstrap_admin
    from cleanroom.storage.identity import StorageIdentityError

    try:
        token = bootstrap_admin(args, os.environ, args.name)
    except StorageIdentityError as refused:
        print(f"cleanroom admin bootstrap: refusing: storage identity: {refused}", file=sys.stderr)
        return 2
    print(token)
    print("Keep this admin token secret; it is not stored and cannot be shown again.", file=sys.stderr)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from cleanroom.server.serve import collect_garbage

    return collect_garbage(args, os.environ, delete=args.yes, min_age_s=args.min_age)


def cmd_whoami(args: argparse.Namespace) -> int:
    me = _client(args).whoami()
    print(f"{me.name}  {me.display_name}  ({render.role_name(me.role)})  {me.organisation}")
    return 0


def cmd_principal_create(args: argparse.Namespace) -> int:
    response = _client(args).create_principal(args.name, args.role, organisation=args.organisation or "",
                                              token_lifetime=args.token_lifetime)
    print(f"created {response.principal.name} ({args.role}) in {response.principal.organisation}")
    print(f"token: {response.token}")
    return 0


def cmd_principal_list(args: argparse.Namespace) -> int:
    rows = [(p.name, p.display_name, render.role_name(p.role), p.organisation) for p in _client(args).list_principals()]
    print(render.table(("name", "display name", "role", "organisation"), rows))
    return 0


def cmd_rotate_keys(args: argparse.Namespace) -> int:
    response = _client(args).rotate_keys()
    print(f"new key-encryption key {response.key_id}; {response.rewrapped_data_keys} keys re-wrapped")
    return 0


def cmd_dataset_upload(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    schema = load_schema(args.schema)
    stream = cli_streams.upload_stream(args, schema)
    size = os.path.getsize(args.file)
    with tqdm(total=size, unit="B", unit_scale=True, desc="upload", disable=args.quiet, file=sys.stderr) as bar:
        dataset = _client(args).upload_dataset(
            args.file, schema, display_name=args.name, description=args.description,
            progress=lambda sent, _total: bar.update(sent - bar.n), linkage_column=args.linkage_column, stream=stream,
        )
    _print_json(dataset) if args.json else print(render.intake_report(dataset))
    return 0


def cmd_dataset_list(args: argparse.Namespace) -> int:
    rows = [(d.name, d.display_name, f"{d.row_count:,}", f"{d.patient_count:,}", d.create_time.ToJsonString()) for d in _client(args).list_datasets()]
    print(render.table(("name", "display name", "rows", "patients", "created"), rows))
    return 0


def cmd_dataset_show(args: argparse.Namespace) -> int:
    dataset = _client(args).get_dataset(args.dataset)
    if args.json:
        _print_json(dataset)
        return 0
    if dataset.HasField("intake_report"):
        print(render.intake_report(dataset))
        print()
    print(render.columns_table(dataset))
    if dataset.HasField("stream"):
        print()
        print(render.stream_description(dataset))
    return 0


def cmd_dataset_delete(args: argparse.Namespace) -> int:
    if not args.yes:
        print(f"Deleting {args.dataset} destroys its key; the data cannot be recovered. Re-run with --yes.", file=sys.stderr)
        return 2
    print(f"deleted {_client(args).delete_dataset(args.dataset).name}")
    return 0


# --- parser ------------------------------------------------------------------------------------


def _add(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(handler=handler)
    return parser


def _client_options(parser: argparse.ArgumentParser, env: dict[str, str]) -> None:
    parser.add_argument("--server", default=env.get("CLEANROOM_SERVER", "localhost:50051"), help="server address (host:port)")
    parser.add_argument("--token", default=env.get("CLEANROOM_TOKEN"), help="bearer token of the principal you act as")
    parser.add_argument("--tls-ca", default=env.get("CLEANROOM_TLS_CA"), help="PEM CA that signed the server certificate")
    parser.add_argument("--client-cert", default=env.get("CLEANROOM_CLIENT_CERT"), help="PEM client certificate (mutual TLS)")
    parser.add_argument("--client-key", default=env.get("CLEANROOM_CLIENT_KEY"), help="PEM client key (mutual TLS)")


def build_parser(env: dict[str, str]) -> argparse.ArgumentParser:
    from cleanroom.server.config import add_arguments

    parser = argparse.ArgumentParser(prog="cleanroom", description=__doc__, epilog=EPILOG)
    _client_options(parser, env)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _add(sub, "serve", cmd_serve, "run the clean-room gRPC server (after the checks `doctor` prints; refuses to start if a required one fails)")
    add_arguments(serve)
    doctor = _add(sub, "doctor", cmd_doctor, "check this host for `serve` with the same settings: sandbox backends for each "
                  "workload, cgroups, database and migrations, storage identity, key file permissions, metrics port (exit 1 if serve would refuse)")
    add_arguments(doctor)

    admin = sub.add_parser("admin", help="principals and keys (admin role)").add_subparsers(dest="admin", required=True, metavar="ACTION")
    bootstrap = _add(admin, "bootstrap", cmd_bootstrap, "create the first admin directly in the state directory (run on the server host)")
    add_arguments(bootstrap)
    bootstrap.add_argument("--name", default="admin", help="display name of the admin")
    principal = admin.add_parser("principal", help="create and list principals").add_subparsers(dest="principal", required=True, metavar="ACTION")
    create = _add(principal, "create", cmd_principal_create, "create a principal and print its token once")
    create.add_argument("--name", required=True, help="display name, e.g. 'Seoul General data team'")
    create.add_argument("--role", required=True, choices=sorted(ROLES), help="what the principal may do")
    create.add_argument("--organisation", metavar="organisations/ID",
                        help="the organisation it belongs to (`cleanroom admin organisation list`); without it a data owner or "
                             "manufacturer gets a new organisation of its own, an officer, auditor or admin joins the operator "
                             "(platform-wide). " + cli_organisations.EPILOG)
    _add(principal, "list", cmd_principal_list, "list principals")
    create.add_argument("--token-lifetime", type=cli_tokens.lifetime, help="how long its first token works, e.g. 90d; default: no expiry")
    cli_organisations.register(admin, _client)
    cli_tokens.register(admin, _client)
    cli_console_logins.register(admin, _client)
    _add(admin, "rotate-keys", cmd_rotate_keys, "new key-encryption key; re-wrap every dataset key")
    gc = _add(admin, "gc", cmd_gc, "list blobs no dataset, model or job artefact references; remove them only with --yes "
              "(run on the server host; refuses if the database and blob store do not belong together)")
    add_arguments(gc)
    mode = gc.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="only list what --yes would remove")
    mode.add_argument("--yes", action="store_true", help="remove the unreferenced blobs (logged and audited)")
    gc.add_argument("--min-age", type=float, default=3600.0,
                    help="leave blobs younger than this many seconds (an upload in progress; default 3600)")

    _add(sub, "whoami", cmd_whoami, "show the principal your token belongs to")

    dataset = sub.add_parser("dataset", help="hospital datasets (data_owner role)").add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    upload = _add(dataset, "upload", cmd_dataset_upload, "de-identify, encrypt and store a CSV or Parquet file")
    upload.add_argument("file", help="the .csv or .parquet file")
    upload.add_argument("--schema", required=True, help="TOML or JSON file with column types, roles and generalisation rules")
    upload.add_argument("--name", help="display name (default: the file name)")
    upload.add_argument("--description", default="", help="free-text description")
    upload.add_argument("--linkage-column", metavar="COLUMN",
                        help="declare this schema column the linkage identifier (role linkage_id): replaced by the "
                             "platform-wide linkage pseudonym, so a person treated at several hospitals is one privacy unit")
    cli_streams.add_upload_flags(upload)
    upload.add_argument("--quiet", action="store_true", help="no progress bar")
    upload.add_argument("--json", action="store_true", help="print the dataset as JSON")
    _add(dataset, "list", cmd_dataset_list, "list the datasets you may see")
    show = _add(dataset, "show", cmd_dataset_show, "schema, counts and intake report of a dataset")
    show.add_argument("dataset", help="datasets/{id}")
    show.add_argument("--json", action="store_true", help="print as JSON")
    delete = _add(dataset, "delete", cmd_dataset_delete, "crypto-shred and remove a dataset")
    delete.add_argument("dataset", help="datasets/{id}")
    delete.add_argument("--yes", action="store_true", help="confirm: the data cannot be recovered")

    cli_console.register(sub)
    cli_privacy.register(sub, _client)
    cli_models.register(sub, _client)
    cli_jobs.register(sub, _client)
    cli_stats.register(sub, _client)
    cli_trust.register(sub, _client)
    cli_releases.register(sub, _client)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(dict(os.environ)).parse_args(argv)
    try:
        return int(args.handler(args))
    except CleanroomClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except cli_trust.TrustError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except (SchemaError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except enclave_sim.VerificationError as error:
        print(f"error: the receipt did NOT verify: {error}", file=sys.stderr)
        return 6


if __name__ == "__main__":
    raise SystemExit(main())
