"""Every runtime's rendered Deployment (serving and warm) passes the real kube-apiserver's server-side dry run with
strict field validation: the shapes the adapters build (lifecycle hooks, probes, env, device resources) are valid
apps/v1 objects, not just dicts that look right."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infleet.controller.manifests import ContainerOverrides, Owner, PoolRuntime, Workload, render_deployment
from infleet.runtimes import RUNTIMES

pytestmark = pytest.mark.cluster

OWNER = Owner("infleet.io/v1alpha1", "InferenceDeployment", "chat", "default", "00000000-0000-0000-0000-000000000001")
POOLS = {
    "nvidia-gpu": PoolRuntime(name="h100", device="cuda", node_selector={"pool": "h100"},
                              resource_name="nvidia.com/gpu", devices_per_replica=2,
                              tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)),
    "aws-neuron": PoolRuntime(name="inf2", device="neuron", node_selector={"pool": "inf2"},
                              resource_name="aws.amazon.com/neuron", devices_per_replica=1),
    "google-tpu": PoolRuntime(name="v5e", device="xla", node_selector={"pool": "v5e"},
                              resource_name="google.com/tpu", devices_per_replica=4),
    "cpu": PoolRuntime(name="cpu", device="cpu", node_selector={"pool": "cpu"}, resource_name="cpu",
                       devices_per_replica=1, units_per_device=4, default_requests={"memory": "2Gi"}),
}


def rendered() -> list[dict[str, Any]]:
    out = []
    for engine, adapter in RUNTIMES.items():
        for family in adapter.families:
            for role in ("serving", "warm"):
                overrides = ContainerOverrides(engine=engine, args=("--extra",), env={"A": "1"})
                w = Workload(OWNER, POOLS[family], role, 1, "llama-3-8b", overrides,  # type: ignore[arg-type]
                             "pvc://models/llama-3-8b")
                d = render_deployment(w)
                d["metadata"]["name"] = f"dry-{engine}-{family}-{role}"
                out.append(d)
    return out


def test_every_runtime_renders_what_the_apiserver_accepts(cluster: Any) -> None:
    objects = rendered()
    assert len(objects) == 2 * (4 + 1 + 1 + 1 + 1)  # infleet-worker on four families, the others on one each
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    res = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-o", "json", "-f", "-", input=body)
    accepted = json.loads(res.stdout)["items"]
    assert [a["metadata"]["name"] for a in accepted] == [o["metadata"]["name"] for o in objects]
    for sent, got in zip(objects, accepted, strict=True):
        c_sent = sent["spec"]["template"]["spec"]["containers"][0]
        c_got = got["spec"]["template"]["spec"]["containers"][0]
        assert c_got["args"] == c_sent["args"] and c_got["command"] == c_sent["command"]
        assert c_got.get("lifecycle") == c_sent.get("lifecycle")
