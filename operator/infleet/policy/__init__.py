"""infleet's decision core: pure, deterministic functions of a snapshot (and ``now``) that return a plan.

No Kubernetes, no I/O, no clock reads: the operator and the simulator call exactly these functions.

Placement (stable entry points)
    :func:`place` (one deployment) and :func:`place_fleet` (many, sharing pool devices) take
    :class:`PlacementRequest` s made of :class:`PoolOffer` s and return :class:`PlacementPlan` s (replicas per
    pool, cost per hour, capacity, status and reason). See ``docs/policy.md``.
"""

from infleet.policy.placement import place, place_fleet
from infleet.policy.types import (
    CapacityType,
    FleetPlacement,
    PlacementPlan,
    PlacementRequest,
    PlacementStatus,
    PoolOffer,
)

__all__ = [
    "CapacityType",
    "FleetPlacement",
    "PlacementPlan",
    "PlacementRequest",
    "PlacementStatus",
    "PoolOffer",
    "place",
    "place_fleet",
]
