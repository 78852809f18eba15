"""Build the policy's snapshot types from the API models (AcceleratorPool, InferenceDeployment).

The operator has its own, richer adapter (``infleet.controller.offers``: fallback, saturation, overrides); this one
is for callers without a cluster, such as benchmarks and the ``what would this cost`` question: it reads only the
manifests. Per-replica capacity is the pool's performance profile for the model (by name, then by model class);
a profile measured at a latency bound looser than the SLO's p99 cannot promise the SLO, so that pool offers none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from infleet.api import AcceleratorPool, InferenceDeployment, PerformanceProfile
from infleet.policy.types import PlacementRequest, PoolOffer

MEMORY_UTILIZATION = 0.9
# Devices assumed in a pool whose size is unknown (no maxDevices, no observed status).
DEFAULT_POOL_DEVICES = 64


def profile_for(pool: AcceleratorPool, deployment: InferenceDeployment) -> PerformanceProfile | None:
    model = deployment.spec.model
    for prof in pool.spec.performance_profiles:
        if prof.model == model.name:
            return prof
    if model.model_class:
        for prof in pool.spec.performance_profiles:
            if prof.model_class == model.model_class:
                return prof
    return None


def pool_devices(pool: AcceleratorPool) -> int:
    """Devices the pool can give infleet: observed allocatable (minus allocated) if known, else maxDevices."""
    if pool.status is not None and pool.status.allocatable_devices:
        return max(0, pool.status.allocatable_devices - pool.status.allocated_devices)
    if pool.spec.max_devices is not None:
        return pool.spec.max_devices
    return DEFAULT_POOL_DEVICES


def offer_for(
    pool: AcceleratorPool,
    deployment: InferenceDeployment,
    *,
    free_devices: int | None = None,
    current_replicas: int = 0,
    preference: int = 0,
) -> PoolOffer:
    acc = pool.spec.accelerator
    prof = profile_for(pool, deployment)
    footprint = deployment.spec.model.footprint_gib()
    if prof is not None:
        devices = prof.devices_per_replica
    else:
        devices = max(1, math.ceil(footprint / (acc.memory_gib_per_device * MEMORY_UTILIZATION)))
    capacity = 0.0
    if prof is not None and prof.requests_per_second and prof.latency_bound_ms <= deployment.spec.slo.p99_latency_ms:
        capacity = prof.requests_per_second
    return PoolOffer(
        pool=pool.metadata.name or "",
        accelerator=acc.product,
        capacity_type=pool.spec.capacity_type,
        price_per_device_hour=pool.spec.price_per_device_hour_usd,
        devices_per_replica=devices,
        device_memory_gib=acc.memory_gib_per_device,
        free_devices=pool_devices(pool) if free_devices is None else free_devices,
        replica_capacity_rps=capacity,
        cold_start_s=float(pool.spec.cold_start_seconds),
        preference=preference,
        current_replicas=current_replicas,
    )


def placement_request(
    deployment: InferenceDeployment,
    pools: Iterable[AcceleratorPool],
    *,
    demand_rps: float | None = None,
    free_devices: Mapping[str, int] | None = None,
    current: Mapping[str, int] | None = None,
    honour_pool_restrictions: bool = True,
) -> PlacementRequest:
    """The placement problem of one deployment on the given pools.

    ``demand_rps`` defaults to the SLO's declared ``throughput.requestsPerSecond`` (0 when absent).
    ``honour_pool_restrictions=False`` ignores ``placement.pools``/``placement.families`` (not the model's own
    families), to ask what the deployment would cost on hardware its owner did not list.
    """
    spec = deployment.spec
    families = set(spec.allowed_families() if honour_pool_restrictions else spec.model.families)
    named = spec.placement.pools if honour_pool_restrictions else None
    rank = {name: i for i, name in enumerate(spec.placement.preference or [])}
    offers = []
    for pool in pools:
        name = pool.metadata.name or ""
        if pool.spec.accelerator.family not in families or (named is not None and name not in named):
            continue
        pref = rank.get(name, len(rank))
        if spec.placement.spot == "Preferred" and pool.spec.capacity_type == "on-demand":
            pref += 1000
        offers.append(
            offer_for(
                pool,
                deployment,
                free_devices=None if free_devices is None else free_devices.get(name, 0),
                current_replicas=(current or {}).get(name, 0),
                preference=pref,
            )
        )
    if demand_rps is None:
        tp = spec.slo.throughput
        demand_rps = tp.requests_per_second if tp is not None and tp.requests_per_second else 0.0
    max_spot = 0.0 if spec.placement.spot == "Never" else 1.0
    if spec.placement.min_on_demand_replicas:
        max_spot = min(max_spot, 1.0 - spec.placement.min_on_demand_replicas / max(spec.scaling.max_replicas, 1))
    return PlacementRequest(
        deployment=deployment.metadata.name or "",
        demand_rps=demand_rps,
        model_memory_gib=spec.model.footprint_gib(),
        offers=tuple(offers),
        min_replicas=spec.scaling.min_replicas,
        max_replicas=spec.scaling.max_replicas,
        max_spot_fraction=max(0.0, max_spot),
        budget_per_hour=spec.cost.max_hourly_cost_usd,
        memory_utilization=MEMORY_UTILIZATION,
    )
