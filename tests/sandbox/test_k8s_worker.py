"""The Kubernetes worker backend: the rendered Job (pure, validated against the Kubernetes schema)
and the launcher's client calls against a recorded fake API server (tests/k8s_fake.py).

A fake stands in for the API server, because none can run on the build machines: these tests
prove what the launcher sends and how it reads the answers, not that a cluster runs the Job.
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes import client

from cleanroom.observability.metrics import Metrics
from cleanroom.sandbox.base import Outcome, SandboxPolicy, SandboxRequest
from cleanroom.sandbox.k8s_render import render_worker_job
from cleanroom.sandbox.kubernetes import KubernetesLauncher
from tests.k8s_fake import FakeApiServer, Worker
from tests.sandbox.test_k8s import K8S_VERSIONS

NAMESPACE = "cleanroom-workers"
POLICY = SandboxPolicy(wall_seconds=30, memory_bytes=1 << 30, max_log_bytes=64, max_output_bytes=1024)


def _request(tmp_path: Path, **changes) -> SandboxRequest:
    model = tmp_path / "model.zip"
    model.write_bytes(b"PK-model")
    (tmp_path / "result").mkdir(exist_ok=True)
    values = {"argv": ("python3", "-m", "cleanroom.models.intake.worker"), "inputs": {"model.zip": model},
              "output_dir": tmp_path / "result", "env": {"LANG": "C.UTF-8"}}
    values.update(changes)
    return SandboxRequest(**values)


def _render(request: SandboxRequest, **changes) -> dict:
    values = {"image": "cleanroom:0.1.0", "namespace": NAMESPACE, "name": "cleanroom-intake-0123456789",
              "purpose": "intake"}
    values.update(changes)
    return render_worker_job(request, POLICY, **values)


@pytest.fixture
def cluster(tmp_path: Path):
    def make(worker: Worker, **options) -> tuple[FakeApiServer, KubernetesLauncher, Metrics]:
        work = tmp_path / "jobs"
        work.mkdir(exist_ok=True)
        fake, metrics = FakeApiServer(worker, work), Metrics()
        launcher = KubernetesLauncher(fake.api_client(), image="cleanroom:0.1.0", purpose="intake", work_root=work,
                                      startup_grace_seconds=options.pop("grace", 5), metrics=metrics, **options)
        return fake, launcher, metrics
    return make


# --- rendering (pure) ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("changes", [{}, {"stdin": b"{}"}, {"output_dir": None, "inputs": {}, "env": {}}],
                         ids=["plain", "stdin", "bare"])
def test_rendered_job_validates_strictly(tmp_path, version, changes) -> None:
    kubernetes_validate.validate(_render(_request(tmp_path, **changes)), version, strict=True)


def test_rendered_job_is_locked_down(tmp_path) -> None:
    job = _render(_request(tmp_path))
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (0, 30, 300)
    pod = spec["template"]["spec"]
    assert pod["runtimeClassName"] == "gvisor" and pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False and pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["env"] == [{"name": "LANG", "value": "C.UTF-8"}]
    assert container["resources"]["limits"]["memory"] == str(1 << 30) == container["resources"]["requests"]["memory"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/in"]["readOnly"] is True and mounts["/in"]["subPath"] == "cleanroom-intake-0123456789/in"
    assert mounts["/out"]["subPath"] == "cleanroom-intake-0123456789/out" and not mounts["/out"].get("readOnly")
    assert job["metadata"]["annotations"]["cleanroom.dev/sandbox-policy"] == POLICY.digest()


def test_stdin_comes_from_a_read_only_file(tmp_path) -> None:
    container = _render(_request(tmp_path, stdin=b"data"))["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["python3", "-c"]
    assert container["command"][3:] == ["/run/cleanroom/stdin", "python3", "-m", "cleanroom.models.intake.worker"]
    stdin = next(m for m in container["volumeMounts"] if m["mountPath"] == "/run/cleanroom/stdin")
    assert stdin["readOnly"] is True


@pytest.mark.parametrize("changes, message", [
    ({"purpose": "mining"}, "purpose"), ({"name": "Bad_Name"}, "Job name"), ({"name": "x" * 64}, "Job name"),
])
def test_render_refuses_bad_arguments(tmp_path, changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        _render(_request(tmp_path), **changes)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", ""])
def test_render_refuses_input_names_that_are_not_plain_files(tmp_path, name) -> None:
    with pytest.raises(ValueError, match="input names"):
        _render(_request(tmp_path, inputs={name: tmp_path / "model.zip"}))


def test_the_real_client_model_keeps_every_field(tmp_path) -> None:
    """V1Job from the official client round-trips the rendering: no field is unknown to it."""
    job = _render(_request(tmp_path, stdin=b"x"))
    assert client.ApiClient().sanitize_for_serialization(client.V1Job.from_dict(job)) == job


# --- the launcher against the recorded fake --------------------------------------------------------

def test_successful_run_records_every_call(cluster, tmp_path) -> None:
    fake, launcher, metrics = cluster(Worker(exit_code=0, log="intake ok\n", outputs={"program.pt2": b"graph", "sub/meta.json": b"{}"}))
    request = _request(tmp_path, stdin=b"params")
    result = launcher.run(request, POLICY)
    assert (result.outcome, result.exit_code, result.stdout, result.stderr) == (Outcome.EXITED, 0, b"intake ok\n", b"")
    assert result.ok and result.backend == "kubernetes"
    calls = [(r.method, r.path.rsplit("/", 2)[-2:] if r.method == "DELETE" else r.path.rsplit("/", 1)[-1]) for r in fake.requests]
    name = fake.calls("POST")[0].body["metadata"]["name"]
    assert calls == [("POST", "jobs"), ("GET", "jobs"), ("GET", "pods"), ("GET", "log"), ("DELETE", ["jobs", name])]
    post, watch, pods, log, delete = fake.requests
    assert post.body == render_worker_job(request, POLICY, image="cleanroom:0.1.0", namespace=NAMESPACE, name=name, purpose="intake")
    assert watch.query["watch"] == "true" and watch.query["fieldSelector"] == f"metadata.name={name}"
    assert pods.query["labelSelector"] == f"batch.kubernetes.io/job-name={name}"
    assert log.query == {"container": "worker", "limitBytes": "64"}
    assert delete.query["propagationPolicy"] == "Background"
    assert fake.seen_inputs[name] == {"model.zip": b"PK-model"} and fake.seen_stdin[name] == b"params"
    assert (tmp_path / "result" / "program.pt2").read_bytes() == b"graph"
    assert (tmp_path / "result" / "sub" / "meta.json").read_bytes() == b"{}"
    assert not (tmp_path / "jobs" / name).exists() and not fake.jobs
    assert _sample(metrics, "cleanroom_sandbox_starts_total", backend="kubernetes", purpose="intake") == 1


@pytest.mark.parametrize("worker, outcome, exit_code, kill", [
    (Worker(exit_code=3, log="Traceback"), Outcome.EXITED, 3, None),
    (Worker(terminated_reason="OOMKilled"), Outcome.MEMORY, None, "memory"),
    (Worker(deadline_exceeded=True), Outcome.WALL_TIME, None, "wall_time"),
    (Worker(waiting_reason="ImagePullBackOff", deadline_exceeded=True), Outcome.LAUNCH_FAILED, None, None),
], ids=["exit-3", "oom", "deadline", "never-started"])
def test_job_endings_map_to_outcomes(cluster, tmp_path, worker, outcome, exit_code, kill) -> None:
    worker.outputs = {"partial.bin": b"half"}
    fake, launcher, metrics = cluster(worker)
    result = launcher.run(_request(tmp_path), POLICY)
    assert (result.outcome, result.exit_code) == (outcome, exit_code)
    # Outputs come back only from a worker that exited by itself (the caller judges the exit code).
    copied = [p.name for p in (tmp_path / "result").iterdir()]
    assert copied == (["partial.bin"] if outcome is Outcome.EXITED else [])
    assert len(fake.calls("DELETE")) == 1 and not fake.jobs
    if kill:
        assert _sample(metrics, "cleanroom_sandbox_kills_total", backend="kubernetes", limit=kill) == 1
    if outcome is Outcome.LAUNCH_FAILED:
        assert not any(r.path.endswith("/log") for r in fake.requests)  # no container, no log
        assert "ImagePullBackOff" in result.backend_reason


def test_a_job_that_never_finishes_is_deleted_at_the_servers_deadline(cluster, tmp_path) -> None:
    fake, launcher, _ = cluster(Worker(finishes=False), grace=0.5)
    result = launcher.run(_request(tmp_path), SandboxPolicy(wall_seconds=0.5))
    assert result.outcome is Outcome.WALL_TIME and result.seconds < 10
    assert len([r for r in fake.calls("GET") if r.query.get("watch") == "true"]) >= 1
    assert len(fake.calls("DELETE")) == 1 and not fake.jobs


def test_refused_creation_is_a_launch_failure(cluster, tmp_path) -> None:
    fake, launcher, metrics = cluster(Worker(create_status=403))
    result = launcher.run(_request(tmp_path), POLICY)
    assert result.outcome is Outcome.LAUNCH_FAILED and "403" in result.backend_reason
    assert [r.method for r in fake.requests] == ["POST", "DELETE"]  # no watch; the delete finds nothing (404)
    assert _sample(metrics, "cleanroom_sandbox_failures_total", backend="kubernetes", purpose="intake") == 1
    assert not list((tmp_path / "jobs").iterdir())


def test_output_over_the_limit_is_not_copied(cluster, tmp_path) -> None:
    _, launcher, _ = cluster(Worker(outputs={"weights.safetensors": b"x" * 2048}))
    result = launcher.run(_request(tmp_path), POLICY)
    assert result.outcome is Outcome.OUTPUT_TOO_LARGE
    assert not list((tmp_path / "result").iterdir())


def test_links_left_by_the_worker_are_not_followed(cluster, tmp_path) -> None:
    secret = tmp_path / "kek.json"
    secret.write_text("SERVER-SECRET")
    _, launcher, _ = cluster(Worker(outputs={"ok.bin": b"fine"}, links={"leak.json": str(secret)}))
    result = launcher.run(_request(tmp_path), POLICY)
    assert result.ok
    assert sorted(p.name for p in (tmp_path / "result").iterdir()) == ["ok.bin"]


def test_log_is_cut_to_the_policy_limit(cluster, tmp_path) -> None:
    _, launcher, _ = cluster(Worker(exit_code=1, log="E" * 500))
    assert launcher.run(_request(tmp_path), POLICY).stdout == b"E" * 64


def test_request_is_checked_before_anything_happens(cluster, tmp_path) -> None:
    fake, launcher, _ = cluster(Worker())
    with pytest.raises(ValueError, match="input names"):
        launcher.run(_request(tmp_path, inputs={"../../etc": tmp_path / "model.zip"}), POLICY)
    (tmp_path / "result" / "stale").write_text("x")
    with pytest.raises(ValueError, match="empty"):
        launcher.run(_request(tmp_path), POLICY)
    assert not fake.requests and not list((tmp_path / "jobs").iterdir())


def test_missing_job_volume_is_a_launch_failure_not_a_new_directory(cluster, tmp_path) -> None:
    fake, launcher, _ = cluster(Worker())
    launcher.work_root = tmp_path / "not-mounted"
    result = launcher.run(_request(tmp_path), POLICY)
    assert result.outcome is Outcome.LAUNCH_FAILED and not (tmp_path / "not-mounted").exists()
    assert launcher.available()[0] is False


def test_available_lists_jobs_in_the_worker_namespace(cluster) -> None:
    fake, launcher, _ = cluster(Worker())
    ok, reason = launcher.available()
    assert ok and NAMESPACE in reason
    assert [(r.method, r.path) for r in fake.requests] == [("GET", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs")]


def test_with_purpose_names_and_labels_the_job(cluster, tmp_path) -> None:
    fake, launcher, _ = cluster(Worker())
    launcher.with_purpose("statistics").run(_request(tmp_path), POLICY)
    body = fake.calls("POST")[0].body
    assert body["metadata"]["name"].startswith("cleanroom-statistics-")
    assert body["metadata"]["labels"]["cleanroom.dev/purpose"] == "statistics"
    with pytest.raises(ValueError):
        launcher.with_purpose("mining")


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)
