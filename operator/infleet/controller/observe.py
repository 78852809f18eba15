"""Observe: cluster objects -> the decision loop's :class:`~infleet.policy.loop.Observation`. Pure.

The cluster view comes from the operator's in-memory indexes (:mod:`infleet.controller.index`); the load from the
workers' and the gateway's metrics (:mod:`infleet.controller.autoscale`). Nothing here reads the API server or
decides anything: it only turns Kubernetes shapes (nodes, pods, quantities, labels) into the loop's typed input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from infleet.api import AcceleratorPool, InferenceDeployment
from infleet.api.v1alpha1 import DEFAULT_ENGINE
from infleet.controller.kube import Obj
from infleet.controller.ledger import Claim, claimed_on, less_claimed
from infleet.controller.manifests import (
    LABEL_POOL,
    LABEL_ROLE,
    ContainerOverrides,
    Owner,
    PoolRuntime,
    Workload,
    selector_labels,
)
from infleet.controller.promotion import is_promoted, promotable, ready_since_s
from infleet.controller.snapshot import (
    ClusterView,
    NodeUse,
    admits,
    group_pods,
    infleet_devices_by_pool,
    node_usage,
    parse_quantity,
    pod_active,
    pod_ready,
    pool_capacity,
    selects,
)
from infleet.policy.autoscaler import LoadObservation
from infleet.policy.capacity import RequestMix
from infleet.policy.efficiency import PoolUsage
from infleet.policy.fallback import PoolPods
from infleet.policy.from_api import candidate_pools, choose
from infleet.policy.loop import Observation, Plan, PoolReplicas, PoolView
from infleet.policy.warm import WarmWorker

DEVICE_OF_FAMILY = {"nvidia-gpu": "cuda", "aws-neuron": "neuron", "google-tpu": "xla", "cpu": "cpu"}
# What every worker pod asks for besides its devices (host memory for loading weights, a core for the server).
DEFAULT_WORKER_REQUESTS: Mapping[str, str] = {"cpu": "1", "memory": "2Gi"}


def parse_deployment(body: Obj) -> InferenceDeployment:
    return InferenceDeployment.model_validate({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")})


def parse_pools(items: Sequence[Obj]) -> tuple[dict[str, AcceleratorPool], list[str]]:
    """Valid pools by name, and a message per invalid one (skipped, never fatal)."""
    out: dict[str, AcceleratorPool] = {}
    invalid: list[str] = []
    for item in items:
        try:
            pool = AcceleratorPool.model_validate({k: item[k] for k in ("apiVersion", "kind", "metadata", "spec")})
        except (ValidationError, KeyError) as exc:
            invalid.append(f"AcceleratorPool {item.get('metadata', {}).get('name')}: {exc}")
            continue
        out[pool.metadata.name or ""] = pool
    return out, invalid


def runtime_for(infd: InferenceDeployment, family: str) -> ContainerOverrides:
    """The model's per-family runtime override; ``env[].valueFrom`` passes through unchanged."""
    override = infd.spec.model.runtime_for(family)
    if override is None:
        return ContainerOverrides()
    res = override.resources
    return ContainerOverrides(
        engine=override.engine or DEFAULT_ENGINE,
        image=override.image,
        args=tuple(override.args),
        env={e.name: e.value for e in override.env if e.value is not None},
        env_from={e.name: e.value_from for e in override.env if e.value is None and e.value_from is not None},
        requests={k: str(v) for k, v in (res.requests if res else {}).items()},
        limits={k: str(v) for k, v in (res.limits if res else {}).items()},
    )


def pool_runtime(pool: AcceleratorPool, devices_per_replica: int) -> PoolRuntime:
    spec = pool.spec
    acc = spec.accelerator
    units = (acc.cpus_per_device or 1) if acc.family == "cpu" else 1
    defaults = dict(DEFAULT_WORKER_REQUESTS)
    if acc.family == "cpu":
        defaults.pop("cpu")
    return PoolRuntime(
        name=pool.metadata.name or "",
        device=DEVICE_OF_FAMILY[acc.family],  # type: ignore[arg-type]
        node_selector=dict(spec.node_selector),
        tolerations=tuple(t.to_dict() for t in spec.tolerations),
        resource_name=acc.resource_name,
        devices_per_replica=devices_per_replica,
        units_per_device=units,
        default_requests=defaults,
    )


def workload(
    owner: Owner, infd: InferenceDeployment, pool: AcceleratorPool, devices: int, role: str, n: int
) -> Workload:
    """One (deployment, pool, role) group of worker pods, as the manifests render it."""
    return Workload(
        owner,
        pool_runtime(pool, devices),
        role,  # type: ignore[arg-type]
        n,
        infd.spec.model.name,
        runtime_for(infd, pool.spec.accelerator.family),
        infd.spec.model.source,
        infd.spec.model.dtype,
    )


def replica_requests(runtime: PoolRuntime, override: ContainerOverrides) -> dict[str, float]:
    req = {k: parse_quantity(v) for k, v in runtime.default_requests.items()}
    if runtime.resource_name:
        req[runtime.resource_name] = float(runtime.devices_per_replica * runtime.units_per_device)
    req.update({k: parse_quantity(v) for k, v in override.requests.items()})
    return req


@dataclass(frozen=True, kw_only=True)
class Measured:
    """What the metrics say since the last decision (None fields: not measured)."""

    load: LoadObservation | None = None
    mix: RequestMix | None = None
    usage: Mapping[str, PoolUsage] = field(default_factory=dict)  # per pool: generated tokens/s and watts


def observe(
    *,
    infd: InferenceDeployment,
    uid: str,
    view: ClusterView,
    own_pods: Sequence[Obj],
    serving_deployments: Mapping[str, int],
    measured: Measured,
    now_s: float,
    waiting_for: str | None = None,
    claims: Sequence[Claim] = (),
) -> Observation:
    """The loop's input for one deployment from the cluster view and the measurements.

    ``serving_deployments`` is each pool's serving Deployment ``spec.replicas``; promoted pods count beside them.
    ``claims`` are other deployments' planned-but-unbound replicas (the capacity ledger), taken out of each pool.
    """
    namespace, name = infd.metadata.namespace or "", infd.metadata.name or ""
    pools, _ = parse_pools(view.pools)
    chosen, _ = candidate_pools(infd, pools)
    views = {n: PoolView(pool=p, free_devices=0, room_replicas=0) for n, p in pools.items()}
    nodes = candidate_nodes(view, chosen)
    own_selector = selector_labels(name)
    mine_only = [
        p
        for p in view.pods
        if p["metadata"].get("namespace") == namespace and selects(own_selector, p["metadata"].get("labels") or {})
    ]
    grouped_ok = shapes_usable(view, chosen)
    usage = (
        []
        if grouped_ok
        else node_usage(
            nodes, view.pods, own_selector, namespace, totals=view.node_requests, counts=view.node_pod_counts
        )
    )
    infleet_use = infleet_devices_by_pool(view, pools)
    me = f"{namespace}/{name}"
    taken: set[str] = set()
    # A node that several candidate pools select is offered once, by the cheapest of them: otherwise placement
    # would plan the same devices on two pools (pools sharing nodes share their devices).
    for pool in sorted(chosen, key=lambda p: (p.spec.price_per_device_hour_usd, p.metadata.name or "")):
        choice = choose(pool, infd)  # devices per replica only (capacity is the loop's business)
        runtime = pool_runtime(pool, choice.devices_per_replica)
        elsewhere = sum(v for k, v in infleet_use.get(runtime.name, {}).items() if k != me)
        if view.pool_nodes is not None:
            mine_nodes = set(view.pool_nodes.get(runtime.name, frozenset())) - taken
        else:
            tolerations = [t.to_dict() for t in pool.spec.tolerations]
            admitted = {n["metadata"]["name"] for n in nodes if admits(pool.spec.node_selector, tolerations, n)}
            mine_nodes = {u.name for u in usage if u.name not in taken and u.name in admitted}
        taken |= mine_nodes
        entries = (
            grouped_usage(view, runtime.name, mine_only, own_selector, namespace)
            if grouped_ok
            else [u for u in usage if u.name in mine_nodes]
        )
        cap = pool_capacity(
            pool,
            entries,
            replica_requests(runtime, runtime_for(infd, pool.spec.accelerator.family)),
            choice.devices_per_replica,
            int(elsewhere),
            preselected=grouped_ok,
        )
        free, room = cap.free_devices, cap.room_replicas
        if claims and runtime.resource_name:
            claimed = claimed_on(
                claims, runtime.name, view, nodes, mine_nodes, runtime.resource_name, float(runtime.units_per_device)
            )
            free, room = less_claimed(free, room, claimed, choice.devices_per_replica)
        views[runtime.name] = PoolView(pool=pool, free_devices=free, room_replicas=room)
    grouped = group_pods(own_pods)
    promoted = promoted_workers(own_pods, uid)
    promoted_count: dict[str, int] = {}
    for w in promoted:
        promoted_count[w.pool] = promoted_count.get(w.pool, 0) + 1
    names = set(grouped.serving) | set(grouped.warm) | set(serving_deployments) | set(promoted_count)
    replicas = {
        p: PoolReplicas(
            serving=serving_deployments.get(p, 0) + promoted_count.get(p, 0),
            pods=grouped.serving.get(p, PoolPods()),
            warm=grouped.warm.get(p, 0),
            warm_ready=grouped.warm_ready.get(p, 0),
        )
        for p in sorted(names)
    }
    return Observation(
        now_s=now_s,
        deployment=infd,
        pools=views,
        replicas=replicas,
        warm_ready=warm_workers(own_pods),
        promoted=promoted,
        load=measured.load,
        mix=measured.mix,
        usage=measured.usage,
        waiting_for=waiting_for,
    )


def shapes_usable(view: ClusterView, chosen: Sequence[AcceleratorPool]) -> bool:
    """Whether the index's per-pool node shapes can stand for the nodes: it keeps them, and no two candidate pools
    share a node (then each node's devices must be offered once, which needs the nodes one by one)."""
    if view.pool_shapes is None or view.pool_nodes is None or view.node_shapes is None:
        return False
    sets = [view.pool_nodes.get(p.metadata.name or "", frozenset()) for p in chosen]
    return all(a.isdisjoint(b) for i, a in enumerate(sets) for b in sets[i + 1 :])


def grouped_usage(
    view: ClusterView, pool: str, own_pods: Sequence[Obj], own_selector: Mapping[str, str], namespace: str
) -> list[NodeUse]:
    """A pool's nodes as one entry per shape (with its count), plus the nodes holding this deployment's pods one by
    one (their devices split between it and the others). Same totals as the node-by-node view, far fewer entries."""
    shapes_of = view.pool_shapes or {}
    members = (view.pool_nodes or {}).get(pool, frozenset())
    node_shapes = view.node_shapes or {}
    shapes = dict(shapes_of.get(pool, {}))
    own_nodes = sorted({n for p in own_pods if (n := p.get("spec", {}).get("nodeName")) in members})
    for node in own_nodes:
        shape = node_shapes[node]
        shapes[shape] = shapes.get(shape, 0) - 1
    entries = [
        NodeUse(
            name="",
            labels={},
            allocatable=dict(alloc),
            requested_by_others=dict(requested),
            requested_by_own={},
            pods_by_others=pods,
            count=count,
        )
        for (usable, alloc, requested, pods), count in shapes.items()
        if usable and count > 0
    ]
    if own_nodes and view.nodes_by_name is not None:
        singles = [view.nodes_by_name[n] for n in own_nodes]
        entries += node_usage(
            singles, own_pods, own_selector, namespace, totals=view.node_requests, counts=view.node_pod_counts
        )
    return entries


def candidate_nodes(view: ClusterView, chosen: Sequence[AcceleratorPool]) -> list[Obj]:
    """The nodes any of the candidate pools select: from the index's membership when it keeps one."""
    if view.pool_nodes is not None and view.nodes_by_name is not None:
        names: set[str] = set()
        for pool in chosen:
            names |= view.pool_nodes.get(pool.metadata.name or "", frozenset())
        return [view.nodes_by_name[n] for n in sorted(names) if n in view.nodes_by_name]
    selectors = [p.spec.node_selector for p in chosen]
    return [n for n in view.nodes if any(selects(sel, n["metadata"].get("labels") or {}) for sel in selectors)]


def _labels(pod: Obj) -> Mapping[str, Any]:
    return pod["metadata"].get("labels") or {}


def _live(pod: Obj) -> bool:
    return pod_active(pod) and not pod["metadata"].get("deletionTimestamp")


def warm_workers(pods: Sequence[Obj]) -> tuple[WarmWorker, ...]:
    """Ready warm pods, which a scale-up may promote."""
    return tuple(
        WarmWorker(p["metadata"]["name"], _labels(p).get(LABEL_POOL, ""), ready_since_s(p))
        for p in pods
        if _labels(p).get(LABEL_ROLE) == "warm" and _live(p) and pod_ready(p) and promotable(p)
    )


def promoted_workers(pods: Sequence[Obj], uid: str) -> tuple[WarmWorker, ...]:
    return tuple(
        WarmWorker(p["metadata"]["name"], _labels(p).get(LABEL_POOL, ""), ready_since_s(p))
        for p in pods
        if _live(p) and is_promoted(p, uid)
    )


def claims_of(obs: Observation, plan: Plan) -> list[Claim]:
    """Replicas the plan wants on each pool beyond the pods already bound there: the deployment's ledger claim.

    A pool with nothing more to bind keeps a zero claim so the ledger can tell when the plan shrinks there."""
    infd = obs.deployment
    out = []
    for pool_name in sorted(set(plan.serving) | set(plan.warm)):
        if pool_name not in plan.devices_per_replica or pool_name not in obs.pools:
            continue
        have = obs.replicas.get(pool_name, PoolReplicas())
        planned = plan.serving.get(pool_name, 0) + plan.warm.get(pool_name, 0)
        if planned <= 0:
            continue
        pool = obs.pools[pool_name].pool
        runtime = pool_runtime(pool, plan.devices_per_replica[pool_name])
        requests = replica_requests(runtime, runtime_for(infd, pool.spec.accelerator.family))
        out.append(
            Claim(
                node_selector=dict(pool.spec.node_selector),
                requests=requests,
                count=max(0, planned - have.pods.bound - have.warm_ready),
                pool=pool_name,
                planned=planned,
            )
        )
    return out
