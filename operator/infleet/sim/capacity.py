"""From the simulated fleet to the policy core's snapshot types: per-pool SLO capacity for a request mix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from infleet.policy.types import PlacementRequest, PoolOffer
from infleet.sim.fleet import SimFleet, SimPool
from infleet.sim.trace import Trace


@dataclass(frozen=True)
class Mix:
    """The request mix capacity is computed for: mean prompt and output lengths, the 99th-percentile prompt (and
    request, prompt plus output)."""

    mean_prompt: float
    mean_gen: float
    tail_prompt: float
    prompt_sq_mean: float | None = None
    tail_sequence: float | None = None

    @staticmethod
    def of(trace: Trace) -> Mix:
        if not len(trace):
            return Mix(1.0, 1.0, 1.0)
        return Mix(
            float(np.mean(trace.prompt_tokens)),
            float(np.mean(trace.gen_tokens)),
            float(np.percentile(trace.prompt_tokens, 99)),
            float(np.mean(trace.prompt_tokens.astype(float) ** 2)),
            float(np.percentile(trace.prompt_tokens + trace.gen_tokens, 99)),
        )


def pool_capacity(fleet: SimFleet, pool: SimPool, mix: Mix) -> float:
    dep = fleet.deployment
    return pool.service.capacity_rps(
        mix.mean_prompt,
        mix.mean_gen,
        ttft_target_s=dep.ttft_s,
        tpot_target_s=dep.tpot_s,
        tail_prompt=mix.tail_prompt,
        prompt_sq_mean=mix.prompt_sq_mean,
    )


def slo_text(fleet: SimFleet) -> str:
    """The deployment's latency targets, as a user wrote them."""
    dep = fleet.deployment
    parts = [
        f"{label} {value * 1000:g} ms"
        for label, value in (("TTFT", dep.ttft_s), ("TPOT", dep.tpot_s), ("end-to-end", dep.e2e_s))
        if value is not None
    ]
    return ", ".join(parts) or "no latency target"


def slo_problems(fleet: SimFleet, mix: Mix) -> dict[str, str]:
    """Per pool, why one replica cannot meet the deployment's SLO for this mix even when idle (pools that can are
    left out)."""
    dep = fleet.deployment
    out: dict[str, str] = {}
    for pool in fleet.pools:
        why = pool.service.why_not(
            ttft_target_s=dep.ttft_s,
            tpot_target_s=dep.tpot_s,
            tail_prompt=mix.tail_prompt,
            tail_sequence=mix.tail_sequence if mix.tail_sequence is not None else mix.tail_prompt + mix.mean_gen,
        )
        if why is None and pool_capacity(fleet, pool, mix) <= 0:
            why = "no batch fits its KV cache and TPOT target for this mix"
        if why is not None:
            out[pool.name] = why
    return out


def infeasible_message(fleet: SimFleet, mix: Mix) -> str | None:
    """A user-facing explanation when no pool can serve the mix within the SLO, else None."""
    problems = slo_problems(fleet, mix)
    if len(problems) < len(fleet.pools):
        return None
    lines = [f"no pool can meet {fleet.deployment.name}'s SLO ({slo_text(fleet)}) for this trace's requests:"]
    lines += [f"  {name}: {why}" for name, why in problems.items()]
    lines.append("relax the SLO, allow other accelerator families, or use a model/pool that serves these lengths")
    return "\n".join(lines)


def offers(
    fleet: SimFleet,
    mix: Mix,
    *,
    current: dict[str, int] | None = None,
    caps: dict[str, int] | None = None,
    pools: tuple[str, ...] | None = None,
    used_devices: dict[str, int] | None = None,
) -> tuple[PoolOffer, ...]:
    """PoolOffers for the fleet's pools; ``caps`` bounds replicas per pool, ``used_devices`` are taken already."""
    out = []
    for p in fleet.pools:
        if pools is not None and p.name not in pools:
            continue
        free = p.devices - (used_devices or {}).get(p.name, 0)
        out.append(
            PoolOffer(
                pool=p.name,
                accelerator=p.product,
                capacity_type=p.capacity_type,
                price_per_device_hour=p.price_per_device_hour,
                devices_per_replica=p.devices_per_replica,
                device_memory_gib=p.device_memory_gib,
                free_devices=max(0, free),
                replica_capacity_rps=pool_capacity(fleet, p, mix),
                cold_start_s=p.cold_start_s,
                max_replicas=None if caps is None else caps.get(p.name, 0),
                current_replicas=(current or {}).get(p.name, 0),
            )
        )
    return tuple(out)


def request(
    fleet: SimFleet, demand_rps: float, offered: tuple[PoolOffer, ...], *, min_replicas: int | None = None
) -> PlacementRequest:
    dep = fleet.deployment
    return PlacementRequest(
        deployment=dep.name,
        demand_rps=max(0.0, demand_rps),
        model_memory_gib=dep.model_memory_gib,
        offers=offered,
        min_replicas=dep.min_replicas if min_replicas is None else min_replicas,
        max_replicas=dep.max_replicas,
        max_spot_fraction=dep.max_spot_fraction,
        budget_per_hour=dep.budget_per_hour,
    )


def initial_rate(fleet: SimFleet, trace: Trace) -> float:
    """The arrival rate every policy sizes its starting fleet for, so all start alike.

    The deployment's declared ``slo.throughput.requestsPerSecond`` when it has one (what the operator places for
    before any traffic is seen); otherwise the trace's first minute, as if the fleet had been running on this
    traffic already (a replay starting from zero would charge every policy a cold start the trace never saw).
    """
    declared = fleet.deployment.expected_rps
    if declared is not None:
        return declared
    return len(trace.window(0, 60)) / 60.0
