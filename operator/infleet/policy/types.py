"""Snapshot and plan types of the decision core.

Everything here is a frozen dataclass of plain numbers and strings: the operator builds them from the cluster
(see :mod:`infleet.policy.from_api`), the simulator builds them from its own state, and both hand them to the same
pure functions. Capacity is always expressed in *requests per second a replica sustains within the SLO* for the
deployment's current request mix, so a CPU replica and an H100 replica are comparable numbers, not equal counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

CapacityType = Literal["on-demand", "spot"]
PlacementStatus = Literal["ok", "idle", "over_budget", "insufficient_capacity", "no_fitting_pool"]
# What placement minimises: $/h, Wh per hour of serving (devices x typical watts), or gCO2e per hour (that energy x
# the pool's grid carbon intensity). The budget bounds the cost whatever the objective.
PlacementObjective = Literal["cost", "energy", "carbon"]
PLACEMENT_OBJECTIVES: tuple[PlacementObjective, ...] = ("cost", "energy", "carbon")

CAPACITY_TYPES: tuple[CapacityType, ...] = ("on-demand", "spot")


@dataclass(frozen=True)
class PoolOffer:
    """What one accelerator pool can give one deployment.

    ``replica_capacity_rps`` is the request rate one replica of *this* model on *this* pool serves while meeting
    the deployment's latency targets (from the pool's performance profile); 0 means the pool cannot meet the SLO
    at all. ``free_devices`` counts devices this deployment may use in the pool: unallocated devices plus those
    its own replicas already hold.
    """

    pool: str
    accelerator: str
    capacity_type: CapacityType
    price_per_device_hour: float
    devices_per_replica: int
    device_memory_gib: float
    free_devices: int
    replica_capacity_rps: float
    cold_start_s: float = 60.0
    max_replicas: int | None = None
    preference: int = 0
    current_replicas: int = 0
    # Typical power of one device while serving (W) and the grid's carbon intensity (gCO2e/kWh); None: unknown,
    # and the pool is then not used by a deployment that minimises energy (or carbon).
    watts_per_device: float | None = None
    carbon_g_per_kwh: float | None = None

    def __post_init__(self) -> None:
        if self.capacity_type not in CAPACITY_TYPES:
            raise ValueError(f"pool {self.pool!r}: capacity_type must be one of {CAPACITY_TYPES}")
        if self.devices_per_replica < 1:
            raise ValueError(f"pool {self.pool!r}: devices_per_replica must be >= 1")
        for name in ("price_per_device_hour", "device_memory_gib", "replica_capacity_rps", "cold_start_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"pool {self.pool!r}: {name} must be >= 0")
        for name in ("watts_per_device", "carbon_g_per_kwh"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"pool {self.pool!r}: {name} must be >= 0")
        if self.free_devices < 0:
            raise ValueError(f"pool {self.pool!r}: free_devices must be >= 0")
        if self.max_replicas is not None and self.max_replicas < 0:
            raise ValueError(f"pool {self.pool!r}: max_replicas must be >= 0")

    @property
    def replica_price_per_hour(self) -> float:
        return self.price_per_device_hour * self.devices_per_replica

    @property
    def replica_energy_wh_per_hour(self) -> float | None:
        """Energy one replica draws in an hour of serving (Wh), at the devices' typical power."""
        return None if self.watts_per_device is None else self.watts_per_device * self.devices_per_replica

    @property
    def replica_carbon_g_per_hour(self) -> float | None:
        """Emissions of one replica per hour of serving (gCO2e): its energy x the grid's carbon intensity."""
        energy = self.replica_energy_wh_per_hour
        return None if energy is None or self.carbon_g_per_kwh is None else energy / 1000.0 * self.carbon_g_per_kwh

    def objective_per_hour(self, objective: PlacementObjective) -> float | None:
        """What one replica costs per hour in the objective's unit ($, Wh or gCO2e); None if unknown."""
        if objective == "energy":
            return self.replica_energy_wh_per_hour
        if objective == "carbon":
            return self.replica_carbon_g_per_hour
        return self.replica_price_per_hour

    @property
    def replica_limit(self) -> int:
        """Most replicas of this deployment the pool can hold (devices and the pool's own limit)."""
        by_devices = self.free_devices // self.devices_per_replica
        return by_devices if self.max_replicas is None else min(by_devices, self.max_replicas)

    def fits(self, model_memory_gib: float, memory_utilization: float = 0.9) -> bool:
        """Whether the model's weights (plus runtime reserve) fit in one replica's device memory."""
        return model_memory_gib <= self.devices_per_replica * self.device_memory_gib * memory_utilization


@dataclass(frozen=True)
class PlacementRequest:
    """One deployment's placement problem: serve ``demand_rps`` at least cost on the offered pools.

    ``max_spot_fraction`` bounds the share of the demanded capacity that may sit on spot pools (0: never spot,
    1: spot freely), so a spot reclaim can take at most that share away. ``budget_per_hour`` is a hard cap.
    ``objective`` picks what is minimised (cost, energy or carbon; ties go to the cheaper plan); only offers with
    the figures the objective needs are used.
    """

    deployment: str
    demand_rps: float
    model_memory_gib: float
    offers: tuple[PoolOffer, ...]
    min_replicas: int = 0
    max_replicas: int | None = None
    max_spot_fraction: float = 1.0
    budget_per_hour: float | None = None
    memory_utilization: float = 0.9
    objective: PlacementObjective = "cost"

    def __post_init__(self) -> None:
        if self.objective not in PLACEMENT_OBJECTIVES:
            raise ValueError(f"{self.deployment}: objective must be one of {PLACEMENT_OBJECTIVES}")
        if self.demand_rps < 0:
            raise ValueError(f"{self.deployment}: demand_rps must be >= 0")
        if not 0.0 <= self.max_spot_fraction <= 1.0:
            raise ValueError(f"{self.deployment}: max_spot_fraction must be within [0, 1]")
        if self.min_replicas < 0 or (self.max_replicas is not None and self.max_replicas < self.min_replicas):
            raise ValueError(f"{self.deployment}: need 0 <= min_replicas <= max_replicas")
        if self.budget_per_hour is not None and self.budget_per_hour < 0:
            raise ValueError(f"{self.deployment}: budget_per_hour must be >= 0")
        names = [o.pool for o in self.offers]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.deployment}: a pool is offered twice")

    def usable_offers(self) -> tuple[PoolOffer, ...]:
        """Offers where the model fits, a replica can meet the SLO, and the objective's figures are known."""
        return tuple(
            o
            for o in self.offers
            if o.replica_capacity_rps > 0
            and o.fits(self.model_memory_gib, self.memory_utilization)
            and o.objective_per_hour(self.objective) is not None
        )


@dataclass(frozen=True)
class PlacementPlan:
    """Replicas per pool for one deployment, and why.

    ``status`` is ``ok`` when the demand is covered within every constraint, ``idle`` for zero demand and no
    minimum, otherwise it names what stopped it; ``replicas`` is then the best effort (most capacity within the
    limits and budget, at least cost) and ``shortfall_rps`` says how much is missing.
    """

    deployment: str
    replicas: Mapping[str, int]
    cost_per_hour: float
    capacity_rps: float
    status: PlacementStatus
    shortfall_rps: float = 0.0
    reason: str = ""
    solver: str = "milp"
    mip_gap: float = 0.0
    # Energy (Wh) and emissions (gCO2e) of the plan's replicas per hour of serving, at the pools' typical power;
    # None when a chosen pool has no power figures (or, for carbon, no grid carbon intensity).
    energy_wh_per_hour: float | None = None
    carbon_g_per_hour: float | None = None

    # ``solver`` names the path that produced the plan and ``mip_gap`` how far its cost may be above the optimum,
    # (cost - lower bound) / cost, 0 when proven optimal, 1.0 when no bound is known:
    #   exact            every deployment's own optimum (branch and bound) fits the shared devices: proven
    #   decomposed       shared devices bind: priced per-deployment solves plus repair, gap certified by the
    #                    Lagrangian bound
    #   milp             one joint HiGHS MILP proved optimal (method="joint", or the fallback of "decomposed")
    #   milp-time-limit  the joint MILP stopped at its time limit: its best plan, with HiGHS's dual bound
    #   previous         the warm-start plan was kept: nothing cheaper was found
    #   milp-best-effort the demand cannot be covered: least shortfall, then least cost (joint MILP); gap 1.0
    #                    if either solve stopped at the time limit
    #   greedy           the solver gave nothing in time: cheapest capacity first; gap 1.0
    #   none             nothing to place

    @property
    def total_replicas(self) -> int:
        return sum(self.replicas.values())


@dataclass(frozen=True)
class FleetPlacement:
    """Plans for many deployments solved together over shared pool devices."""

    plans: Mapping[str, PlacementPlan]
    cost_per_hour: float
    solve_seconds: float
    devices_used: Mapping[str, int] = field(default_factory=dict)
    # A lower bound on the objective of any plan meeting the same constraints (the cost in $/h when every
    # deployment minimises cost), and (objective - bound) / objective: 0 when every plan is proven optimal (see
    # ``PlacementPlan.solver``).
    lower_bound_per_hour: float = 0.0
    mip_gap: float = 0.0
