"""The bounded load generator: `grpc.aio` clients on loopback, each with its own channel and the
bearer token in metadata exactly as the SDK sends it, drawing operations from one seeded plan.

Both bounds hold: clients stop taking operations when the duration is up OR the plan (the cap
on total requests) is used up, whichever comes first; an operation in flight then finishes (under
a generous per-call deadline, so a slow machine is never mistaken for a failure). The plan opens
with every operation kind once (job submissions first, so reads of a job have one to read), taken
even past the duration, then draws by weight; job submissions are capped apart (each runs a sandbox).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
from google.rpc import error_details_pb2, status_pb2

from cleanroom.cli import samples
from cleanroom.statistics.engine.query import Filter, Query
from cleanroom.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    privacy_pb2,
    privacy_pb2_grpc,
    stats_pb2,
    stats_pb2_grpc,
)
from cleanroom.wire.stats import query_to_proto
from proof.load_world import World

# Relative frequency of each operation in the drawn part of the plan.
WEIGHTS = {
    "upload": 3, "query": 24, "estimate_query": 10, "train": 1, "evaluate": 1,
    "whoami": 8, "get_dataset": 8, "list_datasets": 6, "get_budgets": 8, "get_job": 6, "list_jobs": 5, "list_ledger": 4,
}
JOBS = ("evaluate", "train")
DEADLINE_S = 600.0  # per call: generous on purpose (bounds are counts and the duration, not latency)
MAKERS = ("maker0", "maker1")
QUERIES = (
    Query(kind="count", epsilon=0.02),
    Query(kind="count", group_by="age", epsilon=0.02),
    Query(kind="count", epsilon=0.02, filters=(Filter("malignant", "==", 1),)),
    Query(kind="mean", column="mean_radius", bounds=(5.0, 30.0), epsilon=0.03),
)
FINAL = {jobs_pb2.JOB_STATE_RELEASED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED, jobs_pb2.JOB_STATE_REJECTED}
TRAINING = dict(label_column="malignant", target_epsilon=0.5, target_delta=1e-5, epochs=1,
                expected_batch_patients=64, learning_rate=0.1, optimizer="sgd", clipping_norm=1.0, validation_fraction=0.2)


def plan(*, seed: int, max_requests: int, max_jobs: int) -> list[str]:
    """Every kind once (jobs first), then weighted draws; at most `max_jobs` job submissions."""
    if max_requests < len(WEIGHTS) or max_jobs < len(JOBS):
        raise ValueError(f"the cap must allow every kind once: at least {len(WEIGHTS)} requests and {len(JOBS)} jobs")
    rng = random.Random(seed)
    others = [k for k in WEIGHTS if k not in JOBS]
    rng.shuffle(others)
    ops, jobs = [*JOBS, *others], len(JOBS)
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    while len(ops) < max_requests:
        op = rng.choices(kinds, weights)[0]
        if op in JOBS:
            if jobs >= max_jobs:
                continue
            jobs += 1
        ops.append(op)
    return ops


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * p / 100)) - 1]


@dataclass(frozen=True)
class Sample:
    kind: str
    start: float    # seconds since the load began
    seconds: float
    code: str       # "OK", or the gRPC status name and the service's reason (see outcome())


@dataclass
class LoadResult:
    samples: list[Sample]
    seconds: float                      # from the first call to the last client's end
    planned: int
    answers: int                        # statistics answers the clients received
    jobs: dict[str, str] = field(default_factory=dict)  # job name -> final state name (after the wait)
    rss: list[tuple[float, int, int]] = field(default_factory=list)  # (s since start, bytes, processes)


class Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.identity = identity_pb2_grpc.IdentityServiceStub(channel)
        self.datasets = datasets_pb2_grpc.DatasetServiceStub(channel)
        self.privacy = privacy_pb2_grpc.PrivacyServiceStub(channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(channel)
        self.stats = stats_pb2_grpc.StatsServiceStub(channel)


class RssSampler:
    """RSS of the server and all its children (sandboxes included), summed, every `period` seconds,
    on a thread of its own so that a busy event loop cannot skip samples."""

    def __init__(self, pid: int, origin: float, period: float = 1.0) -> None:
        self._pid, self._origin, self._period = pid, origin, period
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            measured = tree_rss(self._pid)
            if measured is not None:
                self.samples.append((time.monotonic() - self._origin, *measured))
            self._stop.wait(self._period)


def tree_rss(pid: int) -> tuple[int, int] | None:
    """(summed RSS in bytes, processes counted) of `pid` and its descendants; None once it is gone."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    total, counted = 0, 0
    for process in processes:
        try:
            total += process.memory_info().rss
            counted += 1
        except psutil.NoSuchProcess:  # a sandbox that ended between the listing and the reading
            pass
    return total, counted


class Load:
    """One run: the plan, the clients, and what they saw."""

    def __init__(self, world: World, *, clients: int, duration: float, plan: list[str], seed: int) -> None:
        self.world, self.clients, self.duration, self.seed = world, clients, duration, seed
        self.queue = deque(plan)
        self.planned = len(plan)
        self.samples: list[Sample] = []
        self.answers = 0
        self.job_names: list[str] = []
        self.job_submitted = asyncio.Event()
        self.origin = 0.0

    def metadata(self, who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.world.tokens[who]}"),)

    async def run(self) -> LoadResult:
        self.origin = time.monotonic()
        with RssSampler(self.world.server.pid, self.origin) as sampler:
            await asyncio.gather(*(self._client(i) for i in range(self.clients)))
            seconds = time.monotonic() - self.origin
            jobs = await self._settled_jobs()
        return LoadResult(self.samples, seconds, self.planned, self.answers, jobs, sampler.samples)

    async def _client(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        end = self.origin + self.duration
        async with grpc.aio.insecure_channel(self.world.address) as channel:
            stubs = Stubs(channel)
            # The plan's opening (every kind once) is taken whatever the clock says, so a slow
            # machine sees fewer calls, never a kind left out.
            while self.queue and (self.planned - len(self.queue) < len(WEIGHTS) or time.monotonic() < end):
                await self._one(self.queue.popleft(), stubs, rng)

    async def _one(self, kind: str, stubs: Stubs, rng: random.Random) -> None:
        if kind == "get_job":  # the plan submits jobs first; wait until one is in
            await self.job_submitted.wait()
        started = time.monotonic()
        try:
            await OPERATIONS[kind](self, stubs, rng)
            code = "OK"
        except grpc.aio.AioRpcError as error:
            code = outcome(error)
        finally:
            if kind in JOBS:
                self.job_submitted.set()
        self.samples.append(Sample(kind, started - self.origin, time.monotonic() - started, code))

    async def _settled_jobs(self, patience_s: float = 1800.0) -> dict[str, str]:
        """Waits for every submitted job to reach a final state (bounded: one still open after
        `patience_s` is reported by its last state and fails the section)."""
        states: dict[str, jobs_pb2.JobState.ValueType] = {}
        deadline = time.monotonic() + patience_s
        async with grpc.aio.insecure_channel(self.world.address) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            while True:
                for name in self.job_names:
                    if states.get(name) not in FINAL:
                        job = await stub.GetJob(jobs_pb2.GetJobRequest(name=name), metadata=self.metadata("maker0"), timeout=DEADLINE_S)
                        states[name] = job.state
                if all(s in FINAL for s in states.values()) or time.monotonic() > deadline:
                    return {name: jobs_pb2.JobState.Name(state) for name, state in states.items()}
                await asyncio.sleep(0.5)


def outcome(error: grpc.aio.AioRpcError) -> str:
    """The status name, with the service's ErrorInfo reason where it sent one
    ("RESOURCE_EXHAUSTED/PRIVACY_BUDGET_EXHAUSTED"), so refusals of different causes count apart."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and info.reason:
                    return f"{error.code().name}/{info.reason}"
    return str(error.code().name)


# --- the operations: one coroutine each; an RPC error propagates to Load._one, which counts it --------


def _request_id() -> str:
    return uuid.uuid4().hex


def _upload_messages(path: Path) -> Iterator[datasets_pb2.UploadDatasetRequest]:
    data = path.read_bytes()
    metadata = datasets_pb2.UploadMetadata(
        request_id=_request_id(), display_name=f"load-{path.stem}", format=datasets_pb2.CSV, columns=samples.breast_cancer_schema(),
        policy=datasets_pb2.DeidentificationPolicy(k_anonymity=5), size_bytes=len(data))
    yield datasets_pb2.UploadDatasetRequest(metadata=metadata)
    yield datasets_pb2.UploadDatasetRequest(chunk=data)  # ~130 kB: one chunk (the SDK's are 1 MiB)
    yield datasets_pb2.UploadDatasetRequest(trailer=datasets_pb2.UploadTrailer(size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))


async def _upload(load: Load, stubs: Stubs, rng: random.Random) -> None:
    messages = _upload_messages(rng.choice(load.world.uploads))
    await stubs.datasets.UploadDataset(messages, metadata=load.metadata("owner"), timeout=DEADLINE_S)


async def _query(load: Load, stubs: Stubs, rng: random.Random) -> None:
    request = stats_pb2.RunQueryRequest(request_id=_request_id(), dataset=rng.choice(load.world.datasets),
                                        query=query_to_proto(rng.choice(QUERIES)))
    await stubs.stats.RunQuery(request, metadata=load.metadata(rng.choice(MAKERS)), timeout=DEADLINE_S)
    load.answers += 1  # counted only once the answer is in the client's hands


async def _estimate_query(load: Load, stubs: Stubs, rng: random.Random) -> None:
    request = stats_pb2.EstimateQueryRequest(dataset=rng.choice(load.world.datasets), query=query_to_proto(rng.choice(QUERIES)))
    await stubs.stats.EstimateQuery(request, metadata=load.metadata(rng.choice(MAKERS)), timeout=DEADLINE_S)


def _job_fields(load: Load, rng: random.Random) -> dict[str, Any]:
    return dict(model=load.world.model, dataset=rng.choice(load.world.datasets), feature_columns=samples.feature_names())


async def _train(load: Load, stubs: Stubs, rng: random.Random) -> None:
    spec = jobs_pb2.TrainingSpec(**{**TRAINING, **_job_fields(load, rng)})
    job = await stubs.jobs.SubmitTraining(jobs_pb2.SubmitTrainingRequest(request_id=_request_id(), spec=spec),
                                          metadata=load.metadata("maker0"), timeout=DEADLINE_S)
    load.job_names.append(job.name)


async def _evaluate(load: Load, stubs: Stubs, rng: random.Random) -> None:
    spec = jobs_pb2.EvaluationSpec(**_job_fields(load, rng), label_column="malignant", target_epsilon=0.5, target_delta=1e-5)
    job = await stubs.jobs.SubmitEvaluation(jobs_pb2.SubmitEvaluationRequest(request_id=_request_id(), spec=spec),
                                            metadata=load.metadata("maker0"), timeout=DEADLINE_S)
    load.job_names.append(job.name)


async def _whoami(load: Load, stubs: Stubs, rng: random.Random) -> None:
    who = rng.choice(("owner", "officer", *MAKERS))
    await stubs.identity.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=load.metadata(who), timeout=DEADLINE_S)


async def _get_dataset(load: Load, stubs: Stubs, rng: random.Random) -> None:
    request = datasets_pb2.GetDatasetRequest(name=rng.choice(load.world.datasets))
    await stubs.datasets.GetDataset(request, metadata=load.metadata(rng.choice(("owner", *MAKERS))), timeout=DEADLINE_S)


async def _list_datasets(load: Load, stubs: Stubs, rng: random.Random) -> None:
    request = datasets_pb2.ListDatasetsRequest(page_size=50)
    await stubs.datasets.ListDatasets(request, metadata=load.metadata(rng.choice(("owner", *MAKERS))), timeout=DEADLINE_S)


async def _get_budgets(load: Load, stubs: Stubs, rng: random.Random) -> None:
    request = privacy_pb2.GetBudgetsRequest(dataset=rng.choice(load.world.datasets))
    await stubs.privacy.GetBudgets(request, metadata=load.metadata(rng.choice(("officer", *MAKERS))), timeout=DEADLINE_S)


async def _get_job(load: Load, stubs: Stubs, rng: random.Random) -> None:
    name = rng.choice(load.job_names) if load.job_names else "jobs/none-submitted"  # NOT_FOUND: counted, and fails the run
    await stubs.jobs.GetJob(jobs_pb2.GetJobRequest(name=name), metadata=load.metadata("maker0"), timeout=DEADLINE_S)


async def _list_jobs(load: Load, stubs: Stubs, rng: random.Random) -> None:
    await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=50), metadata=load.metadata(rng.choice(MAKERS)), timeout=DEADLINE_S)


async def _list_ledger(load: Load, stubs: Stubs, rng: random.Random) -> None:
    request = privacy_pb2.ListLedgerRequest(dataset=rng.choice(load.world.datasets), page_size=50)
    await stubs.privacy.ListLedger(request, metadata=load.metadata("officer"), timeout=DEADLINE_S)


OPERATIONS: dict[str, Callable[[Load, Stubs, random.Random], Awaitable[None]]] = {
    "upload": _upload, "query": _query, "estimate_query": _estimate_query, "train": _train, "evaluate": _evaluate,
    "whoami": _whoami, "get_dataset": _get_dataset, "list_datasets": _list_datasets, "get_budgets": _get_budgets,
    "get_job": _get_job, "list_jobs": _list_jobs, "list_ledger": _list_ledger,
}
assert OPERATIONS.keys() == WEIGHTS.keys()
