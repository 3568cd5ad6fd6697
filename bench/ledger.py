"""Budget reservations per second under 16 concurrent clients: over gRPC vs. the database directly.

Each reservation is an officer's approval of a pending privacy request, the path every job takes:
policy check, conditional UPDATEs on two budgets, the spend row, the ledger event and two audit
entries, in one transaction. The direct path calls the same use case in-process; the gRPC path
goes through a real server process on loopback (auth, decoding, idempotency record included).
Runs on SQLite and, when CLEANROOM_TEST_POSTGRES_URL is set (`make bench` starts one), PostgreSQL.
Target: the gRPC path at least 0.5 of the direct path.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cleanroom.domain import deid  # noqa: E402
from cleanroom.domain.datasets import Dataset, IntakeReport  # noqa: E402
from cleanroom.domain.identity import Role  # noqa: E402
from cleanroom.domain.privacy import Privacy  # noqa: E402
from cleanroom.privacy.ledger import SpendRequest  # noqa: E402
from cleanroom.sdk import Client  # noqa: E402
from cleanroom.server.app import App, build_app  # noqa: E402
from cleanroom.server.config import ServerConfig  # noqa: E402
from cleanroom.storage import clock, dataset_repo  # noqa: E402
from cleanroom.storage.db import default_url  # noqa: E402

CLIENTS = 16


def _prepare(app: App, requests: int) -> tuple[str, list[str], list[str]]:
    """Officer token, and two disjoint lists of pending request names (direct, gRPC)."""
    officer, officer_token = app.principals.create("officer", Role.PRIVACY_OFFICER, actor="bench")
    owner, _ = app.principals.create("hospital", Role.DATA_OWNER, actor="bench")
    maker, _ = app.principals.create("maker", Role.MANUFACTURER, actor="bench")
    columns = (deid.ColumnSpec("pid", deid.ColumnType.STRING, deid.ColumnRole.PATIENT_KEY),)
    dataset = Dataset("dbench", owner.id, "bench", "", columns, 5, 10**6, 10**6, IntakeReport(), "0" * 64, clock.now())
    with app.db.transaction() as session:
        dataset_repo.add_dataset(session, dataset, b"unused")
    big = Privacy.cap(1000.0, 0.5)
    app.budgets.set_cap(officer, dataset.id, None, big, "benchmark")
    app.budgets.share(officer, dataset.id, maker.id, big, "benchmark")
    names = []
    for i in range(2 * requests):
        request = SpendRequest(dataset.id, maker.id, "training", f"jobs/{i}", Privacy.cost(0.01, 1e-9))
        names.append(app.approvals.submit(maker, request).resource_name)
    return officer_token, names[:requests], names[requests:]


def _rate(work: list[str], approve) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(approve, work))
    return len(work) / (time.perf_counter() - start)


def _direct(app: App, token: str, names: list[str]) -> float:
    officer = app.principals.authenticate(token)
    return _rate(names, lambda name: app.approvals.approve(officer, name.removeprefix("privacyRequests/"), "bench"))


def _start_server(state_dir: Path, url: str) -> tuple[subprocess.Popen[bytes], str]:
    port_file = state_dir / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", "cleanroom.cli.main", "serve", "--state-dir", str(state_dir), "--database-url", url,
         "--listen", "127.0.0.1:0", "--port-file", str(port_file), "--log-level", "WARNING",
         "--metrics-listen", ""],
        cwd=ROOT,
    )
    while not port_file.exists():
        if process.poll() is not None:
            raise SystemExit("server failed to start")
        time.sleep(0.05)
    return process, f"127.0.0.1:{port_file.read_text()}"


def _over_grpc(address: str, token: str, names: list[str]) -> float:
    local = threading.local()

    def approve(name: str) -> None:
        if not hasattr(local, "client"):
            local.client = Client(address, token)
        local.client.approve(name, "bench")

    return _rate(names, approve)


def run_backend(label: str, url: str, requests: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        state_dir = Path(tmp)
        app = build_app(ServerConfig(state_dir=state_dir, database_url=url or default_url(state_dir), listen="127.0.0.1:0"))
        token, direct_names, grpc_names = _prepare(app, requests)
        direct = _direct(app, token, direct_names)
        app.close()
        server, address = _start_server(state_dir, app.config.database_url)
        try:
            grpc_rate = _over_grpc(address, token, grpc_names)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    ratio = grpc_rate / direct
    verdict = "PASS" if ratio >= 0.5 else "FAIL"
    print(f"{label:<11} direct {direct:8.1f}/s   gRPC {grpc_rate:8.1f}/s   ratio {ratio:4.2f}  (target >= 0.5: {verdict})")
    return direct, grpc_rate


def _fresh_postgres(admin_url: str) -> str:
    name = "bench_" + uuid.uuid4().hex[:8]
    engine = sqlalchemy.create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    base, _, query = admin_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}?{query}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=800, help="reservations per path and backend")
    args = parser.parse_args()
    print(f"Ledger reservations, {CLIENTS} concurrent clients, {args.requests} reservations per path")
    run_backend("SQLite", "", args.requests)
    postgres = os.environ.get("CLEANROOM_TEST_POSTGRES_URL")
    if postgres:
        run_backend("PostgreSQL", _fresh_postgres(postgres), args.requests)
    else:
        print("PostgreSQL  skipped: CLEANROOM_TEST_POSTGRES_URL is not set (run through `make bench`)")


if __name__ == "__main__":
    main()
