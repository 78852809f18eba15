"""Turn the declared node pools (``nodepools.yaml``) into kwok-managed Node objects.

Nodes carry the labels, taints and allocatable resources that the clouds' device plugins and node-pool
controllers set on real nodes, so selectors written for a real fleet select these nodes unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infleet_devcluster.config import PACKAGE_DIR

DEFAULT_POOLS_FILE = PACKAGE_DIR.parent / "nodepools.yaml"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
POOL_LABEL = "karpenter.sh/nodepool"
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute"}
_CAPACITY_TYPES = {"on-demand", "spot"}


class PoolFileError(ValueError):
    """The pools file is malformed; the message names the pool and the field."""


@dataclass(frozen=True)
class NodePool:
    name: str
    count: int
    instance_type: str
    capacity_type: str
    zone: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, str], ...] = ()
    allocatable: Mapping[str, str] = field(default_factory=dict)


def _require(entry: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in entry:
        raise PoolFileError(f"{where}: missing required field {key!r}")
    return entry[key]


def parse_pools(text: str, source: str = "nodepools.yaml") -> list[NodePool]:
    """Parse and validate the pools document."""
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("pools"), list):
        raise PoolFileError(f"{source}: expected a mapping with a 'pools' list")
    pools: list[NodePool] = []
    seen: set[str] = set()
    for i, entry in enumerate(doc["pools"]):
        where = f"{source}: pools[{i}]"
        if not isinstance(entry, dict):
            raise PoolFileError(f"{where}: expected a mapping")
        name = str(_require(entry, "name", where))
        where = f"{source}: pool {name!r}"
        if name in seen:
            raise PoolFileError(f"{where}: duplicate pool name")
        seen.add(name)
        count = _require(entry, "count", where)
        if not isinstance(count, int) or count < 0:
            raise PoolFileError(f"{where}: count must be a non-negative integer, got {count!r}")
        capacity = str(_require(entry, "capacityType", where))
        if capacity not in _CAPACITY_TYPES:
            raise PoolFileError(f"{where}: capacityType must be one of {sorted(_CAPACITY_TYPES)}, got {capacity!r}")
        taints = tuple(entry.get("taints") or ())
        for t in taints:
            if not isinstance(t, dict) or "key" not in t or t.get("effect") not in _EFFECTS:
                raise PoolFileError(f"{where}: each taint needs a key and an effect in {sorted(_EFFECTS)}: {t!r}")
        allocatable = {str(k): str(v) for k, v in (_require(entry, "allocatable", where) or {}).items()}
        for required in ("cpu", "memory", "pods"):
            if required not in allocatable:
                raise PoolFileError(f"{where}: allocatable must include {required!r}")
        pools.append(
            NodePool(
                name=name,
                count=count,
                instance_type=str(_require(entry, "instanceType", where)),
                capacity_type=capacity,
                zone=str(entry.get("zone", "local-a")),
                labels={str(k): str(v) for k, v in (entry.get("labels") or {}).items()},
                taints=taints,
                allocatable=allocatable,
            )
        )
    return pools


def load_pools(path: Path = DEFAULT_POOLS_FILE, scale: Mapping[str, int] | None = None) -> list[NodePool]:
    """Load the pools file; ``scale`` overrides node counts by pool name (unknown names are an error)."""
    pools = parse_pools(path.read_text(), str(path))
    scale = dict(scale or {})
    unknown = set(scale) - {p.name for p in pools}
    if unknown:
        raise PoolFileError(f"--nodes names unknown pool(s) {sorted(unknown)}; pools are {[p.name for p in pools]}")
    return [
        NodePool(**{**p.__dict__, "count": scale[p.name]}) if p.name in scale else p for p in pools
    ]


def node_name(pool: NodePool, index: int) -> str:
    return f"{pool.name}-{index:04d}"


def node_manifest(pool: NodePool, index: int) -> dict[str, Any]:
    """One Node object as a real cloud node of this pool would look to the scheduler."""
    name = node_name(pool, index)
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "node.kubernetes.io/instance-type": pool.instance_type,
        "topology.kubernetes.io/zone": pool.zone,
        POOL_LABEL: pool.name,
        CAPACITY_TYPE_LABEL: pool.capacity_type,
        **pool.labels,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {KWOK_ANNOTATION: "fake"}},
        "spec": {"taints": [dict(t) for t in pool.taints]},
        "status": {
            "allocatable": dict(pool.allocatable),
            "capacity": dict(pool.allocatable),
        },
    }


def node_manifests(pools: list[NodePool]) -> list[dict[str, Any]]:
    return [node_manifest(p, i) for p in pools for i in range(p.count)]
