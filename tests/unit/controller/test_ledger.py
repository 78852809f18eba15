"""The capacity ledger: concurrent decisions never plan the same free devices, also across pools that share nodes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from infleet.controller.handlers import Context, on_event, reconcile_deployment
from infleet.controller.manifests import LABEL_DEPLOYMENT, LABEL_POOL, MANAGED_BY, MANAGER
from infleet.controller.metrics import OperatorMetrics
from infleet.controller.reconcile import Settings
from infleet.controller.workqueue import WorkQueue
from tests.unit.controller.builders import make_infd, make_pool, node, pod
from tests.unit.controller.fakekube import FakeKube

H100 = {
    "family": "nvidia-gpu",
    "product": "NVIDIA-H100-80GB-HBM3",
    "resourceName": "nvidia.com/gpu",
    "devicesPerNode": 4,
    "memoryGiBPerDevice": 80,
}


def add_pool(ctx: Context, name: str, selector: dict[str, str], price: float) -> None:
    pool = make_pool(
        name,
        nodeSelector=selector,
        accelerator=H100,
        pricePerDeviceHourUSD=price,
        performanceProfiles=[{"modelClass": "llm-8b", "requestsPerSecond": 2, "latencyBoundMs": 2000}],
    ).to_dict()
    pool.update(apiVersion="infleet.io/v1alpha1", kind="AcceleratorPool")
    on_event(ctx, "AcceleratorPool", "ADDED", pool)


def add_deployment(ctx: Context, kube: FakeKube, name: str, rps: float = 6) -> None:
    body: dict[str, Any] = make_infd(
        name, slo={"p99LatencyMs": 2000, "throughput": {"requestsPerSecond": rps}}, scaling={"maxReplicas": 8}
    ).to_dict()
    body.update(apiVersion="infleet.io/v1alpha1", kind="InferenceDeployment")
    body["metadata"].update(uid=f"uid-{name}", generation=1)
    body["spec"]["model"]["source"] = "s3://models/llama"
    body["spec"]["model"]["families"] = ["nvidia-gpu"]
    kube.objects[f"/apis/infleet.io/v1alpha1/namespaces/ns/inferencedeployments/{name}"] = body
    on_event(ctx, "InferenceDeployment", "ADDED", body)


def context() -> tuple[Context, FakeKube]:
    kube = FakeKube()
    ctx = Context(kube=kube, settings=Settings(), metrics=OperatorMetrics())  # type: ignore[arg-type]
    on_event(
        ctx,
        "Node",
        "ADDED",
        node("cheap-1", "cheap", {"nvidia.com/gpu": "4", "cpu": "64", "memory": "512Gi", "pods": "110"}),
    )
    for i in range(4):
        on_event(
            ctx,
            "Node",
            "ADDED",
            node(f"dear-{i}", "dear", {"nvidia.com/gpu": "4", "cpu": "64", "memory": "512Gi", "pods": "110"}),
        )
    return ctx, kube


def summary(kube: FakeKube, name: str) -> dict[str, int]:
    status = kube.objects[f"/apis/infleet.io/v1alpha1/namespaces/ns/inferencedeployments/{name}"]["status"]
    return {p["pool"]: p["desired"] for p in status["pools"] if p["desired"]}


def test_concurrent_reconciles_never_claim_the_same_free_devices() -> None:
    ctx, kube = context()
    add_pool(ctx, "cheap", {"karpenter.sh/nodepool": "cheap"}, 1.0)
    add_pool(ctx, "dear", {"karpenter.sh/nodepool": "dear"}, 5.0)
    names = [f"d{i}" for i in range(4)]
    for name in names:
        add_deployment(ctx, kube, name)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: reconcile_deployment(ctx, ("ns", n)), names))
    plans = [summary(kube, n) for n in names]
    assert sum(p.get("cheap", 0) for p in plans) <= 4  # the cheap pool's 4 devices, never more
    assert all(sum(p.values()) == 3 for p in plans)  # 6 rps at 2 rps per replica: the rest went to the dear pool


def test_pools_sharing_nodes_share_the_claims() -> None:
    ctx, kube = context()
    # Two pools over the same cheap node (one selects by a label every such node has too).
    add_pool(ctx, "cheap", {"karpenter.sh/nodepool": "cheap"}, 1.0)
    add_pool(ctx, "cheap-too", {"karpenter.sh/nodepool": "cheap"}, 1.1)
    add_pool(ctx, "dear", {"karpenter.sh/nodepool": "dear"}, 5.0)
    add_deployment(ctx, kube, "a")
    add_deployment(ctx, kube, "b")
    reconcile_deployment(ctx, ("ns", "a"))
    reconcile_deployment(ctx, ("ns", "b"))
    a, b = summary(kube, "a"), summary(kube, "b")
    on_shared_nodes = sum(p.get("cheap", 0) + p.get("cheap-too", 0) for p in (a, b))
    assert on_shared_nodes <= 4, (a, b)
    # A deleted deployment's claim goes with it: the next one may use those devices.
    on_event(
        ctx,
        "InferenceDeployment",
        "DELETED",
        kube.objects["/apis/infleet.io/v1alpha1/namespaces/ns/inferencedeployments/a"],
    )
    assert ("ns", "a") not in ctx.ledger.claims


def bind(ctx: Context, deployment: str, pool: str, node_name: str, count: int) -> list[dict[str, Any]]:
    """Pods of ``deployment`` the scheduler bound on ``node_name`` (what the watch would deliver)."""
    labels = {MANAGED_BY: MANAGER, LABEL_DEPLOYMENT: deployment, LABEL_POOL: pool}
    pods = [
        pod(f"{deployment}-{i}", node_name=node_name, requests={"nvidia.com/gpu": "1"}, labels=labels)
        for i in range(count)
    ]
    for p in pods:
        on_event(ctx, "Pod", "ADDED", p)
    return pods


def test_a_claim_shrinks_as_its_pods_bind_so_bound_devices_count_once() -> None:
    ctx, kube = context()
    add_pool(ctx, "cheap", {"karpenter.sh/nodepool": "cheap"}, 1.0)
    add_pool(ctx, "dear", {"karpenter.sh/nodepool": "dear"}, 5.0)
    add_deployment(ctx, kube, "a", rps=4)  # 2 replicas
    add_deployment(ctx, kube, "b", rps=4)
    reconcile_deployment(ctx, ("ns", "a"))
    assert summary(kube, "a") == {"cheap": 2}
    # a's pods bind before a is reconciled again: its claim must not hold those devices a second time.
    bind(ctx, "a", "cheap", "cheap-1", 2)
    reconcile_deployment(ctx, ("ns", "b"))
    assert summary(kube, "b") == {"cheap": 2}, "the cheap node's 2 free devices were counted as taken"


def b_short_of_capacity() -> tuple[Context, FakeKube, list[dict[str, Any]]]:
    """a holds the whole cheap node (its 4 pods bound), so b is placed nowhere and waits for room."""
    ctx, kube = context()
    add_pool(ctx, "cheap", {"karpenter.sh/nodepool": "cheap"}, 1.0)
    add_deployment(ctx, kube, "a", rps=8)  # 4 replicas: the whole cheap node
    add_deployment(ctx, kube, "b", rps=4)
    reconcile_deployment(ctx, ("ns", "a"))
    pods = bind(ctx, "a", "cheap", "cheap-1", 4)
    reconcile_deployment(ctx, ("ns", "b"))
    assert summary(kube, "b") == {} and ("ns", "b") in ctx.short
    return ctx, kube, pods


def test_a_deployment_short_of_capacity_is_woken_when_a_pod_leaves_or_a_plan_shrinks() -> None:
    ctx, kube, pods = b_short_of_capacity()
    ctx.queue = WorkQueue(lambda key: None, workers=1)
    on_event(ctx, "Pod", "DELETED", pods[0])
    assert ctx.queue.pending(("infd", "ns", "b"))
    ctx.queue = WorkQueue(lambda key: None, workers=1)
    # a's plan shrinking (it is deleted) releases its claim and wakes b too.
    on_event(
        ctx,
        "InferenceDeployment",
        "DELETED",
        kube.objects["/apis/infleet.io/v1alpha1/namespaces/ns/inferencedeployments/a"],
    )
    assert ctx.queue.pending(("infd", "ns", "b"))


def test_a_deployment_short_of_capacity_is_woken_when_a_node_starts_offering_room() -> None:
    ctx, kube, _ = b_short_of_capacity()
    gpus = {"nvidia.com/gpu": "4", "cpu": "64", "memory": "512Gi", "pods": "110"}
    settling = node("cheap-2", "cheap", gpus)
    settling["spec"]["taints"] = [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]
    ctx.queue = WorkQueue(lambda key: None, workers=1)
    on_event(ctx, "Node", "ADDED", settling)
    heartbeat = {**settling, "status": {**settling["status"], "conditions": [
        {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-11-30T03:00:00Z"}]}}  # fmt: skip
    on_event(ctx, "Node", "MODIFIED", heartbeat)  # nothing the index keeps changed
    on_event(ctx, "Node", "ADDED", node("other-1", "other", gpus))  # no pool selects it
    assert not ctx.queue.pending(("infd", "ns", "b"))  # the new node is tainted: no room for the pool yet
    on_event(ctx, "Node", "MODIFIED", node("cheap-2", "cheap", gpus))  # the lifecycle controller untainted it
    assert ctx.queue.pending(("infd", "ns", "b"))
    reconcile_deployment(ctx, ("ns", "b"))
    assert summary(kube, "b") == {"cheap": 2} and ("ns", "b") not in ctx.short
