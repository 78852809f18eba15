"""Warm-pod promotion on the real local control plane.

The namespace is opted into real pods (infleet.dev/run-pods=true): the local pod runner starts a real worker
behind every pod, so the operator's default HTTP client really tells the warm worker to serve
(`POST /admin/state`), and everything after is real too: the relabel, the warm ReplicaSet replacing the released
pod, the serving Deployment scaled to `desired - promoted`, promoted pods removed first on scale-down, and garbage
collection through the owner reference. A second operator in a simulated namespace (nothing answers at its pod
IPs) shows the refusal path: nothing is promoted, a cold serving pod starts instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from infleet.controller.admin_secret import token_of
from infleet.controller.manifests import ADMIN_SECRET_NAME
from tests.integration.controller.operator_process import OperatorProcess
from tests.integration.controller.test_operator_on_cluster import (
    apply_infd,
    get,
    operator_in_namespace,
    placed_and_ready,
    pods_of,
    wait_for,
)

pytestmark = pytest.mark.cluster

NAME = "promo"
POOL = "cpu-spot"


def manifest(replicas: int, name: str = NAME) -> dict[str, Any]:
    return {
        "apiVersion": "infleet.io/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": "qwen2.5-0.5b-instruct",
                "source": "builtin://tiny",
                "parametersBillions": 0.5,
                "families": ["cpu"],
                "modelClass": "llm-0.5b",
            },
            "slo": {"p99LatencyMs": 3000},
            "placement": {"families": ["cpu"], "pools": [POOL], "spot": "Allowed"},
            "scaling": {"mode": "External", "replicas": replicas},
            "warmPool": {"mode": "Fixed", "size": 1},
        },
    }


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str, OperatorProcess]]:
    with operator_in_namespace(
        cluster, "promo-it", tmp_path_factory.mktemp("operator"), models=False, run_pods=True
    ) as running:
        yield running


def role(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["labels"]["infleet.io/role"])


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or [])


def serving_deployment_replicas(cluster: Any, ns: str, name: str = NAME) -> int:
    return int(get(cluster, "deployment", "-n", ns, f"{name}-{POOL}")["spec"]["replicas"])


def test_scale_up_promotes_a_warm_pod_and_the_warm_pool_replenishes(env: tuple[Any, str, OperatorProcess]) -> None:
    cluster, ns, _ = env
    apply_infd(cluster, ns, manifest(1))
    wait_for("placed", lambda: placed_and_ready(cluster, ns, NAME), timeout=120)

    def one_ready_warm() -> dict[str, Any] | None:
        warm = [p for p in pods_of(cluster, ns, NAME) if role(p) == "warm" and ready(p)]
        return warm[0] if len(warm) == 1 else None

    warm = wait_for("a ready warm pod", one_ready_warm, timeout=90)
    uid, pod_name = warm["metadata"]["uid"], warm["metadata"]["name"]
    infd_uid = get(cluster, "infd", "-n", ns, NAME)["metadata"]["uid"]

    cluster.kubectl("patch", "infd", NAME, "-n", ns, "--type=merge", "-p", '{"spec":{"scaling":{"replicas":2}}}')

    def promoted() -> dict[str, Any] | None:
        pod = get(cluster, "pod", "-n", ns, pod_name)
        return pod if pod and role(pod) == "serving" else None

    pod = wait_for("the warm pod relabelled serving", promoted, timeout=60)
    assert pod["metadata"]["uid"] == uid  # the same pod, not a new one
    assert pod["metadata"]["labels"]["infleet.io/promoted"] == "true"
    refs = pod["metadata"]["ownerReferences"]
    assert [(r["kind"], r["uid"], r.get("controller")) for r in refs] == [("InferenceDeployment", infd_uid, True)]
    selector = get(cluster, "service", "-n", ns, NAME)["spec"]["selector"]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items()), "the Service misses it"
    # The worker behind the pod took the promotion itself (the runner plays the pod with a real worker).
    # The admin API wants the namespace's token (the operator created the Secret; the runner gave it to the worker).
    token = token_of(get(cluster, "secret", "-n", ns, ADMIN_SECRET_NAME))
    answer = httpx.get(f"http://{pod['status']['podIP']}:8000/admin/state", timeout=5,
                       headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "serving"

    def replacement() -> dict[str, Any] | None:
        warm = [p for p in pods_of(cluster, ns, NAME) if role(p) == "warm" and ready(p)]
        return warm[0] if len(warm) == 1 and warm[0]["metadata"]["uid"] != uid else None

    wait_for("a replacement warm pod", replacement, timeout=90)
    # Several reconciles later (interval 2 s) the serving Deployment still holds desired - promoted = 1.
    time.sleep(8)
    assert serving_deployment_replicas(cluster, ns) == 1
    serving = [p for p in pods_of(cluster, ns, NAME) if role(p) == "serving"]
    assert len(serving) == 2, [p["metadata"]["name"] for p in serving]
    warm_pods = [p for p in pods_of(cluster, ns, NAME) if role(p) == "warm"]
    assert len(warm_pods) == 1

    def status_counts() -> Any:
        obj = get(cluster, "infd", "-n", ns, NAME)
        st = obj["status"]
        return obj if st.get("replicas") == 2 and st.get("readyReplicas") == 2 and st.get("warmReplicas") == 1 else None

    wait_for("status counts the promoted pod as serving", status_counts, timeout=30)

    # Scale-down removes the promoted pod first; the Deployment keeps its pod.
    cluster.kubectl("patch", "infd", NAME, "-n", ns, "--type=merge", "-p", '{"spec":{"scaling":{"replicas":1}}}')
    wait_for("promoted pod removed", lambda: get(cluster, "pod", "-n", ns, pod_name) is None, timeout=60)
    assert serving_deployment_replicas(cluster, ns) == 1


def test_deleting_the_deployment_removes_promoted_pods(env: tuple[Any, str, OperatorProcess]) -> None:
    cluster, ns, _ = env
    name = "promo-gc"
    apply_infd(cluster, ns, manifest(1, name))
    wait_for("placed", lambda: placed_and_ready(cluster, ns, name), timeout=120)
    wait_for(
        "a ready warm pod",
        lambda: [p for p in pods_of(cluster, ns, name) if role(p) == "warm" and ready(p)],
        timeout=90,
    )
    cluster.kubectl("patch", "infd", name, "-n", ns, "--type=merge", "-p", '{"spec":{"scaling":{"replicas":2}}}')
    promoted = wait_for(
        "a promoted pod",
        lambda: [p for p in pods_of(cluster, ns, name) if p["metadata"]["labels"].get("infleet.io/promoted")],
        timeout=60,
    )
    assert serving_deployment_replicas(cluster, ns, name) == 1
    cluster.kubectl("delete", "infd", name, "-n", ns, "--wait=false")
    gone = promoted[0]["metadata"]["name"]
    wait_for("promoted pod garbage-collected", lambda: get(cluster, "pod", "-n", ns, gone) is None, timeout=90)


def test_a_worker_that_refuses_keeps_its_pod_warm_and_a_cold_pod_starts(
    cluster: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The default HTTP client on a simulated pod: nothing listens at its (loopback) IP -> a cold start."""
    with operator_in_namespace(cluster, "promo-http", tmp_path_factory.mktemp("operator"), models=False) as (_, ns, op):
        apply_infd(cluster, ns, manifest(1))
        wait_for("placed", lambda: placed_and_ready(cluster, ns, NAME), timeout=120)
        warm = wait_for(
            "a ready warm pod",
            lambda: [p for p in pods_of(cluster, ns, NAME) if role(p) == "warm" and ready(p)],
            timeout=90,
        )
        cluster.kubectl("patch", "infd", NAME, "-n", ns, "--type=merge", "-p", '{"spec":{"scaling":{"replicas":2}}}')
        wait_for("a cold serving pod", lambda: serving_deployment_replicas(cluster, ns) == 2, timeout=60)
        wait_for(
            "two serving pods",
            lambda: len([p for p in pods_of(cluster, ns, NAME) if role(p) == "serving"]) == 2,
            timeout=60,
        )
        pod = get(cluster, "pod", "-n", ns, warm[0]["metadata"]["name"])
        assert pod is not None and role(pod) == "warm" and "infleet.io/promoted" not in pod["metadata"]["labels"]
        assert op.proc is not None and op.proc.poll() is None, "the operator crashed"
        assert "did not take the promotion" in op.log_tail(20000)
