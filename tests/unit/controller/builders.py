"""Builders for the controller's unit tests: API objects and Kubernetes dicts shaped like the real ones."""

from __future__ import annotations

from typing import Any

from infleet.api import AcceleratorPool, InferenceDeployment


def make_pool(name: str = "l4-spot", **over: Any) -> AcceleratorPool:
    spec: dict[str, Any] = {
        "nodeSelector": {"karpenter.sh/nodepool": name},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}],
        "accelerator": {
            "family": "nvidia-gpu",
            "product": "NVIDIA-L4",
            "resourceName": "nvidia.com/gpu",
            "devicesPerNode": 4,
            "memoryGiBPerDevice": 22.5,
        },
        "capacityType": "spot",
        "pricePerDeviceHourUSD": 0.46,
        "performanceProfiles": [{"modelClass": "llm-8b", "requestsPerSecond": 2, "latencyBoundMs": 2000}],
    }
    spec.update(over)
    return AcceleratorPool.model_validate({"metadata": {"name": name}, "spec": spec})


def make_infd(name: str = "chat", **spec_over: Any) -> InferenceDeployment:
    spec: dict[str, Any] = {
        "model": {
            "name": "llama-3-8b",
            "source": "pvc://models/llama",
            "parametersBillions": 8,
            "families": ["nvidia-gpu", "cpu"],
            "modelClass": "llm-8b",
        },
        "slo": {"p99LatencyMs": 2000, "throughput": {"requestsPerSecond": 5}},
    }
    spec.update(spec_over)
    return InferenceDeployment.model_validate({"metadata": {"name": name, "namespace": "ns"}, "spec": spec})


def node(
    name: str, pool: str, allocatable: dict[str, str], *, ready: bool = True, cordoned: bool = False
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"karpenter.sh/nodepool": pool}},
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {
            "allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod(
    name: str,
    *,
    node_name: str | None = None,
    requests: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    namespace: str = "ns",
    ready: bool = False,
    unschedulable_at: str | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    conditions = []
    if unschedulable_at:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "lastTransitionTime": unschedulable_at,
            }
        )
    if ready:
        conditions.append({"type": "Ready", "status": "True"})
    spec: dict[str, Any] = {"containers": [{"name": "c", "resources": {"requests": requests or {}}}]}
    if node_name:
        spec["nodeName"] = node_name
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels or {},
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": spec,
        "status": {"phase": "Pending" if not node_name else phase, "conditions": conditions},
    }
