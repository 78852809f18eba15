"""The simulated fleet, read from the same YAML a user applies (AcceleratorPools and one InferenceDeployment)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from infleet.api import AcceleratorPool, InferenceDeployment, RuntimeOverride, load_manifests
from infleet.policy.service import DEVICES, ServiceModel, device_key, roofline
from infleet.policy.types import CapacityType
from infleet.runtimes import runtime

# An AcceleratorPool does not say how many nodes it has (its status does, at run time); the simulator assumes
# this many devices per pool unless the pool sets maxDevices.
DEFAULT_POOL_DEVICES = 64
# Seconds to promote a warm (model-loaded) infleet-worker to serving: readiness flip plus endpoint propagation.
# Other runtimes: their adapter's `sim.promote_s` (infleet.runtimes; None where there is no warm standby).
PROMOTE_S = 2.0


def _promote_s(override: RuntimeOverride | None) -> float | None:
    return runtime(override.engine if override is not None else None).sim.promote_s


@dataclass(frozen=True)
class SimPool:
    name: str
    family: str
    product: str
    capacity_type: CapacityType
    price_per_device_hour: float
    devices: int
    devices_per_replica: int
    device_memory_gib: float
    cold_start_s: float
    service: ServiceModel
    promote_s: float | None = PROMOTE_S  # None: the pool's runtime has no warm standby (never promoted)

    @property
    def replica_price_per_hour(self) -> float:
        return self.price_per_device_hour * self.devices_per_replica

    @property
    def max_replicas(self) -> int:
        return self.devices // self.devices_per_replica


@dataclass(frozen=True)
class SimDeployment:
    name: str
    model_memory_gib: float
    parameters_billions: float
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float | None
    min_replicas: int
    max_replicas: int
    max_spot_fraction: float
    budget_per_hour: float | None
    warm_mode: str
    warm_size: int | None
    warm_max_cost_per_hour: float | None
    scale_down_window_s: float
    scale_to_zero_after_s: float
    # slo.throughput.requestsPerSecond: the load the user expects, which the operator places for before any traffic.
    expected_rps: float | None = None

    def meets(self, ttft: float, tpot: float, e2e: float) -> bool:
        """Whether one request met every latency target the deployment declares."""
        return (
            (self.ttft_s is None or ttft <= self.ttft_s)
            and (self.tpot_s is None or tpot <= self.tpot_s)
            and (self.e2e_s is None or e2e <= self.e2e_s)
        )


@dataclass(frozen=True)
class SimFleet:
    pools: tuple[SimPool, ...]
    deployment: SimDeployment
    # The manifests the fleet was built from: infleet's policy observes these, exactly as the operator does.
    api_pools: tuple[AcceleratorPool, ...] = ()
    api_deployment: InferenceDeployment | None = None

    def pool(self, name: str) -> SimPool:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)


def _replica_devices(pool: AcceleratorPool, dep: InferenceDeployment, memory_gib: float) -> int:
    """Devices per replica: the pool's matching performance profile, else the fewest devices the model fits."""
    for prof in pool.spec.performance_profiles:
        if prof.model == dep.spec.model.name or (
            prof.model_class is not None and prof.model_class == dep.spec.model.model_class
        ):
            return prof.devices_per_replica
    per_device = pool.spec.accelerator.memory_gib_per_device * 0.9
    return max(1, math.ceil(memory_gib / per_device))


def build_fleet(pools: list[AcceleratorPool], dep: InferenceDeployment) -> SimFleet:
    spec = dep.spec
    memory = spec.model.footprint_gib()
    params = spec.model.parameters_billions or memory / 2.4  # bf16 x 1.2 overhead, inverted
    allowed = set(spec.allowed_families())
    sim_pools: list[SimPool] = []
    for pool in pools:
        ps = pool.spec
        name = pool.metadata.name or "?"
        if ps.accelerator.family not in allowed or (spec.placement.pools and name not in spec.placement.pools):
            continue
        devices_per_replica = _replica_devices(pool, dep, memory)
        key = device_key(ps.accelerator.product, ps.accelerator.family)
        service = roofline(DEVICES[key], devices_per_replica, params, ps.accelerator.memory_gib_per_device)
        sim_pools.append(
            SimPool(
                name=name,
                family=ps.accelerator.family,
                product=ps.accelerator.product,
                capacity_type=ps.capacity_type,
                price_per_device_hour=ps.price_per_device_hour_usd,
                devices=ps.max_devices if ps.max_devices is not None else DEFAULT_POOL_DEVICES,
                devices_per_replica=devices_per_replica,
                device_memory_gib=ps.accelerator.memory_gib_per_device,
                cold_start_s=float(ps.cold_start_seconds),
                service=service,
                promote_s=_promote_s(spec.model.runtime_for(ps.accelerator.family)),
            )
        )
    if not sim_pools:
        raise ValueError(f"no AcceleratorPool offers a family deployment {dep.metadata.name!r} allows")
    slo = spec.slo
    text = spec.model.task == "text-generation"
    spot = {"Never": 0.0, "Allowed": 1.0, "Preferred": 1.0}[spec.placement.spot]
    sim_dep = SimDeployment(
        name=dep.metadata.name or "deployment",
        model_memory_gib=memory,
        parameters_billions=params,
        ttft_s=slo.ttft_p99_ms / 1000 if text and slo.ttft_p99_ms else None,
        tpot_s=slo.tpot_p99_ms / 1000 if text and slo.tpot_p99_ms else None,
        e2e_s=slo.p99_latency_ms / 1000,
        min_replicas=spec.scaling.min_replicas,
        max_replicas=spec.scaling.max_replicas,
        max_spot_fraction=spot,
        budget_per_hour=spec.cost.max_hourly_cost_usd,
        warm_mode=spec.warm_pool.mode,
        warm_size=spec.warm_pool.size,
        warm_max_cost_per_hour=spec.warm_pool.max_hourly_cost_usd,
        scale_down_window_s=float(spec.scaling.scale_down_stabilization_seconds),
        scale_to_zero_after_s=float(spec.scaling.scale_to_zero_after_seconds),
        expected_rps=slo.throughput.requests_per_second if slo.throughput else None,
    )
    return SimFleet(pools=tuple(sim_pools), deployment=sim_dep, api_pools=tuple(pools), api_deployment=dep)


def load_fleet(pool_files: list[Path], deployment_file: Path, deployment_name: str | None = None) -> SimFleet:
    """Read AcceleratorPools and the InferenceDeployment to simulate from YAML files."""
    manifests = [m for f in [*pool_files, deployment_file] for m in load_manifests(f)]
    pools = [m for m in manifests if isinstance(m, AcceleratorPool)]
    deps = [m for m in manifests if isinstance(m, InferenceDeployment)]
    if deployment_name is not None:
        deps = [d for d in deps if d.metadata.name == deployment_name]
    if len(deps) != 1:
        raise ValueError(f"need exactly one InferenceDeployment to simulate, found {len(deps)}")
    if not pools:
        raise ValueError("no AcceleratorPool in the given files")
    return build_fleet(pools, deps[0])


def with_service_overrides(fleet: SimFleet, overrides: dict[str, dict[str, float]]) -> SimFleet:
    """Replace service-model fields per pool, e.g. with the worker benchmark's measured rates.

    ``overrides`` maps a pool name to fields of :class:`~infleet.policy.service.ServiceModel`
    (``prefill_tokens_per_s``, ``tpot_base_s``, ``tpot_per_seq_s``, ``kv_tokens``, ``max_batch``).
    """
    fields = set(ServiceModel.__dataclass_fields__)
    names = {p.name for p in fleet.pools}
    pools = []
    for pool in fleet.pools:
        change = overrides.get(pool.name, {})
        unknown = set(change) - fields
        if unknown:
            raise ValueError(f"service override for {pool.name!r}: unknown fields {sorted(unknown)}")
        if change:
            values = {k: (int(v) if k == "max_batch" else float(v)) for k, v in change.items()}
            pools.append(replace(pool, service=replace(pool.service, **values)))  # type: ignore[arg-type]
        else:
            pools.append(pool)
    missing = set(overrides) - names
    if missing:
        raise ValueError(f"service overrides name pools not in the fleet: {sorted(missing)}")
    return replace(fleet, pools=tuple(pools))
