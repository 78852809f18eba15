"""Warm replicas per pool for an InferenceDeployment: `warmPool.mode` -> the policy's decision (pure).

`Fixed` keeps `size` warm pods on the plan's cheapest pool. `Auto` asks `infleet.policy.plan_warm_pool` (the
code the simulator runs): enough warm capacity for the largest rise of the arrival rate over a cold start, on
the pools cheapest per unit of capacity, within the policy's share of the serving cost (25%), the deployment's
`warmPool.maxHourlyCostUSD`, and `warmPool.size` as a cap on the count. The rate history is the autoscaler's
measurements; before any exists (workers not answering yet, or `--no-autoscale`), the declared throughput is the
only sample, and the policy then assumes the load may double within a cold start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from infleet.api import InferenceDeployment
from infleet.policy import PlacementPlan, PlacementRequest, WarmPoolConfig, plan_warm_pool

DEFAULT_MAX_WARM = WarmPoolConfig.max_warm_replicas


def warm_history(
    measured: Sequence[tuple[float, float]], declared_rps: float, now_s: float
) -> list[tuple[float, float]]:
    """The (time, rps) history the warm-pool policy sizes from: measurements, else the declared load."""
    if measured:
        return list(measured)
    return [(now_s, declared_rps)] if declared_rps > 0 else []


def warm_replicas(
    infd: InferenceDeployment,
    plan: PlacementPlan | None,
    request: PlacementRequest,
    desired: Mapping[str, int],
    history: Sequence[tuple[float, float]],
) -> dict[str, int]:
    """Warm pods to keep per pool; nothing when the deployment is not placed (a warm pool backs serving replicas)."""
    wp = infd.spec.warm_pool
    if wp.mode == "Off" or plan is None or not plan.replicas:
        return {}
    price = {o.pool: o.replica_price_per_hour for o in request.offers}
    if wp.mode == "Fixed":
        if not wp.size:
            return {}
        pool = min(plan.replicas, key=lambda p: (price.get(p, 0.0), p))
        size = wp.size
        if wp.max_hourly_cost_usd is not None and price.get(pool, 0.0) > 0:
            size = min(size, int(wp.max_hourly_cost_usd // price[pool]))
        return {pool: size} if size > 0 else {}
    offers = {o.pool: o for o in request.offers}
    serving_cost = sum(price.get(p, 0.0) * n for p, n in desired.items())
    config = WarmPoolConfig(
        max_cost_per_hour=wp.max_hourly_cost_usd,
        max_warm_replicas=wp.size if wp.size is not None else DEFAULT_MAX_WARM,
    )
    warm = plan_warm_pool(
        request.offers,
        serving_cost,
        history,
        config,
        model_memory_gib=request.model_memory_gib,
        devices_in_use={p: n * offers[p].devices_per_replica for p, n in desired.items() if p in offers},
    )
    return {p: n for p, n in sorted(warm.replicas.items()) if n > 0}
