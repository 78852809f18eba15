"""Exact placement of one deployment by branch and bound, without a MILP solver.

One deployment's problem has at most one variable per pool (a dozen) and four rows, but HiGHS spends about
8 ms on it (presolve, LP, cuts); the operator asks it several times per reconcile and the fleet decomposition a
thousand times per solve. This depth-first search proves the same optimum in well under a millisecond on typical
instances:

* variables are taken in order of cost per unit of capacity, each from the most replicas still useful down to 0,
  so the first leaf is the greedy plan and later ones only improve on it;
* a node is cut when its cost plus a lower bound on the rest reaches the incumbent: the bound is the largest of the
  fractional (LP) cover of the missing capacity, of the missing on-demand capacity, and the cheapest missing
  minimum replicas, each over the remaining variables;
* a node is cut when even the remaining variables at their limits (and within ``max_replicas`` and the budget)
  cannot cover what is missing.

It gives up after ``node_limit`` nodes and says so (``proven=False``); the caller then falls back to HiGHS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CAPACITY_TOLERANCE = 1e-9
# Relative slack below the incumbent a bound must reach to cut: far below the preference tie-break (1e-6).
_CUT_TOLERANCE = 1e-10
DEFAULT_NODE_LIMIT = 200_000


@dataclass(frozen=True, kw_only=True)
class Subproblem:
    """One deployment's placement over its usable pools (one entry per pool in every tuple).

    ``cost`` is what is minimised per replica (the price, plus tie-breaks and any price put on scarce shared
    devices); ``price`` is the real $/h per replica that ``budget`` bounds.
    """

    cost: tuple[float, ...]
    price: tuple[float, ...]
    capacity: tuple[float, ...]
    on_demand: tuple[bool, ...]
    upper: tuple[int, ...]
    demand: float
    on_demand_demand: float
    min_replicas: int = 0
    max_replicas: int | None = None
    budget: float | None = None

    def objective(self, x: tuple[int, ...]) -> float:
        return sum(c * n for c, n in zip(self.cost, x, strict=True))

    def feasible(self, x: tuple[int, ...]) -> bool:
        """Whether ``x`` meets every row of this deployment (used to accept a previous plan as incumbent)."""
        if any(n < 0 or n > u for n, u in zip(x, self.upper, strict=True)):
            return False
        cap = sum(a * n for a, n in zip(self.capacity, x, strict=True))
        od = sum(a * n for a, n, o in zip(self.capacity, x, self.on_demand, strict=True) if o)
        count = sum(x)
        price = sum(p * n for p, n in zip(self.price, x, strict=True))
        return (
            cap >= self.demand - CAPACITY_TOLERANCE
            and od >= self.on_demand_demand - CAPACITY_TOLERANCE
            and count >= self.min_replicas
            and (self.max_replicas is None or count <= self.max_replicas)
            and (self.budget is None or price <= self.budget + 1e-9)
        )


@dataclass(frozen=True, kw_only=True)
class ExactResult:
    """``x`` is None when no feasible plan exists (or none was found before the node limit)."""

    x: tuple[int, ...] | None
    objective: float
    proven: bool
    nodes: int


def solve_exact(
    sub: Subproblem, *, incumbent: tuple[int, ...] | None = None, node_limit: int = DEFAULT_NODE_LIMIT
) -> ExactResult:
    """The cheapest plan of ``sub`` (by ``cost``), proven optimal unless the node limit was reached.

    A feasible ``incumbent`` (say, the previous plan) starts the search as the plan to beat and is kept on ties.
    """
    return _Search(sub, node_limit).run(incumbent)


class _Search:
    def __init__(self, sub: Subproblem, node_limit: int) -> None:
        self.sub = sub
        n = len(sub.cost)
        # Cheapest capacity first: the suffix of this order is what the fractional bounds scan.
        self.order = sorted(range(n), key=lambda j: (sub.cost[j] / sub.capacity[j], -sub.capacity[j]))
        o = self.order
        self.cost = [sub.cost[j] for j in o]
        self.price = [sub.price[j] for j in o]
        self.cap = [sub.capacity[j] for j in o]
        self.od = [sub.on_demand[j] for j in o]
        self.upper = [sub.upper[j] for j in o]
        self.room = [u * a for u, a in zip(self.upper, self.cap, strict=True)]
        self.ratio = [c / a for c, a in zip(self.cost, self.cap, strict=True)]
        self.demand, self.od_demand = sub.demand, sub.on_demand_demand
        self.min_replicas, self.max_replicas, self.budget = sub.min_replicas, sub.max_replicas, sub.budget
        self.n = n
        self.node_limit = node_limit
        self.nodes = 0
        self.best = math.inf
        self.best_x: list[int] | None = None
        self.x = [0] * n
        # Per suffix: the most capacity reachable, the cheapest single replicas (for min_replicas) and the largest
        # replicas (for max_replicas).
        self.reach = [0.0] * (n + 1)
        self.reach_od = [0.0] * (n + 1)
        for k in range(n - 1, -1, -1):
            self.reach[k] = self.reach[k + 1] + self.upper[k] * self.cap[k]
            self.reach_od[k] = self.reach_od[k + 1] + (self.upper[k] * self.cap[k] if self.od[k] else 0.0)
        # Built only for the rows that exist (most deployments have no minimum, maximum or budget).
        self.cheapest: list[list[tuple[float, int]]] = []
        self.largest: list[list[tuple[float, int]]] = []
        self.by_price: list[list[int]] = []
        if sub.min_replicas > 0:
            self.cheapest = [sorted((self.cost[j], self.upper[j]) for j in range(k, n)) for k in range(n + 1)]
        if sub.max_replicas is not None:
            self.largest = [
                sorted(((self.cap[j], self.upper[j]) for j in range(k, n)), reverse=True) for k in range(n + 1)
            ]
        if sub.budget is not None:
            self.by_price = [sorted(range(k, n), key=lambda j: self.price[j] / self.cap[j]) for k in range(n + 1)]
        self.beat = math.inf

    def run(self, incumbent: tuple[int, ...] | None) -> ExactResult:
        if incumbent is not None and self.sub.feasible(incumbent):
            self._record(self.sub.objective(incumbent), [incumbent[j] for j in self.order])
        aborted = not self._descend(0, 0.0, 0.0, 0, 0.0, 0.0)
        if self.best_x is None:
            return ExactResult(x=None, objective=math.inf, proven=not aborted, nodes=self.nodes)
        x = [0] * self.n
        for pos, j in enumerate(self.order):
            x[j] = self.best_x[pos]
        return ExactResult(x=tuple(x), objective=self.best, proven=not aborted, nodes=self.nodes)

    def _descend(self, k: int, cap: float, od: float, count: int, cost: float, price: float) -> bool:
        """Search below position ``k``; False once the node limit is reached."""
        self.nodes += 1
        if self.nodes > self.node_limit:
            return False
        need = self.demand - cap
        need_od = self.od_demand - od
        need_count = self.min_replicas - count
        if need <= CAPACITY_TOLERANCE and need_od <= CAPACITY_TOLERANCE and need_count <= 0:
            if cost < self.beat:
                self._record(cost, self.x.copy())
            return True
        if k == self.n or cost + self._bound(k, need, need_od, need_count) >= self.beat:
            return True
        if not self._reachable(k, need, need_od, count, price):
            return True
        a = self.cap[k]
        is_od = self.od[k]
        useful = max(need_count, math.ceil((need - CAPACITY_TOLERANCE) / a))
        if is_od:
            useful = max(useful, math.ceil((need_od - CAPACITY_TOLERANCE) / a))
        hi = min(self.upper[k], max(0, useful))
        if self.max_replicas is not None:
            hi = min(hi, self.max_replicas - count)
        if self.budget is not None and self.price[k] > 0:
            hi = min(hi, math.floor((self.budget - price + 1e-9) / self.price[k]))
        c = self.cost[k]
        for v in range(max(0, hi), -1, -1):
            child_need = need - v * a
            child_od = need_od - v * a if is_od else need_od
            # Variable k has the cheapest capacity left, so with fewer of it the bound can only rise, as long as
            # v does not over-cover a row, no minimum count is pending (its bound is per replica, not per
            # capacity), and k is on-demand or no on-demand share is pending (else the on-demand capacity the
            # share forces may cover the demand anyway, and a spot replica less is a saving): once such a child
            # is cut, so are all smaller ones.
            if (
                need_count <= 0
                and (is_od or need_od <= CAPACITY_TOLERANCE)
                and child_need >= -CAPACITY_TOLERANCE
                and (not is_od or child_od >= -CAPACITY_TOLERANCE)
                and cost + v * c + self._cover(k + 1, child_need, child_od) >= self.beat
            ):
                break
            self.x[k] = v
            ok = self._descend(
                k + 1, cap + v * a, od + (v * a if is_od else 0.0), count + v, cost + v * c, price + v * self.price[k]
            )
            if not ok:
                self.x[k] = 0
                return False
        self.x[k] = 0
        return True

    def _record(self, objective: float, x: list[int]) -> None:
        """A new incumbent; ``beat`` is what a plan must cost less than to replace it."""
        self.best, self.best_x = objective, x
        self.beat = objective - _CUT_TOLERANCE * max(1.0, abs(objective))

    def _bound(self, k: int, need: float, need_od: float, need_count: int) -> float:
        bound = self._cover(k, need, need_od)
        if need_count > 0:
            left, total = need_count, 0.0
            for c, u in self.cheapest[k]:
                take: int = min(left, u)
                total += take * c
                left -= take
                if left <= 0:
                    break
            bound = max(bound, total if left <= 0 else math.inf)
        return bound

    def _cover(self, k: int, need: float, need_od: float) -> float:
        """The LP bound of the two covering rows over the variables from ``k`` on (fractional replicas).

        The cheapest on-demand capacity first covers the on-demand need; the rest of the need then takes the
        cheapest capacity left of any kind. Both are fractional knapsacks in cost-per-capacity order, which is
        the order of the variables."""
        room, ratio, n = self.room, self.ratio, self.n
        total = 0.0
        if need_od <= CAPACITY_TOLERANCE:
            if need <= CAPACITY_TOLERANCE:
                return 0.0
            for j in range(k, n):
                if need <= room[j]:
                    return total + need * ratio[j]
                total += room[j] * ratio[j]
                need -= room[j]
            return math.inf
        used: list[float] = []
        left = need_od
        for j in range(k, n):
            take = min(left, room[j]) if self.od[j] else 0.0
            used.append(take)
            total += take * ratio[j]
            left -= take
            if left <= CAPACITY_TOLERANCE:
                break
        else:
            return math.inf
        need -= need_od - max(left, 0.0)
        if need <= CAPACITY_TOLERANCE:
            return total
        for pos, j in enumerate(range(k, n)):
            take = min(need, room[j] - (used[pos] if pos < len(used) else 0.0))
            total += take * ratio[j]
            need -= take
            if need <= CAPACITY_TOLERANCE:
                return total
        return math.inf

    def _reachable(self, k: int, need: float, need_od: float, count: int, price: float) -> bool:
        if need > self.reach[k] + CAPACITY_TOLERANCE or need_od > self.reach_od[k] + CAPACITY_TOLERANCE:
            return False
        sub = self.sub
        if sub.max_replicas is not None and need > CAPACITY_TOLERANCE:
            left, most = sub.max_replicas - count, 0.0
            for a, u in self.largest[k]:
                most += min(left, u) * a
                left -= min(left, u)
                if left <= 0:
                    break
            if most < need - CAPACITY_TOLERANCE:
                return False
        if sub.budget is not None and need > CAPACITY_TOLERANCE:
            spend, left_need = price, need
            for j in self.by_price[k]:
                take = min(left_need, self.upper[j] * self.cap[j])
                spend += take * self.price[j] / self.cap[j]
                left_need -= take
                if left_need <= CAPACITY_TOLERANCE:
                    break
            if spend > sub.budget + 1e-9:
                return False
        return True
