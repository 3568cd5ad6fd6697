"""The Kubernetes Job for one sandboxed worker, rendered by a pure function (no client, no I/O).

The rendering is the security boundary's description, so it is kept apart from the code that talks
to the API server and tested on its own against the Kubernetes schema (kubernetes-validate --strict).

Inputs and outputs travel through one shared volume (a ReadWriteMany PersistentVolumeClaim named
`claim` in the worker namespace; the server mounts the same storage through its own claim). Each
Job sees only its own subdirectory, by subPath: `<name>/in` read-only at /in, `<name>/out` writable
at /out, and `<name>/stdin` (a file) at /run/cleanroom/stdin when the request has standard input.
"""

from __future__ import annotations

import math
import re
from typing import Any

from cleanroom.sandbox.base import SandboxPolicy, SandboxRequest

PURPOSES = frozenset({"intake", "training", "evaluation", "statistics"})
RUNTIME_CLASS = "gvisor"
WORKER_UID = 10001
TTL_SECONDS_AFTER_FINISHED = 300
STDIN_PATH = "/run/cleanroom/stdin"
# Read standard input from a file, then become the requested command: Jobs have no stdin of their own.
_STDIN_SHIM = "import os,sys; f=os.open(sys.argv[1],os.O_RDONLY); os.dup2(f,0); os.close(f); os.execvp(sys.argv[2],sys.argv[2:])"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_INPUT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def render_worker_job(
    request: SandboxRequest,
    policy: SandboxPolicy,
    *,
    image: str,
    namespace: str,
    name: str,
    purpose: str,
    claim: str = "cleanroom-jobs",
    cpu: str = "1",
) -> dict[str, Any]:
    """A batch/v1 Job (as a plain dict) that runs `request` once under `policy`, in gVisor."""
    _check(request, name=name, purpose=purpose)
    labels = {
        "app.kubernetes.io/name": "cleanroom-worker",
        "app.kubernetes.io/part-of": "cleanroom",
        "cleanroom.dev/purpose": purpose,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels),
            "annotations": {"cleanroom.dev/sandbox-policy": policy.digest()},
        },
        "spec": _job_spec(request, policy, image=image, name=name, labels=labels, claim=claim, cpu=cpu),
    }


def _check(request: SandboxRequest, *, name: str, purpose: str) -> None:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown worker purpose {purpose!r}; expected one of {sorted(PURPOSES)}")
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a valid Job name (DNS-1123 label, at most 63 characters)")
    if not request.argv:
        raise ValueError("the request has no command")
    bad = [key for key in request.inputs if not _INPUT.match(key)]
    if bad:
        raise ValueError(f"input names must be plain file names: {bad}")


def _job_spec(request: SandboxRequest, policy: SandboxPolicy, *, image: str, name: str,
              labels: dict[str, str], claim: str, cpu: str) -> dict[str, Any]:
    return {
        "backoffLimit": 0,  # a failure is information too: never run the same work twice
        "activeDeadlineSeconds": max(1, math.ceil(policy.wall_seconds)),
        "ttlSecondsAfterFinished": TTL_SECONDS_AFTER_FINISHED,
        "completions": 1,
        "parallelism": 1,
        "template": {
            "metadata": {"labels": dict(labels)},
            "spec": _pod_spec(request, policy, image=image, name=name, claim=claim, cpu=cpu),
        },
    }


def _pod_spec(request: SandboxRequest, policy: SandboxPolicy, *, image: str, name: str,
              claim: str, cpu: str) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "runtimeClassName": RUNTIME_CLASS,
        "serviceAccountName": "cleanroom-worker",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,  # the environment holds only what the request names
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "terminationGracePeriodSeconds": 5,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(request, policy, image=image, name=name, cpu=cpu)],
        "volumes": [
            {"name": "work", "persistentVolumeClaim": {"claimName": claim}},
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": str(policy.tmpfs_bytes)}},
        ],
    }


def _container(request: SandboxRequest, policy: SandboxPolicy, *, image: str, name: str, cpu: str) -> dict[str, Any]:
    return {
        "name": "worker",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": _command(request),
        "workingDir": request.workdir,
        "env": [{"name": key, "value": value} for key, value in sorted(request.env.items())],
        "resources": _resources(policy, cpu),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": _mounts(request, name),
        "terminationMessagePolicy": "File",
    }


def _command(request: SandboxRequest) -> list[str]:
    if not request.stdin:
        return list(request.argv)
    return ["python3", "-c", _STDIN_SHIM, STDIN_PATH, *request.argv]


def _resources(policy: SandboxPolicy, cpu: str) -> dict[str, dict[str, str]]:
    # Requests equal limits: the worker gets the Guaranteed QoS class and a fixed share of the node.
    # Writable local disk is only /tmp (memory) and the container log, so ephemeral storage is small.
    limits = {
        "cpu": cpu,
        "memory": str(policy.memory_bytes),
        "ephemeral-storage": str(policy.max_file_bytes),
    }
    return {"requests": dict(limits), "limits": limits}


def _mounts(request: SandboxRequest, name: str) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "work", "mountPath": "/in", "subPath": f"{name}/in", "readOnly": True},
        {"name": "work", "mountPath": "/out", "subPath": f"{name}/out"},  # always there: the default workdir
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if request.stdin:
        mounts.append({"name": "work", "mountPath": STDIN_PATH, "subPath": f"{name}/stdin", "readOnly": True})
    return mounts
