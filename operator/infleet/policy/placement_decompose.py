"""Many deployments over shared pools, solved one deployment at a time with prices on the scarce devices.

A fleet of a thousand deployments over a dozen shared pools is a thousand small problems tied by a dozen device
rows. HiGHS on the whole MILP spends its time closing a 1e-6 gap over all of them and, at its time limit, can
return a plan far from the optimum (2.17x at 1,000 deployments after 5 s). Here:

1. every deployment is solved exactly on its own (:mod:`placement_exact`); if the plans fit the shared devices
   together, their sum is the fleet's optimum (each is a relaxation) and the answer is proven;
2. otherwise the LP relaxation prices each shared pool's devices (its dual), and every deployment is solved
   again exactly with those prices added to the devices it uses (Lagrangian relaxation). For any prices
   ``lam >= 0``, ``sum_i min_x (cost + lam.devices) x_i - lam.free`` is a lower bound on the fleet's optimum,
   at least as high as the LP bound at the LP's prices because each deployment is solved in integers;
3. the priced plans are repaired into a feasible plan: where a pool is oversubscribed, the deployments that lose
   least per device freed move off it (each re-solved exactly on what the others left), then every deployment
   is re-solved at its real cost on what the others leave, which only lowers the cost;
4. subgradient steps on the prices raise the bound and give new plans to repair, until the gap between the best
   plan and the best bound is small or the time is spent.

The answer carries that bound, so its gap is certified, not estimated.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import coo_array, hstack, identity

from infleet.policy.placement_exact import Subproblem, solve_exact
from infleet.policy.placement_milp import FleetModel, lp_prices

# Stop improving once the certified gap is this small.
TARGET_GAP = 1e-4
_MAX_ROUNDS = 30
_PRICING_SHARE = 0.5
# The choice among the plans gets at least this long, even when pricing spent the budget.
_MIN_CHOICE_S = 0.3


class SearchLimitError(RuntimeError):
    """A deployment's exact search hit its node limit: the caller falls back to the joint MILP."""


@dataclass(frozen=True, kw_only=True)
class Decomposed:
    """``x`` per variable of the model (None if no feasible plan was found); ``lower_bound`` is certified."""

    x: np.ndarray | None
    lower_bound: float
    rounds: int


class Decomposition:
    """One deployment's subproblem per request of ``model``, over that request's variables."""

    def __init__(self, model: FleetModel) -> None:
        self.model = model
        self.columns = [np.flatnonzero(model.req_of == i) for i in range(model.m)]
        self.subs = [self._subproblem(i, cols) for i, cols in enumerate(self.columns)]

    def _subproblem(self, i: int, cols: np.ndarray) -> Subproblem:
        md = self.model
        req = md.requests[i]
        return Subproblem(
            cost=tuple(md.cost[cols].tolist()),
            price=tuple(md.price[cols].tolist()),
            capacity=tuple(md.cap[cols].tolist()),
            on_demand=tuple(md.on_demand[cols].tolist()),
            upper=tuple(int(u) for u in md.upper[cols]),
            demand=req.demand_rps,
            on_demand_demand=(1.0 - req.max_spot_fraction) * req.demand_rps if req.max_spot_fraction < 1.0 else 0.0,
            min_replicas=req.min_replicas,
            max_replicas=req.max_replicas,
            budget=req.budget_per_hour,
        )

    def solve_each(
        self,
        *,
        prices: np.ndarray | None = None,
        upper: np.ndarray | None = None,
        incumbents: Sequence[tuple[int, ...] | None] | Mapping[int, tuple[int, ...]] | None = None,
        only: list[int] | None = None,
    ) -> dict[int, tuple[tuple[int, ...] | None, float]]:
        """Each deployment's exact plan and objective, with ``prices`` per shared device and ``upper`` per variable.

        Raises :class:`SearchLimitError` when a search is not proven."""
        md = self.model
        out: dict[int, tuple[tuple[int, ...] | None, float]] = {}
        for i in range(md.m) if only is None else only:
            cols = self.columns[i]
            sub = self.subs[i]
            if prices is not None and md.pools:
                sub = replace(sub, cost=tuple((md.cost[cols] + prices[md.pool_of[cols]] * md.devices[cols]).tolist()))
            if upper is not None:
                sub = replace(sub, upper=tuple(int(u) for u in upper[cols]))
            res = solve_exact(sub, incumbent=_incumbent(incumbents, i))
            if not res.proven:
                raise SearchLimitError(md.requests[i].deployment)
            out[i] = (res.x, res.objective)
        return out

    def assemble(self, plans: dict[int, tuple[tuple[int, ...] | None, float]]) -> np.ndarray | None:
        x = np.zeros(self.model.n, dtype=np.int64)
        for i, (xi, _) in plans.items():
            if xi is None:
                return None
            x[self.columns[i]] = xi
        return x

    def usage(self, x: np.ndarray) -> np.ndarray:
        md = self.model
        return np.bincount(md.pool_of, weights=md.devices * x, minlength=len(md.pools))

    def residual_upper(self, x: np.ndarray, i: int, used: np.ndarray | None = None) -> np.ndarray:
        """Variable limits for deployment ``i`` given what the others hold in ``x`` (``used``: its usage)."""
        md = self.model
        cols = self.columns[i]
        left = (
            md.free
            - (self.usage(x) if used is None else used)
            + np.bincount(md.pool_of[cols], weights=md.devices[cols] * x[cols], minlength=len(md.pools))
        )
        upper = md.upper.copy()
        upper[cols] = np.minimum(md.upper[cols], np.floor(np.maximum(left[md.pool_of[cols]], 0) / md.devices[cols]))
        return upper


def decompose(model: FleetModel, *, deadline: float, previous: np.ndarray | None) -> Decomposed:
    """Best plan found and a certified lower bound on the fleet's optimal (tie-broken) cost."""
    dec = Decomposition(model)
    alone = dec.solve_each(incumbents=_split(dec, previous))
    x0 = dec.assemble(alone)
    bound = sum(obj for _, obj in alone.values())
    if x0 is None:
        return Decomposed(x=None, lower_bound=bound, rounds=0)
    if not model.pools or (dec.usage(x0) <= model.free + 1e-9).all():
        return Decomposed(x=x0, lower_bound=bound, rounds=0)
    relaxed = lp_prices(model)
    if relaxed is None:
        return Decomposed(x=None, lower_bound=bound, rounds=0)
    lp_bound, prices = relaxed
    bound = max(bound, lp_bound)
    master = _Master(dec)
    master.add(x0)
    best: np.ndarray | None = previous if previous is not None and _fits(dec, previous) else None
    if best is not None:
        master.add(best)
    started = time.perf_counter()
    # Column generation gets most of the time; the integer choice among the columns the rest.
    pricing_until = started + _PRICING_SHARE * max(0.0, deadline - started)
    plans = _split(dec, x0)
    rounds = 0
    last = x0
    while rounds < _MAX_ROUNDS:
        rounds += 1
        priced = dec.solve_each(prices=prices, incumbents=plans)
        plans = [priced[i][0] for i in range(model.m)]
        x = dec.assemble(priced)
        if x is None:
            break
        last = x
        bound = max(bound, sum(obj for _, obj in priced.values()) - float(prices @ model.free))
        if not master.add(x) or time.perf_counter() > pricing_until:
            break
        prices = master.prices()
        if best is not None and float(model.cost @ best) - bound <= TARGET_GAP * float(model.cost @ best):
            break
    # Each deployment on an oversubscribed pool also gets its best plan off those pools as a column; HiGHS then
    # chooses among all the columns. If that is not proven within its time, the priced plans are repaired into a
    # feasible plan too, and the cheaper wins.
    moved = _moved_off_full_pools(dec, last, prices)
    master.add(_with(dec, last, moved))
    chosen, proven = master.choose(time_limit_s=max(_MIN_CHOICE_S, deadline - time.perf_counter()))
    candidates = [c for c in (chosen, best) if c is not None]
    if not proven or chosen is None:
        repaired = _repair(dec, last, prices, moved)
        if repaired is not None:
            candidates.append(repaired)
    if candidates:
        best = min(candidates, key=lambda c: float(model.cost @ c))
    if best is not None:
        best = _improve(dec, best)
    return Decomposed(x=best, lower_bound=bound, rounds=rounds)


class _Master:
    """Plans per deployment seen so far (columns), and the choice of one per deployment within the shared devices."""

    def __init__(self, dec: Decomposition) -> None:
        self.dec = dec
        self.seen: list[set[tuple[int, ...]]] = [set() for _ in range(dec.model.m)]
        self.owner: list[int] = []
        self.plans: list[tuple[int, ...]] = []

    def add(self, x: np.ndarray) -> bool:
        """Add each deployment's plan in ``x``; whether any was new."""
        new = False
        for i, cols in enumerate(self.dec.columns):
            plan = tuple(int(v) for v in x[cols])
            if plan not in self.seen[i]:
                self.seen[i].add(plan)
                self.owner.append(i)
                self.plans.append(plan)
                new = True
        return new

    def _arrays(self) -> tuple[np.ndarray, coo_array, coo_array]:
        md = self.dec.model
        cost, rows, cols, vals = [], [], [], []
        for k, (i, plan) in enumerate(zip(self.owner, self.plans, strict=True)):
            idx = self.dec.columns[i]
            x = np.array(plan, dtype=float)
            cost.append(float(md.cost[idx] @ x))
            per_pool = np.bincount(md.pool_of[idx], weights=md.devices[idx] * x, minlength=len(md.pools))
            for j in np.flatnonzero(per_pool):
                rows.append(j)
                cols.append(k)
                vals.append(per_pool[j])
        width = len(self.plans)
        devices = coo_array((vals, (rows, cols)), shape=(len(md.pools), width))
        convex = coo_array((np.ones(width), (np.array(self.owner), np.arange(width))), shape=(md.m, width))
        return np.array(cost), devices, convex

    def prices(self) -> np.ndarray:
        """Shadow prices of the shared devices in the LP over the columns (a slack at a high price keeps it
        feasible while the columns cannot yet fit)."""
        md = self.dec.model
        cost, devices, convex = self._arrays()
        pools = len(md.pools)
        penalty = 10.0 * float(np.max(md.cost / md.devices)) + 1.0
        res = linprog(
            np.concatenate([cost, np.full(pools, penalty)]),
            A_ub=hstack([devices, -identity(pools)]).tocsr(),
            b_ub=md.free,
            A_eq=hstack([convex, coo_array((md.m, pools))]).tocsr(),
            b_eq=np.ones(md.m),
            bounds=(0, None),
            method="highs",
        )
        if res.status != 0:
            return np.zeros(pools)
        prices: np.ndarray = np.maximum(0.0, -np.asarray(res.ineqlin.marginals, dtype=float))
        return prices

    def choose(self, *, time_limit_s: float) -> tuple[np.ndarray | None, bool]:
        """The cheapest choice of one column per deployment within the shared devices (HiGHS), or None; and
        whether HiGHS proved it (within half the target gap)."""
        md = self.dec.model
        cost, devices, convex = self._arrays()
        res = milp(
            cost,
            constraints=[LinearConstraint(devices, -np.inf, md.free), LinearConstraint(convex, 1, 1)],
            integrality=np.ones(len(cost)),
            bounds=Bounds(0, 1),
            options={"time_limit": time_limit_s, "mip_rel_gap": TARGET_GAP / 2},
        )
        if res.x is None:
            return None, False
        x = np.zeros(md.n, dtype=np.int64)
        for k in np.flatnonzero(np.rint(res.x) > 0):
            x[self.dec.columns[self.owner[k]]] = self.plans[k]
        return x, res.status == 0


def _incumbent(
    incumbents: Sequence[tuple[int, ...] | None] | Mapping[int, tuple[int, ...]] | None, i: int
) -> tuple[int, ...] | None:
    if incumbents is None:
        return None
    if isinstance(incumbents, Mapping):
        return incumbents.get(i)
    return incumbents[i]


def _split(dec: Decomposition, x: np.ndarray | None) -> list[tuple[int, ...] | None]:
    if x is None:
        return [None] * dec.model.m
    return [tuple(int(v) for v in x[cols]) for cols in dec.columns]


def _fits(dec: Decomposition, x: np.ndarray) -> bool:
    md = dec.model
    if md.pools and (dec.usage(x) > md.free + 1e-9).any():
        return False
    return all(sub.feasible(xi) for sub, xi in zip(dec.subs, _split(dec, x), strict=True) if xi is not None)


def _moved_off_full_pools(
    dec: Decomposition, x: np.ndarray, prices: np.ndarray
) -> dict[int, tuple[tuple[int, ...] | None, float]]:
    """For each deployment using a pool that ``x`` oversubscribes: its best priced plan without those pools."""
    md = dec.model
    over = dec.usage(x) > md.free + 1e-9
    if not over.any():
        return {}
    users = [i for i, cols in enumerate(dec.columns) if (x[cols] * over[md.pool_of[cols]]).any()]
    banned = md.upper.copy()
    banned[over[md.pool_of]] = 0
    return dec.solve_each(prices=prices, upper=banned, only=users)


def _with(dec: Decomposition, x: np.ndarray, plans: dict[int, tuple[tuple[int, ...] | None, float]]) -> np.ndarray:
    """``x`` with the given deployments' plans swapped in (where they have one)."""
    out = x.copy()
    for i, (plan, _) in plans.items():
        if plan is not None:
            out[dec.columns[i]] = plan
    return out


def _repair(
    dec: Decomposition,
    x: np.ndarray,
    prices: np.ndarray,
    moved: dict[int, tuple[tuple[int, ...] | None, float]],
) -> np.ndarray | None:
    """A feasible plan close to the priced plans ``x``: the deployments that lose least per device freed (by
    ``moved``, their plans off the full pools) leave, then each is re-solved on what the others left."""
    md = dec.model
    over = dec.usage(x) > md.free + 1e-9
    x = x.copy()
    loss: list[tuple[float, int]] = []
    for i, (_, alternative) in moved.items():
        cols = dec.columns[i]
        freed = float((md.devices[cols] * x[cols] * over[md.pool_of[cols]]).sum())
        here = float((md.cost[cols] + prices[md.pool_of[cols]] * md.devices[cols]) @ x[cols])
        loss.append(((alternative - here) / freed, i))
    loss.sort()
    rejected: list[int] = []
    used = dec.usage(x)
    for _, i in loss:
        if not (used > md.free + 1e-9).any():
            break
        cols = dec.columns[i]
        used -= np.bincount(md.pool_of[cols], weights=md.devices[cols] * x[cols], minlength=len(md.pools))
        x[cols] = 0
        rejected.append(i)
    for i in rejected:
        cols = dec.columns[i]
        plan = dec.solve_each(prices=prices, upper=dec.residual_upper(x, i, used), only=[i])[i][0]
        if plan is None:
            return None
        x[cols] = plan
        used += np.bincount(md.pool_of[cols], weights=md.devices[cols] * x[cols], minlength=len(md.pools))
    return x if _fits(dec, x) else None


def _improve(dec: Decomposition, x: np.ndarray) -> np.ndarray:
    """Each deployment re-solved at its real cost on what the others leave: never worse, often better.

    Only deployments with room for another replica on one of their pools are re-solved: without it, the plan can
    only shuffle its own devices, and a plan chosen by price is already minimal on them."""
    md = dec.model
    x = x.copy()
    order = sorted(range(md.m), key=lambda i: -float(md.cost[dec.columns[i]] @ x[dec.columns[i]]))
    used = dec.usage(x)
    for i in order:
        cols = dec.columns[i]
        if md.pools and not (md.free[md.pool_of[cols]] - used[md.pool_of[cols]] >= md.devices[cols]).any():
            continue
        mine = tuple(int(v) for v in x[cols])
        plan = dec.solve_each(upper=dec.residual_upper(x, i, used), only=[i], incumbents={i: mine})[i][0]
        if plan is not None and plan != mine:
            used += np.bincount(
                md.pool_of[cols], weights=md.devices[cols] * (np.array(plan) - x[cols]), minlength=len(md.pools)
            )
            x[cols] = plan
    return x
