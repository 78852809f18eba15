"""Conformance: the operator and the simulator take the same decisions from the same situation.

A short simulation of the bundled chat deployment (a burst that needs scale-up, warm workers and a pool that fills
up) records every Observation the simulator handed the decision loop, with the state it carried and the Plan it got.
Each recorded situation is then rebuilt as the Kubernetes objects the operator would see (AcceleratorPools, Nodes
with allocatable devices, bound, ready, warm and unschedulable worker pods, serving Deployment replicas), observed
by the operator's own ``observe`` and decided by the operator's path; the observations and the plans must match.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from infleet.controller.manifests import LABEL_DEPLOYMENT, LABEL_POOL, LABEL_ROLE, MANAGED_BY, MANAGER
from infleet.controller.observe import Measured, observe, pool_runtime, replica_requests, runtime_for
from infleet.controller.snapshot import ClusterView
from infleet.policy.from_api import choose
from infleet.policy.loop import Observation, Plan, decide
from infleet.sim.engine import Simulation
from infleet.sim.fleet import build_fleet, load_fleet
from infleet.sim.operator_loop import Infleet
from infleet.sim.trace import synthetic_trace

REPO = Path(__file__).resolve().parents[2]
SIM_EXAMPLES = REPO / "operator" / "infleet" / "sim" / "examples"


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cluster_for(
    obs: Observation, free_devices: dict[str, int]
) -> tuple[ClusterView, list[dict[str, Any]], dict[str, int]]:
    """Nodes, pods and serving Deployment replicas an operator would find in the recorded situation."""
    infd = obs.deployment
    name, namespace = infd.metadata.name or "", infd.metadata.namespace or "default"
    nodes: list[dict[str, Any]] = []
    pods: list[dict[str, Any]] = []
    deployments: dict[str, int] = {}
    for pool_name, view in sorted(obs.pools.items()):
        pool = view.pool
        acc = pool.spec.accelerator
        per_node = acc.devices_per_node
        units = (acc.cpus_per_device or 1) if acc.family == "cpu" else 1
        devices = free_devices.get(pool_name, 0)
        node_names = [f"{pool_name}-n{i}" for i in range(math.ceil(devices / per_node))]
        for k, node in enumerate(node_names):
            here = min(per_node, devices - k * per_node)  # the last node offers the remainder
            nodes.append({
                "metadata": {"name": node, "labels": dict(pool.spec.node_selector)},
                "spec": {},
                "status": {
                    "allocatable": {"cpu": "512", "memory": "4096Gi", "pods": "110",
                                    acc.resource_name: str(here * units)},
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            })  # fmt: skip
        replicas = obs.replicas.get(pool_name)
        if replicas is None:
            continue
        devices_per_replica = choose(pool, infd).devices_per_replica
        runtime = pool_runtime(pool, devices_per_replica)
        requests = {k: str(v) for k, v in replica_requests(runtime, runtime_for(infd, acc.family)).items()}
        slots = [
            n
            for k, n in enumerate(node_names)
            for _ in range(min(per_node, devices - k * per_node) // devices_per_replica)
        ]
        pp = replicas.pods
        roles = ["serving"] * pp.bound + ["warm"] * replicas.warm
        ready_left = {"serving": pp.ready, "warm": replicas.warm_ready}
        for i, role in enumerate(roles):
            ready = ready_left[role] > 0
            ready_left[role] -= 1
            pods.append(pod(f"{pool_name}-{role}-{i}", name, namespace, pool_name, role, slots[i], ready, requests))
        for i in range(pp.unschedulable):
            since = pp.unschedulable_since_s or obs.now_s
            pods.append(
                pod(f"{pool_name}-pending-{i}", name, namespace, pool_name, "serving", None, False, requests, since)
            )
        deployments[pool_name] = replicas.serving
    pool_objs = [v.pool.to_dict() for v in obs.pools.values()]
    return ClusterView(pools=pool_objs, nodes=nodes, pods=pods), pods, deployments


def pod(
    pod_name: str, deployment: str, namespace: str, pool: str, role: str, node: str | None, ready: bool,
    requests: dict[str, str], unschedulable_since: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    conditions: list[dict[str, str]] = []
    if unschedulable_since is not None:
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                           "lastTransitionTime": stamp(unschedulable_since)})  # fmt: skip
    if ready:
        conditions.append({"type": "Ready", "status": "True", "lastTransitionTime": stamp(0)})
    spec: dict[str, Any] = {"containers": [{"name": "worker", "resources": {"requests": requests}}]}
    if node is not None:
        spec["nodeName"] = node
    labels = {MANAGED_BY: MANAGER, LABEL_DEPLOYMENT: deployment, LABEL_POOL: pool, LABEL_ROLE: role,
              "app.kubernetes.io/name": "infleet-worker", "app.kubernetes.io/instance": deployment}  # fmt: skip
    return {
        "metadata": {"name": pod_name, "namespace": namespace, "labels": labels, "creationTimestamp": stamp(0)},
        "spec": spec,
        "status": {"phase": "Running" if node else "Pending", "conditions": conditions},
    }


def same_plan(a: Plan, b: Plan) -> None:
    assert dict(a.serving) == dict(b.serving)
    assert dict(a.warm) == dict(b.warm)
    assert a.conditions == b.conditions
    assert a.decision == b.decision
    assert a.rows == b.rows
    assert len(a.promote) == len(b.promote) and len(a.retire) == len(b.retire)


@pytest.fixture(scope="module")
def recorded() -> tuple[Infleet, dict[str, int]]:
    fleet = load_fleet([REPO / "examples" / "pools.yaml"], SIM_EXAMPLES / "chat.yaml")
    infd = fleet.api_deployment
    assert infd is not None
    # A namespace as the operator would see it, and a small spot pool that the burst fills.
    infd = infd.model_copy(update={"metadata": infd.metadata.model_copy(update={"namespace": "team"})})
    pools = list(fleet.api_pools)
    small = next(p for p in pools if p.metadata.name == "h100-spot")
    small = small.model_copy(update={"spec": small.spec.model_copy(update={"max_devices": 4})})
    pools = [small if p.metadata.name == "h100-spot" else p for p in pools]
    fleet = build_fleet(pools, infd)
    trace = synthetic_trace([(120, 1.0), (90, 20.0), (150, 3.0)], seed=5, prompt=1200, gen=200)
    driver = Infleet(record=True)
    Simulation(fleet, trace, driver).run()
    return driver, {p.name: p.devices for p in fleet.pools}


def test_the_simulation_exercises_scale_up_warm_pools_and_a_full_pool(recorded: tuple[Infleet, dict[str, int]]) -> None:
    driver, _ = recorded
    kinds = {s.plan.decision.kind for s in driver.steps if s.plan.decision is not None}
    assert "ScaleUp" in kinds
    assert any(s.plan.warm for s in driver.steps)
    assert any(len(s.plan.serving) > 1 for s in driver.steps)  # the 4-device spot pool overflowed elsewhere


def test_operator_observes_and_decides_exactly_as_the_simulator(recorded: tuple[Infleet, dict[str, int]]) -> None:
    driver, devices = recorded
    assert len(driver.steps) > 20
    for step in driver.steps:
        sim_obs = step.obs
        view, pods, deployments = cluster_for(sim_obs, devices)
        op_obs = observe(
            infd=sim_obs.deployment,
            uid="uid-1",
            view=view,
            own_pods=pods,
            serving_deployments=deployments,
            measured=Measured(load=sim_obs.load, mix=sim_obs.mix),
            now_s=sim_obs.now_s,
        )
        for name, v in sim_obs.pools.items():
            assert (op_obs.pools[name].free_devices, op_obs.pools[name].room_replicas) == (
                v.free_devices, v.room_replicas,
            ), (sim_obs.now_s, name)  # fmt: skip
        assert {p: r for p, r in op_obs.replicas.items() if r.serving or r.pods.total or r.warm} == {
            p: r for p, r in sim_obs.replicas.items() if r.serving or r.pods.total or r.warm
        }, sim_obs.now_s
        op_plan, _ = decide(op_obs, step.state, driver.loop_settings)
        same_plan(op_plan, step.plan)
