"""Kubernetes manifests: every overlay renders with `kubectl kustomize`, every resource validates
against the Kubernetes schema with kubernetes-validate --strict, the ServiceMonitor (a custom
resource the validator skips) is checked field by field, and the security properties hold."""

from __future__ import annotations

import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cleanroom.sandbox.base import SandboxPolicy, SandboxRequest
from cleanroom.sandbox.k8s_render import render_worker_job
from cleanroom.server.config import SETTINGS
from tests import tools
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
K8S = ROOT / "k8s"
# The oldest Kubernetes we support (ValidatingAdmissionPolicy v1 is GA from 1.30) and the newest schema shipped.
K8S_VERSIONS = ("1.30.0", "1.37.0")
OVERLAYS = ("dev", "prod")
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")}
SERVER_NS, WORKER_NS = "cleanroom", "cleanroom-workers"


def kustomize(overlay: str) -> list[dict[str, Any]]:
    kubectl = tools.binary("kubectl")
    result = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(request.param)


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
            and (namespace is None or d["metadata"].get("namespace") == namespace)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_templates(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    kinds = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
    return [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]) for d in docs if d["kind"] in kinds]


def worker_template() -> dict[str, Any]:
    return yaml.safe_load((K8S / "worker-job-template.yaml").read_text())


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_resource_validates_strictly(rendered, version: str) -> None:
    _, docs = rendered
    skipped = set()
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
            skipped.add((doc["apiVersion"], doc["kind"]))
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")
    assert skipped == CUSTOM_RESOURCES  # only these skip the schema (their fields are tested below)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_worker_job_template_validates_strictly(version: str) -> None:
    kubernetes_validate.validate(worker_template(), version, strict=True)


def test_no_secret_is_committed_or_rendered(rendered) -> None:
    _, docs = rendered
    assert not find(docs, "Secret")
    for path in K8S.rglob("*.yaml"):
        assert "kind: Secret" not in path.read_text(), path
    readme = (K8S / "README.md").read_text()
    for secret in ("cleanroom-database", "cleanroom-postgres"):
        assert f"kubectl -n cleanroom create secret generic {secret}" in readme


def test_namespaces_enforce_the_restricted_pod_security_profile(rendered) -> None:
    _, docs = rendered
    namespaces = {d["metadata"]["name"]: d["metadata"].get("labels", {}) for d in find(docs, "Namespace")}
    assert set(namespaces) == {SERVER_NS, WORKER_NS}
    for name, labels in namespaces.items():
        assert RESTRICTED.items() <= labels.items(), name
    namespaced = {d["metadata"].get("namespace") for d in docs if d["kind"] not in _CLUSTER_SCOPED}
    assert namespaced <= {SERVER_NS, WORKER_NS}


_CLUSTER_SCOPED = {"Namespace", "RuntimeClass", "PersistentVolume", "ValidatingAdmissionPolicy",
                   "ValidatingAdmissionPolicyBinding", "ClusterRole", "ClusterRoleBinding"}


def _assert_restricted(where: str, pod: dict[str, Any]) -> None:
    context = pod.get("securityContext", {})
    assert context.get("runAsNonRoot") is True, where
    assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
    assert "automountServiceAccountToken" in pod, f"{where}: say explicitly whether the pod gets a token"
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
    assert all("hostPath" not in volume for volume in pod.get("volumes", [])), where
    for container in pod["containers"] + pod.get("initContainers", []):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["capabilities"] == {"drop": ["ALL"]}, where
        assert security.get("privileged", False) is False, where
        assert security.get("runAsUser", context.get("runAsUser", 0)) != 0, where
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), f"{where}: {kind}"


def test_every_pod_is_restricted(rendered) -> None:
    _, docs = rendered
    templates = pod_templates(docs)
    assert templates
    for where, pod in templates:
        _assert_restricted(where, pod)
        assert any(v.get("emptyDir") is not None for v in pod["volumes"] if v["name"] == "tmp"), f"{where}: /tmp"


def test_server_deployment(rendered) -> None:
    overlay, docs = rendered
    deployment = one(docs, "Deployment", "cleanroom", SERVER_NS)
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert server[probe]["grpc"] == {"port": 50051}, probe
        assert not {"httpGet", "tcpSocket", "exec"} & set(server[probe]), probe
    env = {e["name"]: e for e in server["env"]}
    assert env["CLEANROOM_LISTEN"]["value"] == "0.0.0.0:50051"
    assert env["CLEANROOM_METRICS_LISTEN"]["value"] == "0.0.0.0:9464"
    assert env["CLEANROOM_DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "cleanroom-database", "key": "url"}}
    documented = {setting.env for setting in SETTINGS}
    assert {name for name in env if name.startswith("CLEANROOM_")} <= documented
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    state_mount = next(path for path in mounts if env["CLEANROOM_STATE_DIR"]["value"].startswith(path + "/"))
    assert volumes[mounts[state_mount]]["persistentVolumeClaim"]["claimName"] == "cleanroom-state"
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert {p["containerPort"] for p in server["ports"]} == {50051, 9464}
    assert pod["serviceAccountName"] == "cleanroom-server"


def test_service_and_servicemonitor(rendered) -> None:
    _, docs = rendered
    service = one(docs, "Service", "cleanroom", SERVER_NS)
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9464}
    pod_labels = one(docs, "Deployment", "cleanroom")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = one(docs, "ServiceMonitor", "cleanroom", SERVER_NS)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": [SERVER_NS]}
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics" and endpoint["scheme"] == "http"
    assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])
    assert "jobLabel" not in spec  # the job label is then the Service name, "cleanroom", as the alerts expect


def _seconds(duration: str) -> int:
    assert duration.endswith("s"), duration
    return int(duration[:-1])


def test_worker_namespace_denies_all_traffic(rendered) -> None:
    _, docs = rendered
    (policy,) = find(docs, "NetworkPolicy", namespace=WORKER_NS)
    spec = policy["spec"]
    assert spec["podSelector"] == {}
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert not spec.get("ingress") and not spec.get("egress")  # no rule at all: not even DNS


def test_rbac_is_exactly_the_worker_launcher(rendered) -> None:
    _, docs = rendered
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    role = one(docs, "Role")
    assert role["metadata"]["namespace"] == WORKER_NS
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("batch",), ("jobs",)): sorted(["create", "get", "list", "watch", "delete"]),
        (("",), ("pods",)): ["list"],
        (("",), ("pods/log",)): ["get"],
    }
    assert all("resourceNames" not in r and "nonResourceURLs" not in r for r in role["rules"])
    binding = one(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == WORKER_NS
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cleanroom-server", "namespace": SERVER_NS}]
    worker_sa = one(docs, "ServiceAccount", "cleanroom-worker", WORKER_NS)
    assert worker_sa["automountServiceAccountToken"] is False


def test_runtimeclass_and_admission_policies(rendered) -> None:
    _, docs = rendered
    runtime = one(docs, "RuntimeClass", "gvisor")
    assert runtime["handler"] == "runsc"
    policies = {p["metadata"]["name"]: " ".join(v["expression"] for v in p["spec"]["validations"])
                for p in find(docs, "ValidatingAdmissionPolicy")}
    assert "'gvisor'" in policies["cleanroom-worker-pods"] and "automountServiceAccountToken == false" in policies["cleanroom-worker-pods"]
    assert "backoffLimit == 0" in policies["cleanroom-worker-jobs"]
    for binding in find(docs, "ValidatingAdmissionPolicyBinding"):
        assert binding["spec"]["validationActions"] == ["Deny"]
        assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": WORKER_NS}


def test_shared_job_volume_is_one_storage_claimed_from_both_namespaces(rendered) -> None:
    _, docs = rendered
    claims = {d["metadata"]["namespace"]: d for d in find(docs, "PersistentVolumeClaim", "cleanroom-jobs")}
    assert set(claims) == {SERVER_NS, WORKER_NS}
    volumes = {d["metadata"]["name"]: d for d in find(docs, "PersistentVolume")}
    sources = []
    for namespace, claim in claims.items():
        volume = volumes[claim["spec"]["volumeName"]]
        assert volume["spec"]["claimRef"] == {"namespace": namespace, "name": "cleanroom-jobs"}
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"] == volume["spec"]["accessModes"]
        sources.append({k: v for k, v in volume["spec"].items() if k in ("hostPath", "nfs", "csi")})
    assert sources[0] == sources[1]


def test_worker_job_template_matches_the_renderer_and_is_locked_down() -> None:
    template = worker_template()
    expected = render_worker_job(SandboxRequest(argv=("python3", "-c", "print('cleanroom worker smoke test')")),
                                 SandboxPolicy(wall_seconds=120), image="cleanroom:0.1.0", namespace=WORKER_NS,
                                 name="cleanroom-worker-smoke", purpose="intake")
    assert template == expected
    spec = template["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["runtimeClassName"] == "gvisor"
    assert pod["enableServiceLinks"] is False and pod["restartPolicy"] == "Never"
    _assert_restricted("worker Job", pod)


def test_overlays_differ_as_intended(rendered) -> None:
    overlay, docs = rendered
    deployment = one(docs, "Deployment", "cleanroom")
    memory = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    pdb = one(docs, "PodDisruptionBudget", "cleanroom")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    if overlay == "dev":
        assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
        assert memory == "2Gi"
        postgres = one(docs, "StatefulSet", "postgres", SERVER_NS)
        image = postgres["spec"]["template"]["spec"]["containers"][0]["image"]
        assert ":" in image and not image.endswith(":latest")
        assert postgres["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
        one(docs, "Service", "postgres", SERVER_NS)
    else:
        assert deployment["spec"]["replicas"] >= 2
        assert memory == "8Gi"
        assert "minAvailable" in pdb["spec"] and "maxUnavailable" not in pdb["spec"]
        assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
        assert not find(docs, "StatefulSet")  # the database is external, reached through the Secret's URL
        state = one(docs, "PersistentVolumeClaim", "cleanroom-state", SERVER_NS)
        assert state["spec"]["accessModes"] == ["ReadWriteMany"]  # shared by every replica


def test_dashboard_and_rules_ship_as_configmaps(rendered) -> None:
    _, docs = rendered
    dashboard = one(docs, "ConfigMap", "cleanroom-grafana-dashboard", SERVER_NS)
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["cleanroom-dashboard.json"] == (ROOT / "deploy/grafana/cleanroom-dashboard.json").read_text()
    rules = one(docs, "ConfigMap", "cleanroom-prometheus-rules", SERVER_NS)
    assert rules["data"]["cleanroom-alerts.yml"] == (ROOT / "deploy/prometheus/alerts.yml").read_text()


def test_prometheusrule_carries_exactly_the_tested_alerts(rendered) -> None:
    _, docs = rendered
    rule = one(docs, "PrometheusRule", "cleanroom", SERVER_NS)
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"} and set(rule["spec"]) == {"groups"}
    alerts = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"], "regenerate k8s/base/monitoring/prometheusrule.yaml (command in its header)"
