"""No secret in any output: run a real server through a session of every role, capture everything
it says, and look for every token and key in it, in every encoding a careless line might use.

    scan(texts, secrets)   each secret raw, hex (either case), base64 and base64url (padded and not,
                           and the groups it alone determines when it sits inside a longer encoded
                           stream), and for tokens their SHA-256 hex (what the tokens table stores)
    session_scan(work)     a real `cleanroom serve` (metrics on), every role, uploads, sharing, budgets,
                           policy, a statistics answer, a model submission, the ledger, estimates,
                           audit export, failed calls with wrong, garbage and near-miss tokens (raw
                           stubs: status details and trailing metadata kept), the CLI's output, a
                           /metrics scrape and the server's log; the secrets are read afterwards from
                           the state directory (every KEK, every service secret and dataset key
                           unwrapped in-process, the enclave's private keys) plus every token issued.
                           Returns (texts scanned, bytes scanned, findings).

No training job runs here: a job costs minutes of CPU, far past this part's budget in `make test`;
its outputs pass through the same servicers, log and metrics scanned here.

    .venv/bin/python proof/secrets_scan.py --help
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import socket
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MIN_SECRET_BYTES = 8   # shorter "secrets" would match by chance
MIN_CORE_CHARS = 12    # an encoded fragment shorter than this is not evidence


@dataclass(frozen=True)
class Secret:
    label: str
    value: bytes
    token: bool = False   # a bearer token: its SHA-256 hex is searched for as well


@dataclass(frozen=True)
class Finding:
    text: str       # which captured output
    secret: str     # which secret
    encoding: str   # how it appeared


def encodings(secret: Secret) -> dict[str, bytes]:
    """Every spelling of the secret searched for, by name."""
    value = secret.value
    found = {"raw": value, "hex": value.hex().encode(), "HEX": value.hex().upper().encode()}
    for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
        padded = encode(value)
        found[f"{name} padded"], found[name] = padded, padded.rstrip(b"=")
        # Inside a longer encoded stream the secret starts 0, 1 or 2 bytes into a 3-byte group: the
        # groups made of its bytes alone are what must not appear.
        for shift in (0, 1, 2):
            core = encode(value[shift:])[: (len(value) - shift) // 3 * 4]
            if len(core) >= MIN_CORE_CHARS:
                found[f"{name} at +{shift}"] = core
    if secret.token:
        digest = hashlib.sha256(value).hexdigest()
        found["sha256 hex"], found["SHA256 HEX"] = digest.encode(), digest.upper().encode()
    return found


def scan(texts: Mapping[str, bytes | str], secrets: Iterable[Secret]) -> list[Finding]:
    """Every (text, secret, encoding) where the secret appears; empty means clean."""
    needles = []
    for secret in secrets:
        if len(secret.value) < MIN_SECRET_BYTES:
            raise ValueError(f"secret {secret.label} is too short to scan for ({len(secret.value)} bytes)")
        needles += [(secret.label, name, spelled) for name, spelled in encodings(secret).items()]
    findings = []
    for label, text in texts.items():
        data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
        findings += [Finding(label, secret, name) for secret, name, spelled in needles if spelled in data]
    return findings


# --- the session ---------------------------------------------------------------------------------


@dataclass
class Capture:
    """Everything the server and the tools said, by label."""

    texts: dict[str, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, label: str, text: bytes | str) -> None:
        data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
        with self.lock:  # the model submission runs beside the rest of the session
            self.texts[f"{len(self.texts):03d} {label}"] = data

    def call(self, label: str, action: Callable[[], Any]) -> Any:
        """Run one SDK call: its response (every message of a stream) or its error, captured."""
        from cleanroom.sdk.errors import CleanroomClientError

        try:
            result = action()
            if hasattr(result, "__next__"):
                result = list(result)
            self.add(label, _render(result))
            return result
        except CleanroomClientError as error:
            self.add(f"{label} (error)", f"{error}\n{error.reason}\n{error.violations!r}\n{error.retry_after!r}")
            return None

    def raw(self, label: str, method: Any, request: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        """A raw stub call, so the status details and trailing metadata are seen as sent."""
        import grpc

        try:
            self.add(label, _render(method(request, metadata=metadata, timeout=30)))
        except grpc.RpcError as error:
            trailers = [f"{k}={v!r}" for k, v in (error.trailing_metadata() or ())]  # type: ignore[attr-defined]
            self.add(f"{label} (error)", f"{error.code()}\n{error.details()}\n{trailers}\n{error.debug_error_string()}")  # type: ignore[attr-defined]


def _render(result: Any) -> str:
    from google.protobuf import json_format
    from google.protobuf.message import Message

    items = result if isinstance(result, list) else [result]
    return "\n".join(json_format.MessageToJson(i) if isinstance(i, Message) else repr(i) for i in items)


@dataclass
class World:
    address: str
    admin: str
    tokens: dict[str, str]
    dataset: str = ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cli(*args: str) -> tuple[int, str, str]:
    """The `cleanroom` command in this process (its own code, without a second interpreter's
    start-up): (exit status, stdout, stderr)."""
    from cleanroom.cli.main import main as cleanroom

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cleanroom(list(args))
    return status, out.getvalue(), err.getvalue()


def _cli(capture: Capture, label: str, world: World, token: str, *args: str) -> None:
    _, out, err = cli("--server", world.address, "--token", token, *args)
    capture.add(f"cli {label} stdout", out)
    capture.add(f"cli {label} stderr", err)


def _principals(capture: Capture, world: World) -> None:
    from cleanroom.sdk import Client

    with Client(world.address, world.admin) as admin:
        capture.call("whoami admin", admin.whoami)
        for role in ("data_owner", "manufacturer", "privacy_officer", "auditor"):
            made = admin.create_principal(f"{role} one", role)  # its response delivers the token: not scanned
            world.tokens[role] = made.token
        capture.call("list principals", lambda: admin.list_principals())
        capture.call("list organisations", lambda: admin.list_organisations())


def _data(capture: Capture, world: World, work: Path) -> None:
    from cleanroom.cli import samples
    from cleanroom.sdk import Client
    from cleanroom.sdk.schema import Schema

    with Client(world.address, world.tokens["data_owner"]) as owner:
        uploaded = capture.call("upload", lambda: owner.upload_dataset(samples.write_breast_cancer_csv(work / "bc.csv"),
                                                                       Schema(samples.breast_cancer_schema(), 5)))
        world.dataset = uploaded.name
        capture.call("get dataset", lambda: owner.get_dataset(world.dataset))
        capture.call("list datasets", lambda: owner.list_datasets())
    with Client(world.address, world.tokens["privacy_officer"]) as office:
        capture.call("set budget", lambda: office.set_budget(world.dataset, epsilon=10, delta=1e-5, reason="total"))
        capture.call("share", lambda: office.share_dataset(world.dataset, _name(world, "manufacturer"), epsilon=5, delta=1e-5, reason="pilot"))
        capture.call("policy", lambda: office.set_approval_policy(world.dataset, max_epsilon=5, auto_approve_epsilon=5, reason="routine"))
        capture.call("budgets", lambda: office.get_budgets(world.dataset))
        maker = _name(world, "manufacturer")
        capture.call("estimate cost", lambda: office.estimate_cost(world.dataset, epsilon=1, delta=1e-6, manufacturer=maker))
        capture.call("pending", lambda: office.pending_requests())


def _name(world: World, role: str) -> str:
    from cleanroom.sdk import Client

    with Client(world.address, world.tokens[role]) as client:
        return str(client.whoami().name)


def _submit_model(capture: Capture, world: World, work: Path) -> None:
    """Phase A dominates the session's time: it runs beside the other calls."""
    import shutil

    from cleanroom.sdk import Client

    package = work / "mlp"
    shutil.copytree(ROOT / "tests" / "model_packages" / "mlp", package)
    with Client(world.address, world.tokens["manufacturer"]) as maker:
        model = capture.call("submit model", lambda: maker.submit_model(package))
        if model is not None:
            capture.call("get model", lambda: maker.get_model(model.name))
        capture.call("list models", lambda: maker.list_models())


def _manufacturer(capture: Capture, world: World) -> None:
    from cleanroom.sdk import Client
    from cleanroom.statistics.engine import Query

    with Client(world.address, world.tokens["manufacturer"]) as maker:
        count = Query(kind="count", epsilon=0.5)
        capture.call("estimate query", lambda: maker.estimate_query(world.dataset, count))
        capture.call("stats query", lambda: maker.run_query(world.dataset, count))
        capture.call("trust bundle", maker.trust_bundle)
        capture.call("ledger (maker)", lambda: maker.ledger())
    with Client(world.address, world.tokens["auditor"]) as auditor:
        capture.call("verify audit", auditor.verify_audit_log)
        capture.call("export audit", lambda: auditor.export_audit_log())
        capture.call("ledger (auditor)", lambda: auditor.ledger())


def _failures(capture: Capture, world: World) -> list[str]:
    """Wrong, garbage, near-miss and wrong-role tokens, and a bad argument; returns the near-miss
    tokens (each a real token with one character changed), which must not be echoed either."""
    import grpc

    from cleanroom.sdk import Client
    from cleanroom.v1 import identity_pb2, identity_pb2_grpc, privacy_pb2, privacy_pb2_grpc

    real = world.tokens["manufacturer"]
    near = real[:-1] + ("A" if real[-1] != "A" else "B")
    presented = {"near-miss": near, "garbage": "garbage token; DROP TABLE tokens", "wrong": "crt_" + "0" * 40, "empty": "", "admin's twin": world.admin[::-1]}
    with grpc.insecure_channel(world.address) as channel:
        identity, privacy = identity_pb2_grpc.IdentityServiceStub(channel), privacy_pb2_grpc.PrivacyServiceStub(channel)
        for label, token in presented.items():
            capture.raw(f"whoami with {label} token", identity.WhoAmI, identity_pb2.WhoAmIRequest(), (("authorization", f"Bearer {token}"),))
        capture.raw("whoami without a bearer prefix", identity.WhoAmI, identity_pb2.WhoAmIRequest(), (("authorization", real),))
        budget = privacy_pb2.SetBudgetRequest(dataset=world.dataset)
        capture.raw("set budget as a manufacturer", privacy.SetBudget, budget, (("authorization", f"Bearer {real}"),))
    with Client(world.address, world.tokens["privacy_officer"]) as office:
        capture.call("share with a bad amount", lambda: office.share_dataset(world.dataset, "principals/nobody", epsilon=-1, delta=2, reason=""))
    return [near, world.admin[::-1]]


def _rotate(capture: Capture, world: World) -> None:
    """KEK rotation, once every key is stored (it rewraps them all)."""
    from cleanroom.sdk import Client

    with Client(world.address, world.admin) as admin:
        capture.call("rotate keys", admin.rotate_keys)


def _scrape(capture: Capture, port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        capture.add("metrics scrape", response.read())


def keks(state: Path) -> list[Secret]:
    """Every KEK in the key file now (rotation retires the old one: read it before too)."""
    return [Secret(f"KEK {kid}", base64.b64decode(value))
            for kid, value in json.loads((state / "keys" / "kek.json").read_text())["keys"].items()]


def state_secrets(state: Path) -> list[Secret]:
    """Key material in the state directory: every KEK, every service secret and live dataset and
    model key unwrapped in-process, and the enclave's private keys (raw and as their PEM body)."""
    from cryptography.hazmat.primitives import serialization
    from sqlalchemy import select

    from cleanroom.crypto import LocalKeyFileProvider
    from cleanroom.identity.keyring import KeyService, model_context
    from cleanroom.storage import dataset_repo, secret_repo
    from cleanroom.storage.db import Database, default_url
    from cleanroom.storage.tables import ModelRow

    found = keks(state)
    db = Database(default_url(state))
    try:
        keys = KeyService(db, LocalKeyFileProvider(state))
        with db.read() as session:
            names = [name for name, _ in secret_repo.all_secrets(session)]
            datasets = dataset_repo.live_wrapped_keys(session)
            models = [(r.id, r.wrapped_key) for r in session.execute(select(ModelRow.id, ModelRow.wrapped_key)) if r.wrapped_key]
        found += [Secret(f"service secret {name}", keys.secret(name)) for name in names]
        found += [Secret(f"dataset key {i}", keys.unwrap_dataset_key(i, w)) for i, w in datasets]
        found += [Secret(f"model key {i}", keys.unwrap_key(model_context(i), w)) for i, w in models]
    finally:
        db.dispose()
    for pem in sorted((state / "enclave").rglob("*.pem")):
        key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())  # type: ignore[union-attr]
        body = "".join(line for line in pem.read_text().splitlines() if not line.startswith("-----"))
        found += [Secret(f"private key {pem.name}", raw), Secret(f"PEM body {pem.name}", body.encode())]
    return found


@dataclass
class SessionResult:
    texts: int
    bytes: int
    findings: list[Finding]
    secrets: list[Secret]
    capture: Capture


def run_session(work: Path, *, sandbox: str = "bwrap") -> SessionResult:
    """The whole session on a fresh state directory under `work`; the server is stopped before its
    log is read, so every line it wrote is scanned."""
    from tests.processes import serve

    state, log, capture = work / "state", work / "server.log", Capture()
    status, admin_token, boot_err = cli("admin", "bootstrap", "--state-dir", str(state))
    assert status == 0, boot_err
    capture.add("bootstrap stderr", boot_err)  # its stdout is the admin token, delivered to the operator
    metrics_port = _free_port()
    server, address = serve(state, log, "--metrics-listen", f"127.0.0.1:{metrics_port}", "--sandbox", sandbox)
    world = World(address, admin_token.strip(), {})
    first_keks = keks(state)  # the session rotates the KEK, which retires this one
    try:
        _principals(capture, world)
        _data(capture, world, work)
        with ThreadPoolExecutor(1) as pool:
            submission = pool.submit(_submit_model, capture, world, work)
            _manufacturer(capture, world)
            echoes = _failures(capture, world)
            _cli(capture, "whoami", world, world.tokens["manufacturer"], "whoami")
            _cli(capture, "ledger", world, world.tokens["privacy_officer"], "privacy", "ledger", "--dataset", world.dataset)
            _cli(capture, "bad token", world, echoes[0], "dataset", "list")
            submission.result()
        _rotate(capture, world)
        _scrape(capture, metrics_port)
    finally:
        server.terminate()
        server.wait(timeout=60)
    capture.add("server log", log.read_bytes())
    tokens = [world.admin, *world.tokens.values()]
    secrets = [Secret(f"token {i}", t.encode(), token=True) for i, t in enumerate(tokens)]
    secrets += [Secret(f"presented token echo {i}", t.encode()) for i, t in enumerate(echoes)]
    secrets += first_keks + [s for s in state_secrets(state) if s.label not in {k.label for k in first_keks}]
    findings = scan(capture.texts, secrets)
    return SessionResult(len(capture.texts), sum(map(len, capture.texts.values())), findings, secrets, capture)


def session_scan(work: Path) -> tuple[int, int, list[Finding]]:
    """For PROOF.md (proof/credentials.py): (texts scanned, bytes scanned, findings)."""
    result = run_session(work)
    return result.texts, result.bytes, result.findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="where the state directory and log go (default: a temporary one)")
    parser.add_argument("--sandbox", default="bwrap", help="the server's --sandbox (default: bwrap, the fastest intake)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="secrets-scan-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        result = run_session(work, sandbox=args.sandbox)
    print(f"{result.texts} texts, {result.bytes} bytes, {len(result.secrets)} secrets, {len(result.findings)} findings")
    for finding in result.findings:
        print(f"  {finding.secret} in {finding.text} ({finding.encoding})")
    return 1 if result.findings else 0


if __name__ == "__main__":
    sys.exit(main())
