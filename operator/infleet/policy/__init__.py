"""infleet's decision core: pure, deterministic functions of a snapshot (and ``now``) that return a plan.

No Kubernetes, no I/O, no clock reads: the operator and the simulator call exactly these functions.

Placement (stable entry points)
    :func:`place` (one deployment) and :func:`place_fleet` (many, sharing pool devices) take
    :class:`PlacementRequest` s made of :class:`PoolOffer` s and return :class:`PlacementPlan` s (replicas per
    pool, cost per hour, capacity, status and reason).
Autoscaling
    :func:`decide` maps an :class:`AutoscalerState` and a :class:`LoadObservation` to a :class:`ScalingDecision`
    (desired SLO capacity in requests/s; placement turns it into replicas).
One control step
    :func:`scale_step` runs both for one deployment (:class:`FleetScalingConfig`, :class:`FleetScalingState`):
    scale up without moving what runs, scale down within it, shed big replicas only after several cold starts.
Warm pools
    :func:`plan_warm_pool`, :func:`promotion_order`, :func:`replenish`.
Cost
    :func:`hourly_cost`, :func:`account`, :func:`cost_per_million_tokens`.

See ``docs/policy.md``.
"""

from infleet.policy.autoscaler import (
    AutoscalerConfig,
    AutoscalerState,
    LoadObservation,
    ScalingDecision,
    calibrate_capacity,
    decide,
)
from infleet.policy.cost import CostReport, ReplicaInterval, account, cost_per_million_tokens, hourly_cost
from infleet.policy.placement import place, place_fleet
from infleet.policy.scaling import FleetScalingConfig, FleetScalingState, FleetScalingStep, scale_step
from infleet.policy.types import (
    CapacityType,
    FleetPlacement,
    PlacementPlan,
    PlacementRequest,
    PlacementStatus,
    PoolOffer,
)
from infleet.policy.warm import WarmPoolConfig, WarmPoolPlan, WarmWorker, plan_warm_pool, promotion_order, replenish

__all__ = [
    "AutoscalerConfig",
    "AutoscalerState",
    "CapacityType",
    "CostReport",
    "FleetPlacement",
    "FleetScalingConfig",
    "FleetScalingState",
    "FleetScalingStep",
    "LoadObservation",
    "PlacementPlan",
    "PlacementRequest",
    "PlacementStatus",
    "PoolOffer",
    "ReplicaInterval",
    "ScalingDecision",
    "WarmPoolConfig",
    "WarmPoolPlan",
    "WarmWorker",
    "account",
    "calibrate_capacity",
    "cost_per_million_tokens",
    "decide",
    "hourly_cost",
    "place",
    "place_fleet",
    "plan_warm_pool",
    "promotion_order",
    "replenish",
    "scale_step",
]
