"""Cluster objects -> the policy's inputs. Pure conversions first; the reads live in `read_cluster` at the end.

Devices are counted per node (a replica needs all its devices on one node), from allocatable minus what bound,
non-finished pods request, so the placement never plans replicas that cannot fit however the pool is split.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from infleet.api import AcceleratorPool
from infleet.controller.kube import Kube, Obj
from infleet.controller.manifests import LABEL_DEPLOYMENT, LABEL_POOL, LABEL_ROLE, MANAGED_BY, MANAGER
from infleet.policy.fallback import PoolPods

_SUFFIX = {
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("500m", "16Gi", "8", 2) as a float; a malformed one is a ValueError."""
    if isinstance(value, int | float):
        return float(value)
    match = _QUANTITY.match(value.strip())
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    try:
        number = float(match.group(1))
    except ValueError:
        raise ValueError(f"not a Kubernetes quantity: {value!r}") from None
    return number * _SUFFIX[match.group(2)]


def parse_time(value: str | None) -> datetime | None:
    return None if not value else datetime.fromisoformat(value.replace("Z", "+00:00"))


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


HARD_TAINT_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


def hard_taints(node: Obj) -> list[Obj]:
    """The taints that keep a pod off a node unless it tolerates them (PreferNoSchedule only steers the scheduler)."""
    return [t for t in node.get("spec", {}).get("taints") or [] if t.get("effect") in HARD_TAINT_EFFECTS]


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """core/v1 matching: the effect (unset: any), then the key (unset with Exists: any) and, for Equal, the value."""
    if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
        return False
    key = toleration.get("key")
    if (toleration.get("operator") or "Equal") == "Exists":
        return not key or key == taint.get("key")
    return key == taint.get("key") and (toleration.get("value") or "") == (taint.get("value") or "")


def admits(selector: Mapping[str, str], tolerations: Sequence[Mapping[str, Any]], node: Obj) -> bool:
    """Whether a pool's pods may land on a node: its selector matches and it tolerates every hard taint.

    A node the pool selects but cannot tolerate (``node.kubernetes.io/not-ready`` while a new node settles, a
    disruption taint while it drains, a dedicated-team taint) offers no capacity: counting it would plan pods the
    scheduler leaves Pending.
    """
    if not selects(selector, node.get("metadata", {}).get("labels") or {}):
        return False
    return all(any(tolerates(t, taint) for t in tolerations) for taint in hard_taints(node))


def node_usable(node: Obj) -> bool:
    """Ready and not cordoned: only such nodes offer capacity."""
    if node.get("spec", {}).get("unschedulable"):
        return False
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_active(pod: Obj) -> bool:
    return pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")


def pod_requests(pod: Obj) -> dict[str, float]:
    total: dict[str, float] = {}
    for container in pod.get("spec", {}).get("containers") or []:
        for name, qty in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = total.get(name, 0.0) + parse_quantity(qty)
    return total


def pod_ready(pod: Obj) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def unschedulable_since(pod: Obj) -> datetime | None:
    """When the scheduler last reported this unbound pod as unschedulable (None: not unschedulable)."""
    if pod.get("spec", {}).get("nodeName"):
        return None
    for c in pod.get("status", {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return parse_time(c.get("lastTransitionTime")) or parse_time(pod["metadata"].get("creationTimestamp"))
    return None


@dataclass(frozen=True)
class NodeUse:
    """One node: what it offers and what bound pods request, split into one deployment's pods and the rest."""

    name: str
    labels: Mapping[str, str]
    allocatable: Mapping[str, float]
    requested_by_others: Mapping[str, float]
    requested_by_own: Mapping[str, float]
    pods_by_others: int = 0
    pods_by_own: int = 0
    count: int = 1  # identical nodes this entry stands for (the index groups nodes by shape)


def node_usage(
    nodes: Iterable[Obj],
    pods: Iterable[Obj],
    own_labels: Mapping[str, str],
    own_namespace: str,
    *,
    totals: Mapping[str, Mapping[str, float]] | None = None,
    counts: Mapping[str, int] | None = None,
) -> list[NodeUse]:
    """Usable nodes with their requested resources; ``own_labels`` in ``own_namespace`` select the deployment's own
    pods (their devices count as free to it).

    With ``totals``/``counts`` (every bound pod's requests and count per node, kept by the watch index), ``pods``
    need only hold the deployment's own pods: the others' use is the total less its own.
    """
    if totals is not None:
        return _usage_from_totals(nodes, pods, own_labels, own_namespace, totals, counts or {})
    others: dict[str, dict[str, float]] = {}
    own: dict[str, dict[str, float]] = {}
    n_others: dict[str, int] = {}
    n_own: dict[str, int] = {}
    for pod in pods:
        node = pod.get("spec", {}).get("nodeName")
        if not node or not pod_active(pod):
            continue
        mine = pod["metadata"].get("namespace") == own_namespace and selects(
            own_labels, pod["metadata"].get("labels") or {}
        )
        bucket = (own if mine else others).setdefault(node, {})
        counts = n_own if mine else n_others
        counts[node] = counts.get(node, 0) + 1
        for name, qty in pod_requests(pod).items():
            bucket[name] = bucket.get(name, 0.0) + qty
    out = []
    for node in nodes:
        if not node_usable(node):
            continue
        name = node["metadata"]["name"]
        out.append(
            NodeUse(
                name=name,
                labels=node["metadata"].get("labels") or {},
                allocatable=allocatable(node),
                requested_by_others=others.get(name, {}),
                requested_by_own=own.get(name, {}),
                pods_by_others=n_others.get(name, 0),
                pods_by_own=n_own.get(name, 0),
            )
        )
    return out


def _usage_from_totals(
    nodes: Iterable[Obj],
    pods: Iterable[Obj],
    own_labels: Mapping[str, str],
    own_namespace: str,
    totals: Mapping[str, Mapping[str, float]],
    counts: Mapping[str, int],
) -> list[NodeUse]:
    own: dict[str, dict[str, float]] = {}
    n_own: dict[str, int] = {}
    for pod in pods:
        node = pod.get("spec", {}).get("nodeName")
        mine = pod["metadata"].get("namespace") == own_namespace and selects(
            own_labels, pod["metadata"].get("labels") or {}
        )
        if not node or not pod_active(pod) or not mine:
            continue
        n_own[node] = n_own.get(node, 0) + 1
        bucket = own.setdefault(node, {})
        for name, qty in pod_requests(pod).items():
            bucket[name] = bucket.get(name, 0.0) + qty
    out = []
    for node in nodes:
        if not node_usable(node):
            continue
        name = node["metadata"]["name"]
        mine = own.get(name, {})
        every = totals.get(name, {})
        out.append(
            NodeUse(
                name=name,
                labels=node["metadata"].get("labels") or {},
                allocatable=allocatable(node),
                requested_by_others={k: max(0.0, v - mine.get(k, 0.0)) for k, v in every.items()},
                requested_by_own=mine,
                pods_by_others=max(0, counts.get(name, 0) - n_own.get(name, 0)),
                pods_by_own=n_own.get(name, 0),
            )
        )
    return out


def allocatable(node: Obj) -> Mapping[str, float]:
    """A node's allocatable resources as numbers (parsed once per node object and kept on it)."""
    cached = node.get("_allocatable")
    if cached is None:
        cached = {k: parse_quantity(v) for k, v in (node.get("status", {}).get("allocatable") or {}).items()}
        node["_allocatable"] = cached
    return cached


@dataclass(frozen=True)
class PoolCapacity:
    """What one pool can offer one deployment right now."""

    pool: str
    nodes: int
    allocatable_devices: int  # on usable nodes, capped by maxDevices
    allocated_devices: int  # requested by bound pods (everyone's)
    free_devices: int  # devices this deployment could use: node-fit free devices plus those it already holds
    room_replicas: int  # more replicas of this deployment that would fit now (devices, cpu, memory, pods)


def device_units(pool: AcceleratorPool, amount: float) -> float:
    """Devices in a quantity of the pool's resource (a CPU pool's device is a slice of cpusPerDevice vCPUs)."""
    acc = pool.spec.accelerator
    if acc.family == "cpu":
        return amount / float(acc.cpus_per_device or 1)
    return amount


def pool_capacity(
    pool: AcceleratorPool,
    usage: Iterable[NodeUse],
    replica_requests: Mapping[str, float],
    devices_per_replica: int,
    infleet_devices_elsewhere: int = 0,
    *,
    preselected: bool = False,
) -> PoolCapacity:
    """Per-node fit of this deployment's replicas on the pool.

    ``replica_requests`` is everything one replica's pod requests (its devices included);
    ``infleet_devices_elsewhere`` counts devices other infleet deployments use in the pool (for maxDevices).
    """
    resource = pool.spec.accelerator.resource_name
    name = pool.metadata.name or ""
    nodes = allocatable = allocated = free = room = 0
    own_devices = 0.0
    for node in usage:
        if not preselected and not selects(pool.spec.node_selector, node.labels):
            continue
        k = node.count
        nodes += k
        alloc_devices = math.floor(device_units(pool, node.allocatable.get(resource, 0.0)))
        used_others = device_units(pool, node.requested_by_others.get(resource, 0.0))
        used_own = device_units(pool, node.requested_by_own.get(resource, 0.0))
        own_devices += used_own * k
        allocatable += alloc_devices * k
        allocated += math.ceil(used_others + used_own) * k
        free_here = max(0.0, alloc_devices - used_others)
        free += (math.floor(free_here / devices_per_replica) * devices_per_replica if devices_per_replica else 0) * k
        room += _fits(node, replica_requests) * k
    limit = pool.spec.max_devices
    if limit is not None:
        allocatable = min(allocatable, limit)
        free = min(free, max(0, limit - infleet_devices_elsewhere))
        if devices_per_replica:  # maxDevices bounds the room for more replicas too, not only the free devices
            left = limit - infleet_devices_elsewhere - math.ceil(own_devices)
            room = min(room, max(0, left) // devices_per_replica)
    return PoolCapacity(
        pool=name,
        nodes=nodes,
        allocatable_devices=allocatable,
        allocated_devices=allocated,
        free_devices=free,
        room_replicas=room,
    )


def _fits(node: NodeUse, requests: Mapping[str, float]) -> int:
    """How many more pods with these requests the node takes (every resource, and the pod count)."""
    count = node.allocatable.get("pods", 110.0) - node.pods_by_others - node.pods_by_own
    best = max(0, math.floor(count))
    for name, qty in requests.items():
        if qty <= 0:
            continue
        left = node.allocatable.get(name, 0.0) - node.requested_by_others.get(name, 0.0)
        left -= node.requested_by_own.get(name, 0.0)
        best = min(best, max(0, math.floor(left / qty + 1e-9)))
    return best


@dataclass
class DeploymentPods:
    """One deployment's worker pods grouped by pool: serving as the scheduler sees them, and warm counts."""

    serving: dict[str, PoolPods] = field(default_factory=dict)
    warm: dict[str, int] = field(default_factory=dict)
    warm_ready: dict[str, int] = field(default_factory=dict)


def group_pods(pods: Iterable[Obj]) -> DeploymentPods:
    out = DeploymentPods()
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        pool = labels.get(LABEL_POOL)
        if pool is None or not pod_active(pod) or pod["metadata"].get("deletionTimestamp"):
            continue
        if labels.get(LABEL_ROLE) == "warm":
            out.warm[pool] = out.warm.get(pool, 0) + 1
            out.warm_ready[pool] = out.warm_ready.get(pool, 0) + int(pod_ready(pod))
            continue
        seen = out.serving.get(pool, PoolPods())
        since_at = unschedulable_since(pod)
        since = since_at.timestamp() if since_at is not None else None
        earliest = seen.unschedulable_since_s
        if since is not None and (earliest is None or since < earliest):
            earliest = since
        out.serving[pool] = PoolPods(
            total=seen.total + 1,
            bound=seen.bound + int(bool(pod.get("spec", {}).get("nodeName"))),
            ready=seen.ready + int(pod_ready(pod)),
            unschedulable=seen.unschedulable + int(since is not None),
            unschedulable_since_s=earliest,
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# Reads


# (usable, allocatable, requested by bound pods, bound pod count): what capacity depends on, per node
Shape = tuple[bool, tuple[tuple[str, float], ...], tuple[tuple[str, float], ...], int]


@dataclass
class ClusterView:
    pools: list[Obj]
    nodes: list[Obj]
    pods: list[Obj]  # every pod in the cluster, or only infleet's when the per-node totals below are given
    node_requests: Mapping[str, Mapping[str, float]] | None = None  # every bound active pod's requests per node
    node_pod_counts: Mapping[str, int] | None = None
    pool_nodes: Mapping[str, frozenset[str]] | None = None  # pool -> names of the nodes its selector matches
    nodes_by_name: Mapping[str, Obj] | None = None
    # pool -> {node shape: how many of its nodes have it}; see infleet.controller.index.node_shape
    pool_shapes: Mapping[str, Mapping[Shape, int]] | None = None
    node_shapes: Mapping[str, Shape] | None = None


POOLS_PATH = "/apis/infleet.io/v1alpha1/acceleratorpools"


def read_cluster(kube: Kube) -> ClusterView:
    return ClusterView(
        pools=kube.list(POOLS_PATH),
        nodes=kube.list("/api/v1/nodes"),
        pods=kube.list("/api/v1/pods", field_selector="status.phase!=Succeeded,status.phase!=Failed"),
    )


def own_pods(view: ClusterView, namespace: str, deployment: str) -> list[Obj]:
    want = {MANAGED_BY: MANAGER, LABEL_DEPLOYMENT: deployment}
    return [
        p
        for p in view.pods
        if p["metadata"].get("namespace") == namespace and selects(want, p["metadata"].get("labels") or {})
    ]


def infleet_devices_by_pool(view: ClusterView, pools: Mapping[str, AcceleratorPool]) -> dict[str, dict[str, float]]:
    """Devices that infleet pods request per pool, per (namespace/deployment)."""
    out: dict[str, dict[str, float]] = {}
    for pod in view.pods:
        labels = pod["metadata"].get("labels") or {}
        if labels.get(MANAGED_BY) != MANAGER or labels.get(LABEL_POOL) not in pools:
            continue
        pool = pools[labels[LABEL_POOL]]
        used = device_units(pool, pod_requests(pod).get(pool.spec.accelerator.resource_name, 0.0))
        key = f"{pod['metadata'].get('namespace')}/{labels.get(LABEL_DEPLOYMENT)}"
        per = out.setdefault(pool.metadata.name or "", {})
        per[key] = per.get(key, 0.0) + used
    return out
