"""Workloads on infleet-worker pools, rendered by the manifests module before the runtime adapters existed
(`golden_worker_deployments.json`, written by `python -m tests.unit.runtimes.worker_cases OLD_MANIFESTS.py`)
and by today's: the two must agree byte for byte, so existing deployments never roll."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

GOLDEN = Path(__file__).with_name("golden_worker_deployments.json")


def cases(m: ModuleType, overrides: Any) -> list[dict[str, Any]]:
    """Every device family, both roles, with and without overrides (env, valueFrom, args, image, resources, pvc)."""
    owner = m.Owner("infleet.io/v1alpha1", "InferenceDeployment", "chat", "team-a", "uid-1")
    pools = [
        m.PoolRuntime(name="l4", device="cuda", node_selector={"pool": "l4"}, resource_name="nvidia.com/gpu",
                      devices_per_replica=2, default_requests={"memory": "2Gi", "cpu": "1"},
                      tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)),
        m.PoolRuntime(name="inf2", device="neuron", node_selector={"pool": "inf2"},
                      resource_name="aws.amazon.com/neuron", devices_per_replica=1),
        m.PoolRuntime(name="v5e", device="xla", node_selector={"pool": "v5e"}, resource_name="google.com/tpu",
                      devices_per_replica=4),
        m.PoolRuntime(name="cpu", device="cpu", node_selector={"pool": "cpu"}, resource_name="cpu",
                      devices_per_replica=1, units_per_device=4, default_requests={"memory": "2Gi"}),
    ]
    full = overrides(image="example/worker:1", args=("--max-batch", "8"), env={"B": "2", "A": "1"},
                     env_from={"HF_TOKEN": {"secretKeyRef": {"name": "hf", "key": "token"}}},
                     requests={"memory": "16Gi"}, limits={"memory": "32Gi"})
    out = []
    for pool in pools:
        for role in ("serving", "warm"):
            out.append(m.render_deployment(m.Workload(owner, pool, role, 2, "llama-3-8b")))
            out.append(m.render_deployment(m.Workload(owner, pool, role, 3, "llama-3-8b", full,
                                                      "pvc://models/llama/8b")))
            out.append(m.render_deployment(m.Workload(owner, pool, role, 1, "tiny", overrides(),
                                                      "builtin://tiny"), m.ImageConfig("reg/w", "dev")))
    return out


def dumps(rendered: list[dict[str, Any]]) -> str:
    return json.dumps(rendered, indent=1) + "\n"


if __name__ == "__main__":
    spec = importlib.util.spec_from_file_location("old_manifests", sys.argv[1])
    assert spec and spec.loader
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_manifests"] = old
    spec.loader.exec_module(old)
    GOLDEN.write_text(dumps(cases(old, old.RuntimeOverride)))
