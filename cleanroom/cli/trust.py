"""`cleanroom trust …`: the attestation root a verifier pins, and the checks behind every --root-pem.

Also the statistics side of receipts on the command line: saving an answer with its receipt and
verifying it later (`cleanroom stats verify`), so an auditor can check what a manufacturer got.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from google.protobuf import json_format

import enclave_sim
from cleanroom.sdk import Client
from cleanroom.sdk.stats import verify_answer
from cleanroom.v1 import models_pb2, stats_pb2

ClientFactory = Callable[[argparse.Namespace], Client]
PIN_ADVICE = """which one to pin: prefer `trust export`, run by the server's operator on the server host and
handed to you out of band (a file you receive another way, or its fingerprint read to you).
`trust show` asks the very server whose receipts you then check: a compromised or impersonated
server would answer with a root of its own and its forged receipts would verify. Use
`trust show --pem` for a first pin only, and compare its fingerprint with the operator's.

examples:
  cleanroom trust export --state-dir /var/lib/cleanroom/state > root.pem   # operator, on the server host
  cleanroom trust show                                                 # fingerprint, simulated flag, measurements
  cleanroom trust show --pem > root.pem
  cleanroom stats mean datasets/d1 --column mean_radius --bounds 0 40 --epsilon 0.5 --root-pem root.pem --save answer.json
  cleanroom stats verify answer.json --root-pem root.pem
  cleanroom job download jobs/j1 --package my-model/ --root-pem root.pem --to out/"""


class TrustError(Exception):
    """A one-line, caller-facing refusal of the trust commands; `exit_code` says which kind."""

    exit_code = 1


class PinnedRootError(TrustError):
    """A --root-pem file that is not a root public key: refused before anything is spent or downloaded."""

    exit_code = 2


# --- the pinned root -----------------------------------------------------------------------------


def read_pinned_root(path: str) -> bytes:
    """The PEM bytes of `path`, once they are known to hold an Ed25519 public key."""
    try:
        pem = Path(path).read_bytes()
    except OSError as error:
        raise PinnedRootError(f"--root-pem {path}: cannot read it ({error.strerror or type(error).__name__})") from None
    try:
        enclave_sim.load_public_key_pem(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise PinnedRootError(_not_a_root(path, pem)) from None
    return pem


def _not_a_root(path: str, pem: bytes) -> str:
    if b"PRIVATE KEY-----" in pem:
        return (f"--root-pem {path} holds a PRIVATE key; pin the root's public key instead "
                "(`cleanroom trust export` on the server host, or `cleanroom trust show --pem`) and keep the private key secret")
    return f"--root-pem {path} is not an Ed25519 public key in PEM form; get one with `cleanroom trust show --pem`"


def exported_root(state_dir: Path) -> enclave_sim.RootAuthority:
    """The server's root, read from its state directory (never created: a wrong directory is an error)."""
    from cleanroom.attestation.enclave import root_directory

    try:
        return enclave_sim.RootAuthority.load(root_directory(state_dir))
    except FileNotFoundError:
        raise TrustError(f"no attestation root under {state_dir}: is it the server's --state-dir, "
                         "and has the server started there once?") from None
    except (enclave_sim.EnclaveSimError, ValueError) as error:
        raise TrustError(f"the attestation root under {state_dir} cannot be used: {error}") from None


# --- commands ------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], client: ClientFactory) -> None:
    trust = sub.add_parser("trust", help="the attestation root and allowed measurements that receipts verify against",
                           description="The attestation root public key (and allowed measurements) every receipt is checked against.",
                           epilog=PIN_ADVICE, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = trust.add_subparsers(dest="trust_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="the server's trust bundle, over the API (any role)", epilog=PIN_ADVICE,
                              description="The trust bundle the server publishes: root fingerprint, simulated flag, allowed measurements.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    output = show.add_mutually_exclusive_group()
    output.add_argument("--pem", action="store_true", help="print only the root public key (PEM), e.g. `> root.pem`")
    output.add_argument("--json", action="store_true", help="print the whole bundle as JSON")
    show.set_defaults(handler=lambda a: _show(client(a).trust_bundle(), a))
    export = actions.add_parser("export", help="the root public key from the server's state directory (operator; no server needed)",
                                description="Print the attestation root's public key (PEM) from the state directory, "
                                            "for handing to verifiers out of band.",
                                epilog=PIN_ADVICE, formatter_class=argparse.RawDescriptionHelpFormatter)
    export.add_argument("--state-dir", default=os.environ.get("CLEANROOM_STATE_DIR", ".state"),
                        help="the server's state directory (default: $CLEANROOM_STATE_DIR or .state)")
    export.set_defaults(handler=_export)


def _show(bundle: models_pb2.TrustBundle, args: argparse.Namespace) -> int:
    if args.pem:
        print(bundle.root_public_key_pem, end="")
    elif args.json:
        print(json_format.MessageToJson(bundle, preserving_proto_field_name=True))
    else:
        print(render_bundle(bundle))
    return 0


def render_bundle(bundle: models_pb2.TrustBundle) -> str:
    simulated = "yes: the root and attestation keys are files on the server host (see the README)" if bundle.simulated else "no"
    lines = [f"root fingerprint      {bundle.root_fingerprint}  (sha256 of the raw Ed25519 key)",
             f"simulated             {simulated}"]
    measurements = list(bundle.allowed_measurements) or ["(none)"]
    lines += [f"{'allowed measurements' if i == 0 else '':<22}{m}" for i, m in enumerate(measurements)]
    return "\n".join(lines)


def _export(args: argparse.Namespace) -> int:
    root = exported_root(Path(args.state_dir).expanduser())
    print(root.public_key_pem().decode("ascii"), end="")
    print(f"root fingerprint {root.fingerprint} (the verifier compares it with `cleanroom trust show`)", file=sys.stderr)
    return 0


# --- statistics answers and their receipts -------------------------------------------------------


def save_answer(answer: stats_pb2.QueryAnswer, path: str) -> None:
    """The answer as protobuf JSON: cells, ε and δ readable, the signed bytes and receipt in base64."""
    Path(path).write_text(json_format.MessageToJson(answer, preserving_proto_field_name=True) + "\n")


def load_answer(path: str) -> stats_pb2.QueryAnswer:
    text = Path(path).read_text()
    try:
        return json_format.Parse(text, stats_pb2.QueryAnswer())
    except json_format.ParseError:
        raise enclave_sim.VerificationError(enclave_sim.Reason.MALFORMED,
                                            f"{path} is not a statistics answer saved by `cleanroom stats … --save`") from None


def verify_statistics(answer: stats_pb2.QueryAnswer, pinned_root: bytes, measurements: Iterable[str]) -> str:
    """Raises enclave_sim.VerificationError; on success, the line that says what was checked."""
    if not answer.receipt:
        raise enclave_sim.VerificationError(enclave_sim.Reason.MALFORMED, "the answer carries no receipt")
    verified = verify_answer(answer, pinned_root_pem=pinned_root, allowed_measurements=measurements)
    simulated = " (simulated attestation)" if verified.report.simulated else ""
    return (f"receipt verified{simulated}: chains to the pinned root {verified.root_fingerprint[:16]}…, allowed measurement, "
            f"the statistics workload of {answer.dataset}, the signed answer and its ε {answer.epsilon:g}")


def add_verify_command(kinds: argparse._SubParsersAction[argparse.ArgumentParser], client: ClientFactory,
                       render_answer: Callable[..., str]) -> None:
    verify = kinds.add_parser("verify", help="verify a saved answer's receipt against the root you pinned (auditors too)",
                              description="Verify an answer saved with `cleanroom stats … --save FILE`, then print it.",
                              epilog=PIN_ADVICE, formatter_class=argparse.RawDescriptionHelpFormatter)
    verify.add_argument("file", help="the saved answer (JSON)")
    verify.add_argument("--root-pem", required=True, help="the attestation root public key you pinned (PEM file)")
    verify.add_argument("--measurement", action="append", default=[], metavar="HEX",
                        help="an allowed measurement (repeatable); without it the server's published list is fetched")
    verify.set_defaults(handler=lambda a: _verify_saved(a, client, render_answer))


def _verify_saved(args: argparse.Namespace, client: ClientFactory, render_answer: Callable[..., str]) -> int:
    pinned = read_pinned_root(args.root_pem)
    answer = load_answer(args.file)
    measurements = args.measurement or list(client(args).trust_bundle().allowed_measurements)
    verdict = verify_statistics(answer, pinned, measurements)
    print(render_answer(answer, receipt_hint=False))
    print(verdict)
    return 0
