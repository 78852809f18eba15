"""Oracle lower bound on cost: perfect knowledge of the future and instant, free scaling.

For each minute of the trace it places exactly the capacity that minute's requests need (their count over 60 s,
at their own mean lengths) with the same exact placement the operator uses, and pays only for that minute. No
real policy can do better under the same service model: it would need to know the load before it arrives and to
start replicas in zero time. Minute bins average out sub-minute bursts, which makes the bound lower still.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from infleet.policy import place
from infleet.sim.capacity import Mix, offers, pool_capacity, request
from infleet.sim.fleet import SimFleet
from infleet.sim.trace import Trace

BIN_S = 60.0


@dataclass(frozen=True)
class OracleResult:
    cost_usd: float
    replicas: list[dict[str, int]]  # per bin
    infeasible_bins: int


def _bins(trace: Trace) -> list[tuple[float, Mix]]:
    tail = Mix.of(trace).tail_prompt
    n_bins = max(1, math.ceil(trace.duration_s / BIN_S))
    idx = np.minimum((trace.arrival_s // BIN_S).astype(int), n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = idx == b
        count = int(sel.sum())
        if count == 0:
            out.append((0.0, Mix(1.0, 1.0, tail)))
            continue
        prompts = trace.prompt_tokens[sel].astype(float)
        mix = Mix(float(prompts.mean()), float(trace.gen_tokens[sel].mean()), tail, float((prompts**2).mean()))
        out.append((count / BIN_S, mix))
    return out


def oracle(fleet: SimFleet, trace: Trace, pools: tuple[str, ...] | None = None) -> OracleResult:
    """The cheapest placement minute by minute (optionally restricted to ``pools``)."""
    total = 0.0
    plans: list[dict[str, int]] = []
    bad = 0
    single = pools is not None and len(pools) == 1
    for demand, mix in _bins(trace):
        if single and pools is not None:
            pool = fleet.pool(pools[0])
            cap = pool_capacity(fleet, pool, mix)
            if cap <= 0 and demand > 0:
                bad += 1
                plans.append({})
                continue
            n = max(fleet.deployment.min_replicas, math.ceil(demand / cap - 1e-9) if demand > 0 else 0)
            if n > min(pool.max_replicas, fleet.deployment.max_replicas):
                bad += 1
            n = min(n, pool.max_replicas)
            plans.append({pool.name: n} if n else {})
            total += n * pool.replica_price_per_hour * BIN_S / 3600
            continue
        plan = place(request(fleet, demand, offers(fleet, mix, pools=pools)))
        if plan.status not in ("ok", "idle"):
            bad += 1
        plans.append(dict(plan.replicas))
        total += plan.cost_per_hour * BIN_S / 3600
    return OracleResult(cost_usd=total, replicas=plans, infeasible_bins=bad)


def cheapest_single_pool(fleet: SimFleet, trace: Trace) -> str:
    """The one pool that serves the trace cheapest (for baselines that cannot mix accelerator types)."""
    best: tuple[int, float, str] | None = None
    for pool in fleet.pools:
        res = oracle(fleet, trace, pools=(pool.name,))
        key = (res.infeasible_bins, res.cost_usd, pool.name)
        if best is None or key < best:
            best = key
    assert best is not None
    return best[2]
