"""Fallback when a pool runs out of capacity, and the careful way back.

The snapshot counts devices, but a pool can still refuse pods for reasons it cannot see (cloud capacity
shortage while the pool scales, CPU or memory exhaustion, fragmentation, cordoned nodes, scheduler races).
So the ground truth is the scheduler: when a deployment's pods on a pool stay unschedulable longer than
``fallbackAfterSeconds``, the pool is *saturated* for that deployment and capped at the replicas it actually
holds; placement then puts the rest on the next pool that meets the SLO. Saturation lifts when the pool's nodes
have room again, and the move back never drops ready serving replicas below the desired count (the expensive
pool shrinks only as cheaper replicas become ready). All functions here are pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from infleet.policy import PoolOffer


@dataclass(frozen=True)
class PoolPods:
    """One deployment's serving pods on one pool, as the scheduler sees them."""

    total: int = 0
    bound: int = 0  # assigned to a node
    ready: int = 0
    unschedulable: int = 0
    unschedulable_since: datetime | None = None  # earliest time a still-pending pod was found unschedulable


@dataclass(frozen=True)
class Saturation:
    since: datetime
    message: str


def update_saturation(
    previous: Mapping[str, Saturation],
    pods: Mapping[str, PoolPods],
    room: Mapping[str, int],
    now: datetime,
    fallback_after: timedelta,
) -> dict[str, Saturation]:
    """Which pools are saturated for this deployment now.

    A pool becomes saturated when a pod there has been unschedulable for ``fallback_after``; it stays so until
    the snapshot shows room for another replica (``room``: replicas that would fit on the pool's nodes now).
    """
    out: dict[str, Saturation] = {}
    for pool, seen in pods.items():
        since = seen.unschedulable_since
        if since is not None and seen.unschedulable > 0 and now - since >= fallback_after:
            waited = int((now - since).total_seconds())
            out[pool] = previous.get(pool) or Saturation(
                since=now,
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
) -> dict[str, int]:
    """Desired replicas per pool that move toward ``target`` without losing ready serving capacity.

    Pools grow at once. A shrinking pool gives up its not-ready pods at once (a ReplicaSet removes those first),
    but a ready pod only while the fleet has more ready pods than the target total, most expensive pools first.
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
    return dict(sorted(desired.items()))
