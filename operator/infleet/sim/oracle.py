"""Minute-by-minute provisioning plans, and the strict work bound on cost.

:func:`minute_plan` is *not* a bound (it used to be called the oracle): for each minute it places, with the same
exact placement the operator uses, the capacity that minute's mean load needs at the planning utilisation, and
pays only for that minute. Replaying such a plan misses the SLO on bursty traces (minute means hide second-scale
bursts) and a fixed fleet chosen with hindsight can cost less. The baselines use it to pick their single pool and
``static-peak`` its peak. The yardsticks an online policy is judged against are in :mod:`infleet.sim.yardsticks`;
:func:`work_bound` is the strict lower bound.
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
class MinutePlan:
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


def minute_plan(fleet: SimFleet, trace: Trace, pools: tuple[str, ...] | None = None) -> MinutePlan:
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
    return MinutePlan(cost_usd=total, replicas=plans, infeasible_bins=bad)


def work_bound(fleet: SimFleet, trace: Trace) -> float:
    """Strict lower bound on the cost of serving every request of ``trace`` in the simulator (USD).

    An engine step takes the longer of its compute and its memory time (:meth:`ServiceModel.step_s`), so a
    replica's busy time is at least the compute of all the tokens it processes (prefill and decode, attention over
    their actual contexts) and at least the memory time of its steps (the weights once per step, at most
    ``max_batch`` decode tokens per step, plus every context token a decode step reads; prefill's KV traffic is
    left out, which only lowers the bound). Whatever the split of the
    work between pools, its cost is at least all the compute at the cheapest pool's price per unit of compute, and
    at least all the memory traffic at the cheapest price per unit of it: the larger of the two, or the
    deployment's ``minReplicas`` on the cheapest pool for the whole trace if more, is a cost no schedule that serves
    every request can undercut (perfect knowledge, instant free scaling, 100% utilisation, no SLO margin, prefill
    and decode perfectly overlapped). Only pools whose replicas can hold the trace's longest request count.
    """
    dep = fleet.deployment
    if len(trace) == 0:
        return 0.0
    p = trace.prompt_tokens.astype(float)
    g = trace.gen_tokens.astype(float)
    decode = np.maximum(g - 1, 0)
    tokens = float((p + decode).sum())
    # Attention pairs: each prompt token attends to the ones before it; each decode token to the whole context.
    pairs = float((p * p / 2 + decode * p + decode * (decode + 1) / 2).sum())
    decode_tokens = float(decode.sum())
    decode_context = float((decode * p + decode * (decode + 1) / 2).sum())  # context tokens decode steps read
    longest = float((p + g).max())
    per_compute = per_memory = math.inf
    cheapest = min(pool.replica_price_per_hour for pool in fleet.pools) / 3600  # USD per replica-second, any pool
    for pool in fleet.pools:
        svc = pool.service
        if longest > min(svc.context_tokens, svc.kv_tokens) or svc.prefill_tokens_per_s <= 0:
            continue
        price_s = pool.replica_price_per_hour / 3600
        compute_s = tokens / svc.prefill_tokens_per_s + svc.attention_pair_s * pairs
        memory_s = decode_tokens / max(1, svc.max_batch) * svc.tpot_base_s + svc.kv_read_s * decode_context
        per_compute = min(per_compute, price_s * compute_s)
        per_memory = min(per_memory, price_s * memory_s)
    floor = dep.min_replicas * cheapest * trace.duration_s
    if math.isinf(per_compute):
        return floor
    return max(per_compute, per_memory, floor)


def cheapest_single_pool(fleet: SimFleet, trace: Trace) -> str:
    """The one pool that serves the trace cheapest (for baselines that cannot mix accelerator types)."""
    best: tuple[int, float, str] | None = None
    for pool in fleet.pools:
        res = minute_plan(fleet, trace, pools=(pool.name,))
        key = (res.infeasible_bins, res.cost_usd, pool.name)
        if best is None or key < best:
            best = key
    assert best is not None
    return best[2]
