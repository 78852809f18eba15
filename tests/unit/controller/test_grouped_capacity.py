"""The index's node shapes stand for the nodes exactly: observing a pool through shape groups gives the same free
devices and room as going node by node (random clusters, own pods, other deployments' pods, cordoned nodes)."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.controller.index import ClusterIndex
from infleet.controller.observe import Measured, observe, parse_deployment
from tests.unit.controller.builders import node, pod

OWN = {"app.kubernetes.io/managed-by": "infleet", "infleet.io/deployment": "chat"}


def pool_doc(name: str, selector: str, price: float) -> dict[str, Any]:
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
            "pricePerDeviceHourUSD": price,
            "performanceProfiles": [{"modelClass": "llm-8b", "requestsPerSecond": 2, "latencyBoundMs": 2000}],
        },
    }


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 4), st.booleans()), min_size=1, max_size=14),
    st.lists(st.tuples(st.integers(0, 13), st.integers(1, 2), st.booleans()), max_size=12),
)
def test_shape_groups_give_the_same_capacity_as_node_by_node(
    nodes: list[tuple[str, int, bool]], pods: list[tuple[int, int, bool]]
) -> None:
    idx = ClusterIndex()
    idx.apply("AcceleratorPool", "ADDED", pool_doc("pool-a", "a", 0.4))
    idx.apply("AcceleratorPool", "ADDED", pool_doc("pool-b", "b", 0.5))
    for i, (group, gpus, cordoned) in enumerate(nodes):
        idx.apply(
            "Node",
            "ADDED",
            node(
                f"n{i}",
                group,
                {"nvidia.com/gpu": str(gpus), "cpu": "32", "memory": "64Gi", "pods": "110"},
                cordoned=cordoned,
            ),
        )
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
    for name in ("pool-a", "pool-b"):
        g, n = grouped.pools[name], by_node.pools[name]
        assert (g.free_devices, g.room_replicas) == (n.free_devices, n.room_replicas), name
