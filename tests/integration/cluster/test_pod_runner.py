"""Pods that really run: in a namespace labelled infleet.dev/run-pods=true every pod on a simulated node gets a real
infleet-worker process on its own loopback IP, and the pod's status follows that process as a kubelet's would."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import TestCluster

pytestmark = pytest.mark.cluster
T = TypeVar("T")
ADMIN_TOKEN = "runner-it-" + uuid.uuid4().hex[:8]
SERVED_NAME = "tiny-from-secret"  # the worker reads INFLEET_SERVED_MODEL_NAME: the Secret's value reaches it


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 90, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def ns(cluster: TestCluster) -> Iterator[str]:
    if not cluster.local.layout.kubeconfig.samefile(cluster.kubeconfig):
        pytest.skip("the pod runner belongs to the local control plane")
    name = f"it-run-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "infleet.dev/run-pods=true")
    wait_for("default ServiceAccount", lambda: cluster.kubectl("get", "sa", "default", "-n", name,
                                                              check=False).returncode == 0, 60)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "infleet-worker-admin"},
              "data": {"token": base64.b64encode(ADMIN_TOKEN.encode()).decode(),
                       "served-name": base64.b64encode(SERVED_NAME.encode()).decode()}}
    cluster.kubectl("apply", "-n", name, "-f", "-", input=json.dumps(secret))
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=60s", check=False)


def worker_deployment(name: str) -> dict[str, Any]:
    """A Deployment shaped like the ones the operator renders (infleet.controller.manifests)."""
    labels = {"app": name, "infleet.io/pool": "cpu-on-demand"}
    container = {
        "name": "worker", "image": "ghcr.io/infleet/worker-cpu:0.1.0", "command": ["infleet-worker"],
        "args": ["serve", "--model", "/models/models/qwen", "--device", "cuda", "--port", "8000", "--state",
                 "serving"],
        "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "env": [{"name": "INFLEET_WORKER_ADMIN_TOKEN",
                 "valueFrom": {"secretKeyRef": {"name": "infleet-worker-admin", "key": "token"}}},
                {"name": "INFLEET_SERVED_MODEL_NAME",
                 "valueFrom": {"secretKeyRef": {"name": "infleet-worker-admin", "key": "served-name"}}}],
        "resources": {"requests": {"cpu": "1"}},
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"nodeSelector": {"karpenter.sh/nodepool": "cpu-on-demand"},
                                           "terminationGracePeriodSeconds": 20, "containers": [container]}}}}


def pods(cluster: TestCluster, ns: str, app: str) -> list[dict[str, Any]]:
    out = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", f"app={app}", "-o", "json").stdout)
    return [p for p in out["items"] if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def worker_of(cluster: TestCluster, ns: str, pod: str) -> dict[str, Any] | None:
    state = json.loads((cluster.local.layout.run / "pod-runner-workers.json").read_text())
    got: dict[str, Any] | None = state.get(f"{ns}/{pod}")
    return got if got and got.get("pid") else None


@pytest.fixture
def running_pod(cluster: TestCluster, ns: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """One worker Deployment; yields (app, its pod once Ready), having recorded that it was Running first."""
    app = f"w-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(worker_deployment(app)))
    seen_running_unready = False

    def pod_ready() -> dict[str, Any] | None:
        nonlocal seen_running_unready
        for p in pods(cluster, ns, app):
            if p["status"].get("phase") == "Running" and p["status"].get("podIP") and not ready(p):
                seen_running_unready = True
            if ready(p):
                return p
        return None

    pod = wait_for(f"{app} Ready", pod_ready, timeout=120, every=0.05)
    assert seen_running_unready, "the pod was never Running-but-not-Ready: readiness did not wait for the worker"
    yield app, pod
    cluster.kubectl("delete", "deployment", app, "-n", ns, "--wait=false", check=False)


def test_pod_turns_ready_only_when_its_worker_answers_on_the_pod_ip(
    cluster: TestCluster, ns: str, running_pod: tuple[str, dict[str, Any]]
) -> None:
    _, pod = running_pod
    ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(ip) in cluster.local.network.running
    assert httpx.get(f"http://{ip}:8000/readyz", timeout=5).status_code == 200
    worker = wait_for("the runner's record of the worker", lambda: worker_of(cluster, ns, pod["metadata"]["name"]))
    assert worker["ip"] == ip and worker["port"] == 8000
    # Readiness follows the worker: a stopped process stops answering and the pod leaves the endpoints.
    os.kill(worker["pid"], signal.SIGSTOP)
    try:
        wait_for("pod not Ready while its worker is stopped",
                 lambda: not ready(json.loads(cluster.kubectl("get", "pod", "-n", ns, pod["metadata"]["name"],
                                                              "-o", "json").stdout)), timeout=30)
    finally:
        os.kill(worker["pid"], signal.SIGCONT)
    wait_for("Ready again", lambda: ready(json.loads(cluster.kubectl("get", "pod", "-n", ns, pod["metadata"]["name"],
                                                                     "-o", "json").stdout)), timeout=30)


def test_completions_answer_on_the_pod_ip(running_pod: tuple[str, dict[str, Any]]) -> None:
    _, pod = running_pod
    r = httpx.post(f"http://{pod['status']['podIP']}:8000/v1/completions", timeout=60,
                   json={"model": SERVED_NAME, "prompt": "Hello", "max_tokens": 8})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] == 8
    assert body["model"] == SERVED_NAME  # the pod's env, resolved from its Secret, reached the worker


def test_deleting_the_pod_sends_sigterm_and_the_worker_drains(
    cluster: TestCluster, ns: str, running_pod: tuple[str, dict[str, Any]]
) -> None:
    _, pod = running_pod
    name = pod["metadata"]["name"]
    worker = wait_for("the runner's record of the worker", lambda: worker_of(cluster, ns, name))
    t0 = time.monotonic()
    cluster.kubectl("delete", "pod", name, "-n", ns, "--wait=true", "--timeout=60s")
    assert time.monotonic() - t0 < 20, "the worker should drain well within the 20 s grace period"
    wait_for("the worker process gone", lambda: not Path(f"/proc/{worker['pid']}").exists(), timeout=10)
    log = Path(worker["log"]).read_text()
    assert "lifecycle: serving -> draining" in log and "drained; exiting" in log  # SIGTERM, not SIGKILL
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{pod['status']['podIP']}:8000/readyz", timeout=2)


def test_a_killed_worker_shows_in_the_pod_status_and_restarts(
    cluster: TestCluster, ns: str, running_pod: tuple[str, dict[str, Any]]
) -> None:
    _, pod = running_pod
    name = pod["metadata"]["name"]
    worker = wait_for("the runner's record of the worker", lambda: worker_of(cluster, ns, name))
    os.kill(worker["pid"], signal.SIGKILL)

    def crashed() -> dict[str, Any] | None:
        p = json.loads(cluster.kubectl("get", "pod", name, "-n", ns, "-o", "json").stdout)
        cs = (p["status"].get("containerStatuses") or [{}])[0]
        last = (cs.get("lastState") or {}).get("terminated") or {}
        return p if last.get("exitCode") == 137 and not ready(p) else None

    p = wait_for("exit code 137 in the pod status", crashed, timeout=30)
    assert p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"

    def restarted() -> dict[str, Any] | None:
        p = json.loads(cluster.kubectl("get", "pod", name, "-n", ns, "-o", "json").stdout)
        return p if ready(p) and p["status"]["containerStatuses"][0]["restartCount"] == 1 else None

    wait_for("the worker restarted after the back-off and Ready again", restarted, timeout=60)


def test_pods_in_other_namespaces_stay_simulated(cluster: TestCluster) -> None:
    name = f"it-sim-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    try:
        wait_for("default ServiceAccount", lambda: cluster.kubectl("get", "sa", "default", "-n", name,
                                                                  check=False).returncode == 0, 60)
        cluster.kubectl("apply", "-n", name, "-f", "-", input=json.dumps(worker_deployment("sim")))
        pod = wait_for("simulated pod Ready", lambda: next((p for p in pods(cluster, name, "sim") if ready(p)), None))
        assert "infleet.dev/run-pods" not in pod["metadata"].get("labels", {})
        assert ipaddress.ip_address(pod["status"]["podIP"]) in cluster.local.network.simulated
        assert worker_of(cluster, name, pod["metadata"]["name"]) is None
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False)


def test_a_llamacpp_pod_runs_its_real_server_on_the_pod_ip(
    cluster: TestCluster, ns: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A Deployment exactly as the operator renders a CPU pool running `llama-cpp`, its model a GGUF written here:
    the runner starts llama-cpp-python's server on the pod IP (not a simulated container), the pod turns Ready on
    the rendered probe path, the server answers the OpenAI API there, and deleting the pod stops it."""
    pytest.importorskip("llama_cpp.server", reason="the llamacpp extra is not installed")
    from infleet.controller.manifests import ContainerOverrides, Owner, PoolRuntime, Workload, render_deployment
    from tests.integration.runtimes.gguf_checkpoint import write_gguf
    from tests.unit.worker.hf_checkpoint import build_checkpoint

    out = tmp_path_factory.mktemp("llama-pod")
    gguf = write_gguf(build_checkpoint(out / "hf").path, out / "tiny.gguf")
    app = f"l-{uuid.uuid4().hex[:5]}"
    owner = Owner("infleet.io/v1alpha1", "InferenceDeployment", app, ns, "uid-1")
    pool = PoolRuntime(name="cpu-on-demand", device="cpu", node_selector={"karpenter.sh/nodepool": "cpu-on-demand"},
                       resource_name="cpu", devices_per_replica=1, units_per_device=1, default_requests={})
    workload = Workload(owner, pool, "serving", 1, "tiny-gguf", ContainerOverrides(engine="llama-cpp"), f"file://{gguf}")
    rendered = render_deployment(workload)
    rendered["metadata"].pop("ownerReferences")  # no InferenceDeployment here to own it
    labels = rendered["spec"]["template"]["metadata"]["labels"]
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(rendered))
    try:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())

        def pod_ready() -> dict[str, Any] | None:
            got = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json").stdout)
            return next((p for p in got["items"] if ready(p)), None)

        pod = wait_for(f"{app} Ready", pod_ready, timeout=120)
        name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
        server = wait_for("the runner's record of the server", lambda: worker_of(cluster, ns, name))
        assert Path(server["log"]).read_text().count("Uvicorn running on http://" + ip + ":8000") == 1
        r = httpx.post(f"http://{ip}:8000/v1/completions", timeout=60,
                       json={"model": "tiny-gguf", "prompt": "Hello", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "tiny-gguf" and r.json()["usage"]["completion_tokens"] >= 1
        cluster.kubectl("delete", "pod", name, "-n", ns, "--wait=false")
        wait_for("the server stopped with its pod", lambda: _gone(server["pid"]), timeout=60)
    finally:
        cluster.kubectl("delete", "deployment", rendered["metadata"]["name"], "-n", ns, "--wait=false", check=False)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
