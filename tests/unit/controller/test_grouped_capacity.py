"""The index's node shapes stand for the nodes exactly: observing a pool through shape groups gives the same free
devices and room as going node by node, and as reading the nodes without an index at all (random clusters, own
pods, other deployments' pods, cordoned nodes, tainted nodes only some pools tolerate)."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.controller.index import ClusterIndex
from infleet.controller.observe import Measured, observe, parse_deployment
from tests.unit.controller.builders import node, pod

OWN = {"app.kubernetes.io/managed-by": "infleet", "infleet.io/deployment": "chat"}


GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
TAINTS: dict[str, list[dict[str, str]]] = {
    "none": [],
    "gpu": [GPU_TAINT],  # pool-a tolerates it, pool-b does not
    "not-ready": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}],  # neither does
    "prefer": [{"key": "spot", "value": "true", "effect": "PreferNoSchedule"}],  # steers only: both may use it
}


def pool_doc(name: str, selector: str, price: float, tolerations: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "infleet.io/v1alpha1",
        "kind": "AcceleratorPool",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"karpenter.sh/nodepool": selector},
            "accelerator": {
                "family": "nvidia-gpu",
                "product": "NVIDIA-L4",
                "resourceName": "nvidia.com/gpu",
                "devicesPerNode": 4,
                "memoryGiBPerDevice": 22.5,
            },
            "capacityType": "spot",
            "tolerations": tolerations or [],
            "pricePerDeviceHourUSD": price,
            "performanceProfiles": [{"modelClass": "llm-8b", "requestsPerSecond": 2, "latencyBoundMs": 2000}],
        },
    }


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 4), st.booleans(), st.sampled_from(sorted(TAINTS))),
        min_size=1,
        max_size=14,
    ),
    st.lists(st.tuples(st.integers(0, 13), st.integers(1, 2), st.booleans()), max_size=12),
)
def test_shape_groups_give_the_same_capacity_as_node_by_node(
    nodes: list[tuple[str, int, bool, str]], pods: list[tuple[int, int, bool]]
) -> None:
    idx = ClusterIndex()
    idx.apply(
        "AcceleratorPool", "ADDED", pool_doc("pool-a", "a", 0.4, [{"key": "nvidia.com/gpu", "operator": "Exists"}])
    )
    idx.apply("AcceleratorPool", "ADDED", pool_doc("pool-b", "b", 0.5))
    full_nodes = []
    for i, (group, gpus, cordoned, taint) in enumerate(nodes):
        full = node(
            f"n{i}",
            group,
            {"nvidia.com/gpu": str(gpus), "cpu": "32", "memory": "64Gi", "pods": "110"},
            cordoned=cordoned,
        )
        full["spec"]["taints"] = TAINTS[taint]
        full_nodes.append(full)
        idx.apply("Node", "ADDED", full)
    for j, (where, gpus, mine) in enumerate(pods):
        if where < len(nodes):
            labels = {**OWN, "infleet.io/pool": "pool-a", "infleet.io/role": "serving"} if mine else {}
            idx.apply(
                "Pod",
                "ADDED",
                pod(f"p{j}", node_name=f"n{where}", labels=labels, requests={"nvidia.com/gpu": str(gpus), "cpu": "1"}),
            )
    body = {
        "apiVersion": "infleet.io/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": "chat", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {
            "model": {
                "name": "m",
                "source": "s3://m",
                "parametersBillions": 8,
                "families": ["nvidia-gpu"],
                "modelClass": "llm-8b",
            },
            "slo": {"p99LatencyMs": 2000},
        },
    }
    infd = parse_deployment(body)
    view = idx.view()
    own = idx.pods_of(("ns", "chat"))
    args: dict[str, Any] = {
        "infd": infd,
        "uid": "u",
        "own_pods": own,
        "serving_deployments": {},
        "measured": Measured(),
        "now_s": 0.0,
    }
    grouped = observe(view=view, **args)
    by_node = observe(view=dataclasses.replace(view, pool_shapes=None), **args)
    unindexed = dataclasses.replace(  # what `infleet plan` reads: whole nodes, no membership kept
        view, nodes=full_nodes, pool_shapes=None, pool_nodes=None, node_shapes=None, nodes_by_name=None
    )
    no_index = observe(view=unindexed, **args)
    for name in ("pool-a", "pool-b"):
        g, n, u = grouped.pools[name], by_node.pools[name], no_index.pools[name]
        assert (g.free_devices, g.room_replicas) == (n.free_devices, n.room_replicas), name
        assert (u.free_devices, u.room_replicas) == (n.free_devices, n.room_replicas), name


def test_a_node_offers_devices_only_to_pools_that_tolerate_its_hard_taints() -> None:
    idx = ClusterIndex()
    idx.apply(
        "AcceleratorPool", "ADDED", pool_doc("tolerant", "a", 0.4, [{"key": "nvidia.com/gpu", "operator": "Exists"}])
    )
    idx.apply("AcceleratorPool", "ADDED", pool_doc("strict", "a", 0.5))
    gpus = {"nvidia.com/gpu": "4", "cpu": "32", "memory": "64Gi", "pods": "110"}
    tainted = node("gpu-node", "a", gpus)
    tainted["spec"]["taints"] = [GPU_TAINT]
    idx.apply("Node", "ADDED", tainted)
    assert idx.pool_nodes == {"tolerant": {"gpu-node"}, "strict": set()}
    settling = node("new-node", "a", gpus)
    settling["spec"]["taints"] = [GPU_TAINT, {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]
    idx.apply("Node", "ADDED", settling)
    assert idx.pool_nodes["tolerant"] == {"gpu-node"}  # Ready, but the lifecycle controller has not untainted it
    assert sum(idx.pool_shapes["tolerant"].values()) == 1 and not idx.pool_shapes["strict"]
    settling["spec"]["taints"] = [GPU_TAINT]
    idx.apply("Node", "MODIFIED", settling)
    assert idx.pool_nodes["tolerant"] == {"gpu-node", "new-node"}
    assert sum(idx.pool_shapes["tolerant"].values()) == 2  # the shape counts follow the membership
    idx.apply("AcceleratorPool", "MODIFIED", pool_doc("strict", "a", 0.5, [{"operator": "Exists"}]))
    assert idx.pool_nodes["strict"] == {"gpu-node", "new-node"}  # a pool that tolerates everything
    assert sum(idx.pool_shapes["strict"].values()) == 2
    settling["spec"]["taints"] = [GPU_TAINT, {"key": "drain", "effect": "NoExecute"}]
    idx.apply("Node", "MODIFIED", settling)
    assert idx.pool_nodes["tolerant"] == {"gpu-node"} and sum(idx.pool_shapes["tolerant"].values()) == 1
