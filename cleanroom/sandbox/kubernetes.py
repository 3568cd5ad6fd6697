"""Sandbox backend that runs each worker (intake, training, evaluation, statistics) as a Kubernetes Job.

The Job is rendered by `render_worker_job` (k8s_render.py, a pure function): gVisor RuntimeClass,
no service-account token, no service links, restricted security context, backoffLimit 0, a
deadline, a TTL. This module does the client calls through the official `kubernetes` package:
create the Job, watch it until it completes, fails or passes its deadline, read the pod's state and
log, copy the outputs back, delete the Job.

Tested against a recorded fake: a fake stands in for the API server, because none can run on the
build machines (tests/k8s_fake.py answers the real client's HTTP requests, so the client's own
serialisation, URL building and watch decoding run for real; scheduling, gVisor and the kubelet do
not).

Inputs and outputs: a shared ReadWriteMany volume. The server mounts it at `work_root`; the worker
namespace has a claim (`claim`) on the same storage; each Job sees only `<job>/in` (read-only),
`<job>/out` and `<job>/stdin` through subPath mounts. Simple and honest, but it trusts the storage:
a production deployment should give every Job its own volume (or an encrypted, per-job scratch
area), keep dataset plaintext out of it entirely by having the worker fetch sealed inputs, and
enforce quotas on it (a PVC has no per-subdirectory size limit; the output size check happens
after the worker has written).

Logs: Kubernetes keeps one container log with stdout and stderr interleaved, so the result carries
the whole log (cut to `max_log_bytes`) as `stdout` and an empty `stderr`.
Limits without a Kubernetes equivalent: `max_processes` (the kubelet's pod PID limit is per node)
and `cpu_seconds` (CPU is limited by rate, `cpu`, and time by the deadline).
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cleanroom.sandbox.base import Outcome, SandboxPolicy, SandboxRequest, SandboxResult
from cleanroom.sandbox.k8s_render import PURPOSES, render_worker_job

log = logging.getLogger(__name__)

BACKEND = "kubernetes"
DEFAULT_WORK_ROOT = Path("/var/lib/cleanroom-jobs")


@dataclass(frozen=True)
class JobEnd:
    """How a Job ended, read from the Job's conditions and its pod's container state."""

    outcome: Outcome
    exit_code: int | None
    started: bool
    pod: str | None
    detail: str


class KubernetesLauncher:
    name = BACKEND

    def __init__(self, api_client: Any, *, image: str, namespace: str = "cleanroom-workers", purpose: str = "training",
                 work_root: Path = DEFAULT_WORK_ROOT, claim: str = "cleanroom-jobs", cpu: str = "1",
                 startup_grace_seconds: float = 120.0, metrics: Any = None,
                 watch_factory: Callable[[], Any] | None = None) -> None:
        if purpose not in PURPOSES:
            raise ValueError(f"unknown worker purpose {purpose!r}")
        import urllib3
        from kubernetes import client, watch  # the package is needed only by this backend

        self._client = api_client
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._watch_factory = watch_factory or watch.Watch
        self._api_exception = client.ApiException
        self._errors = (client.ApiException, urllib3.exceptions.HTTPError)
        self.image, self.namespace, self.purpose = image, namespace, purpose
        self.work_root, self.claim, self.cpu = Path(work_root), claim, cpu
        self.startup_grace_seconds = startup_grace_seconds
        self._metrics = metrics

    @classmethod
    def from_cluster(cls, **kwargs: Any) -> KubernetesLauncher:
        """Uses the pod's service-account credentials (the server runs inside the cluster)."""
        from kubernetes import client, config

        config.load_incluster_config()  # type: ignore[no-untyped-call]  # untyped in the kubernetes package
        return cls(client.ApiClient(), **kwargs)

    def with_purpose(self, purpose: str) -> KubernetesLauncher:
        """The same backend for another kind of worker (the interface's run() takes no purpose)."""
        if purpose not in PURPOSES:
            raise ValueError(f"unknown worker purpose {purpose!r}")
        twin = copy.copy(self)
        twin.purpose = purpose
        return twin

    def available(self) -> tuple[bool, str]:
        if not self.work_root.is_dir() or not os.access(self.work_root, os.W_OK):
            return False, f"the shared job volume {self.work_root} is not mounted writable"
        try:
            self._batch.list_namespaced_job(self.namespace, limit=1)
        except self._errors as error:
            return False, f"cannot list Jobs in namespace {self.namespace}: {_describe(error)}"
        return True, f"Kubernetes Jobs in namespace {self.namespace} (RuntimeClass gvisor)"

    def run(self, request: SandboxRequest, policy: SandboxPolicy) -> SandboxResult:
        if request.output_dir is not None and any(Path(request.output_dir).iterdir()):
            raise ValueError("the output directory must be empty")
        name = f"cleanroom-{self.purpose}-{secrets.token_hex(5)}"
        started = time.monotonic()
        # Rendering first validates the request (job name, input names) before anything touches the disk.
        body = render_worker_job(request, policy, image=self.image, namespace=self.namespace, name=name,
                                 purpose=self.purpose, claim=self.claim, cpu=self.cpu)
        stage = self.work_root / name
        try:
            _stage(stage, request)
            end, stdout = self._run_staged(body, stage, request, policy)
        except OSError as error:
            end, stdout = JobEnd(Outcome.LAUNCH_FAILED, None, False, None, f"shared job volume: {error.strerror}"), b""
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return self._result(end, stdout, time.monotonic() - started)

    def _run_staged(self, body: dict[str, Any], stage: Path, request: SandboxRequest,
                    policy: SandboxPolicy) -> tuple[JobEnd, bytes]:
        name = body["metadata"]["name"]
        try:
            end = self._launch_and_wait(body, policy, name)
            stdout = self._log(end, policy) if end.started else b""
            return self._collect(end, stage, request, policy), stdout
        finally:
            self._delete(name)

    def _launch_and_wait(self, body: dict[str, Any], policy: SandboxPolicy, name: str) -> JobEnd:
        try:
            # The client serialises a plain dict body as it is; its stubs name only V1Job.
            self._batch.create_namespaced_job(self.namespace, body)  # type: ignore[arg-type]
        except self._errors as error:
            return JobEnd(Outcome.LAUNCH_FAILED, None, False, None, f"Job not created: {_describe(error)}")
        self._count("sandbox_starts", BACKEND, self.purpose)
        deadline = time.monotonic() + policy.wall_seconds + self.startup_grace_seconds
        try:
            job = self._wait(name, deadline)
            return _job_end(job, self._pod(name))
        except self._errors as error:
            return JobEnd(Outcome.LAUNCH_FAILED, None, False, None, f"lost track of the Job: {_describe(error)}")

    def _wait(self, name: str, deadline: float) -> dict[str, Any] | None:
        """The Job once finished (Complete or Failed), or None when our own deadline passes first."""
        while (left := deadline - time.monotonic()) > 0:
            for job in self._job_events(name, max(1, int(left))):
                if _finished(job):
                    return job
                if time.monotonic() >= deadline:
                    return None
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))  # the watch ended: look again
        return None

    def _job_events(self, name: str, timeout: int) -> Iterator[dict[str, Any]]:
        stream = self._watch_factory()
        events = stream.stream(self._batch.list_namespaced_job, self.namespace,
                               field_selector=f"metadata.name={name}", timeout_seconds=timeout)
        try:
            for event in events:
                if event["type"] in ("ADDED", "MODIFIED"):
                    yield event["raw_object"]
                elif event["type"] == "DELETED":
                    raise self._api_exception(status=410, reason="the Job was deleted by someone else")
        finally:
            stream.stop()

    def _pod(self, name: str) -> dict[str, Any] | None:
        pods = self._batch.api_client.sanitize_for_serialization(
            self._core.list_namespaced_pod(self.namespace, label_selector=f"batch.kubernetes.io/job-name={name}"))
        items = pods.get("items") or []
        return max(items, key=lambda pod: pod["metadata"].get("creationTimestamp", "")) if items else None

    def _log(self, end: JobEnd, policy: SandboxPolicy) -> bytes:
        if end.pod is None:
            return b""
        try:
            text = self._core.read_namespaced_pod_log(end.pod, self.namespace, container="worker",
                                                      limit_bytes=policy.max_log_bytes)
        except self._errors as error:
            log.warning("worker log unavailable: %s", _describe(error))
            return b""
        data = text.encode() if isinstance(text, str) else bytes(text or b"")
        return data[: policy.max_log_bytes]

    def _collect(self, end: JobEnd, stage: Path, request: SandboxRequest, policy: SandboxPolicy) -> JobEnd:
        if request.output_dir is None or end.outcome is not Outcome.EXITED:
            return end
        if _tree_bytes(stage / "out") > policy.max_output_bytes:
            return replace(end, outcome=Outcome.OUTPUT_TOO_LARGE, detail="output over max_output_bytes")
        _copy_regular(stage / "out", request.output_dir)
        return end

    def _delete(self, name: str) -> None:
        try:
            self._batch.delete_namespaced_job(name, self.namespace, propagation_policy="Background",
                                              grace_period_seconds=0)
        except self._errors as error:
            if getattr(error, "status", None) != 404:  # the TTL controller removes it later anyway
                log.warning("could not delete Job %s: %s", name, _describe(error))

    def _result(self, end: JobEnd, stdout: bytes, seconds: float) -> SandboxResult:
        if end.outcome is Outcome.LAUNCH_FAILED:
            self._count("sandbox_failures", BACKEND, self.purpose)
        elif end.outcome is not Outcome.EXITED:
            self._count("sandbox_kills", BACKEND, end.outcome.value)
        if self._metrics is not None:
            self._metrics.sandbox_duration.labels(self.purpose).observe(seconds)
        reason = f"Kubernetes Job in {self.namespace} (gVisor): {end.detail}"
        return SandboxResult(end.outcome, end.exit_code, stdout, b"", BACKEND, reason, seconds)

    def _count(self, metric: str, *labels: str) -> None:
        if self._metrics is not None:
            getattr(self._metrics, metric).labels(*labels).inc()


def _describe(error: Exception) -> str:
    status = getattr(error, "status", None)
    return f"HTTP {status} {getattr(error, 'reason', '')}".strip() if status else type(error).__name__


def _stage(stage: Path, request: SandboxRequest) -> None:
    stage.mkdir(mode=0o750)  # not parents: a missing volume must fail, not be created on the root disk
    (stage / "in").mkdir(mode=0o750)
    (stage / "out").mkdir(mode=0o770)
    for key, source in request.inputs.items():
        target = stage / "in" / key
        if Path(source).is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
    if request.stdin:
        (stage / "stdin").write_bytes(request.stdin)


def _finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def _job_end(job: dict[str, Any] | None, pod: dict[str, Any] | None) -> JobEnd:
    """Maps the Job's final condition and its pod's container state to a sandbox outcome."""
    state = _container_state(pod)
    terminated = state.get("terminated")
    pod_name = pod["metadata"]["name"] if pod else None
    if terminated is None and "running" not in state:
        why = (state.get("waiting") or {}).get("reason") or "not scheduled"
        return JobEnd(Outcome.LAUNCH_FAILED, None, False, pod_name, f"the worker never started ({why})")
    if job is None:
        return JobEnd(Outcome.WALL_TIME, None, True, pod_name, "no result before the server's own deadline")
    if _failure_reason(job) == "DeadlineExceeded":
        return JobEnd(Outcome.WALL_TIME, None, True, pod_name, "killed at activeDeadlineSeconds")
    if terminated is None:
        return JobEnd(Outcome.LAUNCH_FAILED, None, True, pod_name, "the Job ended without a terminated container")
    if terminated.get("reason") == "OOMKilled":
        return JobEnd(Outcome.MEMORY, None, True, pod_name, "killed for memory (OOMKilled)")
    return JobEnd(Outcome.EXITED, int(terminated.get("exitCode", -1)), True, pod_name, "exited")


def _failure_reason(job: dict[str, Any]) -> str | None:
    conditions = (job.get("status") or {}).get("conditions") or []
    return next((c.get("reason") for c in conditions if c.get("type") == "Failed" and c.get("status") == "True"), None)


def _container_state(pod: dict[str, Any] | None) -> dict[str, Any]:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    worker = next((s for s in statuses if s.get("name") == "worker"), None)
    return (worker or {}).get("state") or {}


def _tree_bytes(root: Path) -> int:
    return sum(entry.stat(follow_symlinks=False).st_size for entry in _walk(root) if entry.is_file(follow_symlinks=False))


def _walk(root: Path) -> Iterator[os.DirEntry[str]]:
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(Path(entry.path))
            yield entry


def _copy_regular(source: Path, target: Path) -> None:
    """Copies files and directories only. A link a worker left could point at the server's own files
    (the server resolves it, not the worker), so links, devices and sockets are dropped."""
    target.mkdir(parents=True, exist_ok=True)
    with os.scandir(source) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _copy_regular(Path(entry.path), target / entry.name)
            elif entry.is_file(follow_symlinks=False):
                _copy_file(Path(entry.path), target / entry.name)
            else:
                log.warning("worker output %s is not a regular file: dropped", entry.name)


def _copy_file(source: Path, target: Path) -> None:
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as reader, target.open("wb") as writer:
        shutil.copyfileobj(reader, writer)
