"""Warm pools: model-loaded standby workers that turn a cold start (minutes) into a promotion (seconds).

How many: enough capacity to absorb the rise in load that can happen while a cold replica starts, measured on the
deployment's own recent history (the largest rise over any window as long as the pool's cold start), so a smooth
load keeps few and a bursty one keeps more. A warm worker holds its devices, so it costs as much as a serving
replica: the total is capped by a share of the serving cost and by an absolute cap, whichever is lower.

Where: on the pools that are cheapest per unit of SLO capacity among those the model fits, because that is where
placement would put the next replica anyway (and promotion then needs no re-placement).

Which first: the worker that adds the most capacity per dollar, and among equals the one ready longest (its
caches are warmest). When to replenish: right after a promotion, unless the load is falling (then the promoted
replica's slot is not needed again soon and the cost is saved).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from infleet.policy.types import PoolOffer


@dataclass(frozen=True)
class WarmPoolConfig:
    max_cost_fraction: float = 0.25
    max_cost_per_hour: float | None = None
    target_utilization: float = 0.75
    promote_s: float = 2.0
    max_warm_replicas: int = 8

    def __post_init__(self) -> None:
        if self.max_cost_fraction < 0 or (self.max_cost_per_hour is not None and self.max_cost_per_hour < 0):
            raise ValueError("warm pool cost caps must be >= 0")
        if not 0 < self.target_utilization <= 1:
            raise ValueError("target_utilization must be within (0, 1]")


@dataclass(frozen=True)
class WarmPoolPlan:
    """Warm replicas to keep per pool, the burst they cover, and their hourly cost (within ``cost_cap``)."""

    replicas: Mapping[str, int]
    burst_rps: float
    cost_per_hour: float
    cost_cap_per_hour: float
    reason: str = ""


@dataclass(frozen=True)
class WarmWorker:
    name: str
    pool: str
    ready_since_s: float


def burst_rise(history: Sequence[tuple[float, float]], horizon_s: float) -> float:
    """Largest rise of the arrival rate over any window of ``horizon_s`` in ``history`` ((time, rps) pairs)."""
    rise = 0.0
    running_min: list[tuple[float, float]] = []  # monotone deque of (time, rate) minima
    for t, rate in history:
        while running_min and running_min[-1][1] >= rate:
            running_min.pop()
        running_min.append((t, rate))
        while running_min and t - running_min[0][0] > horizon_s:
            running_min.pop(0)
        rise = max(rise, rate - running_min[0][1])
    return rise


def plan_warm_pool(
    offers: Sequence[PoolOffer],
    serving_cost_per_hour: float,
    history: Sequence[tuple[float, float]],
    config: WarmPoolConfig,
    *,
    model_memory_gib: float = 0.0,
    devices_in_use: Mapping[str, int] | None = None,
) -> WarmPoolPlan:
    """Warm replicas per pool sized from the history's bursts over each pool's cold start, within the cost cap."""
    cap = serving_cost_per_hour * config.max_cost_fraction
    if config.max_cost_per_hour is not None:
        cap = min(cap, config.max_cost_per_hour)
    usable = [
        o
        for o in offers
        if o.replica_capacity_rps > 0 and o.fits(model_memory_gib) and o.cold_start_s > config.promote_s
    ]
    usable.sort(key=lambda o: (o.replica_price_per_hour / o.replica_capacity_rps, o.preference, o.pool))
    used = dict(devices_in_use or {})
    replicas: dict[str, int] = {}
    spent = 0.0
    burst_total = 0.0
    needed = 0.0
    span = history[-1][0] - history[0][0] if history else 0.0
    for offer in usable:
        burst = burst_rise(history, offer.cold_start_s)
        if span < offer.cold_start_s and history:
            # Not yet a cold start's worth of history: assume the load may double.
            burst = max(burst, *(r for _, r in history))
        burst_total = max(burst_total, burst)
        needed = max(needed, burst / config.target_utilization)
    covered = 0.0
    for offer in usable:
        if covered >= needed:
            break
        free = offer.free_devices - used.get(offer.pool, 0)
        room = free // offer.devices_per_replica
        if offer.max_replicas is not None:
            room = min(room, offer.max_replicas)
        want = math.ceil((needed - covered) / offer.replica_capacity_rps)
        price = offer.replica_price_per_hour
        affordable = math.floor((cap - spent) / price + 1e-9) if price > 0 else want
        budget_left = config.max_warm_replicas - sum(replicas.values())
        n = max(0, min(want, room, affordable, budget_left))
        if n:
            replicas[offer.pool] = n
            used[offer.pool] = used.get(offer.pool, 0) + n * offer.devices_per_replica
            spent += n * offer.replica_price_per_hour
            covered += n * offer.replica_capacity_rps
    reason = f"burst {burst_total:.3g} rps over cold start; covered {covered:.3g} of {needed:.3g} rps"
    if covered < needed:
        reason += " (cost cap)"
    return WarmPoolPlan(
        replicas=replicas, burst_rps=burst_total, cost_per_hour=spent, cost_cap_per_hour=cap, reason=reason
    )


def promotion_order(workers: Sequence[WarmWorker], offers: Sequence[PoolOffer]) -> list[WarmWorker]:
    """Warm workers in the order to promote: most SLO capacity per dollar first, then longest ready."""
    by_pool = {o.pool: o for o in offers}

    def key(w: WarmWorker) -> tuple[float, float, str]:
        offer = by_pool.get(w.pool)
        if offer is None or offer.replica_capacity_rps <= 0:
            return (math.inf, w.ready_since_s, w.name)
        return (offer.replica_price_per_hour / offer.replica_capacity_rps, w.ready_since_s, w.name)

    return sorted(workers, key=key)


def replenish(plan: WarmPoolPlan, warm_now: Mapping[str, int], load_trend_rps_per_s: float) -> dict[str, int]:
    """Warm replicas to start per pool now: the plan's shortfall, unless the load is falling."""
    if load_trend_rps_per_s < 0:
        return {}
    return {p: n - warm_now.get(p, 0) for p, n in plan.replicas.items() if n > warm_now.get(p, 0)}
