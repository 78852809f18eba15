"""In-memory indexes fed by watches: what a reconcile reads, without a LIST from the API server per pass.

Watch events (kopf ``on.event``) land in :meth:`ClusterIndex.apply`, which keeps trimmed copies of Nodes, Pods,
AcceleratorPools, InferenceDeployments, the worker Deployments and the PersistentVolumeClaims infleet reads, and
answers which deployments an event concerns (the reconcile queue's triggers). Objects are trimmed to the fields
the operator reads, so memory grows with the cluster's size, not with its history, and a deleted object's entry
goes with it. Per-node requests are summed incrementally as pods come and go, so a reconcile's cost is in the nodes
of the pools it may use and its own pods, not in every pod of the cluster.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infleet.controller.kube import Obj
from infleet.controller.manifests import LABEL_DEPLOYMENT, LABEL_POOL, LABEL_ROLE, MANAGED_BY, MANAGER
from infleet.controller.snapshot import (
    ClusterView,
    Shape,
    admits,
    allocatable,
    hard_taints,
    node_usable,
    pod_active,
    pod_ready,
    pod_requests,
    unschedulable_since,
)

Key = tuple[str, str]  # (namespace, name)

_POD_META = (
    "name",
    "namespace",
    "labels",
    "ownerReferences",
    "deletionTimestamp",
    "resourceVersion",
    "creationTimestamp",
    "uid",
)


def trim_pod(pod: Obj) -> Obj:
    """The fields of a Pod the operator reads (requests, node, phase, readiness, scheduling, IP, ownership)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    containers = [
        {"resources": {"requests": dict((c.get("resources") or {}).get("requests") or {})}}
        for c in spec.get("containers") or []
    ]
    conditions = [
        {k: c.get(k) for k in ("type", "status", "reason", "lastTransitionTime") if c.get(k) is not None}
        for c in status.get("conditions") or []
    ]
    out_spec: dict[str, Any] = {"containers": containers}
    if spec.get("nodeName"):
        out_spec["nodeName"] = spec["nodeName"]
    return {
        "metadata": {k: meta[k] for k in _POD_META if k in meta},
        "spec": out_spec,
        "status": {
            k: v
            for k, v in (("phase", status.get("phase")), ("podIP", status.get("podIP")), ("conditions", conditions))
            if v is not None
        },
    }


def trim_node(node: Obj) -> Obj:
    meta = node.get("metadata") or {}
    status = node.get("status") or {}
    return {
        "metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})},
        "spec": trimmed_node_spec(node),
        "status": {
            "allocatable": dict(status.get("allocatable") or {}),
            "conditions": [{"type": c.get("type"), "status": c.get("status")} for c in status.get("conditions") or []],
        },
    }


def trimmed_node_spec(node: Obj) -> Obj:
    """Cordoned or not, and the taints that decide which pools may use the node (see ``snapshot.admits``)."""
    spec: Obj = {}
    if (node.get("spec") or {}).get("unschedulable"):
        spec["unschedulable"] = True
    taints = [{k: t[k] for k in ("key", "value", "effect") if t.get(k) is not None} for t in hard_taints(node)]
    if taints:
        spec["taints"] = taints
    return spec


def node_shape(node: Obj, requested: Mapping[str, float] | None, pods: int) -> Shape:
    """What a node's capacity depends on: nodes of one shape offer the same to every deployment with no pod there."""
    alloc = allocatable(node)
    return (
        node_usable(node),
        tuple(sorted(alloc.items())),
        tuple(sorted((k, round(v, 6)) for k, v in (requested or {}).items() if v)),
        pods,
    )


def _pool_admits(pool: Obj, node: Obj) -> bool:
    spec = pool.get("spec") or {}
    return admits(spec.get("nodeSelector") or {}, spec.get("tolerations") or [], node)


def trim_workload(obj: Obj) -> Obj:
    meta = obj.get("metadata") or {}
    return {
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "labels", "annotations", "ownerReferences") if k in meta
        },
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas")},
    }


def _key(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def _owner_key(obj: Obj) -> Key | None:
    """The InferenceDeployment an infleet-managed pod or Deployment belongs to (by label)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(MANAGED_BY) != MANAGER or not labels.get(LABEL_DEPLOYMENT):
        return None
    return meta.get("namespace") or "", labels[LABEL_DEPLOYMENT]


def _pod_signature(pod: Obj) -> tuple[Any, ...]:
    """What about a pod can change a decision: existence, node, phase, readiness, scheduling, role, IP."""
    meta = pod.get("metadata") or {}
    return (
        (pod.get("spec") or {}).get("nodeName"),
        pod_active(pod),
        pod_ready(pod),
        unschedulable_since(pod),
        bool(meta.get("deletionTimestamp")),
        (meta.get("labels") or {}).get(LABEL_ROLE),
        (pod.get("status") or {}).get("podIP"),
    )


@dataclass
class ClusterIndex:
    """Thread-safe copies of the watched objects; ``apply`` returns the deployments an event concerns."""

    nodes: dict[str, Obj] = field(default_factory=dict)
    pods: dict[Key, Obj] = field(default_factory=dict)
    pools: dict[str, Obj] = field(default_factory=dict)
    deployments: dict[Key, Obj] = field(default_factory=dict)
    workloads: dict[Key, Obj] = field(default_factory=dict)
    claims: set[Key] = field(default_factory=set)
    own_pods: dict[Key, dict[Key, Obj]] = field(default_factory=dict)  # deployment -> its pods
    own_workloads: dict[Key, dict[Key, Obj]] = field(default_factory=dict)
    node_requests: dict[str, dict[str, float]] = field(default_factory=dict)  # bound active pods, summed per node
    pool_nodes: dict[str, set[str]] = field(default_factory=dict)  # AcceleratorPool -> nodes its selector matches
    node_shapes: dict[str, Shape] = field(default_factory=dict)
    pool_shapes: dict[str, Counter[Shape]] = field(default_factory=dict)  # pool -> shape -> nodes
    node_pods: dict[str, int] = field(default_factory=dict)
    # Bumped when a node joins a pool's usable nodes or changes while it is one (added, untainted, Ready again,
    # uncordoned, resized): deployments placed short of capacity are worth deciding again.
    nodes_offered: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)

    # -- events ------------------------------------------------------------------------------------------------

    def apply(self, kind: str, event_type: str | None, body: Obj) -> set[Key]:
        """Fold one watch event in; the deployment keys that should be reconciled because of it."""
        deleted = event_type == "DELETED"
        with self.lock:
            if kind == "Pod":
                return self._pod(body, deleted)
            if kind == "Node":
                return self._node(body, deleted)
            if kind == "AcceleratorPool":
                name = (body.get("metadata") or {}).get("name") or ""
                before = self.pools.get(name)
                if deleted:
                    self.pools.pop(name, None)
                    self.pool_nodes.pop(name, None)
                else:
                    self.pools[name] = {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec", "status")}
                changed = deleted or before is None or before.get("spec") != body.get("spec")
                if deleted:
                    self.pool_shapes.pop(name, None)
                if changed and not deleted:
                    self.pool_nodes[name] = {
                        n for n, node in self.nodes.items() if _pool_admits(self.pools[name], node)
                    }
                    self.pool_shapes[name] = Counter(self.node_shapes[n] for n in self.pool_nodes[name])
                return set(self.deployments) if changed else set()
            if kind == "InferenceDeployment":
                return self._deployment(body, deleted)
            if kind == "Deployment":
                return self._workload(body, deleted)
            if kind == "PersistentVolumeClaim":
                key = _key(body)
                (self.claims.discard if deleted else self.claims.add)(key)
                return {k for k in self.deployments if k[0] == key[0]}
        return set()

    def _count(self, pod: Obj | None, sign: int) -> None:
        """Add (+1) or remove (-1) a bound pod's requests from its node's totals (the capacity ledger's input)."""
        node = (pod or {}).get("spec", {}).get("nodeName")
        if pod is None or not node:
            return
        totals = self.node_requests.setdefault(node, {})
        for name, qty in pod_requests(pod).items():
            totals[name] = totals.get(name, 0.0) + sign * qty
        self.node_pods[node] = self.node_pods.get(node, 0) + sign
        if self.node_pods[node] <= 0:
            self.node_pods.pop(node, None)
            self.node_requests.pop(node, None)

    def _set_shape(self, node: str, shape: Shape | None) -> None:
        """Move a node from its old shape to ``shape`` (None: gone) in the counters of the pools it belongs to."""
        old = self.node_shapes.pop(node, None)
        if shape is not None:
            self.node_shapes[node] = shape
        if old == shape:
            return
        for pool_name, members in self.pool_nodes.items():
            if node not in members:
                continue
            counter = self.pool_shapes.setdefault(pool_name, Counter())
            if old is not None:
                counter[old] -= 1
                if counter[old] <= 0:
                    del counter[old]
            if shape is not None:
                counter[shape] += 1

    def _reshape(self, node: str | None) -> None:
        if node and node in self.nodes:
            self._set_shape(
                node, node_shape(self.nodes[node], self.node_requests.get(node), self.node_pods.get(node, 0))
            )

    def _pod(self, body: Obj, deleted: bool) -> set[Key]:
        key = _key(body)
        before = self.pods.get(key)
        self._count(before, -1)
        self._reshape((before or {}).get("spec", {}).get("nodeName"))
        owner = _owner_key(body) or (_owner_key(before) if before is not None else None)
        if deleted or not pod_active(body):
            self.pods.pop(key, None)
            if owner is not None:
                self.own_pods.get(owner, {}).pop(key, None)
                if not self.own_pods.get(owner):
                    self.own_pods.pop(owner, None)
        else:
            pod = trim_pod(body)
            self.pods[key] = pod
            self._count(pod, +1)
            self._reshape(pod["spec"].get("nodeName"))
            if owner is not None:
                self.own_pods.setdefault(owner, {})[key] = pod
        if owner is None:
            return set()
        changed = before is None or deleted or _pod_signature(before) != _pod_signature(body)
        return {owner} if changed and owner in self.deployments else set()

    def _node(self, body: Obj, deleted: bool) -> set[Key]:
        name = (body.get("metadata") or {}).get("name") or ""
        before = self.nodes.get(name)
        self._set_shape(name, None)
        if deleted:
            self.nodes.pop(name, None)
            for members in self.pool_nodes.values():
                members.discard(name)
        else:
            self.nodes[name] = trim_node(body)
            for pool_name, pool in self.pools.items():
                members = self.pool_nodes.setdefault(pool_name, set())
                if _pool_admits(pool, self.nodes[name]):
                    members.add(name)
                else:
                    members.discard(name)
            self._set_shape(
                name, node_shape(self.nodes[name], self.node_requests.get(name), self.node_pods.get(name, 0))
            )
        if before is not None and not deleted and before == self.nodes[name]:
            return set()
        if not deleted and node_usable(self.nodes[name]) and any(name in m for m in self.pool_nodes.values()):
            self.nodes_offered += 1
        # Capacity changed: deployments that wait for room (pending pods) may now fit, or lose a node.
        return {
            k
            for k, pods in self.own_pods.items()
            if k in self.deployments  # pods are watched cluster-wide; deployments only where the operator serves
            and any(not p["spec"].get("nodeName") or p["spec"].get("nodeName") == name for p in pods.values())
        }

    def _deployment(self, body: Obj, deleted: bool) -> set[Key]:
        key = _key(body)
        before = self.deployments.get(key)
        if deleted:
            self.deployments.pop(key, None)
            return {key}
        self.deployments[key] = body
        if before is None:
            return {key}
        meta, old = body.get("metadata") or {}, before.get("metadata") or {}
        changed = (
            meta.get("generation") != old.get("generation")
            or meta.get("deletionTimestamp") != old.get("deletionTimestamp")
            or (body.get("spec") or {}).get("scaling") != (before.get("spec") or {}).get("scaling")
        )
        return {key} if changed else set()

    def _workload(self, body: Obj, deleted: bool) -> set[Key]:
        key = _key(body)
        before = self.workloads.get(key)
        owner = _owner_key(body) or (_owner_key(before) if before is not None else None)
        if deleted:
            self.workloads.pop(key, None)
            if owner is not None:
                self.own_workloads.get(owner, {}).pop(key, None)
        else:
            trimmed = trim_workload(body)
            self.workloads[key] = trimmed
            if owner is not None:
                self.own_workloads.setdefault(owner, {})[key] = trimmed
        if owner is None or owner not in self.deployments:
            return set()
        changed = deleted or before is None or before["spec"] != self.workloads[key]["spec"]
        return {owner} if changed else set()

    # -- reads -------------------------------------------------------------------------------------------------

    def view(self) -> ClusterView:
        """A consistent snapshot: the objects (copies are replaced, never mutated) and the per-node request totals,
        so a reconcile reads only its own pods (``ClusterView.pods`` holds infleet's pods, not every pod)."""
        with self.lock:
            infleet_pods = [p for pods in self.own_pods.values() for p in pods.values()]
            return ClusterView(
                pools=list(self.pools.values()),
                nodes=list(self.nodes.values()),
                pods=infleet_pods,
                node_requests={n: dict(r) for n, r in self.node_requests.items()},
                node_pod_counts=dict(self.node_pods),
                pool_nodes={p: frozenset(m) for p, m in self.pool_nodes.items()},
                nodes_by_name=dict(self.nodes),
                pool_shapes={p: dict(c) for p, c in self.pool_shapes.items()},
                node_shapes=dict(self.node_shapes),
            )

    def pods_of(self, key: Key) -> list[Obj]:
        with self.lock:
            return list(self.own_pods.get(key, {}).values())

    def bound_on(self, key: Key, pool: str) -> int:
        """A deployment's pods bound to a node of ``pool`` and not terminating (what its ledger claim has got)."""
        with self.lock:
            return sum(
                1
                for p in self.own_pods.get(key, {}).values()
                if p["spec"].get("nodeName")
                and not p["metadata"].get("deletionTimestamp")
                and (p["metadata"].get("labels") or {}).get(LABEL_POOL) == pool
            )

    def workloads_of(self, key: Key) -> list[Obj]:
        with self.lock:
            return list(self.own_workloads.get(key, {}).values())

    def deployment(self, key: Key) -> Obj | None:
        with self.lock:
            return self.deployments.get(key)

    def deployment_keys(self) -> list[Key]:
        with self.lock:
            return sorted(self.deployments)

    def has_claim(self, namespace: str, name: str) -> bool:
        with self.lock:
            return (namespace, name) in self.claims

    def sizes(self) -> Mapping[str, int]:
        with self.lock:
            return {
                "nodes": len(self.nodes),
                "pods": len(self.pods),
                "pools": len(self.pools),
                "deployments": len(self.deployments),
                "workloads": len(self.workloads),
            }


def keys_of(items: Iterable[Obj]) -> set[Key]:
    return {_key(i) for i in items}
