"""Autoscaling wiring: scraped worker load -> `infleet.policy.scale_step` -> replicas per pool.

The decision is the policy's (the simulator runs the same step); this module only keeps what a step needs
between reconciles, in memory: the last load sample (a rate needs two) and the policy's own state. After a
restart the first reconcile only samples, so the operator never acts on a half-measured rate; until real workers
answer, placement runs on the declared throughput.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from infleet.api import InferenceDeployment
from infleet.controller.kube import Obj
from infleet.controller.scrape import LoadSample, MetricsSource, combine, fetch_all, observe
from infleet.policy import AutoscalerConfig, LoadObservation, PlacementRequest
from infleet.policy.scaling import FleetScalingConfig, FleetScalingState, FleetScalingStep, scale_step

HISTORY_S = 1800.0  # arrival-rate history kept for warm-pool sizing (longer than any pool's cold start)


def autoscaler_config(infd: InferenceDeployment, request: PlacementRequest, period_s: float) -> AutoscalerConfig:
    scaling, slo = infd.spec.scaling, infd.spec.slo
    target_ms = scaling.target_p99_latency_ms or 0.8 * slo.p99_latency_ms
    cold = max((o.cold_start_s for o in request.offers), default=60.0)
    return AutoscalerConfig(
        latency_target_s=target_ms / 1000,
        decision_period_s=period_s,
        provision_delay_s=cold,
        scale_down_window_s=float(scaling.scale_down_stabilization_seconds),
        scale_to_zero_after_s=float(scaling.scale_to_zero_after_seconds) if scaling.min_replicas == 0 else None,
    )


@dataclass
class Autoscaling:
    source: MetricsSource
    period_s: float = 10.0
    samples: dict[str, LoadSample] = field(default_factory=dict)
    states: dict[str, FleetScalingState] = field(default_factory=dict)
    last_observation: dict[str, LoadObservation] = field(default_factory=dict)
    history: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)

    def step(
        self,
        key: str,
        infd: InferenceDeployment,
        request: PlacementRequest,
        ready: Mapping[str, int],
        ready_serving_pods: Iterable[Obj],
        now_s: float,
    ) -> FleetScalingStep | None:
        """One scaling step, or None when there is no load measurement yet (no workers answered, or one sample)."""
        sample = combine(now_s, fetch_all(self.source, ready_serving_pods))
        if sample is None:
            return None
        obs = observe(self.samples.get(key), sample)
        self.samples[key] = sample
        if obs is None:
            return None
        self.last_observation[key] = obs
        rates = self.history.setdefault(key, deque())
        rates.append((obs.time_s, obs.arrival_rate_rps))
        while rates and obs.time_s - rates[0][0] > HISTORY_S:
            rates.popleft()
        config = FleetScalingConfig(autoscaler=autoscaler_config(infd, request, self.period_s))
        result = scale_step(config, self.states.get(key, FleetScalingState()), obs, request, ready)
        self.states[key] = result.state
        return result

    def rate_history(self, key: str) -> list[tuple[float, float]]:
        """Measured (time, arrival rps) of the last `HISTORY_S` seconds, oldest first."""
        return list(self.history.get(key, ()))

    def forget(self, key: str) -> None:
        for memory in (self.samples, self.states, self.last_observation, self.history):
            memory.pop(key, None)
