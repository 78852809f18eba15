"""Scaling controllers for the simulator: infleet's (the policy core) and baselines at their documented defaults.

Every baseline scales a replica count on one pool: the pool that serves the trace cheapest (they cannot place
across accelerator types). Their per-replica target is the same for all of them: 70% of the concurrency one
replica sustains within the SLO (Little's law: SLO capacity x service time), because each of these systems asks
the user for such a number (HPA/KEDA target value, KPA container-concurrency target, Ray Serve
target_ongoing_requests, KubeAI targetRequests) and 70% is Knative's default target utilisation. Only their
windows, delays and rules differ, and those are their documented defaults. Replica bounds are the deployment's
``minReplicas``/``maxReplicas`` for all of them (each takes them from its user), except that the HPA never goes
below one replica:

* ``hpa``: 15 s sync, 10% tolerance, scale-up at most max(100%, 4 pods) per 15 s, scale-down stabilisation
  300 s, at least one replica (Kubernetes HPA v2 defaults).
* ``kpa``: 2 s tick, 60 s stable and 6 s panic windows, panic at 200% of target, max scale-down rate 2,
  scale to zero after the stable window plus a 30 s grace period (Knative Serving defaults).
* ``keda``: 30 s polling, activation above 0, cooldownPeriod 300 s before scale to zero, and the HPA's
  defaults above it (KEDA ScaledObject defaults).
* ``ray-serve``: 10 s metrics interval, 30 s look-back average, upscale_delay_s 30, downscale_delay_s 600
  (Ray Serve autoscaling_config defaults).
* ``kubeai``: 10 s interval, 10 min moving average, scaleDownDelaySeconds 30, scale from zero on the first
  request (KubeAI defaults).
* ``static-peak``: enough replicas for the trace's busiest minute, all the time (perfect knowledge of the peak).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field

from infleet.policy import (
    AutoscalerConfig,
    AutoscalerState,
    LoadObservation,
    WarmPoolConfig,
    place,
    plan_warm_pool,
)
from infleet.policy.scaling import FleetScalingConfig, FleetScalingState, scale_step
from infleet.sim.capacity import Mix, infeasible_message, offers, pool_capacity, request
from infleet.sim.engine import Observation, Target
from infleet.sim.fleet import SimFleet, SimPool
from infleet.sim.oracle import cheapest_single_pool, oracle
from infleet.sim.trace import Trace

TARGET_UTILIZATION = 0.7


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


@dataclass
class _Single:
    """What every baseline shares: one pool, and the per-replica concurrency target."""

    pool: SimPool
    target_concurrency: float
    max_replicas: int
    history: deque[tuple[float, float]] = field(default_factory=deque)


def _single(fleet: SimFleet, trace: Trace) -> _Single:
    name = cheapest_single_pool(fleet, trace)
    pool = fleet.pool(name)
    mix = Mix.of(trace)
    cap = pool_capacity(fleet, pool, mix)
    if cap <= 0:
        raise ValueError(infeasible_message(fleet, mix) or f"pool {name} cannot meet the SLO for this trace")
    service = mix.mean_prompt / pool.service.prefill_tokens_per_s + mix.mean_gen * pool.service.tpot(
        pool.service.batch_limit(fleet.deployment.tpot_s, mix.mean_prompt + mix.mean_gen)
    )
    target = max(1.0, TARGET_UTILIZATION * cap * service)
    return _Single(pool, target, min(pool.max_replicas, fleet.deployment.max_replicas))


class _Baseline:
    name = "baseline"
    period_s = 15.0
    floor = 0  # the system's own hard minimum (the HPA cannot scale to zero)
    min_replicas = 0

    def start(self, fleet: SimFleet, trace: Trace) -> Target:
        # Replica bounds are the deployment's (every one of these systems takes them from the user).
        self.min_replicas = max(self.floor, fleet.deployment.min_replicas)
        self.s = _single(fleet, trace)
        conc = initial_rate(fleet, trace) * self._service_s(fleet, trace)
        self.replicas = max(self.min_replicas, math.ceil(conc / self.s.target_concurrency))
        return self._target()

    def _service_s(self, fleet: SimFleet, trace: Trace) -> float:
        return self.s.target_concurrency / (TARGET_UTILIZATION * pool_capacity(fleet, self.s.pool, Mix.of(trace)))

    def _target(self) -> Target:
        self.replicas = max(0, min(self.replicas, self.s.max_replicas))
        return Target(serving={self.s.pool.name: self.replicas} if self.replicas else {})

    def step(self, obs: Observation) -> Target:
        raise NotImplementedError


class HPA(_Baseline):
    name = "hpa"
    period_s = 15.0
    floor = 1
    stabilization_s = 300.0

    def step(self, obs: Observation) -> Target:
        metric = obs.in_flight + obs.queue_depth
        ready = max(1, sum(obs.ready.values()))
        current = self.replicas
        ratio = (metric / ready) / self.s.target_concurrency
        desired = current if abs(ratio - 1) <= 0.1 else math.ceil(ratio * ready)
        self.s.history.append((obs.now, desired))
        while self.s.history and obs.now - self.s.history[0][0] > self.stabilization_s:
            self.s.history.popleft()
        if desired < current:
            desired = min(current, int(max(d for _, d in self.s.history)))
        else:
            desired = min(desired, max(2 * current, current + 4))
        self.replicas = max(self.min_replicas, desired)
        return self._target()


class KEDA(HPA):
    name = "keda"
    period_s = 30.0
    floor = 0
    cooldown_s = 300.0
    last_active = 0.0

    def step(self, obs: Observation) -> Target:
        if self.min_replicas > 0:  # minReplicaCount > 0: no scale to zero, the HPA does the rest
            return super().step(obs)
        metric = obs.in_flight + obs.queue_depth
        if metric > 0 or obs.arrival_rate_rps > 0:
            self.last_active = obs.now
        if self.replicas == 0:
            if metric > 0:  # activation
                self.replicas = max(1, math.ceil(metric / self.s.target_concurrency))
            return self._target()
        if obs.now - self.last_active >= self.cooldown_s:
            self.replicas = 0
            return self._target()
        self.min_replicas = 1
        out = super().step(obs)
        self.min_replicas = 0
        return out


class KPA(_Baseline):
    name = "kpa"
    period_s = 2.0
    stable_s = 60.0
    panic_s = 6.0
    grace_s = 30.0

    def start(self, fleet: SimFleet, trace: Trace) -> Target:
        self.samples: deque[tuple[float, float]] = deque()
        self.panic_until = -1.0
        self.zero_since: float | None = None
        return super().start(fleet, trace)

    def step(self, obs: Observation) -> Target:
        conc = float(obs.in_flight + obs.queue_depth)
        self.samples.append((obs.now, conc))
        while self.samples and obs.now - self.samples[0][0] > self.stable_s:
            self.samples.popleft()
        stable = sum(c for _, c in self.samples) / len(self.samples)
        recent = [c for t, c in self.samples if obs.now - t <= self.panic_s]
        panic = sum(recent) / len(recent)
        tc = self.s.target_concurrency
        want_stable = math.ceil(stable / tc)
        want_panic = math.ceil(panic / tc)
        ready = max(1, sum(obs.ready.values()))
        if panic / tc >= 2.0 * ready:
            self.panic_until = obs.now + self.stable_s
        current = self.replicas
        if obs.now < self.panic_until:
            desired = max(current, want_panic)
        else:
            desired = want_stable
            desired = max(desired, math.ceil(current / 2))  # max scale-down rate 2
        desired = max(desired, self.min_replicas)
        if desired == 0 and current > 0:
            if self.zero_since is None:
                self.zero_since = obs.now
            if obs.now - self.zero_since < self.grace_s:
                desired = current
        else:
            self.zero_since = None
        if current == 0 and conc > 0:
            desired = max(desired, 1)  # the activator
        self.replicas = desired
        return self._target()


class RayServe(_Baseline):
    name = "ray-serve"
    period_s = 10.0
    look_back_s = 30.0
    upscale_delay_s = 30.0
    downscale_delay_s = 600.0

    def start(self, fleet: SimFleet, trace: Trace) -> Target:
        self.samples: deque[tuple[float, float]] = deque()
        self.up_since: float | None = None
        self.down_since: float | None = None
        return super().start(fleet, trace)

    def step(self, obs: Observation) -> Target:
        self.samples.append((obs.now, float(obs.in_flight + obs.queue_depth)))
        while self.samples and obs.now - self.samples[0][0] > self.look_back_s:
            self.samples.popleft()
        avg = sum(c for _, c in self.samples) / len(self.samples)
        desired = max(self.min_replicas, math.ceil(avg / self.s.target_concurrency))
        current = self.replicas
        if current == 0 and obs.in_flight + obs.queue_depth > 0:
            self.replicas, self.up_since = 1, None  # a request at zero replicas starts one at once
            return self._target()
        if desired > current:
            self.down_since = None
            self.up_since = obs.now if self.up_since is None else self.up_since
            if obs.now - self.up_since >= self.upscale_delay_s:
                self.replicas, self.up_since = desired, None
        elif desired < current:
            self.up_since = None
            self.down_since = obs.now if self.down_since is None else self.down_since
            if obs.now - self.down_since >= self.downscale_delay_s:
                self.replicas, self.down_since = desired, None
        else:
            self.up_since = self.down_since = None
        return self._target()


class KubeAI(_Baseline):
    name = "kubeai"
    period_s = 10.0
    window_s = 600.0
    scale_down_delay_s = 30.0

    def start(self, fleet: SimFleet, trace: Trace) -> Target:
        self.samples: deque[tuple[float, float]] = deque()
        self.down_since: float | None = None
        return super().start(fleet, trace)

    def step(self, obs: Observation) -> Target:
        active = float(obs.in_flight + obs.queue_depth)
        self.samples.append((obs.now, active))
        while self.samples and obs.now - self.samples[0][0] > self.window_s:
            self.samples.popleft()
        avg = sum(c for _, c in self.samples) / len(self.samples)
        desired = max(self.min_replicas, math.ceil(avg / self.s.target_concurrency))
        if self.replicas == 0 and active > 0:
            desired = max(1, desired)  # the proxy scales from zero on the first request
        if desired < self.replicas:
            self.down_since = obs.now if self.down_since is None else self.down_since
            if obs.now - self.down_since >= self.scale_down_delay_s:
                self.replicas, self.down_since = desired, None
        else:
            self.down_since = None
            self.replicas = desired
        return self._target()


class StaticPeak(_Baseline):
    name = "static-peak"

    def start(self, fleet: SimFleet, trace: Trace) -> Target:
        self.s = _single(fleet, trace)
        need = oracle(fleet, trace, pools=(self.s.pool.name,))
        self.replicas = max(1, max((sum(r.values()) for r in need.replicas), default=1))
        return self._target()

    def step(self, obs: Observation) -> Target:
        return self._target()


POLICIES: dict[str, type] = {
    "infleet": Infleet,
    "hpa": HPA,
    "kpa": KPA,
    "keda": KEDA,
    "ray-serve": RayServe,
    "kubeai": KubeAI,
    "static-peak": StaticPeak,
}


def make(name: str) -> Infleet | _Baseline:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}") from None
    controller: Infleet | _Baseline = cls()
    return controller
