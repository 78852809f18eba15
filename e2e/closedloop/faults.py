"""Faults a scenario injects under load, each returning what it did (for report.json)."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

from closedloop.harness import Run, wait_for
from infleet_devcluster import nodepools


def kill_operator(run: Run, down_s: float) -> dict[str, Any]:
    """SIGKILL the operator, leave it dead ``down_s`` seconds, start it again and wait until it is live."""
    pid = run.operator.proc.pid
    run.operator.kill9()
    time.sleep(down_s)
    t = time.monotonic()
    run.operator.restart()
    run.operator.wait_live()
    return {"killed_pid": pid, "down_s": down_s, "restart_to_live_s": round(time.monotonic() - t, 2)}


def kill_worker(run: Run, deployment: str) -> dict[str, Any]:
    """SIGKILL the worker process behind one Ready serving pod (the pod stays; its container restarts)."""
    pods = run.ready_pods(deployment)
    if not pods:
        raise RuntimeError("no Ready serving pod to kill a worker of")
    name = str(pods[0]["metadata"]["name"])
    pid = run.worker_pid(name)
    if pid is None:
        raise RuntimeError(f"the pod runner reports no worker process for {name}")
    os.kill(pid, signal.SIGKILL)
    return {"pod": name, "killed_pid": pid}


def reclaim_nodes(run: Run, deployment: str, nodepool: str) -> dict[str, Any]:
    """A spot reclaim of a whole node pool: every node of ``nodepool`` is deleted and the pods bound to them
    vanish with it (force-deleted: their workers get SIGKILL, as an instance that is gone would). The node
    manifests are kept in ``run.out_dir`` (for people); :func:`restore_nodes` brings the pool back for later
    scenarios."""
    nodes = run.get("nodes", "-l", f"karpenter.sh/nodepool={nodepool}")["items"]
    on_them = {str(p["spec"].get("nodeName")) for p in run.pods(deployment)}
    serving_on = sorted(on_them & {str(n["metadata"]["name"]) for n in nodes})
    (run.out_dir / "reclaimed-nodes.json").write_text(json.dumps(nodes))
    names = [str(n["metadata"]["name"]) for n in nodes]
    run.kubectl("delete", "node", *names, "--wait=false")
    victims = [str(p["metadata"]["name"]) for p in run.pods(deployment) if p["spec"].get("nodeName") in names]
    if victims:
        run.kubectl("delete", "pod", "-n", run.namespace, *victims, "--grace-period=0", "--force")
    return {"nodepool": nodepool, "nodes_deleted": names, "nodes_with_pods": serving_on, "pods_lost": victims}


def restore_nodes(run: Run, nodepool: str) -> None:
    """Recreate a node pool's nodes as the local cluster first made them (kwok takes them over again)."""
    want = nodepools.node_manifests([p for p in nodepools.load_pools() if p.name == nodepool])
    have = {str(n["metadata"]["name"]) for n in run.get("nodes", "-l", f"karpenter.sh/nodepool={nodepool}")["items"]}
    missing = [m for m in want if m["metadata"]["name"] not in have]
    if missing:
        run.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": missing}))

    def all_ready() -> bool:
        items = run.get("nodes", "-l", f"karpenter.sh/nodepool={nodepool}")["items"]
        ready = [n for n in items if any(c["type"] == "Ready" and c["status"] == "True"
                                         for c in (n.get("status") or {}).get("conditions") or [])]
        return len(ready) == len(want)

    wait_for(f"the {nodepool} nodes to be Ready again", all_ready, timeout=60)
