"""The placement problem of many deployments as one model for HiGHS (SciPy's ``milp`` and ``linprog``).

    minimise    sum_ij cost_ij x_ij        (price, or energy or carbon with the price as tie-break; plus preference)
    subject to  sum_j cap_ij x_ij >= demand_i                              (SLO capacity)
                sum_{j on-demand} cap_ij x_ij >= (1 - spot_i) demand_i     (spot share)
                min_i <= sum_j x_ij <= max_i,  sum_j price_ij x_ij <= budget_i
                sum_i devices_ij x_ij <= free_j                            (shared pool devices)
                0 <= x_ij <= limit_ij,  x integer

``solve_joint`` solves it whole (the exact path, and the best effort when the demand cannot be covered: a second
solve finds the least shortfall, a third the cheapest plan with it). HiGHS is honest about a time limit: the answer
then carries its dual bound and gap instead of passing for optimal. SciPy's ``milp`` takes no initial solution, so
a known plan (the previous one) enters as an objective cutoff row ``cost . x <= its cost``: HiGHS prunes every node
that cannot beat it, and the caller keeps the known plan if HiGHS returns nothing better. ``lp_prices`` solves the
LP relaxation for the shadow prices of the shared devices, which the decomposition starts from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import coo_array, csr_array, vstack

from infleet.policy.placement_exact import CAPACITY_TOLERANCE
from infleet.policy.types import PlacementRequest, PoolOffer

# Relative cost added per preference rank: breaks ties, never outweighs a real price difference.
PREFERENCE_EPSILON = 1e-6
# Under an energy or carbon objective, the price enters at this weight (relative to the largest energy per
# price): the cheaper of two plans of equal energy wins, and no real energy difference above it is overridden.
COST_TIE_BREAK = 1e-4
_MIP_REL_GAP = 1e-6


@dataclass(frozen=True)
class Var:
    """One integer variable: replicas of request ``request`` on ``offer``'s pool."""

    request: int
    offer: PoolOffer
    upper: int


@dataclass(frozen=True, kw_only=True)
class JointResult:
    """``x`` per variable; ``lower_bound`` bounds the (tie-broken) cost of any plan, -inf when unknown."""

    x: np.ndarray
    solver: str
    lower_bound: float


class FleetModel:
    """The arrays of the model over ``variables`` (built once, shared by every solve)."""

    def __init__(
        self,
        requests: Sequence[PlacementRequest],
        variables: Sequence[Var],
        shared: Mapping[str, int] | None,
    ) -> None:
        self.requests = requests
        self.variables = variables
        self.shared = shared
        n, m = len(variables), len(requests)
        self.n, self.m = n, m
        self.cap = np.array([v.offer.replica_capacity_rps for v in variables], dtype=float)
        self.price = np.array([v.offer.replica_price_per_hour for v in variables], dtype=float)
        pref = np.array([v.offer.preference for v in variables], dtype=float)
        # What each replica adds to the objective (the price, Wh/h or gCO2e/h), with the cost tie-break.
        value = np.array(
            [v.offer.objective_per_hour(requests[v.request].objective) or 0.0 for v in variables], dtype=float
        )
        by_cost = np.array([requests[v.request].objective == "cost" for v in variables], dtype=bool)
        scale = float(value[~by_cost].max() / max(self.price[~by_cost].max(), 1e-12)) if (~by_cost).any() else 0.0
        self.objective = np.where(by_cost, self.price, value + COST_TIE_BREAK * scale * self.price)
        self.cost = self.objective * (1.0 + PREFERENCE_EPSILON * pref)
        self.upper = np.array([v.upper for v in variables], dtype=float)
        self.req_of = np.array([v.request for v in variables], dtype=np.int64)
        self.on_demand = np.array([v.offer.capacity_type == "on-demand" for v in variables], dtype=bool)
        self.demand = np.array([r.demand_rps for r in requests], dtype=float)
        self.spot = np.array([r.max_spot_fraction for r in requests], dtype=float)
        self.mins = np.array([float(r.min_replicas) for r in requests])
        self.maxs = np.array([math.inf if r.max_replicas is None else float(r.max_replicas) for r in requests])
        self.budget = np.array([math.inf if r.budget_per_hour is None else r.budget_per_hour for r in requests])
        self.pools = sorted({v.offer.pool for v in variables}) if shared is not None else []
        index = {p: k for k, p in enumerate(self.pools)}
        self.pool_of = np.array([index.get(v.offer.pool, -1) for v in variables], dtype=np.int64)
        self.devices = np.array([v.offer.devices_per_replica for v in variables], dtype=float)
        self.free = np.array([float((shared or {}).get(p, 0)) for p in self.pools])

    def constraints(self, *, with_shortfall: bool) -> tuple[list[LinearConstraint], int]:
        """The rows; with shortfall columns (capacity per request, then missing minimum replicas) appended."""
        n, m = self.n, self.m
        width = n + (2 * m if with_shortfall else 0)
        cols = np.arange(n)
        ones_m = [np.ones(m)] if with_shortfall else []
        short_r = [np.arange(m)] if with_shortfall else []

        def sparse(r: Sequence[np.ndarray], c: Sequence[np.ndarray], v: Sequence[np.ndarray], h: int) -> coo_array:
            return coo_array((np.concatenate(v), (np.concatenate(r), np.concatenate(c))), shape=(h, width))

        short_c = [n + np.arange(m)] if with_shortfall else []
        out = [
            LinearConstraint(
                sparse([self.req_of, *short_r], [cols, *short_c], [self.cap, *ones_m], m),
                self.demand - CAPACITY_TOLERANCE,
                np.inf,
            )
        ]
        if (self.spot < 1.0).any():
            od = self.on_demand & (self.spot[self.req_of] < 1.0)
            need = np.where(self.spot < 1.0, (1.0 - self.spot) * self.demand - CAPACITY_TOLERANCE, -np.inf)
            a = sparse([self.req_of[od], *short_r], [cols[od], *short_c], [self.cap[od], *ones_m], m)
            out.append(LinearConstraint(a, need, np.inf))
        count_c = [n + m + np.arange(m)] if with_shortfall else []
        a = sparse([self.req_of, *short_r], [cols, *count_c], [np.ones(n), *ones_m], m)
        out.append(LinearConstraint(a, self.mins, self.maxs))
        if np.isfinite(self.budget).any():
            out.append(LinearConstraint(sparse([self.req_of], [cols], [self.price], m), -np.inf, self.budget))
        if self.pools:
            a = sparse([self.pool_of], [cols], [self.devices], len(self.pools))
            out.append(LinearConstraint(a, -np.inf, self.free))
        return out, width


def solve_joint(model: FleetModel, *, time_limit_s: float, cutoff: float | None = None) -> JointResult:
    """The whole fleet as one MILP; the best effort (least shortfall, then least cost) when it is infeasible."""
    n, m = model.n, model.m
    if n == 0:
        return JointResult(x=np.zeros(0, dtype=np.int64), solver="none", lower_bound=0.0)
    options = {"time_limit": max(0.05, time_limit_s), "mip_rel_gap": _MIP_REL_GAP, "presolve": True}
    cons, _ = model.constraints(with_shortfall=False)
    if cutoff is not None:
        cons.append(LinearConstraint(model.cost.reshape(1, -1), -np.inf, cutoff))
    res = milp(model.cost, constraints=cons, integrality=np.ones(n), bounds=Bounds(0, model.upper), options=options)
    if res.x is not None and res.status in (0, 1):
        bound = float(res.mip_dual_bound) if getattr(res, "mip_dual_bound", None) is not None else -math.inf
        solver = "milp" if res.status == 0 else "milp-time-limit"
        return JointResult(x=np.rint(res.x).astype(np.int64), solver=solver, lower_bound=bound)
    if res.status == 1 or cutoff is not None:
        # Time ran out before any plan was found (or none beats the cutoff): the caller keeps what it has.
        return JointResult(x=np.zeros(n, dtype=np.int64), solver="no-solution", lower_bound=-math.inf)

    cons, _ = model.constraints(with_shortfall=True)
    integrality = np.concatenate([np.ones(n), np.zeros(2 * m)])
    up = np.concatenate([model.upper, model.demand, model.mins])
    short_weight = np.concatenate([np.zeros(n), 1.0 / np.maximum(model.demand, 1e-9), np.ones(m)])
    res = milp(short_weight, constraints=cons, integrality=integrality, bounds=Bounds(0, up), options=options)
    if res.x is None:
        return JointResult(x=np.zeros(n, dtype=np.int64), solver="no-solution", lower_bound=-math.inf)
    best = float(res.fun)
    cons.append(LinearConstraint(short_weight.reshape(1, -1), -np.inf, best + 1e-6 + 1e-9 * abs(best)))
    res3 = milp(
        np.concatenate([model.cost, np.zeros(2 * m)]),
        constraints=cons,
        integrality=integrality,
        bounds=Bounds(0, up),
        options=options,
    )
    chosen = res3.x if res3.x is not None else res.x
    proven = res.status == 0 and res3.status == 0
    return JointResult(
        x=np.rint(chosen[:n]).astype(np.int64),
        solver="milp-best-effort",
        lower_bound=float(res3.fun) if proven else -math.inf,
    )


def lp_prices(model: FleetModel) -> tuple[float, np.ndarray] | None:
    """The LP relaxation's optimum and the shadow price ($/h per device) of each shared pool; None if infeasible."""
    cons, _ = model.constraints(with_shortfall=False)
    rows: list[csr_array] = []
    rhs: list[np.ndarray] = []
    price_rows = 0
    for k, c in enumerate(cons):
        a = coo_array(c.A).tocsr()
        lb, ub = np.broadcast_to(c.lb, a.shape[0]), np.broadcast_to(c.ub, a.shape[0])
        if k == len(cons) - 1 and model.pools:
            price_rows = sum(r.shape[0] for r in rows)
        up_rows, lo_rows = np.isfinite(ub), np.isfinite(lb)
        if up_rows.any():
            rows.append(a[np.flatnonzero(up_rows)])
            rhs.append(ub[up_rows])
        if lo_rows.any():
            rows.append(-a[np.flatnonzero(lo_rows)])
            rhs.append(-lb[lo_rows])
    res = linprog(
        model.cost,
        A_ub=vstack(rows).tocsr(),
        b_ub=np.concatenate(rhs),
        bounds=np.column_stack([np.zeros(model.n), model.upper]),
        method="highs",
    )
    if res.status != 0:
        return None
    prices = np.zeros(len(model.pools))
    if model.pools:
        prices = np.maximum(0.0, -res.ineqlin.marginals[price_rows : price_rows + len(model.pools)])
    return float(res.fun), prices
