"""Placement: integer replicas per pool at least cost that cover a deployment's demand within its SLO.

    minimise    sum_ij price_j * devices_ij * x_ij                      (cost per hour)
    subject to  sum_j cap_ij * x_ij >= demand_i                         (SLO capacity)
                sum_{j on-demand} cap_ij * x_ij >= (1 - spot_i) demand_i  (spot share)
                min_i <= sum_j x_ij <= max_i,  sum_j price * x_ij <= budget_i
                sum_i devices_ij * x_ij <= free_j                       (shared pool devices)
                0 <= x_ij <= pool limit,  x integer

Pools where the model does not fit in device memory, or whose replica cannot meet the SLO, are not variables at
all, so they can never be chosen. The deployment's preference order breaks ties between equal-cost plans (it adds
a cost far below one cent per hour).

How it is solved (``method="decomposed"``, the default): deployments that share no pool device are independent
problems; each is solved exactly by branch and bound (:mod:`placement_exact`, well under a millisecond), and where
shared devices bind, prices on them tie the deployments together (:mod:`placement_decompose`) with a certified
lower bound. ``method="joint"`` is the whole fleet as one HiGHS MILP (:mod:`placement_milp`). When the demand
cannot be covered, the joint MILP finds the least shortfall and then the cheapest plan with it, so the answer is
always the best effort within every hard limit, with the reason stated. Every plan says which path produced it
(``solver``) and how far from the optimum it may be (``mip_gap``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np

from infleet.policy.placement_decompose import SearchLimitError, decompose
from infleet.policy.placement_milp import PREFERENCE_EPSILON, FleetModel, Var, solve_joint
from infleet.policy.types import FleetPlacement, PlacementPlan, PlacementRequest, PlacementStatus

PlacementMethod = Literal["decomposed", "joint"]
PLACEMENT_METHODS: tuple[PlacementMethod, ...] = ("decomposed", "joint")
Previous = Mapping[str, Mapping[str, int]]


def place(
    request: PlacementRequest, *, time_limit_s: float = 5.0, previous: Mapping[str, int] | None = None
) -> PlacementPlan:
    """Cheapest integer replicas per pool for one deployment (exact).

    ``previous`` (replicas per pool) is the plan to beat: it is kept when nothing is cheaper.
    """
    prior = None if previous is None else {request.deployment: previous}
    return place_fleet([request], time_limit_s=time_limit_s, previous=prior).plans[request.deployment]


def place_fleet(
    requests: Sequence[PlacementRequest],
    *,
    shared_free_devices: Mapping[str, int] | None = None,
    time_limit_s: float = 5.0,
    previous: Previous | None = None,
    method: PlacementMethod = "decomposed",
) -> FleetPlacement:
    """Place many deployments at once.

    ``shared_free_devices`` gives each pool's devices that all the deployments share (then a pool's devices are
    spent once across them); without it each offer's own ``free_devices`` limits only its deployment.
    ``previous`` (replicas per pool per deployment, e.g. the last plan) warm-starts the solve: it is the plan to
    beat, kept where nothing cheaper is found. ``method`` picks the algorithm (see the module docstring).
    """
    started = time.perf_counter()
    names = [r.deployment for r in requests]
    if len(set(names)) != len(names):
        raise ValueError("deployment names must be unique within one placement")
    if method not in PLACEMENT_METHODS:
        raise ValueError(f"method must be one of {PLACEMENT_METHODS}, not {method!r}")
    if time_limit_s <= 0:
        raise ValueError("time_limit_s must be > 0")
    deadline = started + time_limit_s

    groups = [list(range(len(requests)))] if method == "joint" else _components(requests, shared_free_devices)
    plans: dict[str, PlacementPlan] = {}
    devices_used: dict[str, int] = {}
    lower_total = 0.0
    objective_sum = 0.0
    for group in groups:
        reqs = [requests[i] for i in group]
        variables = _variables(reqs)
        model = FleetModel(reqs, variables, shared_free_devices)
        prior = _previous_vector(reqs, variables, previous)
        x, solver, bound = _solve_group(model, prior, method, deadline, time_limit_s)
        cost = float(model.objective @ x) if len(x) else 0.0
        # The bound is on the tie-broken cost; dividing out the largest tie-break makes it one on the real price.
        top = max((v.offer.preference for v in variables), default=0)
        lower = max(0.0, bound / (1.0 + PREFERENCE_EPSILON * top)) if math.isfinite(bound) else 0.0
        lower = min(lower, cost)
        lower_total += lower
        objective_sum += cost
        gap = 0.0 if solver in ("exact", "milp", "none") else _gap(cost, lower)
        if solver == "milp-best-effort" and math.isfinite(bound):
            gap = 0.0  # the least shortfall and, with it, the least cost, both proven
        chosen: list[dict[str, int]] = [{} for _ in reqs]
        for k in np.flatnonzero(x > 0):
            var = variables[k]
            chosen[var.request][var.offer.pool] = int(x[k])
            used = int(x[k]) * var.offer.devices_per_replica
            devices_used[var.offer.pool] = devices_used.get(var.offer.pool, 0) + used
        for req, replicas in zip(reqs, chosen, strict=True):
            plans[req.deployment] = _describe(req, replicas, solver, gap)
    plans = {name: plans[name] for name in names}
    total = sum(p.cost_per_hour for p in plans.values())
    objective_total = objective_sum
    return FleetPlacement(
        plans=plans,
        cost_per_hour=total,
        solve_seconds=time.perf_counter() - started,
        devices_used=devices_used,
        lower_bound_per_hour=min(lower_total, objective_total),
        mip_gap=_gap(objective_total, lower_total) if any(p.mip_gap > 0 for p in plans.values()) else 0.0,
    )


def _gap(cost: float, lower: float) -> float:
    return 0.0 if cost <= 0 else max(0.0, (cost - lower) / cost)


def _variables(requests: Sequence[PlacementRequest]) -> list[Var]:
    variables: list[Var] = []
    for i, req in enumerate(requests):
        for offer in req.usable_offers():
            upper = offer.replica_limit
            if req.max_replicas is not None:
                upper = min(upper, req.max_replicas)
            if upper > 0:
                variables.append(Var(i, offer, upper))
    return variables


def _components(requests: Sequence[PlacementRequest], shared: Mapping[str, int] | None) -> list[list[int]]:
    """Groups of deployments tied by a shared pool (each deployment alone when no devices are shared)."""
    if shared is None:
        return [[i] for i in range(len(requests))]
    parent = list(range(len(requests)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_user: dict[str, int] = {}
    for i, req in enumerate(requests):
        for offer in req.usable_offers():
            j = first_user.setdefault(offer.pool, i)
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(requests)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _previous_vector(
    requests: Sequence[PlacementRequest], variables: Sequence[Var], previous: Previous | None
) -> np.ndarray | None:
    """The previous plan as a value per variable (replicas on pools that are no longer variables are dropped)."""
    if previous is None:
        return None
    return np.array(
        [int(previous.get(requests[v.request].deployment, {}).get(v.offer.pool, 0)) for v in variables],
        dtype=np.int64,
    )


def _solve_group(
    model: FleetModel, prior: np.ndarray | None, method: PlacementMethod, deadline: float, time_limit_s: float
) -> tuple[np.ndarray, str, float]:
    """Values per variable, the solver that produced them, and a lower bound on the tie-broken cost."""
    if model.n == 0:
        return np.zeros(0, dtype=np.int64), "none", 0.0
    prior_ok = prior is not None and _feasible(model, prior)
    if method == "decomposed":
        try:
            found = decompose(model, deadline=deadline, previous=prior if prior_ok else None)
        except SearchLimitError:
            found = None
        if found is not None and found.x is not None:
            exact = found.rounds == 0
            kept = prior_ok and prior is not None and float(model.cost @ prior) <= float(model.cost @ found.x)
            if kept and prior is not None and not exact:
                return prior, "previous", found.lower_bound
            return found.x, "exact" if exact else "decomposed", found.lower_bound
    cutoff = float(model.cost @ prior) + 1e-9 if prior_ok and prior is not None else None
    # The fallback gets the whole budget again when the decomposition spent it without finding a plan.
    left = max(deadline - time.perf_counter(), time_limit_s)
    joint = solve_joint(model, time_limit_s=left, cutoff=cutoff)
    if joint.solver == "no-solution":
        if prior_ok and prior is not None:
            return prior, "previous", joint.lower_bound
        return _greedy(model.requests, list(model.variables)), "greedy", -math.inf
    return joint.x, joint.solver, joint.lower_bound


def _feasible(model: FleetModel, x: np.ndarray) -> bool:
    """Whether ``x`` meets every row (so it can be kept as it is)."""
    if (x < 0).any() or (x > model.upper).any():
        return False
    cap = np.bincount(model.req_of, weights=model.cap * x, minlength=model.m)
    od = np.bincount(model.req_of, weights=model.cap * x * model.on_demand, minlength=model.m)
    count = np.bincount(model.req_of, weights=x.astype(float), minlength=model.m)
    spend = np.bincount(model.req_of, weights=model.price * x, minlength=model.m)
    need_od = np.where(model.spot < 1.0, (1.0 - model.spot) * model.demand, 0.0)
    ok = bool(
        (cap >= model.demand - 1e-9).all()
        and (od >= need_od - 1e-9).all()
        and (count >= model.mins).all()
        and (count <= model.maxs).all()
        and (spend <= model.budget + 1e-9).all()
    )
    if ok and model.pools:
        used = np.bincount(model.pool_of, weights=model.devices * x, minlength=len(model.pools))
        ok = bool((used <= model.free + 1e-9).all())
    return bool(ok)


def _greedy(requests: Sequence[PlacementRequest], variables: list[Var]) -> np.ndarray:
    """Fallback when the solver returns nothing in time: cheapest capacity first, per deployment."""
    x = np.zeros(len(variables), dtype=np.int64)
    order = sorted(
        range(len(variables)),
        key=lambda k: (
            (variables[k].offer.objective_per_hour(requests[variables[k].request].objective) or 0.0)
            / variables[k].offer.replica_capacity_rps
        ),
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


def _describe(req: PlacementRequest, replicas: Mapping[str, int], solver: str, gap: float) -> PlacementPlan:
    by_pool = {o.pool: o for o in req.offers}
    cost = sum(by_pool[p].replica_price_per_hour * n for p, n in replicas.items())
    capacity = sum(by_pool[p].replica_capacity_rps * n for p, n in replicas.items())
    on_demand = sum(
        by_pool[p].replica_capacity_rps * n for p, n in replicas.items() if by_pool[p].capacity_type == "on-demand"
    )
    energy = _total((by_pool[p].replica_energy_wh_per_hour, n) for p, n in replicas.items())
    carbon = _total((by_pool[p].replica_carbon_g_per_hour, n) for p, n in replicas.items())
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
        if req.objective != "cost":
            needs = "power figures" if req.objective == "energy" else "power figures and a grid carbon intensity"
            reason += f" with the {needs} objective {req.objective} needs"
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
        mip_gap=gap,
        energy_wh_per_hour=energy,
        carbon_g_per_hour=carbon,
    )


def _total(terms: Iterable[tuple[float | None, int]]) -> float | None:
    """Sum of per-replica figure x replicas, or None if a figure is unknown."""
    total = 0.0
    for per_replica, n in terms:
        if per_replica is None:
            return None
        total += per_replica * n
    return total
