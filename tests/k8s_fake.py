"""A recorded fake of the Kubernetes API server, for KubernetesLauncher's tests.

A fake stands in for the API server, because none can run on the build machines. It sits below the
official client, in place of its REST layer: the real `kubernetes.client` validates the arguments,
builds every URL and query, serialises every body and decodes every answer and watch stream; the
fake records each request and answers from a script (`Worker`) of what the cluster would do with
the Job: whether the worker starts, how it ends, what it logs and which files it writes to /out.
It also refuses a Job that the Kubernetes schema refuses (kubernetes-validate --strict) or whose
namespace differs from the URL's, as the API server would. It does not schedule pods, run gVisor,
enforce limits or evaluate admission policies.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
from kubernetes import client
from kubernetes.client import rest

K8S_VERSION = "1.30.0"
CREATED = "2026-01-01T00:00:00Z"


@dataclass
class Worker:
    """What the pretend cluster does with the next Job."""

    exit_code: int = 0
    log: str = ""
    outputs: dict[str, bytes] = field(default_factory=dict)   # files the worker leaves in /out
    links: dict[str, str] = field(default_factory=dict)       # symlinks it leaves in /out: name -> target
    terminated_reason: str = ""        # "OOMKilled"; default "Completed" or "Error" by exit code
    deadline_exceeded: bool = False    # the Job controller kills it at activeDeadlineSeconds
    waiting_reason: str = ""           # e.g. "ImagePullBackOff": the container never starts
    finishes: bool = True              # False: the Job never reports Complete or Failed
    create_status: int = 201           # e.g. 403: the API server refuses to create the Job


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any


class FakeHTTPResponse:
    """The part of urllib3's response that the client and its Watch read."""

    def __init__(self, status: int, data: bytes, content_type: str = "application/json") -> None:
        self.status, self.data = status, data
        self.reason = {200: "OK", 201: "Created", 404: "Not Found", 403: "Forbidden", 422: "Unprocessable Entity"}.get(status, "Error")
        self.headers = {"content-type": content_type}

    def stream(self, amt: int | None = None, decode_content: bool = False):
        yield from (line + b"\n" for line in self.data.splitlines())

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class FakeApiServer:
    def __init__(self, worker: Worker, work_root: Path) -> None:
        self.worker, self.work_root = worker, work_root
        self.requests: list[Recorded] = []
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.seen_inputs: dict[str, dict[str, bytes]] = {}   # job name -> files in /in when it was created
        self.seen_stdin: dict[str, bytes] = {}
        self._routes = [
            ("GET", r"/apis/batch/v1/namespaces/([^/]+)/jobs", self._list_or_watch_jobs),
            ("POST", r"/apis/batch/v1/namespaces/([^/]+)/jobs", self._create_job),
            ("DELETE", r"/apis/batch/v1/namespaces/([^/]+)/jobs/([^/]+)", self._delete_job),
            ("GET", r"/api/v1/namespaces/([^/]+)/pods", self._list_pods),
            ("GET", r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log", self._read_log),
        ]

    def api_client(self) -> client.ApiClient:
        configuration = client.Configuration(host="https://apiserver.fake.invalid")
        api = client.ApiClient(configuration)
        api.rest_client = self  # every request of the real client lands in request() below
        return api

    def calls(self, method: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if method is None or r.method == method]

    # The REST layer's one method, with RESTClientObject.request's signature.
    def request(self, method, url, headers=None, body=None, post_params=None, _request_timeout=None) -> rest.RESTResponse:
        parts = urlsplit(url)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        self.requests.append(Recorded(method, parts.path, query, body))
        for route_method, pattern, handler in self._routes:
            match = re.fullmatch(pattern, parts.path)
            if route_method == method and match:
                return rest.RESTResponse(handler(query, body, *match.groups()))
        return rest.RESTResponse(_status(404, f"no route for {method} {parts.path}"))

    def _create_job(self, query: dict[str, str], body: dict[str, Any], namespace: str) -> FakeHTTPResponse:
        if self.worker.create_status != 201:
            return _status(self.worker.create_status, "jobs.batch is forbidden")
        if body.get("metadata", {}).get("namespace", namespace) != namespace:
            return _status(400, "the namespace of the object does not match the namespace on the request")
        try:
            kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            return _status(422, f"Job is invalid: {error.message}")
        name = body["metadata"]["name"]
        job = {**body, "metadata": {**body["metadata"], "uid": f"uid-{name}", "resourceVersion": "1",
                                    "creationTimestamp": CREATED}, "status": {}}
        self.jobs[(namespace, name)] = job
        self._run_worker(name)
        return FakeHTTPResponse(201, json.dumps(job).encode())

    def _run_worker(self, name: str) -> None:
        stage = self.work_root / name
        self.seen_inputs[name] = {str(p.relative_to(stage / "in")): p.read_bytes()
                                  for p in sorted((stage / "in").rglob("*")) if p.is_file()}
        if (stage / "stdin").exists():
            self.seen_stdin[name] = (stage / "stdin").read_bytes()
        if self.worker.waiting_reason:
            return
        for relative, content in self.worker.outputs.items():
            (stage / "out" / relative).parent.mkdir(parents=True, exist_ok=True)
            (stage / "out" / relative).write_bytes(content)
        for relative, target in self.worker.links.items():
            (stage / "out" / relative).symlink_to(target)

    def _list_or_watch_jobs(self, query: dict[str, str], body: Any, namespace: str) -> FakeHTTPResponse:
        jobs = [job for (ns, _), job in self.jobs.items() if ns == namespace]
        if query.get("watch") not in ("true", "True"):
            return FakeHTTPResponse(200, json.dumps({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {},
                                                     "items": jobs}).encode())
        wanted = query.get("fieldSelector", "").removeprefix("metadata.name=")
        job = next((j for j in jobs if j["metadata"]["name"] == wanted), None)
        lines = [json.dumps({"type": kind, "object": state}) for kind, state in self._history(job)] if job else []
        return FakeHTTPResponse(200, "\n".join(lines).encode())

    def _history(self, job: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The Job as a watch would see it: created, running, then (when the script says so) finished."""
        running = {**job, "status": {"active": 1, "startTime": CREATED}}
        events = [("ADDED", {**job, "status": {}}), ("MODIFIED", running)]
        if self.worker.finishes:
            events.append(("MODIFIED", {**job, "status": self._final_status()}))
        return events

    def _final_status(self) -> dict[str, Any]:
        if self.worker.deadline_exceeded:
            condition = ("Failed", "DeadlineExceeded")
        elif self.worker.exit_code == 0 and not self.worker.terminated_reason and not self.worker.waiting_reason:
            condition = ("Complete", "")
        else:
            condition = ("Failed", "BackoffLimitExceeded")
        done = {"type": condition[0], "status": "True", "lastProbeTime": CREATED, "lastTransitionTime": CREATED}
        if condition[1]:
            done["reason"] = condition[1]
        counts = {"succeeded": 1} if condition[0] == "Complete" else {"failed": 1}
        return {"conditions": [done], "startTime": CREATED, **counts}

    def _list_pods(self, query: dict[str, str], body: Any, namespace: str) -> FakeHTTPResponse:
        job_name = query.get("labelSelector", "").removeprefix("batch.kubernetes.io/job-name=")
        pods = [self._pod(namespace, job_name)] if (namespace, job_name) in self.jobs else []
        return FakeHTTPResponse(200, json.dumps({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                                                 "items": pods}).encode())

    def _pod(self, namespace: str, job_name: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{job_name}-x7k2p", "namespace": namespace, "creationTimestamp": CREATED,
                         "labels": {"batch.kubernetes.io/job-name": job_name}},
            "status": {"phase": "Pending" if self.worker.waiting_reason else "Failed",
                       "containerStatuses": [{"name": "worker", "image": "worker", "imageID": "", "ready": False,
                                              "restartCount": 0, "state": self._container_state()}]},
        }

    def _container_state(self) -> dict[str, Any]:
        if self.worker.waiting_reason:
            return {"waiting": {"reason": self.worker.waiting_reason}}
        if not self.worker.finishes or self.worker.deadline_exceeded:
            return {"running": {"startedAt": CREATED}}
        reason = self.worker.terminated_reason or ("Completed" if self.worker.exit_code == 0 else "Error")
        code = 137 if reason == "OOMKilled" else self.worker.exit_code
        return {"terminated": {"exitCode": code, "reason": reason, "startedAt": CREATED, "finishedAt": CREATED}}

    def _read_log(self, query: dict[str, str], body: Any, namespace: str, pod: str) -> FakeHTTPResponse:
        limit = int(query.get("limitBytes", "0") or 0)
        data = self.worker.log.encode()
        return FakeHTTPResponse(200, data[:limit] if limit else data, "text/plain")

    def _delete_job(self, query: dict[str, str], body: Any, namespace: str, name: str) -> FakeHTTPResponse:
        if self.jobs.pop((namespace, name), None) is None:
            return _status(404, f'jobs.batch "{name}" not found')
        return FakeHTTPResponse(200, json.dumps({"apiVersion": "v1", "kind": "Status", "metadata": {},
                                                 "status": "Success"}).encode())


def _status(code: int, message: str) -> FakeHTTPResponse:
    body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "message": message, "code": code}
    return FakeHTTPResponse(code, json.dumps(body).encode())
