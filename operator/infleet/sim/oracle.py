"""Oracle lower bound on cost: perfect knowledge of the future and instant, free scaling.

For each minute of the trace it places exactly the capacity that minute's requests need (their count over 60 s,
at their own mean lengths) with the same exact placement the operator uses, and pays only for that minute. No
real policy can do better under the same service model: it would need to know the load before it arrives and to
start replicas in zero time. Minute bins average out sub-minute bursts, which makes the bound lower still.

It is a *provisioning* bound, not a strict one: each minute is given the capacity that keeps that minute's
requests within the SLO at a planning utilisation (85%, and the M/G/1 cap on prefill), so a policy that runs its
replicas hotter and queues can cost less (the baselines near 98-99% attainment on the conversation trace do).
:func:`work_bound` is the strict one: the device time the requests' work needs at 100% utilisation on the
cheapest pool for each kind of work; no schedule that serves every request in the simulator can cost less.
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


def work_bound(fleet: SimFleet, trace: Trace) -> float:
    """Strict lower bound on the cost of serving every request of ``trace`` in the simulator (USD).

    A replica prefills at most ``prefill_tokens_per_s`` tokens/s, and decodes at most ``batch / tpot(1)`` tokens/s
    (the engine's batch limit, each running sequence at most at its batch-of-one speed, which the simulator's
    fixed-at-admission TPOT can reach), so serving the trace takes at least that much replica time. Paying the
    cheapest pool's price per unit of each kind of work, prefill and decode each on their own (a replica does
    both at once, so the larger of the two is the bound), plus the deployment's ``minReplicas`` on the cheapest
    pool for the whole trace, gives a cost no policy can undercut: perfect knowledge, instant free
    scaling, 100% utilisation and no SLO margin are all granted. Pools whose replica cannot hold a batch of one
    within the TPOT target are left out (the engine gives them no slots).
    """
    dep = fleet.deployment
    n = len(trace)
    if n == 0:
        return 0.0
    mean_seq = float(np.mean(trace.prompt_tokens + trace.gen_tokens))
    per_prefill = math.inf  # USD per prefill token
    per_decode = math.inf  # USD per output token
    cheapest = min(p.replica_price_per_hour for p in fleet.pools) / 3600  # USD per replica-second, any pool
    for pool in fleet.pools:
        svc = pool.service
        batch = svc.batch_limit(dep.tpot_s, mean_seq)
        if batch < 1 or svc.prefill_tokens_per_s <= 0:
            continue
        price_s = pool.replica_price_per_hour / 3600
        per_prefill = min(per_prefill, price_s / svc.prefill_tokens_per_s)
        per_decode = min(per_decode, price_s * svc.tpot(1) / batch)
    if math.isinf(per_prefill):
        return dep.min_replicas * cheapest * trace.duration_s
    work = max(
        float(trace.prompt_tokens.sum(dtype=float)) * per_prefill,
        float(trace.gen_tokens.sum(dtype=float)) * per_decode,
    )
    return max(work, dep.min_replicas * cheapest * trace.duration_s)


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
