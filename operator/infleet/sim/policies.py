"""Scaling controllers for the simulator: infleet's (the policy core) and the baselines (:mod:`infleet.sim.baselines`,
each at its project's documented defaults).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any

from infleet.policy import (
    AutoscalerConfig,
    AutoscalerState,
    LoadObservation,
    WarmPoolConfig,
    place,
    plan_warm_pool,
)
from infleet.policy.scaling import FleetScalingConfig, FleetScalingState, scale_step
from infleet.sim.baselines import BASELINES, _Baseline
from infleet.sim.capacity import Mix, offers, pool_capacity, request
from infleet.sim.engine import Observation, Target
from infleet.sim.fleet import SimFleet
from infleet.sim.trace import Trace


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


def _mix(obs: Observation, fallback: Mix) -> Mix:
    if obs.mean_prompt <= 0:
        return fallback
    return Mix(obs.mean_prompt, obs.mean_gen, obs.tail_prompt, obs.prompt_sq_mean)


class Infleet:
    """The operator's own loop: autoscaler -> placement (exact, all pools) -> warm pool."""

    name = "infleet"

    def __init__(
        self,
        period_s: float = 15.0,
        calibrate: bool = True,
        shed_after_s: float | None = None,
        warm_cost_fraction: float = WarmPoolConfig.max_cost_fraction,
        calibration_band: tuple[float, float] | None = None,
    ) -> None:
        self.period_s = period_s
        self.calibration_band = calibration_band
        self.warm_cost_fraction = warm_cost_fraction
        self.calibrate = calibrate
        self.shed_after_s = shed_after_s
        self.scaling = FleetScalingState()
        self.rates: deque[tuple[float, float]] = deque()
        self.current: dict[str, int] = {}

    def start(self, fleet: SimFleet, trace: Trace) -> Target:
        self.fleet = fleet
        self.mix = Mix.of(trace.window(0, 600))
        dep = fleet.deployment
        caps = {p.name: pool_capacity(fleet, p, self.mix) for p in fleet.pools}
        usable = [p for p in fleet.pools if caps[p.name] > 0]
        fastest = min((p.cold_start_s for p in usable), default=120.0)
        ttft = dep.ttft_s or dep.e2e_s or 1.0
        self.config = AutoscalerConfig(
            latency_target_s=ttft,
            target_utilization=0.9,
            decision_period_s=self.period_s,
            provision_delay_s=fastest,
            scale_down_window_s=dep.scale_down_window_s,
            scale_to_zero_after_s=dep.scale_to_zero_after_s if dep.min_replicas == 0 else None,
        )
        self.scaling_config = FleetScalingConfig(self.config, calibrate=self.calibrate, shed_after_s=self.shed_after_s)
        if self.calibration_band is not None:
            self.scaling_config = dataclasses.replace(self.scaling_config, calibration_band=self.calibration_band)
        rate = initial_rate(fleet, trace)
        desired = rate / self.config.target_utilization
        self.scaling = FleetScalingState(autoscaler=AutoscalerState(desired_capacity_rps=desired))
        plan = place(request(fleet, desired, offers(fleet, self.mix)))
        self.current = dict(plan.replicas)
        # The warm pool's history starts with the rate the fleet was sized for: plan_warm_pool then treats the
        # first cold start as "the load may double" instead of seeing no history and keeping nothing warm.
        self.rates = deque([(0.0, rate)])
        return Target(serving=dict(self.current), warm=self._warm(plan.cost_per_hour))

    def _warm(self, serving_cost: float) -> dict[str, int]:
        dep = self.fleet.deployment
        if dep.warm_mode == "Off":
            return {}
        if dep.warm_mode == "Fixed":
            usable = [p for p in self.fleet.pools if pool_capacity(self.fleet, p, self.mix) > 0]
            if not usable:
                return {}
            best = min(usable, key=lambda p: p.replica_price_per_hour / pool_capacity(self.fleet, p, self.mix))
            return {best.name: dep.warm_size or 0}
        used = {p.name: self.current.get(p.name, 0) * p.devices_per_replica for p in self.fleet.pools}
        config = WarmPoolConfig(
            max_cost_fraction=self.warm_cost_fraction,
            max_cost_per_hour=dep.warm_max_cost_per_hour,
            max_warm_replicas=dep.warm_size if dep.warm_size is not None else 8,
        )
        plan = plan_warm_pool(
            offers(self.fleet, self.mix),
            serving_cost,
            list(self.rates),
            config,
            model_memory_gib=dep.model_memory_gib,
            devices_in_use=used,
        )
        return dict(plan.replicas)

    def step(self, obs: Observation) -> Target:
        self.mix = _mix(obs, self.mix)
        self.rates.append((obs.now, obs.arrival_rate_rps))
        while self.rates and obs.now - self.rates[0][0] > 1800:
            self.rates.popleft()
        step = scale_step(
            self.scaling_config,
            self.scaling,
            LoadObservation(
                time_s=obs.now,
                arrival_rate_rps=obs.arrival_rate_rps,
                queue_depth=obs.queue_depth,
                in_flight=obs.in_flight,
                p99_latency_s=obs.p99_ttft_s,
            ),
            request(self.fleet, 0.0, offers(self.fleet, self.mix, current=dict(obs.serving))),
            obs.ready,
        )
        self.scaling = step.state
        self.current = step.replicas
        cost = sum(self.fleet.pool(p).replica_price_per_hour * n for p, n in self.current.items())
        return Target(serving=dict(self.current), warm=self._warm(cost))


POLICIES: dict[str, type] = {"infleet": Infleet, **BASELINES}


def make(name: str, **settings: Any) -> Infleet | _Baseline:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}") from None
    controller: Infleet | _Baseline = cls(**settings)
    return controller
