"""One capacity ledger for concurrent reconciles: devices planned but not yet bound are claimed here.

The index counts what pods hold on each node once they are bound; between a decision and the binding (the apply,
the ReplicaSet creating pods, the scheduler) those devices look free to every other deployment, and two reconciles
on different worker threads would plan the same devices (pods Pending for minutes, then fallback). So a decision
runs under the ledger's lock: it observes with the other deployments' open claims subtracted, decides, and records
its own claim (replicas it wants on each pool beyond the pods already bound there) before the lock is released.
A claim counts against every pool whose nodes its node selector reaches, so pools that share nodes share it too.

A claim shrinks by itself as its pods bind: what it still holds is read against the index's bound pods of that
deployment on that pool at each decision, never more than it claimed. Otherwise a bound pod would count twice (in
the index and in the claim) until its own deployment's next reconcile, and decisions in between would see full
pools that are not (a CI run placed 81 replicas on 96 free devices). Claims are replaced on the deployment's next
reconcile and dropped with the deployment (flat memory).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from infleet.controller.index import Key
from infleet.controller.kube import Obj
from infleet.controller.snapshot import ClusterView, selects


@dataclass(frozen=True, kw_only=True)
class Claim:
    """``count`` more replicas of one deployment on nodes matching ``node_selector``, each requesting ``requests``."""

    node_selector: Mapping[str, str]
    requests: Mapping[str, float]
    count: int
    pool: str = ""  # the AcceleratorPool the replicas were planned on
    planned: int = 0  # replicas the plan wants on that pool in all, bound ones included (0: ``count`` is fixed)


BoundOn = Callable[[Key, str], int]  # (deployment, pool) -> its pods bound to nodes there now


def outstanding(claim: Claim, bound_now: int) -> int:
    """What a claim still holds once ``bound_now`` of its deployment's pods are bound on its pool."""
    if claim.planned <= 0:
        return claim.count
    return max(0, min(claim.count, claim.planned - bound_now))


@dataclass
class CapacityLedger:
    claims: dict[Key, tuple[Claim, ...]] = field(default_factory=dict)
    decisions: threading.Lock = field(default_factory=threading.Lock)  # held from observe to claim
    guard: threading.Lock = field(default_factory=threading.Lock)

    def others(self, key: Key, bound: BoundOn | None = None) -> list[Claim]:
        """Every other deployment's open claims; with ``bound``, less the pods bound since they were made."""
        with self.guard:
            held = [(k, c) for k, claims in self.claims.items() if k != key for c in claims]
        if bound is None:
            return [c for _, c in held if c.count > 0]
        out = []
        for k, c in held:
            left = outstanding(c, bound(k, c.pool)) if c.count > 0 else 0
            if left > 0:
                out.append(c if left == c.count else dataclasses.replace(c, count=left))
        return out

    def set(self, key: Key, claims: Sequence[Claim]) -> bool:
        """Replace a deployment's claims; True when it now plans fewer replicas on some pool (room may have freed
        for a deployment that was short of it)."""
        with self.guard:
            before = {c.pool: c.planned or c.count for c in self.claims.get(key, ())}
            if claims:
                self.claims[key] = tuple(claims)
            else:
                self.claims.pop(key, None)
        after = {c.pool: c.planned or c.count for c in claims}
        return any(after.get(pool, 0) < n for pool, n in before.items())

    def forget(self, key: Key) -> bool:
        return self.set(key, ())


def claimed_on(
    claims: Sequence[Claim],
    pool: str,
    view: ClusterView,
    nodes: Sequence[Obj],
    pool_node_names: AbstractSet[str],
    resource: str,
    units_per_device: float,
) -> float:
    """Devices of one pool (its nodes, its device resource) that others' claims may take: claims on this pool, and
    claims on any pool whose nodes overlap this one's (from the index's membership, else by selector)."""
    total = 0.0
    reaches: dict[str, bool] = {}
    for claim in claims:
        amount = claim.requests.get(resource, 0.0)
        if amount <= 0 or claim.count <= 0:
            continue
        if claim.pool not in reaches:
            reaches[claim.pool] = _reaches(claim, pool, view, nodes, pool_node_names)
        if reaches[claim.pool]:
            total += claim.count * amount / units_per_device
    return total


def _reaches(
    claim: Claim, pool: str, view: ClusterView, nodes: Sequence[Obj], pool_node_names: AbstractSet[str]
) -> bool:
    if claim.pool == pool:
        return True
    if view.pool_nodes is not None and claim.pool in view.pool_nodes:
        return not view.pool_nodes[claim.pool].isdisjoint(pool_node_names)
    mine = [n for n in nodes if n["metadata"]["name"] in pool_node_names]
    return any(selects(claim.node_selector, n["metadata"].get("labels") or {}) for n in mine)


def less_claimed(free_devices: int, room: int, claimed: float, devices_per_replica: int) -> tuple[int, int]:
    """A pool's free devices and room for replicas once the claimed devices are taken out."""
    if claimed <= 0:
        return free_devices, room
    taken = math.ceil(claimed - 1e-9)
    free = max(0, free_devices - taken)
    free -= free % max(1, devices_per_replica)
    return free, max(0, room - math.ceil(taken / max(1, devices_per_replica)))
