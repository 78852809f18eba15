"""A small version of the fleet-scale benchmark (bench/operator_scale.py) on the real control plane.

Forty deployments over two AcceleratorPools that select the same 24 simulated CPU nodes (96 device slices, less
than the 120 replicas asked for): every deployment gets a decision, the operator never plans devices twice (no
worker pod is ever Unschedulable, total replicas stay within the nodes' devices), and reconciles read the watch
index, not the API server: LISTs of pods and nodes during the run stay a handful (the informers' own), not one
per reconcile.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from infleet_devcluster.nodepools import NodePool, node_manifest
from tests.integration.controller.operator_process import OperatorProcess
from tests.integration.controller.test_operator_on_cluster import get, install, wait_for

pytestmark = pytest.mark.cluster

NODES = 24
DEPLOYMENTS = 40


def overlapping_pools(tag: str) -> list[dict[str, Any]]:
    def pool(name: str, price: float) -> dict[str, Any]:
        return {
            "apiVersion": "infleet.io/v1alpha1",
            "kind": "AcceleratorPool",
            "metadata": {"name": name},
            "spec": {
                "nodeSelector": {"karpenter.sh/nodepool": tag},
                "accelerator": {
                    "family": "cpu",
                    "product": "c7i",
                    "resourceName": "cpu",
                    "devicesPerNode": 4,
                    "cpusPerDevice": 8,
                    "memoryGiBPerDevice": 15,
                },
                "capacityType": "spot",
                "pricePerDeviceHourUSD": price,
                "coldStartSeconds": 60,
                "performanceProfiles": [{"modelClass": "llm-0.5b", "requestsPerSecond": 1, "latencyBoundMs": 3000}],
            },
        }

    return [pool(f"{tag}-a", 0.1), pool(f"{tag}-b", 0.12)]


def deployment(name: str, pools: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "infleet.io/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": "small",
                "source": "s3://models/small",
                "parametersBillions": 0.5,
                "families": ["cpu"],
                "modelClass": "llm-0.5b",
            },
            "slo": {"p99LatencyMs": 3000, "throughput": {"requestsPerSecond": 3}},
            "placement": {"pools": pools},
            "scaling": {"minReplicas": 1, "maxReplicas": 3},
        },
    }


def list_requests(cluster: Any) -> float:
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    total = 0.0
    for line in text.splitlines():
        ours = 'resource="pods"' in line or 'resource="nodes"' in line
        if line.startswith("apiserver_request_total{") and 'verb="LIST"' in line and ours:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_forty_deployments_on_shared_pools_no_overcommit_no_list_per_reconcile(cluster: Any, tmp_path: Path) -> None:
    tag = f"scale-{uuid.uuid4().hex[:5]}"
    ns = tag
    install(cluster)
    group = NodePool(
        name=tag,
        count=NODES,
        instance_type="c7i.8xlarge",
        capacity_type="spot",
        zone="us-east-1a",
        allocatable={"cpu": "32", "memory": "64Gi", "pods": "110"},
    )
    nodes = [node_manifest(group, i) for i in range(NODES)]
    pools = overlapping_pools(tag)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes + pools}))
    cluster.kubectl("create", "namespace", ns)
    op = OperatorProcess(cluster.kubeconfig, ns, tmp_path / "operator.log", "--standalone", "--no-autoscale")
    try:
        op.start().wait_live()
        time.sleep(2)  # informers list once at start
        lists_before = list_requests(cluster)
        items = [deployment(f"d{i:02d}", [p["metadata"]["name"] for p in pools]) for i in range(DEPLOYMENTS)]
        cluster.kubectl(
            "apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        )

        def decided() -> Any:
            objs = (get(cluster, "infd", "-n", ns) or {}).get("items") or []
            done = [
                o for o in objs if any(c["type"] == "Placed" for c in (o.get("status") or {}).get("conditions") or [])
            ]
            return objs if len(done) == DEPLOYMENTS else None

        wait_for("every deployment decided", decided, timeout=180, every=2)

        # The scheduler binds, the ReplicaSets settle, further reconciles run. Waiting stays well inside the 60 s
        # resync, so a deployment wrongly refused room (devices counted twice) and never woken again fails here.
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if len((get(cluster, "pods", "-n", ns) or {}).get("items") or []) >= NODES * 4 - 8:
                break
            time.sleep(2)
        time.sleep(5)  # anything planned twice would show as Unschedulable by now
        pods = (get(cluster, "pods", "-n", ns) or {}).get("items") or []
        unschedulable = [
            p["metadata"]["name"]
            for p in pods
            if any(c.get("reason") == "Unschedulable" for c in (p.get("status") or {}).get("conditions") or [])
        ]
        assert unschedulable == [], f"{len(unschedulable)} pods the operator planned on devices that were not free"
        assert len(pods) <= NODES * 4
        assert len(pods) >= NODES * 4 - 8, f"only {len(pods)} replicas on {NODES * 4} free slices"
        lists = list_requests(cluster) - lists_before
        assert lists <= 10, f"{lists} LISTs of pods/nodes: reconciles must read the index"
    finally:
        op.stop()
        print(op.log_tail(3000))
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "acceleratorpool", *[p["metadata"]["name"] for p in pools], check=False)
        cluster.kubectl("delete", "node", *[n["metadata"]["name"] for n in nodes], check=False)
