"""The gateway's API discovery against the real control plane: the informers list and watch serving pods and
InferenceDeployments, so a pod that kwok turns Ready shows up as a routable replica of the deployment's model,
with its pod IP and pool, and leaves when it is relabelled warm or deleted; the deployment's SLO and the capacity
in its status reach the table. No request is involved: this is the watch path `--kube` runs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infleet_gateway.kube import KubeDiscovery
from infleet_gateway.replicas import EndpointTable
from tests.integration.controller.test_operator_on_cluster import install

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def ns(cluster: Any) -> Iterator[str]:
    install(cluster)
    name = f"gw-disc-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pod_manifest(name: str, deployment: str, role: str = "serving") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "infleet",
                                              "infleet.io/deployment": deployment,
                                              "infleet.io/pool": "cpu-on-demand", "infleet.io/role": role}},
        "spec": {"nodeSelector": {"karpenter.sh/nodepool": "cpu-on-demand"},
                 "containers": [{"name": "worker", "image": "ghcr.io/infleet/worker-cpu:test",
                                 "ports": [{"name": "http", "containerPort": 8000}]}]},
    }


async def until(what: str, check: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def test_watch_tracks_pods_and_deployments(cluster: Any, ns: str) -> None:
    infd: dict[str, Any] = yaml.safe_load((ROOT / "examples/small-cpu-model.yaml").read_text())
    infd["metadata"]["name"] = "chat"
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(infd))
    model = infd["spec"]["model"]["name"]

    async def main() -> None:
        table = EndpointTable()
        synced: list[bool] = []
        discovery = KubeDiscovery(table, asyncio.get_running_loop(), kubeconfig=cluster.kubeconfig, namespace=ns,
                                  on_synced=lambda: synced.append(True), watch_timeout_s=5)
        task = asyncio.create_task(discovery.run())
        try:
            await until("the first list", lambda: bool(synced))
            dep = table.by_model(model)
            assert dep is not None
            assert dep.key == (ns, "chat")
            assert dep.spec.ttft_slo_s == infd["spec"]["slo"]["ttftP99Ms"] / 1000
            assert dep.replicas == {}

            cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(pod_manifest("w-1", "chat")))
            await until("the pod as a ready replica", lambda: any(
                r.spec.ready for r in table.deployments[(ns, "chat")].replicas.values()))
            (replica,) = table.deployments[(ns, "chat")].replicas.values()
            assert replica.replica_id == f"{ns}/w-1"
            assert replica.spec.pool == "cpu-on-demand"
            assert replica.spec.url.startswith("http://") and replica.spec.url.endswith(":8000")
            assert replica.routing_state(time.monotonic(), probe_gates_ready=False) == "serving"

            # The operator's status field: the capacity of a replica of the pool reaches the router (checked once
            # the CRD has status.pools[].replicaCapacityRps; before that the API server prunes it).
            cluster.kubectl("patch", "infd", "chat", "-n", ns, "--subresource=status", "--type=merge", "-p",
                            '{"status": {"pools": [{"pool": "cpu-on-demand", "family": "cpu", '
                            '"replicaCapacityRps": 2.5}]}}')
            stored = yaml.safe_load(cluster.kubectl("get", "infd", "chat", "-n", ns, "-o", "yaml").stdout)
            if "replicaCapacityRps" in stored["status"]["pools"][0]:
                await until("the pool's capacity", lambda: table.deployments[(ns, "chat")].capacity(replica) == 2.5)

            cluster.kubectl("label", "pod", "w-1", "-n", ns, "infleet.io/role=warm", "--overwrite")
            await until("the relabelled pod gone from routing", lambda: not table.deployments[(ns, "chat")].replicas)

            cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(pod_manifest("w-2", "chat")))
            await until("a second pod", lambda: bool(table.deployments[(ns, "chat")].replicas))
            cluster.kubectl("delete", "pod", "w-2", "-n", ns, "--grace-period=0", "--force", "--wait=false")
            await until("the deleted pod gone", lambda: not table.deployments[(ns, "chat")].replicas)

            cluster.kubectl("delete", "infd", "chat", "-n", ns)
            await until("the deployment gone", lambda: table.by_model(model) is None)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), timeout=180))
