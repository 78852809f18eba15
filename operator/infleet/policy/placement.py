"""Placement: integer replicas per pool at least cost that cover a deployment's demand within its SLO.

The problem is a small integer covering program, so it is solved exactly with SciPy's MILP interface to HiGHS:

    minimise    sum_ij price_j * devices_ij * x_ij                      (cost per hour)
    subject to  sum_j cap_ij * x_ij >= demand_i                         (SLO capacity)
                sum_{j on-demand} cap_ij * x_ij >= (1 - spot_i) demand_i  (spot share)
                min_i <= sum_j x_ij <= max_i,  sum_j price * x_ij <= budget_i
                sum_i devices_ij * x_ij <= free_j                       (shared pool devices)
                0 <= x_ij <= pool limit,  x integer

Pools where the model does not fit in device memory, or whose replica cannot meet the SLO, are not variables at
all, so they can never be chosen. The deployment's preference order breaks ties between equal-cost plans (it adds
a cost far below one cent per hour). When the demand cannot be covered, a second solve finds the largest coverable
capacity and a third the cheapest plan reaching it, so the answer is always the best effort within every hard
limit, with the reason stated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from infleet.policy.types import FleetPlacement, PlacementPlan, PlacementRequest, PlacementStatus, PoolOffer

# Relative cost added per preference rank: breaks ties, never outweighs a real price difference.
_PREFERENCE_EPSILON = 1e-6
_CAPACITY_TOLERANCE = 1e-9


@dataclass(frozen=True)
class _Var:
    request: int
    offer: PoolOffer
    upper: int


def place(request: PlacementRequest, *, time_limit_s: float = 5.0) -> PlacementPlan:
    """Cheapest integer replicas per pool for one deployment (exact, HiGHS)."""
    return place_fleet([request], time_limit_s=time_limit_s).plans[request.deployment]


def place_fleet(
    requests: Sequence[PlacementRequest],
    *,
    shared_free_devices: Mapping[str, int] | None = None,
    time_limit_s: float = 5.0,
) -> FleetPlacement:
    """Place many deployments at once.

    ``shared_free_devices`` gives each pool's devices that all the deployments share (then a pool's devices are
    spent once across them); without it each offer's own ``free_devices`` limits only its deployment.
    """
    started = time.perf_counter()
    names = [r.deployment for r in requests]
    if len(set(names)) != len(names):
        raise ValueError("deployment names must be unique within one placement")

    variables: list[_Var] = []
    for i, req in enumerate(requests):
        for offer in req.usable_offers():
            upper = offer.replica_limit
            if req.max_replicas is not None:
                upper = min(upper, req.max_replicas)
            if upper > 0:
                variables.append(_Var(i, offer, upper))

    x, solver = _solve(requests, variables, shared_free_devices, time_limit_s)
    plans: dict[str, PlacementPlan] = {}
    devices_used: dict[str, int] = {}
    for i, req in enumerate(requests):
        replicas: dict[str, int] = {}
        for k, var in enumerate(variables):
            if var.request == i and x[k] > 0:
                replicas[var.offer.pool] = int(x[k])
                devices_used[var.offer.pool] = devices_used.get(var.offer.pool, 0) + int(x[k]) * (
                    var.offer.devices_per_replica
                )
        plans[req.deployment] = _describe(req, replicas, solver)
    total = sum(p.cost_per_hour for p in plans.values())
    return FleetPlacement(
        plans=plans, cost_per_hour=total, solve_seconds=time.perf_counter() - started, devices_used=devices_used
    )


def _solve(
    requests: Sequence[PlacementRequest],
    variables: list[_Var],
    shared: Mapping[str, int] | None,
    time_limit_s: float,
) -> tuple[np.ndarray, str]:
    n = len(variables)
    if n == 0:
        return np.zeros(0, dtype=np.int64), "none"
    m = len(requests)
    cap = np.array([v.offer.replica_capacity_rps for v in variables])
    price = np.array([v.offer.replica_price_per_hour for v in variables])
    pref = np.array([v.offer.preference for v in variables], dtype=float)
    upper = np.array([v.upper for v in variables], dtype=float)
    req_of = np.array([v.request for v in variables])
    on_demand = np.array([v.offer.capacity_type == "on-demand" for v in variables])
    demand = np.array([r.demand_rps for r in requests])
    spot = np.array([r.max_spot_fraction for r in requests])
    mins = np.array([float(r.min_replicas) for r in requests])
    maxs = np.array([math.inf if r.max_replicas is None else float(r.max_replicas) for r in requests])
    budget = np.array([math.inf if r.budget_per_hour is None else r.budget_per_hour for r in requests])
    cols = np.arange(n)

    # Rows shared by every phase; the shortfall columns (one per request for capacity, one for min replicas)
    # are appended in phases 2 and 3.
    def rows(with_shortfall: bool) -> tuple[list[LinearConstraint], int]:
        width = n + (2 * m if with_shortfall else 0)
        out: list[LinearConstraint] = []

        def sparse(r: np.ndarray, c: np.ndarray, v: np.ndarray, height: int) -> coo_array:
            return coo_array((v, (r, c)), shape=(height, width))

        extra_r: list[np.ndarray] = []
        extra_c: list[np.ndarray] = []
        if with_shortfall:
            extra_r, extra_c = [np.arange(m)], [n + np.arange(m)]
        # capacity >= demand (- shortfall)
        a = sparse(
            np.concatenate([req_of, *extra_r]),
            np.concatenate([cols, *extra_c]),
            np.concatenate([cap, *([np.ones(m)] if with_shortfall else [])]),
            m,
        )
        out.append(LinearConstraint(a, demand - _CAPACITY_TOLERANCE, np.inf))
        # on-demand capacity >= (1 - spot) demand (- shortfall)
        od = on_demand & (spot[req_of] < 1.0)
        if od.any() or (spot < 1.0).any():
            need = (1.0 - spot) * demand
            a = sparse(
                np.concatenate([req_of[od], *extra_r]),
                np.concatenate([cols[od], *extra_c]),
                np.concatenate([cap[od], *([np.ones(m)] if with_shortfall else [])]),
                m,
            )
            out.append(LinearConstraint(a, np.where(spot < 1.0, need - _CAPACITY_TOLERANCE, -np.inf), np.inf))
        # min <= replicas (+ missing replicas) <= max
        rr = [np.arange(m)] if with_shortfall else []
        rc = [n + m + np.arange(m)] if with_shortfall else []
        a = sparse(
            np.concatenate([req_of, *rr]),
            np.concatenate([cols, *rc]),
            np.concatenate([np.ones(n), *([np.ones(m)] if with_shortfall else [])]),
            m,
        )
        out.append(LinearConstraint(a, mins, maxs))
        if np.isfinite(budget).any():
            a = sparse(req_of, cols, price, m)
            out.append(LinearConstraint(a, -np.inf, budget))
        if shared is not None:
            pools = sorted({v.offer.pool for v in variables})
            index = {p: k for k, p in enumerate(pools)}
            prow = np.array([index[v.offer.pool] for v in variables])
            devices = np.array([v.offer.devices_per_replica for v in variables], dtype=float)
            limit = np.array([float(shared.get(p, 0)) for p in pools])
            out.append(LinearConstraint(sparse(prow, cols, devices, len(pools)), -np.inf, limit))
        return out, width

    cost = price * (1.0 + _PREFERENCE_EPSILON * pref)
    options = {"time_limit": time_limit_s, "mip_rel_gap": 1e-6, "presolve": True}

    cons, _ = rows(with_shortfall=False)
    res = milp(cost, constraints=cons, integrality=np.ones(n), bounds=Bounds(0, upper), options=options)
    if res.x is not None and res.status in (0, 1):
        solved: np.ndarray = np.rint(res.x).astype(np.int64)
        return solved, "milp"

    # Phase 2: the least total shortfall (capacity in rps, and missing minimum replicas) within every hard limit.
    cons, width = rows(with_shortfall=True)
    integrality = np.concatenate([np.ones(n), np.zeros(2 * m)])
    lower = np.zeros(width)
    up = np.concatenate([upper, demand, mins])
    short_weight = np.concatenate([np.zeros(n), 1.0 / np.maximum(demand, 1e-9), np.ones(m)])
    res = milp(short_weight, constraints=cons, integrality=integrality, bounds=Bounds(lower, up), options=options)
    if res.x is None:
        return _greedy(requests, variables), "greedy"
    best = float(res.fun)
    # Phase 3: the cheapest plan with that shortfall.
    cons.append(LinearConstraint(short_weight.reshape(1, -1), -np.inf, best + 1e-6 + 1e-9 * abs(best)))
    res3 = milp(
        np.concatenate([cost, np.zeros(2 * m)]),
        constraints=cons,
        integrality=integrality,
        bounds=Bounds(lower, up),
        options=options,
    )
    chosen = res3.x if res3.x is not None else res.x
    best_effort: np.ndarray = np.rint(chosen[:n]).astype(np.int64)
    return best_effort, "milp-best-effort"


def _greedy(requests: Sequence[PlacementRequest], variables: list[_Var]) -> np.ndarray:
    """Fallback when the solver returns nothing in time: cheapest capacity first, per deployment."""
    x = np.zeros(len(variables), dtype=np.int64)
    order = sorted(
        range(len(variables)),
        key=lambda k: variables[k].offer.replica_price_per_hour / variables[k].offer.replica_capacity_rps,
    )
    covered = [0.0] * len(requests)
    for k in order:
        var = variables[k]
        req = requests[var.request]
        missing = req.demand_rps - covered[var.request]
        if missing <= 0:
            continue
        take = min(var.upper, math.ceil(missing / var.offer.replica_capacity_rps))
        x[k] = take
        covered[var.request] += take * var.offer.replica_capacity_rps
    return x


def _describe(req: PlacementRequest, replicas: Mapping[str, int], solver: str) -> PlacementPlan:
    by_pool = {o.pool: o for o in req.offers}
    cost = sum(by_pool[p].replica_price_per_hour * n for p, n in replicas.items())
    capacity = sum(by_pool[p].replica_capacity_rps * n for p, n in replicas.items())
    on_demand = sum(
        by_pool[p].replica_capacity_rps * n for p, n in replicas.items() if by_pool[p].capacity_type == "on-demand"
    )
    spot_short = max(0.0, (1.0 - req.max_spot_fraction) * req.demand_rps - on_demand)
    shortfall = max(0.0, req.demand_rps - capacity, spot_short)
    total = sum(replicas.values())
    status: PlacementStatus
    reason = ""
    if shortfall <= 1e-6 and total >= req.min_replicas:
        status = "idle" if total == 0 else "ok"
    elif not req.usable_offers():
        status = "no_fitting_pool"
        reason = f"no offered pool fits {req.model_memory_gib:g} GiB and meets the SLO"
    elif req.budget_per_hour is not None and cost >= req.budget_per_hour * 0.999 - 1e-9:
        status = "over_budget"
        reason = f"budget {req.budget_per_hour:g}/h reached; {shortfall:.3g} rps uncovered"
    else:
        status = "insufficient_capacity"
        reason = f"pools full or at their limits; {shortfall:.3g} rps uncovered"
        if spot_short > 1e-6:
            reason += f" (on-demand share short by {spot_short:.3g} rps)"
    return PlacementPlan(
        deployment=req.deployment,
        replicas=dict(sorted(replicas.items())),
        cost_per_hour=cost,
        capacity_rps=capacity,
        status=status,
        shortfall_rps=shortfall,
        reason=reason,
        solver=solver,
    )
