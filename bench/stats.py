"""DP statistics over gRPC with a warm worker vs. the same computation in-process, on 1M rows.

A generated CSV (1,000,000 rows: a patient key over 100,000 patients, so most have several rows;
one float column; a categorical string column with five values; a label) is uploaded with the SDK
by a data owner to a real server process; an officer budgets and shares it with a manufacturer and
auto-approves small queries. Two queries are measured, each at ε = 0.01 and ≤ 5 rows per patient:

  mean           DP mean of the float column, public bounds (0, 250)
  grouped count  DP count grouped by the categorical column (keys not public: τ-thresholded, δ 1e-9)

In-process baseline (the issue's "numpy aggregate plus one OpenDP release"): on the same numpy
arrays, for the mean a clipped fixed-point sum and a row count, released together as one vector by
OpenDP's discrete Laplace; for the grouped count `np.bincount` and one vector release. No
per-patient bounding, no thresholding, no ledger: the floor. For reference it also prints the
service's own engine (`cleanroom.statistics.engine.run_query` on a warm `PreparedTable` of the same rows), which
is what the worker runs per query.

Over gRPC: one query of each kind warms the worker (decryption and preparation happen once), then
the median latency of sequential RunQuery calls, sampled in rounds that alternate with the
in-process baseline's so that both sides of each ratio see the same machine. Targets: gRPC latency within 2x of in-process;
at least 200 queries/s sustained from 8 concurrent clients (each its own Client). A filtered mean
is timed too, without a target: the worker keeps the bounded rows of each bound (and the columns
gathered over them) for unfiltered queries, and a filter means building them afresh.

Auto-approved queries are paid from statistics allowances (cleanroom.statistics.allowance), so the
ledger is written once per allowance and each answer's records by the group commit.

`--profile` instead runs the server in this process with timers around each step of a query
(idempotency, validation, the allowance, the worker round trip, signing, the group commit) and
prints where the server-side time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import opendp.prelude as dp  # noqa: E402

from cleanroom.domain.identity import Role  # noqa: E402
from cleanroom.sdk import Client  # noqa: E402
from cleanroom.sdk.schema import Schema  # noqa: E402
from cleanroom.server.app import build_app  # noqa: E402
from cleanroom.server.config import ServerConfig  # noqa: E402
from cleanroom.statistics.engine import (  # noqa: E402
    Filter,
    Query,
    mechanisms,  # noqa: E402
    run_query,
)
from cleanroom.statistics.engine.prepared import PreparedTable  # noqa: E402
from cleanroom.storage.db import default_url  # noqa: E402
from cleanroom.v1 import datasets_pb2  # noqa: E402

dp.enable_features("contrib")  # OpenDP's discrete samplers live behind it (as in cleanroom.statistics.engine.mechanisms)

SITES = ["north", "south", "east", "west", "central"]
EPSILON = 0.01
DELTA = 1e-9
ROWS_PER_PATIENT = 5
BOUNDS = (0.0, 250.0)
CLIENTS = 8
ROUNDS = 5  # the latency medians alternate baseline and gRPC samples in this many rounds
MEAN = Query(kind="mean", column="sbp", bounds=BOUNDS, epsilon=EPSILON, max_rows_per_patient=ROWS_PER_PATIENT)
GROUPED = Query(kind="count", group_by="site", epsilon=EPSILON, delta=DELTA, max_rows_per_patient=ROWS_PER_PATIENT)
QUERIES = {"mean": MEAN, "grouped count": GROUPED}
# For reference, no target: a filter changes the rows kept, so the worker cannot reuse the bounded
# rows (and their gathered values) it keeps per bound for unfiltered queries.
FILTERED = Query(kind="mean", column="sbp", bounds=BOUNDS, epsilon=EPSILON, max_rows_per_patient=ROWS_PER_PATIENT,
                 filters=(Filter("site", "!=", "north"),))


# --- data ----------------------------------------------------------------------------------------


def make_data(rows: int, patients: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(6)
    patient = rng.integers(0, patients, rows)
    return {
        "patient": patient,
        "sbp": np.round(rng.normal(125.0, 18.0, rows), 1),
        "site": rng.integers(0, len(SITES), rows),
        "label": rng.integers(0, 2, rows),
    }


def arrow_table(data: dict[str, np.ndarray]) -> pa.Table:
    ids = pa.array(np.char.add("p", data["patient"].astype("U7")))
    return pa.table({"patient_id": ids, "sbp": pa.array(data["sbp"]),
                     "site": pa.array(np.asarray(SITES)[data["site"]]), "outcome": pa.array(data["label"])})


def schema() -> Schema:
    C, R = datasets_pb2.ColumnSpec, datasets_pb2
    return Schema([
        C(name="patient_id", type=R.STRING, role=R.PATIENT_KEY),
        C(name="sbp", type=R.FLOAT, role=R.FEATURE),
        C(name="site", type=R.STRING, role=R.FEATURE),
        C(name="outcome", type=R.INTEGER, role=R.LABEL),
    ], 2)


# --- in-process baseline -------------------------------------------------------------------------


def _samples_ms(action: Callable[[], Any], repeats: int) -> list[float]:
    action()  # warm: caches, page faults
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return times


def _median_ms(action: Callable[[], Any], repeats: int) -> float:
    return statistics.median(_samples_ms(action, repeats))


def baselines(data: dict[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
    """The floor of each query: numpy aggregate plus one OpenDP release (measurements built once)."""
    values, sites = data["sbp"], data["site"]
    bits = mechanisms.fixed_point_bits(max(abs(BOUNDS[0]), abs(BOUNDS[1])))
    sum_sensitivity = ROWS_PER_PATIENT * mechanisms.fixed_magnitude(max(abs(BOUNDS[0]), abs(BOUNDS[1])), bits)
    vector = (dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.l1_distance(T=dp.i64))
    # sum and count noised as one vector; its L1 sensitivity is the sum of both parts'
    mean_release = dp.m.make_laplace(*vector, scale=(sum_sensitivity + ROWS_PER_PATIENT) / EPSILON)
    count_release = dp.m.make_laplace(*vector, scale=ROWS_PER_PATIENT / EPSILON)

    def mean() -> float:
        clipped = np.clip(values, *BOUNDS)
        total = int(np.rint(np.ldexp(clipped, bits)).astype(np.int64).sum())
        noisy_sum, noisy_count = mean_release([total, int(clipped.size)])
        return min(max(np.ldexp(noisy_sum, -bits) / max(noisy_count, 1), BOUNDS[0]), BOUNDS[1])

    def grouped() -> list[int]:
        return count_release(np.bincount(sites, minlength=len(SITES)).tolist())

    return {"mean": mean, "grouped count": grouped}


def engine_times(data: dict[str, np.ndarray], repeats: int) -> dict[str, float]:
    """The worker's per-query work: run_query on a warm PreparedTable of the same rows."""
    table = arrow_table(data)
    start = time.perf_counter()
    prepared = PreparedTable(table, patient_column="patient_id")
    for name in ("sbp", "site"):
        prepared.column(name)
    prepare_s = time.perf_counter() - start
    queries = {**QUERIES, "filtered mean": FILTERED}
    out = {name: _median_ms(lambda q=q: run_query(prepared, q, patient_column="patient_id"), repeats) for name, q in queries.items()}
    out["prepare (once per worker)"] = prepare_s * 1000
    return out


# --- a server with a dataset ---------------------------------------------------------------------


class World:
    """Principals, a server (subprocess, or in this process with --profile) and the uploaded dataset."""

    def __init__(self, base: Path, csv_path: Path, *, in_process: bool) -> None:
        self.state, self.work = base / "state", base / "work"
        config = ServerConfig(state_dir=self.state, database_url=default_url(self.state), listen="127.0.0.1:0",
                              work_dir=self.work, sandbox="bwrap", metrics_listen="")
        app = build_app(config)
        _, self.owner_token = app.principals.create("hospital", Role.DATA_OWNER, actor="bench")
        maker, self.maker_token = app.principals.create("maker", Role.MANUFACTURER, actor="bench")
        _, self.officer_token = app.principals.create("officer", Role.PRIVACY_OFFICER, actor="bench")
        self.maker_name = f"principals/{maker.id}"
        self.process: subprocess.Popen[bytes] | None = None
        if in_process:
            from cleanroom.api.server import Server

            self.app, self.server = app, Server(app)
            self.server.start()
            self.address = f"127.0.0.1:{self.server.port}"
        else:
            app.close()
            self.app = self.server = None
            self.address = self._spawn()
        try:
            self._dataset(csv_path)
        except BaseException:
            self.close()
            raise

    def _dataset(self, csv_path: Path) -> None:
        owner, officer = Client(self.address, self.owner_token), Client(self.address, self.officer_token)
        start = time.perf_counter()
        self.dataset = owner.upload_dataset(csv_path, schema(), display_name="vitals").name
        self.upload_s = time.perf_counter() - start
        # ε 1000 (the most a cap may be) is 100,000 queries at ε 0.01
        officer.set_budget(self.dataset, epsilon=1000, delta=1e-3, reason="benchmark")
        officer.share_dataset(self.dataset, self.maker_name, epsilon=1000, delta=1e-3, reason="benchmark")
        officer.set_approval_policy(self.dataset, max_epsilon=1, auto_approve_epsilon=0.1, reason="benchmark")
        owner.close()
        officer.close()

    def _spawn(self) -> str:
        port_file = self.state / "port"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cleanroom.cli.main", "serve", "--state-dir", str(self.state), "--listen", "127.0.0.1:0",
             "--port-file", str(port_file), "--log-level", "WARNING", "--metrics-listen", "", "--work-dir", str(self.work),
             "--sandbox", "bwrap"],
            cwd=ROOT,
        )
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None:
                raise SystemExit("server failed to start")
            time.sleep(0.05)
        return f"127.0.0.1:{port_file.read_text().strip()}"

    def client(self) -> Client:
        return Client(self.address, self.maker_token)

    def close(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        if self.server is not None:
            self.server.stop(grace=0)
            self.app.close()


def interleaved_ms(world: World, data: dict[str, np.ndarray], repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Medians of the in-process baseline and of sequential RunQuery calls, sampled in alternating
    rounds: this machine's speed drifts by up to 1.5x within a minute, and a drift between two
    separate measurements would land on one side of the ratio only."""
    floors, client = baselines(data), world.client()
    local: dict[str, list[float]] = defaultdict(list)
    remote: dict[str, list[float]] = defaultdict(list)
    try:
        for _ in range(ROUNDS):
            for name, query in QUERIES.items():
                local[name] += _samples_ms(floors[name], max(1, repeats // ROUNDS))
                remote[name] += _samples_ms(lambda q=query: client.run_query(world.dataset, q), max(1, repeats // ROUNDS))
    finally:
        client.close()
    return ({name: statistics.median(times) for name, times in local.items()},
            {name: statistics.median(times) for name, times in remote.items()})


def sequential_ms(world: World, query: Query, repeats: int) -> float:
    client = world.client()
    try:
        return _median_ms(lambda: client.run_query(world.dataset, query), repeats)
    finally:
        client.close()


def _cpu_seconds(processes: dict[str, list[psutil.Process]]) -> dict[str, float]:
    out = {}
    for label, procs in processes.items():
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        out[label] = total
    return out


def concurrent_qps(world: World, seconds: float) -> tuple[float, int, float, dict[str, float]]:
    """(queries per second, queries answered, p50 latency ms, CPU ms per query by process) from
    CLIENTS threads, alternating kinds."""
    done, latencies, errors = [0] * CLIENTS, [[] for _ in range(CLIENTS)], []
    clients = [world.client() for _ in range(CLIENTS)]
    for c in clients:  # connect before the clock starts
        c.run_query(world.dataset, MEAN)
    server = psutil.Process(world.process.pid if world.process else os.getpid())
    processes = {"server": [server], "worker": server.children(recursive=True)}
    if world.process:
        processes["clients"] = [psutil.Process()]
    cpu_before = _cpu_seconds(processes)
    stop = time.perf_counter() + seconds
    barrier = threading.Barrier(CLIENTS + 1)

    def loop(index: int) -> None:
        barrier.wait()
        queries = [MEAN, GROUPED] if index % 2 else [GROUPED, MEAN]
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                clients[index].run_query(world.dataset, queries[done[index] % 2])
                latencies[index].append(time.perf_counter() - t0)
                done[index] += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    cpu = {k: (v - cpu_before[k]) * 1000 / max(sum(done), 1) for k, v in _cpu_seconds(processes).items()}
    for c in clients:
        c.close()
    if errors:
        raise SystemExit(f"a concurrent query failed: {errors[0]!r}")
    flat = [x for xs in latencies for x in xs]
    return sum(done) / elapsed, sum(done), statistics.median(flat) * 1000, cpu


# --- profile -------------------------------------------------------------------------------------


def _instrument(timings: dict[str, list[float]]) -> None:
    """Wrap each server-side step of a query with a timer (in this process only)."""
    from cleanroom.api import stats_servicers
    from cleanroom.privacy import ledger
    from cleanroom.sandbox import session
    from cleanroom.server import idempotency
    from cleanroom.statistics import allowance, pool, service
    from cleanroom.storage import db, group_commit
    from cleanroom.wire import stats as stats_wire

    def wrap(owner: Any, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timings[label].append(time.perf_counter() - t0)

        setattr(owner, attribute, timed)

    def wrap_context(owner: Any, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        @contextlib.contextmanager
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                with original(*args, **kwargs) as value:
                    yield value
            finally:
                timings[label].append(time.perf_counter() - t0)

        setattr(owner, attribute, timed)

    wrap_context(db.Database, "transaction", "every write transaction, BEGIN to COMMIT")
    wrap_context(db.Database, "read", "every read transaction")
    wrap(stats_servicers.StatsServicer, "RunQuery", "RunQuery handler (all below)")
    wrap(idempotency.JournalledIdempotency, "run", "idempotency (memory, one read) and all below")
    wrap(stats_wire, "answer_to_proto", "answer_to_proto")
    wrap(service.StatsQueryService, "run", "service.run")
    wrap(service.StatsQueryService, "_priced", "  dataset, share and policy (read), validate, price")
    wrap(allowance.Allowances, "draw", "  draw on the allowance")
    wrap(ledger.Ledger, "reserve_sized", "    reserve a new allowance (tx)")
    wrap(allowance.Allowances, "open_data", "  open data (marks a new allowance decrypted)")
    wrap(service.StatsQueryService, "_source", "  wrapped key (read)")
    wrap(pool.StatsWorkerPool, "ask", "  worker ask (all)")
    wrap(session.SandboxSession, "call", "    worker round trip (pipe + run_query)")
    wrap(service, "answer_from_dict", "  answer_from_dict")
    wrap(service, "canonical_answer", "  canonical_answer")
    wrap(service.StatsQueryService, "_sign", "  sign receipt")
    wrap(group_commit.GroupCommit, "_write", "group commit batches (writer thread)")
    wrap(ledger.Ledger, "settle_in", "  close an allowance (in a batch)")


def profile(world: World, timings: dict[str, list[float]], repeats: int) -> None:
    client = world.client()
    for name, query in QUERIES.items():
        client.run_query(world.dataset, query)  # warm
        timings.clear()
        t0 = time.perf_counter()
        for _ in range(repeats):
            client.run_query(world.dataset, query)
        wall = (time.perf_counter() - t0) / repeats * 1000
        print(f"\n{name}: {wall:.2f} ms per call at the client (sequential, {repeats} calls); server-side means:")
        for label, values in timings.items():
            per_call = sum(values) / repeats * 1000
            print(f"  {label:<44} {per_call:7.2f} ms  ({len(values) / repeats:.0f}x per query)")
    client.close()


# --- main ----------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=100, help="sequential calls per measurement (median)")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of the concurrent run")
    parser.add_argument("--profile", action="store_true", help="in-process server with per-step timers instead")
    args = parser.parse_args()

    data = make_data(args.rows, args.patients)
    with tempfile.TemporaryDirectory(prefix="bench-stats-") as tmp:
        base = Path(tmp)
        csv_path = base / "vitals.csv"
        pacsv.write_csv(arrow_table(data), csv_path)
        print(f"{args.rows:,} rows, {args.patients:,} patients, {csv_path.stat().st_size / 1e6:.0f} MB CSV; "
              f"ε = {EPSILON} per query, ≤ {ROWS_PER_PATIENT} rows per patient; {os.cpu_count()} CPUs")
        timings: dict[str, list[float]] = defaultdict(list)
        if args.profile:
            _instrument(timings)
        world = World(base, csv_path, in_process=args.profile)
        try:
            print(f"upload {world.upload_s:.1f} s")
            for name, query in QUERIES.items():  # warm: starts the worker, decrypts and prepares once
                t0 = time.perf_counter()
                warm = world.client()
                warm.run_query(world.dataset, query)
                warm.close()
                print(f"first {name} {time.perf_counter() - t0:.2f} s (cold: worker start, OpenDP calibration)")
            if args.profile:
                profile(world, timings, args.repeats)
                return
            engine = engine_times(data, args.repeats)
            floors, grpc_ms = interleaved_ms(world, data, args.repeats)
            grpc_ms["filtered mean"] = sequential_ms(world, FILTERED, args.repeats)
            qps, answered, p50, cpu = concurrent_qps(world, args.seconds)
        finally:
            world.close()
    print(f"\nLatency, median of {args.repeats} in {ROUNDS} alternating rounds (ms)")
    print(f"{'query':<14} {'in-process':>10} {'engine':>8} {'gRPC':>8} {'ratio':>6}   target <= 2x")
    for name in QUERIES:
        ratio = grpc_ms[name] / floors[name]
        print(f"{name:<14} {floors[name]:10.2f} {engine[name]:8.2f} {grpc_ms[name]:8.2f} {ratio:6.2f}   {verdict(ratio <= 2.0)}")
    name = "filtered mean"
    print(f"{name:<14} {'-':>10} {engine[name]:8.2f} {grpc_ms[name]:8.2f} {'-':>6}   (reference: no bounded rows to reuse)")
    print(f"(in-process: numpy aggregate + one OpenDP release; engine: run_query on a warm PreparedTable, "
          f"whose preparation took {engine['prepare (once per worker)']:.0f} ms once)")
    print(f"\n{CLIENTS} concurrent clients, {args.seconds:.0f} s, mean and grouped count alternating: "
          f"{qps:.1f} queries/s ({answered} answered, p50 {p50:.1f} ms)   target >= 200: {verdict(qps >= 200)}")
    print("CPU per query: " + ", ".join(f"{k} {v:.1f} ms" for k, v in cpu.items()) + f" (of {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
