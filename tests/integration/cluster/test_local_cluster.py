"""The local control plane is a real Kubernetes: real scheduling, controllers, RBAC and TLS."""

from __future__ import annotations

import ipaddress
import json
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infleet_devcluster.nodepools import load_pools, node_name
from tests.conftest import TestCluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def ns(cluster: TestCluster) -> Iterator[str]:
    name = f"it-cluster-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 60
    while cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode != 0:
        assert time.monotonic() < deadline, "default ServiceAccount never appeared"
        time.sleep(0.5)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False)


def _get(cluster: TestCluster, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return out


def _eventually(what: str, check: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for: {what}")


def test_every_pool_has_its_nodes_with_declared_allocatable(cluster: TestCluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in _get(cluster, "nodes")["items"]}
    for pool in load_pools():
        for i in range(pool.count):
            node = nodes[node_name(pool, i)]
            labels = node["metadata"]["labels"]
            assert labels["karpenter.sh/nodepool"] == pool.name
            assert labels["karpenter.sh/capacity-type"] == pool.capacity_type
            for key, value in pool.labels.items():
                assert labels[key] == value
            for resource, qty in pool.allocatable.items():
                assert node["status"]["allocatable"][resource] == qty, (node_name(pool, i), resource)
            ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
            assert ready and ready[0]["status"] == "True"
            assert {t["key"] for t in node["spec"].get("taints", [])} >= {t["key"] for t in pool.taints}


def _pod(name: str, resource: str, toleration_key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "w", "image": "example.invalid/worker:1",
                            "resources": {"limits": {resource: "1"}, "requests": {resource: "1"}}}],
            "tolerations": [{"key": toleration_key, "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


@pytest.mark.parametrize(
    ("resource", "toleration", "expected_label", "expected_values"),
    [
        ("nvidia.com/gpu", "nvidia.com/gpu", "nvidia.com/gpu.product", {"NVIDIA-H100-80GB-HBM3", "NVIDIA-L4"}),
        ("google.com/tpu", "google.com/tpu", "cloud.google.com/gke-tpu-accelerator", {"tpu-v5-lite-podslice"}),
        ("aws.amazon.com/neuron", "aws.amazon.com/neuron", "aws.amazon.com/neuron.product", {"inferentia2"}),
    ],
)
def test_accelerator_pod_lands_on_matching_node_and_runs(
    cluster: TestCluster, ns: str, resource: str, toleration: str, expected_label: str, expected_values: set[str]
) -> None:
    name = f"p-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(_pod(name, resource, toleration)))

    def running() -> bool:
        pod = _get(cluster, "pod", name, "-n", ns)
        return pod["status"].get("phase") == "Running" and bool(pod["spec"].get("nodeName"))

    _eventually(f"pod {name} requesting {resource} Running", running)
    pod = _get(cluster, "pod", name, "-n", ns)
    node = _get(cluster, "node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"].get(expected_label) in expected_values
    # Simulated pods get loopback addresses: whatever dials them (the operator's metrics scrape) stays local.
    assert ipaddress.ip_address(pod["status"]["podIP"]).is_loopback


def test_pod_without_toleration_stays_off_tainted_accelerator_nodes(cluster: TestCluster, ns: str) -> None:
    """Asking for a GPU without tolerating the GPU taint is unschedulable: the taints are real."""
    pod = _pod(f"untol-{uuid.uuid4().hex[:6]}", "nvidia.com/gpu", "unrelated")
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))
    name = pod["metadata"]["name"]

    def unschedulable() -> bool:
        conds = _get(cluster, "pod", name, "-n", ns)["status"].get("conditions", [])
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conds)

    _eventually("scheduler reports Unschedulable", unschedulable, timeout=60)


def test_deployment_scales_through_controller_manager(cluster: TestCluster, ns: str) -> None:
    dep = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"nodeSelector": {"karpenter.sh/nodepool": "cpu-on-demand"},
                         "containers": [{"name": "web", "image": "example.invalid/web:1",
                                         "resources": {"requests": {"cpu": "1"}}}]},
            },
        },
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(dep))

    def ready(n: int) -> Callable[[], bool]:
        return lambda: _get(cluster, "deployment", "web", "-n", ns)["status"].get("readyReplicas", 0) == n

    _eventually("2 ready replicas", ready(2))
    cluster.kubectl("scale", "deployment/web", "-n", ns, "--replicas=5")
    _eventually("5 ready replicas", ready(5))
    pods = _get(cluster, "pods", "-n", ns, "-l", "app=web")["items"]
    assert len(pods) == 5
    assert all(p["spec"]["nodeName"].startswith("cpu-on-demand-") for p in pods)


def test_rbac_is_enforced_for_a_narrow_service_account(cluster: TestCluster, ns: str, tmp_path: Path) -> None:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "pod-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "narrow", "namespace": ns}],
    }
    cluster.kubectl("create", "serviceaccount", "narrow", "-n", ns)
    for obj in (role, binding):
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj))
    token = cluster.kubectl("create", "token", "narrow", "-n", ns).stdout.strip()
    # A kubeconfig holding only the server, its CA and the SA token: no admin client certificate is sent.
    cfg = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cfg["users"] = [{"name": "narrow", "user": {"token": token}}]
    cfg["contexts"][0]["context"]["user"] = "narrow"
    sa_kubeconfig = tmp_path / "narrow.kubeconfig"
    sa_kubeconfig.write_text(json.dumps(cfg))
    as_sa = ("--kubeconfig", str(sa_kubeconfig))

    allowed = cluster.kubectl("get", "pods", "-n", ns, *as_sa, check=False)
    assert allowed.returncode == 0, allowed.stderr
    denied = cluster.kubectl("create", "configmap", "x", "-n", ns, *as_sa, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    other_ns = cluster.kubectl("get", "pods", "-n", "kube-system", *as_sa, check=False)
    assert other_ns.returncode != 0 and "forbidden" in other_ns.stderr.lower()


def test_apiserver_requires_tls_client_authentication(cluster: TestCluster) -> None:
    if not cluster.local.layout.kubeconfig.samefile(cluster.kubeconfig):
        pytest.skip("checks the local control plane's own TLS set-up")
    ca = ssl.create_default_context(cafile=str(cluster.local.layout.pki / "ca.crt"))
    r = httpx.get(f"{cluster.local.server}/api/v1/namespaces", verify=ca, timeout=5)
    assert r.status_code in (401, 403)  # anonymous: authenticated nowhere, authorized for nothing
    plain = httpx.get(cluster.local.server.replace("https://", "http://") + "/readyz", timeout=5)
    assert plain.status_code == 400 and "HTTPS" in plain.text  # no plaintext listener at all
