"""`cleanroom model …`: submit model packages and read their intake reports (manufacturer)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from google.protobuf import json_format

from cleanroom.cli import render
from cleanroom.sdk import Client
from cleanroom.v1 import models_pb2

ClientFactory = Callable[[argparse.Namespace], Client]


def intake_summary(version: models_pb2.ModelVersion) -> str:
    report = version.intake_report
    state = "ACCEPTED" if version.state == models_pb2.MODEL_STATE_ACCEPTED else "REJECTED"
    lines = [
        f"{version.name}  {version.display_name} {version.version}: {state}",
        f"  task              {version.task}, input {list(version.input_shape)}, classes {version.num_classes}",
        f"  package sha256    {version.package_sha256}",
        f"  sandbox           {report.sandbox_backend} ({report.sandbox_backend_reason}), {report.sandbox_seconds:.1f} s",
        f"  parameters        {report.parameter_count:,}; trainable"
        f"{f' ({report.trainable_parameter_count:,})' if report.trainable_parameter_count else ''}: {', '.join(report.trainable_parameters) or '-'}",
    ]
    lines += [f"  finding           {f.code}: {f.message}" for f in report.findings]
    if report.traceback:
        lines += ["  your traceback (intake sees no private data, so it is yours in full):", report.traceback]
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], client: ClientFactory) -> None:
    model = sub.add_parser("model", help="model packages: submit, list, show (manufacturer)")
    actions = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    submit = actions.add_parser("submit", help="pack a model package directory and submit it to sandboxed intake",
                                description="pack a model package directory (cleanroom-model.toml, model.py, weights.safetensors) and submit it")
    submit.add_argument("directory", help="the package directory")
    submit.add_argument("--json", action="store_true", help="print the version as JSON")
    submit.set_defaults(handler=lambda a: _print(client(a).submit_model(a.directory), a.json))
    listing = actions.add_parser("list", help="your model versions")
    listing.set_defaults(handler=lambda a: _list(client(a)))
    show = actions.add_parser("show", help="a model version and its intake report")
    show.add_argument("model", help="models/{id}")
    show.add_argument("--json", action="store_true", help="print as JSON")
    show.set_defaults(handler=lambda a: _print(client(a).get_model(a.model), a.json))


def _print(version: models_pb2.ModelVersion, as_json: bool) -> int:
    print(json_format.MessageToJson(version, preserving_proto_field_name=True) if as_json else intake_summary(version))
    return 0 if version.state == models_pb2.MODEL_STATE_ACCEPTED else 4


def _list(client: Client) -> int:
    rows = [(m.name, m.display_name, m.version, "accepted" if m.state == models_pb2.MODEL_STATE_ACCEPTED else "rejected",
             m.package_sha256[:16]) for m in client.list_models()]
    print(render.table(("name", "model", "version", "state", "package sha256"), rows), file=sys.stdout)
    return 0
