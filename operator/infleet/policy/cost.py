"""Cost accounting: dollars from pool prices and replica time, per hour and per million tokens.

A replica is charged from the moment its devices are claimed (cold start included: the devices are held while
the model loads) until they are released after draining; warm standby replicas are charged the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class ReplicaInterval:
    """One replica's claim on a pool's devices, ``start_s`` to ``end_s``."""

    pool: str
    start_s: float
    end_s: float

    def __post_init__(self) -> None:
        if self.end_s < self.start_s:
            raise ValueError(f"replica interval on {self.pool!r} ends before it starts")

    @property
    def hours(self) -> float:
        return (self.end_s - self.start_s) / SECONDS_PER_HOUR


@dataclass(frozen=True)
class CostReport:
    cost_usd: float
    replica_hours: Mapping[str, float]
    cost_by_pool: Mapping[str, float]


def hourly_cost(replicas: Mapping[str, int], replica_price_per_hour: Mapping[str, float]) -> float:
    """Cost per hour of ``replicas`` per pool at each pool's price per replica-hour."""
    missing = set(replicas) - set(replica_price_per_hour)
    if missing:
        raise KeyError(f"no price for pools {sorted(missing)}")
    return sum(n * replica_price_per_hour[p] for p, n in replicas.items())


def account(intervals: Iterable[ReplicaInterval], replica_price_per_hour: Mapping[str, float]) -> CostReport:
    """Total cost and replica-hours per pool of the given replica intervals."""
    hours: dict[str, float] = {}
    for iv in intervals:
        hours[iv.pool] = hours.get(iv.pool, 0.0) + iv.hours
    missing = set(hours) - set(replica_price_per_hour)
    if missing:
        raise KeyError(f"no price for pools {sorted(missing)}")
    by_pool = {p: h * replica_price_per_hour[p] for p, h in sorted(hours.items())}
    return CostReport(cost_usd=sum(by_pool.values()), replica_hours=dict(sorted(hours.items())), cost_by_pool=by_pool)


def cost_per_million_tokens(cost_usd: float, tokens: int) -> float:
    """Dollars per million tokens (prompt plus generated); infinite when nothing was served."""
    if tokens <= 0:
        return float("inf")
    return cost_usd / tokens * 1e6
