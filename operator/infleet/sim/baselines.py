"""Baseline autoscalers for the simulator, at their projects' documented defaults, and tunable for hindsight search.

Every baseline scales a replica count on one pool, the one that serves the trace cheapest (they cannot place
across accelerator types), within the deployment's ``minReplicas``/``maxReplicas`` (each takes them from its
user; the HPA never goes below one). Each watches concurrency: requests in flight at the replicas plus those
queued at the gateway. Defaults, each from its project's documentation:

* ``kpa`` (Knative Serving autoscaler): target 70 concurrent requests per replica
  (``container-concurrency-target-default`` 100 x ``container-concurrency-target-percentage`` 70%), 2 s tick,
  60 s stable window, 6 s panic window (``panic-window-percentage`` 10%), panic at 200% of target
  (``panic-threshold-percentage``), ``max-scale-down-rate`` 2, scale to zero after the stable window plus the 30 s
  ``scale-to-zero-grace-period``. One departure, as the issue asks of a fair baseline: it does not scale down
  while replicas are still starting. At defaults Knative would release them mid cold start (its 60 s window is
  shorter than a 300 s GPU cold start); an operator running it on GPUs would lengthen the window or set
  ``scale-down-delay`` to the same effect.
* ``kubeai``: ``targetRequests`` 100 active requests per replica, averaged over the 10-minute
  ``modelAutoscaling.timeWindow`` at its 10 s ``interval``, ``scaleDownDelaySeconds`` 30, scale from zero on the
  first request.
* ``ray-serve``: ``target_ongoing_requests`` 2 and ``max_ongoing_requests`` 5 per replica (Ray >= 2.32 defaults;
  requests beyond 5 wait at the proxy), 10 s ``metrics_interval_s``, 30 s ``look_back_period_s``,
  ``upscale_delay_s`` 30, ``downscale_delay_s`` 600, a request at zero replicas starts one at once.
* ``hpa`` (Kubernetes HPA v2): 15 s sync, 10% tolerance, scale-up at most max(100%, 4 pods) per 15 s, scale-down
  to the highest recommendation over the stabilisation window, here the deployment's
  ``scaleDownStabilizationSeconds`` (what the user would set it to); at least one replica. The HPA has no default
  target value: the user picks one; we give it 70% (Knative's default utilisation) of the concurrency one replica
  sustains within the SLO (Little's law: SLO capacity x time in system), computed from the whole trace.
* ``keda``: the HPA above one replica (KEDA hands its metric to the HPA, which runs its own 15 s loop), with
  KEDA's own 30 s ``pollingInterval`` for activation from zero and ``cooldownPeriod`` 300 s before scale to zero;
  same target as the HPA.
* ``static-peak``: enough replicas for the trace's busiest minute, all the time (knows the peak in advance).

``tuned_grid(name)`` lists the variants :func:`infleet.sim.yardsticks.tune` replays to find each baseline's
strongest setting with hindsight: its main target (as a multiple of the Little's-law concurrency) and its main
window.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from infleet.sim.capacity import Mix, infeasible_message, pool_capacity
from infleet.sim.engine import Observation, Target
from infleet.sim.fleet import SimFleet, SimPool
from infleet.sim.oracle import cheapest_single_pool, minute_plan
from infleet.sim.trace import Trace

TARGET_UTILIZATION = 0.7  # Knative's container-concurrency-target-percentage, used where a user must pick a target


def slo_concurrency(fleet: SimFleet, pool: SimPool, mix: Mix) -> float:
    """Concurrent requests one replica holds at its SLO capacity (Little's law: capacity x time in system)."""
    cap = pool_capacity(fleet, pool, mix)
    if cap <= 0:
        raise ValueError(infeasible_message(fleet, mix) or f"pool {pool.name} cannot meet the SLO for this trace")
    svc = pool.service
    batch = max(1, svc.batch_limit(fleet.deployment.tpot_s, mix.mean_prompt + mix.mean_gen))
    return cap * (svc.prefill_s(mix.mean_prompt) + mix.mean_gen * svc.tpot(batch))


class _Baseline:
    name = "baseline"
    period_s = 15.0
    floor = 0  # the system's own hard minimum (the HPA cannot scale to zero)
    default_target: float | None = None  # documented default concurrency target; None: the user must pick one
    max_ongoing: int | None = None

    def __init__(self, *, target_factor: float | None = None, label: str | None = None, **windows: float) -> None:
        """``target_factor``: the target as a multiple of :func:`slo_concurrency` (tuning); ``windows`` override
        the class's window attributes by name."""
        self.target_factor = target_factor
        for key, value in windows.items():
            if not hasattr(type(self), key):
                raise ValueError(f"{self.name} has no setting {key!r}")
            setattr(self, key, value)
        self.settings = {"target_factor": target_factor, **windows}
        if label:
            self.name = label

    def start(self, fleet: SimFleet, trace: Trace) -> Target:
        from infleet.sim.capacity import initial_rate  # the same warm-up for every policy

        self.min_replicas = max(self.floor, fleet.deployment.min_replicas)
        self.pool = fleet.pool(cheapest_single_pool(fleet, trace))
        self.max_replicas = min(self.pool.max_replicas, fleet.deployment.max_replicas)
        mix = Mix.of(trace)
        little = slo_concurrency(fleet, self.pool, mix)
        if self.target_factor is not None:
            self.target = max(1.0, self.target_factor * little)
        elif self.default_target is not None:
            self.target = self.default_target
        else:
            self.target = max(1.0, TARGET_UTILIZATION * little)
        if self.max_ongoing is not None and self.target_factor is not None:
            self.max_ongoing = max(5, math.ceil(2.5 * self.target))  # Ray Serve's default ratio, 5 : 2
        conc = initial_rate(fleet, trace) * little / pool_capacity(fleet, self.pool, mix)
        self.replicas = max(self.min_replicas, math.ceil(conc / self.target))
        self.history: deque[tuple[float, float]] = deque()
        self.setup()
        return self._target()

    def setup(self) -> None:
        """Per-policy state, after the target is known."""

    def _target(self) -> Target:
        self.replicas = max(0, min(self.replicas, self.max_replicas))
        return Target(serving={self.pool.name: self.replicas} if self.replicas else {}, max_ongoing=self.max_ongoing)

    def step(self, obs: Observation) -> Target:
        raise NotImplementedError


class HPA(_Baseline):
    name = "hpa"
    period_s = 15.0
    floor = 1
    stabilization_s = -1.0  # < 0: the deployment's scaleDownStabilizationSeconds
    tolerance = 0.1

    def start(self, fleet: SimFleet, trace: Trace) -> Target:
        if self.stabilization_s < 0:
            self.stabilization_s = fleet.deployment.scale_down_window_s
        return super().start(fleet, trace)

    def step(self, obs: Observation) -> Target:
        metric = obs.in_flight + obs.queue_depth
        ready = max(1, sum(obs.ready.values()))
        current = self.replicas
        ratio = (metric / ready) / self.target
        desired = current if abs(ratio - 1) <= self.tolerance else math.ceil(ratio * ready)
        self.history.append((obs.now, desired))
        while self.history and obs.now - self.history[0][0] > self.stabilization_s:
            self.history.popleft()
        if desired < current:
            desired = min(current, int(max(d for _, d in self.history)))
        else:
            desired = min(desired, max(2 * current, current + 4))
        self.replicas = max(self.min_replicas, desired)
        return self._target()


class KEDA(HPA):
    name = "keda"
    period_s = 15.0  # the HPA's loop; KEDA itself polls every polling_s
    floor = 0
    polling_s = 30.0
    cooldown_s = 300.0

    def setup(self) -> None:
        self.last_active = 0.0
        self.last_poll = -math.inf

    def step(self, obs: Observation) -> Target:
        if self.min_replicas > 0:  # minReplicaCount > 0: no scale to zero, the HPA does the rest
            return super().step(obs)
        metric = obs.in_flight + obs.queue_depth
        if obs.now - self.last_poll >= self.polling_s:  # KEDA's own loop: activation and scale to zero
            self.last_poll = obs.now
            if metric > 0 or obs.arrival_rate_rps > 0:
                self.last_active = obs.now
            if self.replicas == 0:
                if metric > 0:
                    self.replicas = max(1, math.ceil(metric / self.target))
                return self._target()
            if obs.now - self.last_active >= self.cooldown_s:
                self.replicas = 0
                return self._target()
        if self.replicas == 0:
            return self._target()
        self.min_replicas = 1
        out = super().step(obs)
        self.min_replicas = 0
        return out


class KPA(_Baseline):
    name = "kpa"
    period_s = 2.0
    default_target = 70.0
    stable_s = 60.0
    panic_s = 6.0
    grace_s = 30.0

    def setup(self) -> None:
        self.samples: deque[tuple[float, float]] = deque()
        self.panic_until = -1.0
        self.zero_since: float | None = None

    def step(self, obs: Observation) -> Target:
        conc = float(obs.in_flight + obs.queue_depth)
        self.samples.append((obs.now, conc))
        while self.samples and obs.now - self.samples[0][0] > self.stable_s:
            self.samples.popleft()
        stable = sum(c for _, c in self.samples) / len(self.samples)
        recent = [c for t, c in self.samples if obs.now - t <= self.panic_s]
        panic = sum(recent) / len(recent)
        tc = self.target
        ready = max(1, sum(obs.ready.values()))
        if panic / tc >= 2.0 * ready:
            self.panic_until = obs.now + self.stable_s
        current = self.replicas
        if obs.now < self.panic_until:
            desired = max(current, math.ceil(panic / tc))
        else:
            desired = max(math.ceil(stable / tc), math.ceil(current / 2))  # max scale-down rate 2
        desired = max(desired, self.min_replicas)
        starting = sum(obs.serving.values()) - sum(obs.ready.values())
        if desired < current and starting > 0:
            desired = current  # never below what is still starting: it was ordered for a reason
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
    default_target = 2.0
    max_ongoing: int | None = 5
    look_back_s = 30.0
    upscale_delay_s = 30.0
    downscale_delay_s = 600.0

    def setup(self) -> None:
        self.samples: deque[tuple[float, float]] = deque()
        self.up_since: float | None = None
        self.down_since: float | None = None

    def step(self, obs: Observation) -> Target:
        self.samples.append((obs.now, float(obs.in_flight + obs.queue_depth)))
        while self.samples and obs.now - self.samples[0][0] > self.look_back_s:
            self.samples.popleft()
        avg = sum(c for _, c in self.samples) / len(self.samples)
        desired = max(self.min_replicas, math.ceil(avg / self.target))
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
    default_target = 100.0
    window_s = 600.0
    scale_down_delay_s = 30.0

    def setup(self) -> None:
        self.samples: deque[tuple[float, float]] = deque()
        self.down_since: float | None = None

    def step(self, obs: Observation) -> Target:
        active = float(obs.in_flight + obs.queue_depth)
        self.samples.append((obs.now, active))
        while self.samples and obs.now - self.samples[0][0] > self.window_s:
            self.samples.popleft()
        avg = sum(c for _, c in self.samples) / len(self.samples)
        desired = max(self.min_replicas, math.ceil(avg / self.target))
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
        self.pool = fleet.pool(cheapest_single_pool(fleet, trace))
        self.max_replicas = min(self.pool.max_replicas, fleet.deployment.max_replicas)
        need = minute_plan(fleet, trace, pools=(self.pool.name,))
        self.replicas = max(1, max((sum(r.values()) for r in need.replicas), default=1))
        return self._target()

    def step(self, obs: Observation) -> Target:
        return self._target()


BASELINES: dict[str, type[_Baseline]] = {
    "hpa": HPA,
    "kpa": KPA,
    "keda": KEDA,
    "ray-serve": RayServe,
    "kubeai": KubeAI,
    "static-peak": StaticPeak,
}

# Hindsight tuning: the main target (x the Little's-law concurrency of one replica at its SLO capacity) and each
# baseline's main window, a small grid replayed on the trace itself.
TARGET_FACTORS = (0.35, 0.7, 1.0, 1.5)
WINDOWS: dict[str, tuple[str, tuple[float, ...]]] = {
    "hpa": ("stabilization_s", (60.0, 600.0)),
    "keda": ("cooldown_s", (300.0, 900.0)),
    "kpa": ("stable_s", (60.0, 300.0)),
    "ray-serve": ("downscale_delay_s", (60.0, 600.0)),
    "kubeai": ("window_s", (120.0, 600.0)),
}


def tuned_grid(name: str) -> list[dict[str, Any]]:
    """The settings :func:`infleet.sim.yardsticks.tune` tries for baseline ``name``."""
    key, values = WINDOWS[name]
    return [{"target_factor": f, key: w} for f in TARGET_FACTORS for w in values]
