"""Fallback when a pool runs out of capacity, and the careful way back.

The snapshot counts devices, but a pool can still refuse pods for reasons it cannot see (cloud capacity
shortage while the pool scales, CPU or memory exhaustion, fragmentation, cordoned nodes, scheduler races).
So the ground truth is the scheduler: when a deployment's pods on a pool stay unschedulable longer than
``fallbackAfterSeconds``, the pool is *saturated* for that deployment and capped at the replicas it actually
holds; placement then puts the rest on the next pool that meets the SLO. Saturation lifts when the pool's nodes
have room again, and the move back never drops ready serving replicas below the desired count (the expensive
pool shrinks only as cheaper replicas become ready). All functions here are pure; times are
seconds on the caller's clock (the operator's wall clock, the simulator's simulated time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from infleet.policy.types import PoolOffer


@dataclass(frozen=True, kw_only=True)
class PoolPods:
    """One deployment's serving pods on one pool, as the scheduler sees them."""

    total: int = 0
    bound: int = 0  # assigned to a node
    ready: int = 0
    unschedulable: int = 0
    unschedulable_since_s: float | None = None  # earliest time a still-pending pod was found unschedulable


@dataclass(frozen=True, kw_only=True)
class Saturation:
    since_s: float
    message: str


def update_saturation(
    previous: Mapping[str, Saturation],
    pods: Mapping[str, PoolPods],
    room: Mapping[str, int],
    now_s: float,
    fallback_after_s: float,
) -> dict[str, Saturation]:
    """Which pools are saturated for this deployment now.

    A pool becomes saturated when a pod there has been unschedulable for ``fallback_after_s``; it stays so until
    the snapshot shows room for another replica (``room``: replicas that would fit on the pool's nodes now).
    """
    out: dict[str, Saturation] = {}
    for pool, seen in pods.items():
        since = seen.unschedulable_since_s
        if since is not None and seen.unschedulable > 0 and now_s - since >= fallback_after_s:
            waited = int(now_s - since)
            out[pool] = previous.get(pool) or Saturation(
                since_s=now_s,
                message=f"{seen.unschedulable} replica(s) unschedulable for {waited}s on pool {pool}",
            )
    for pool, sat in previous.items():
        if pool not in out and room.get(pool, 0) <= 0:
            out[pool] = sat
    return out


def cap_saturated(
    offers: tuple[PoolOffer, ...], saturated: Mapping[str, Saturation], pods: Mapping[str, PoolPods]
) -> tuple[PoolOffer, ...]:
    """Limit each saturated pool to the replicas the scheduler actually placed there."""
    out = []
    for offer in offers:
        if offer.pool in saturated:
            held = pods.get(offer.pool, PoolPods()).bound
            limit = held if offer.max_replicas is None else min(held, offer.max_replicas)
            out.append(replace(offer, max_replicas=limit))
        else:
            out.append(offer)
    return tuple(out)


def hold_serving(
    target: Mapping[str, int],
    current: Mapping[str, int],
    ready: Mapping[str, int],
    price: Mapping[str, float],
    *,
    max_total: int | None = None,
) -> dict[str, int]:
    """Desired replicas per pool that move toward ``target`` without losing ready serving capacity.

    Pools grow at once. A shrinking pool gives up its not-ready pods at once (a ReplicaSet removes those first),
    but a ready pod only while the fleet has more ready pods than the target total, most expensive pools first.
    ``max_total`` (the deployment's maxReplicas) is never exceeded: see :func:`_within_bound`.
    """
    desired = {pool: n for pool, n in target.items() if n > 0}
    goal = sum(target.values())
    spare_ready = max(0, sum(ready.values()) - goal)
    shrinking = [p for p in current if current[p] > target.get(p, 0)]
    for pool in sorted(shrinking, key=lambda p: (-price.get(p, 0.0), p)):
        have, want = current[pool], target.get(pool, 0)
        not_ready = max(0, have - ready.get(pool, 0))
        drop_not_ready = min(have - want, not_ready)
        drop_ready = min(have - want - drop_not_ready, spare_ready)
        spare_ready -= drop_ready
        keep = have - drop_not_ready - drop_ready
        if keep > 0:
            desired[pool] = keep
    if max_total is not None and sum(desired.values()) > max_total:
        desired = _within_bound(desired, current, ready, target, price, max_total)
    return dict(sorted(desired.items()))


def _within_bound(
    desired: Mapping[str, int],
    current: Mapping[str, int],
    ready: Mapping[str, int],
    target: Mapping[str, int],
    price: Mapping[str, float],
    max_total: int,
) -> dict[str, int]:
    """Cap a move between pools at ``max_total`` replicas: a rolling move with no surge, one replica at a time.

    Held replicas stay; growth gets what room is left, cheapest pool first. With no room and nothing starting on the
    growing pools, one ready replica of the dearest shrinking pool makes way for one new replica (so the move back
    from a fallback pool progresses, one cold start at a time, instead of never).
    """
    base = {p: min(n, current.get(p, 0)) for p, n in desired.items()}
    room = max(0, max_total - sum(base.values()))
    growing = sorted((p for p in desired if desired[p] > base[p]), key=lambda p: (price.get(p, 0.0), p))
    out = dict(base)
    for pool in growing:
        add = min(desired[pool] - base[pool], room)
        out[pool] += add
        room -= add
    starting = any(current.get(p, 0) > ready.get(p, 0) for p in growing)
    if growing and not starting and all(out[p] == base[p] for p in growing):
        dear = [p for p in out if out[p] > target.get(p, 0) and out[p] > 0]
        if dear:
            drop = max(dear, key=lambda p: (price.get(p, 0.0), p))
            out[drop] -= 1
            out[growing[0]] += 1
    return {p: n for p, n in out.items() if n > 0}
