"""Build the policy's placement problem from the API models (InferenceDeployment + AcceleratorPools).

One adapter for every caller: the operator (which adds observed free devices, current replicas and overrides),
the benchmarks and any "what would this cost" question asked of manifests alone. The policy's types are plain
numbers; the API speaks profiles, families and spot policies. A pool's per-replica capacity comes from its
performance profile for the model (by name, then by model class), else the service model's estimate for the request
mix (:mod:`infleet.policy.capacity`); a profile measured at a latency bound looser than the SLO cannot promise the
SLO, so that pool offers no capacity. Capacity and demand are always requests per second.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from infleet.api import AcceleratorPool, InferenceDeployment, PerformanceProfile
from infleet.policy.capacity import (
    DEFAULT_MIX,
    RequestMix,
    batch_one_tpot_s,
    estimated_capacity_rps,
    slo_seconds,
    tokens_to_requests,
)
from infleet.policy.types import PlacementObjective, PlacementRequest, PoolOffer

MEMORY_UTILIZATION = 0.9
OBJECTIVES: dict[str, PlacementObjective] = {"Cost": "cost", "Energy": "energy", "Carbon": "carbon"}
# Devices assumed in a pool whose size is unknown (no maxDevices, no observed status).
DEFAULT_POOL_DEVICES = 64


@dataclass(frozen=True)
class PoolChoice:
    """How one pool would run this deployment, or why it cannot."""

    pool: AcceleratorPool
    devices_per_replica: int
    capacity_rps: float
    profile: PerformanceProfile | None
    why_not: str = ""


def find_profile(pool: AcceleratorPool, infd: InferenceDeployment) -> PerformanceProfile | None:
    model = infd.spec.model
    profiles = pool.spec.performance_profiles
    exact = [p for p in profiles if p.model == model.name]
    if exact:
        return exact[0]
    if model.model_class:
        by_class = [p for p in profiles if p.model_class == model.model_class]
        if by_class:
            return by_class[0]
    return None


def declared_demand_rps(infd: InferenceDeployment, mix: RequestMix = DEFAULT_MIX) -> float:
    """The deployment's declared load in requests/s (tokens/s at the mix's mean output length); 0 when none."""
    throughput = infd.spec.slo.throughput
    if throughput is not None and throughput.requests_per_second is not None:
        return throughput.requests_per_second
    if throughput is not None and throughput.tokens_per_second is not None:
        return tokens_to_requests(throughput.tokens_per_second, mix)
    return 0.0


def choose(
    pool: AcceleratorPool, infd: InferenceDeployment, mix: RequestMix = DEFAULT_MIX, *, mix_measured: bool = False
) -> PoolChoice:
    """How this pool would serve the deployment: devices per replica and requests/s per replica within the SLO.

    A performance profile vouches for throughput at its end-to-end latency bound only. When the SLO also has TTFT or
    TPOT targets, the service model's estimate for the request mix bounds it (the lower of the two is planned for);
    an estimate that rules the pool out is believed only for a measured mix (``mix_measured``), since before any
    traffic the mix is an assumption, and the profile is the only evidence. A batch of one missing the TPOT target
    rules the pool out either way (that floor does not depend on the mix).
    """
    acc = pool.spec.accelerator
    footprint = infd.spec.model.footprint_gib()
    profile = find_profile(pool, infd)
    if profile is not None:
        devices = profile.devices_per_replica
    else:
        devices = max(1, math.ceil(footprint / (acc.memory_gib_per_device * MEMORY_UTILIZATION)))
    if devices > acc.devices_per_node:
        return PoolChoice(
            pool, devices, 0.0, profile, f"needs {devices} devices per replica, nodes have {acc.devices_per_node}"
        )
    if footprint > devices * acc.memory_gib_per_device * MEMORY_UTILIZATION:
        return PoolChoice(
            pool,
            devices,
            0.0,
            profile,
            f"model needs {footprint:.3g} GiB, {devices} device(s) hold {devices * acc.memory_gib_per_device:g} GiB",
        )
    if profile is None:
        capacity, why = estimated_capacity_rps(pool, infd, devices, mix)
        return PoolChoice(pool, devices, capacity, None, why)
    if profile.latency_bound_ms > infd.spec.slo.p99_latency_ms:
        return PoolChoice(
            pool,
            devices,
            0.0,
            profile,
            f"profiled at p99 {profile.latency_bound_ms} ms, SLO is {infd.spec.slo.p99_latency_ms} ms",
        )
    if profile.requests_per_second is not None:
        measured = profile.requests_per_second
    elif profile.tokens_per_second is not None:
        measured = tokens_to_requests(profile.tokens_per_second, mix)
    else:
        return PoolChoice(pool, devices, 0.0, profile, "profile has neither requestsPerSecond nor tokensPerSecond")
    _, tpot, _ = slo_seconds(infd)
    floor = batch_one_tpot_s(pool, infd, devices)
    if tpot is not None and floor is not None and floor > tpot:
        # A profile vouches for its end-to-end bound only; no load makes one token faster than a batch of one.
        return PoolChoice(
            pool,
            devices,
            0.0,
            profile,
            f"one output token takes ~{floor * 1000:.0f} ms here even alone (service model), SLO TPOT is "
            f"{tpot * 1000:.0f} ms",
        )
    ttft, _, _ = slo_seconds(infd)
    if ttft is None and tpot is None:
        return PoolChoice(pool, devices, measured, profile)
    estimate, why = estimated_capacity_rps(pool, infd, devices, mix)
    if estimate > 0:
        return PoolChoice(pool, devices, min(measured, estimate), profile)
    if mix_measured:
        return PoolChoice(pool, devices, 0.0, profile, f"for the measured request mix: {why}")
    return PoolChoice(pool, devices, measured, profile)


def candidate_pools(
    infd: InferenceDeployment, pools: Mapping[str, AcceleratorPool]
) -> tuple[list[AcceleratorPool], list[str]]:
    """Pools this deployment may use (allowed by name and family), and names it references that do not exist."""
    spec = infd.spec
    families = set(spec.allowed_families())
    named = spec.placement.pools
    missing = [n for n in (named or []) if n not in pools]
    missing += [n for n in (spec.placement.preference or []) if n not in pools and n not in missing]
    chosen = [
        p
        for name, p in sorted(pools.items())
        if (named is None or name in named) and p.spec.accelerator.family in families
    ]
    return chosen, missing


def build_request(
    infd: InferenceDeployment,
    choices: list[PoolChoice],
    free_devices: Mapping[str, int],
    current: Mapping[str, int],
    replicas_override: int | None = None,
    mix: RequestMix = DEFAULT_MIX,
) -> PlacementRequest:
    spec = infd.spec
    demand = declared_demand_rps(infd, mix)
    preference = {name: rank for rank, name in enumerate(spec.placement.preference or [])}
    spot = spec.placement.spot
    offers = []
    for c in choices:
        name = c.pool.metadata.name or ""
        power = c.pool.spec.power
        capacity_type = c.pool.spec.capacity_type
        rank = preference.get(name, len(preference))
        if spot == "Preferred" and capacity_type == "on-demand":
            rank += 1000
        offers.append(
            PoolOffer(
                pool=name,
                accelerator=c.pool.spec.accelerator.product,
                capacity_type=capacity_type,
                price_per_device_hour=c.pool.spec.price_per_device_hour_usd,
                devices_per_replica=c.devices_per_replica,
                device_memory_gib=c.pool.spec.accelerator.memory_gib_per_device,
                free_devices=free_devices.get(name, 0),
                replica_capacity_rps=c.capacity_rps,
                cold_start_s=float(c.pool.spec.cold_start_seconds),
                preference=rank,
                current_replicas=current.get(name, 0),
                watts_per_device=None if power is None else power.typical_watts_per_device,
                carbon_g_per_kwh=None if power is None else power.grid_carbon_grams_per_kwh,
            )
        )
    scaling = spec.scaling
    min_replicas, max_replicas = scaling.min_replicas, scaling.max_replicas
    if replicas_override is not None:
        min_replicas = max_replicas = max(scaling.min_replicas, min(replicas_override, scaling.max_replicas))
    max_spot = 0.0 if spot == "Never" else 1.0
    if spec.placement.min_on_demand_replicas and max_replicas:
        max_spot = min(max_spot, 1.0 - spec.placement.min_on_demand_replicas / max(max_replicas, 1))
    return PlacementRequest(
        deployment=infd.metadata.name or "",
        demand_rps=demand,
        model_memory_gib=spec.model.footprint_gib(),
        offers=tuple(offers),
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        max_spot_fraction=max(0.0, max_spot),
        budget_per_hour=hourly_budget(infd, mix),
        memory_utilization=MEMORY_UTILIZATION,
        objective=OBJECTIVES[spec.placement.objective],
    )


def hourly_budget(infd: InferenceDeployment, mix: RequestMix = DEFAULT_MIX) -> float | None:
    """The serving budget per hour: maxHourlyCostUSD, and maxCostPerMillionTokensUSD at the declared load.

    A per-token cap becomes an hourly one at the declared throughput (the CRD says "at the expected throughput"):
    million tokens per hour x dollars per million. Without a declared load a per-token cap cannot bind and is
    reported by the caller, not silently ignored.
    """
    cost = infd.spec.cost
    caps = [] if cost.max_hourly_cost_usd is None else [cost.max_hourly_cost_usd]
    per_token = cost.max_cost_per_million_tokens_usd
    tokens_per_hour = declared_demand_rps(infd, mix) * mix.mean_gen * 3600
    if per_token is not None and tokens_per_hour > 0:
        caps.append(per_token * tokens_per_hour / 1e6)
    return min(caps) if caps else None


def pool_devices(pool: AcceleratorPool) -> int:
    """Devices the pool can give infleet: observed allocatable (minus allocated) if known, else maxDevices."""
    if pool.status is not None and pool.status.allocatable_devices:
        return max(0, pool.status.allocatable_devices - pool.status.allocated_devices)
    if pool.spec.max_devices is not None:
        return pool.spec.max_devices
    return DEFAULT_POOL_DEVICES


def placement_request(
    deployment: InferenceDeployment,
    pools: Iterable[AcceleratorPool],
    *,
    demand_rps: float | None = None,
    free_devices: Mapping[str, int] | None = None,
    current: Mapping[str, int] | None = None,
    honour_pool_restrictions: bool = True,
) -> PlacementRequest:
    """The placement problem of one deployment on the given pools, from manifests alone.

    ``demand_rps`` defaults to the SLO's declared throughput. ``free_devices`` defaults to what each pool's status
    or ``maxDevices`` says. ``honour_pool_restrictions=False`` ignores ``placement.pools``/``placement.families``
    (not the model's own families), to ask what the deployment would cost on hardware its owner did not list.
    """
    spec = deployment.spec
    families = set(spec.allowed_families() if honour_pool_restrictions else spec.model.families)
    named = spec.placement.pools if honour_pool_restrictions else None
    chosen = [
        p
        for p in pools
        if p.spec.accelerator.family in families and (named is None or (p.metadata.name or "") in named)
    ]
    free = dict(free_devices) if free_devices is not None else {p.metadata.name or "": pool_devices(p) for p in chosen}
    request = build_request(deployment, [choose(p, deployment) for p in chosen], free, current or {})
    return request if demand_rps is None else dataclasses.replace(request, demand_rps=demand_rps)
