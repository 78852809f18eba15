"""Yardsticks an online policy is judged against, each checked by replaying it in the same simulator.

* **Hindsight fixed fleet**: the cheapest fleet of N replicas on one pool, ready from the start and never changed,
  whose replay meets the attainment goal (99%). Found exactly by replay: for each pool that can meet the SLO, the
  smallest such N (binary search; attainment does not fall as replicas are added, checked at the end points);
  then the cheapest pool. Fleets mixing pools are not searched.
* **Foresight schedule**: an offline schedule that knows the whole trace. Per minute it places, with the operator's
  exact placement, capacity for ``margin`` x the minute's *peak* 10-second arrival rate, and orders each replica a
  cold start ahead (so it pays the cold starts, and for the replicas while they start); replayed, with the
  smallest margin of :data:`MARGINS` that meets the goal. It is the bar an online policy chases, not a bound.
* **Work bound** (:func:`infleet.sim.oracle.work_bound`): strict; no schedule serving every request costs less.

:func:`tune` gives each baseline its strongest setting with hindsight: it replays a small grid of its main target
and window (:func:`infleet.sim.baselines.tuned_grid`) and keeps the cheapest setting that meets the goal, or the
one with the highest attainment when none does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from infleet.policy import account, place
from infleet.sim.baselines import BASELINES, tuned_grid
from infleet.sim.capacity import Mix, offers, request, slo_problems
from infleet.sim.engine import Controller, Faults, Observation, SimResult, Simulation, Target
from infleet.sim.fleet import SimFleet
from infleet.sim.oracle import minute_plan
from infleet.sim.trace import Trace

GOAL = 0.99
MARGINS = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0)
BIN_S = 60.0
PEAK_S = 10.0


@dataclass(frozen=True, kw_only=True)
class Outcome:
    label: str
    result: SimResult
    cost_usd: float
    attainment: float
    settings: dict[str, Any]

    @property
    def meets(self) -> bool:
        return self.attainment >= GOAL


def replay(
    fleet: SimFleet,
    trace: Trace,
    ctl: Controller,
    *,
    label: str | None = None,
    faults: Faults | None = None,
    settings: dict[str, Any] | None = None,
    progress: bool = False,
) -> Outcome:
    res = Simulation(fleet, trace, ctl, faults=faults).run(progress=progress)
    return Outcome(
        label=label or ctl.name,
        result=res,
        cost_usd=account(res.intervals, res.prices).cost_usd,
        attainment=float(res.met.mean()) if len(trace) else 1.0,
        settings=settings or {},
    )


class Fixed:
    """The same replicas from t = 0 to the end (reclaimed ones are replaced)."""

    period_s = 60.0

    def __init__(self, serving: dict[str, int]) -> None:
        self.name = "fixed " + " + ".join(f"{n} x {p}" for p, n in sorted(serving.items()))
        self.target = Target(serving=dict(serving))

    def start(self, fleet: SimFleet, trace: Trace) -> Target:
        return self.target

    def step(self, obs: Observation) -> Target:
        return self.target


class Schedule:
    """Replicas per pool per minute, known in advance; each ordered its pool's cold start ahead of its minute."""

    period_s = 15.0

    def __init__(self, name: str, plans: list[dict[str, int]], lead_s: dict[str, float]) -> None:
        self.name = name
        self.plans = plans
        self.lead_s = lead_s

    def _at(self, now: float) -> Target:
        out: dict[str, int] = {}
        for pool, lead in self.lead_s.items():
            lo = max(0, int((now - self.period_s) // BIN_S))
            hi = min(len(self.plans), int((now + lead + self.period_s) // BIN_S) + 1)
            n = max((self.plans[b].get(pool, 0) for b in range(lo, hi)), default=0)
            if n:
                out[pool] = n
        return Target(serving=out)

    def start(self, fleet: SimFleet, trace: Trace) -> Target:
        return self._at(0.0)

    def step(self, obs: Observation) -> Target:
        return self._at(obs.now)


def _usable_pools(fleet: SimFleet, trace: Trace) -> list[str]:
    problems = slo_problems(fleet, Mix.of(trace))
    return [p.name for p in fleet.pools if p.name not in problems]


def hindsight_fixed(fleet: SimFleet, trace: Trace, *, faults: Faults | None = None) -> Outcome | None:
    """The cheapest single-pool fixed fleet whose replay meets :data:`GOAL`; when none does within the pools' sizes,
    the best attainment found (``meets`` False); None when no pool can meet the SLO at all."""
    best: Outcome | None = None
    fallback: Outcome | None = None
    pools = sorted(_usable_pools(fleet, trace), key=lambda name: fleet.pool(name).replica_price_per_hour)
    for name in pools:
        price_cap = math.inf if best is None else best.cost_usd
        found, top = _smallest_fixed(fleet, trace, name, price_cap, faults)
        if found is not None and (best is None or found.cost_usd < best.cost_usd):
            best = found
        if top is not None and (fallback is None or top.attainment > fallback.attainment):
            fallback = top
    return best or fallback


def _smallest_fixed(
    fleet: SimFleet, trace: Trace, name: str, cost_cap: float, faults: Faults | None
) -> tuple[Outcome | None, Outcome | None]:
    """The fewest replicas of pool ``name`` meeting the goal (doubling, then bisection), and the largest tried."""
    pool = fleet.pool(name)
    cap = min(pool.max_replicas, fleet.deployment.max_replicas)
    if cap < 1:
        return None, None
    tried: dict[int, Outcome] = {}

    def run(n: int) -> Outcome:
        if n not in tried:
            tried[n] = replay(fleet, trace, Fixed({name: n}), faults=faults, settings={"pool": name, "n": n})
        return tried[n]

    hours = trace.duration_s / 3600
    peak = max((sum(r.values()) for r in minute_plan(fleet, trace, pools=(name,)).replicas), default=1)
    hi = min(cap, max(1, peak))
    while not run(hi).meets and hi < cap and 2 * hi * pool.replica_price_per_hour * hours < cost_cap:
        hi = min(cap, 2 * hi)
    if not run(hi).meets:
        return None, run(hi)
    lo = 0  # lo fails (or is zero), hi meets
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if run(mid).meets else (mid, hi)
    return run(hi), run(hi)


def _peak_bins(trace: Trace) -> list[tuple[float, Mix]]:
    """Per minute: the peak 10-second arrival rate within it, and its request mix (the whole trace's tail)."""
    whole = Mix.of(trace)
    n_bins = max(1, math.ceil(trace.duration_s / BIN_S))
    slots = np.bincount((trace.arrival_s // PEAK_S).astype(int), minlength=int(n_bins * BIN_S / PEAK_S) + 1)
    per_bin = int(BIN_S / PEAK_S)
    idx = np.minimum((trace.arrival_s // BIN_S).astype(int), n_bins - 1)
    out = []
    for b in range(n_bins):
        peak = float(slots[b * per_bin : (b + 1) * per_bin].max()) / PEAK_S if slots.size else 0.0
        sel = idx == b
        if not sel.any():
            out.append((0.0, whole))
            continue
        prompts = trace.prompt_tokens[sel].astype(float)
        mix = Mix(
            float(prompts.mean()),
            float(trace.gen_tokens[sel].mean()),
            whole.tail_prompt,
            float((prompts**2).mean()),
            whole.tail_sequence,
        )
        out.append((peak, mix))
    return out


def foresight_schedule(fleet: SimFleet, trace: Trace, *, faults: Faults | None = None) -> Outcome:
    """The replayed foresight schedule with the smallest margin meeting :data:`GOAL` (or the largest margin)."""
    bins = _peak_bins(trace)
    lead = {p.name: p.cold_start_s for p in fleet.pools}
    last: Outcome | None = None
    for margin in MARGINS:
        plans = [dict(place(request(fleet, margin * rate, offers(fleet, mix))).replicas) for rate, mix in bins]
        ctl = Schedule(f"foresight x{margin:g}", plans, lead)
        last = replay(fleet, trace, ctl, label="foresight schedule", faults=faults, settings={"margin": margin})
        if last.meets:
            break
    assert last is not None
    return last


def tune(fleet: SimFleet, trace: Trace, name: str, *, faults: Faults | None = None) -> Outcome:
    """Baseline ``name`` at its strongest setting with hindsight (see the module docstring)."""
    cls = BASELINES[name]
    best: Outcome | None = None
    for settings in [{}, *tuned_grid(name)]:
        out = replay(fleet, trace, cls(**settings), label=f"{name} tuned", faults=faults, settings=settings)
        key = (out.meets, -out.cost_usd if out.meets else out.attainment, -out.cost_usd)
        if best is None or key > (best.meets, -best.cost_usd if best.meets else best.attainment, -best.cost_usd):
            best = out
    assert best is not None
    return best
