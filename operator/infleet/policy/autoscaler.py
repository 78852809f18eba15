"""Autoscaler: desired SLO capacity (requests/s) from what the last scrapes saw.

The output is capacity, not a replica count: placement turns it into replicas per pool, so a CPU replica and an
H100 replica are each counted for what they sustain within the SLO.

What it keeps from the systems users run today, and where it departs:

* HPA: ``desired = current * metric / target`` with a 10% tolerance, immediate scale-up and a scale-down that
  takes the *highest* recommendation over a stabilisation window (300 s there). We keep the window (shorter by
  default, 180 s, because cold starts are charged for, not free) and the tolerance.
* KPA: a short panic window reacts to bursts; we react to every decision instead (scale-up is never delayed) and
  never scale down while a queue exists, which is what panic mode guarantees. ``QUEUE_HOLD_SHARE`` > 0 would let
  a backlog the current capacity drains within that share of the latency target pass (batching, not a
  shortage); it saved little on the train traces and cost attainment under faults, so it stays 0
  (docs/benchmarks.md, "Tuning the loop", round 2).
* KEDA: activation from zero on the first queued request, scale to zero after an idle period.
* Ray Serve: scale-down only after a delay; here the delay is the stabilisation window plus a bounded step.
* Beyond them: the demand is *forecast* over the time new capacity takes to arrive (cold start plus one decision
  period) from the recent trend, a queue is drained within the latency target (capacity for the backlog, not
  just for the arrival rate), and a tail latency above target while requests queue raises capacity directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

Direction = Literal["up", "down", "hold"]

# A backlog the current capacity drains within this share of the latency target does not hold a scale-down (0: any
# queue holds it). bench/tune_loop.py --round 2 tried 0.1-0.5: not adopted.
QUEUE_HOLD_SHARE = 0.0

# calibrate_capacity's hold band, as fractions of the latency target (see there).
CALIBRATION_RAISE_BELOW = 0.8
CALIBRATION_LOWER_ABOVE = 0.9


@dataclass(frozen=True)
class LoadObservation:
    """One scrape of a deployment, summed over its serving replicas (and the gateway's queue)."""

    time_s: float
    arrival_rate_rps: float
    queue_depth: int = 0
    in_flight: int = 0
    p99_latency_s: float | None = None
    mean_service_time_s: float | None = None
    ready_capacity_rps: float | None = None

    def __post_init__(self) -> None:
        if self.arrival_rate_rps < 0 or self.queue_depth < 0 or self.in_flight < 0:
            raise ValueError("load observations cannot be negative")


@dataclass(frozen=True)
class AutoscalerConfig:
    """Knobs, with defaults chosen from the baselines' documented defaults and this project's measurements."""

    latency_target_s: float
    target_utilization: float = 0.75
    decision_period_s: float = 15.0
    provision_delay_s: float = 60.0
    forecast_window_s: float = 120.0
    scale_down_window_s: float = 180.0
    max_scale_down_fraction: float = 0.25
    tolerance: float = 0.05
    scale_to_zero_after_s: float | None = 300.0
    min_capacity_rps: float = 0.0
    max_capacity_rps: float = math.inf
    max_scale_up_factor: float = 4.0

    def __post_init__(self) -> None:
        if self.latency_target_s <= 0:
            raise ValueError("latency_target_s must be > 0")
        if not 0 < self.target_utilization <= 1:
            raise ValueError("target_utilization must be within (0, 1]")
        if self.min_capacity_rps < 0 or self.max_capacity_rps < self.min_capacity_rps:
            raise ValueError("need 0 <= min_capacity_rps <= max_capacity_rps")
        if not 0 <= self.max_scale_down_fraction <= 1:
            raise ValueError("max_scale_down_fraction must be within [0, 1]")


@dataclass(frozen=True)
class AutoscalerState:
    """What the autoscaler remembers between decisions (carried by the caller, never global)."""

    desired_capacity_rps: float = 0.0
    history: tuple[tuple[float, float], ...] = ()
    recommendations: tuple[tuple[float, float], ...] = ()
    last_active_s: float | None = None


@dataclass(frozen=True)
class ScalingDecision:
    desired_capacity_rps: float
    direction: Direction
    reason: str
    state: AutoscalerState = field(repr=False)


def forecast_rate(history: tuple[tuple[float, float], ...], horizon_s: float) -> float:
    """Least-squares trend of the recent arrival rate, extrapolated ``horizon_s`` ahead; only rises count.

    A falling trend is ignored on purpose: scaling down early on a forecast risks the SLO, scaling up early
    only costs a little. So is a trend that does not fit (R^2 < 0.5): bursty load tilts a regression line without
    any ramp behind it, and acting on it only buys idle replicas.
    """
    if not history:
        return 0.0
    last_t, last = history[-1]
    if len(history) < 3:
        return last
    n = len(history)
    mean_t = sum(t for t, _ in history) / n
    mean_y = sum(y for _, y in history) / n
    var = sum((t - mean_t) ** 2 for t, _ in history)
    if var <= 0:
        return last
    slope = sum((t - mean_t) * (y - mean_y) for t, y in history) / var
    # Extrapolate only a trend that explains the window (R^2 >= 0.5): a ramp, not bursts that happen to tilt it.
    total = sum((y - mean_y) ** 2 for _, y in history)
    if total <= 0 or slope * slope * var / total < 0.5:
        return last
    fitted_now = mean_y + slope * (last_t - mean_t)
    # A trend is a guess: never forecast more than half again the highest rate actually seen in the window.
    ceiling = 1.5 * max(y for _, y in history)
    return max(last, min(ceiling, fitted_now + max(0.0, slope) * horizon_s))


def queue_holds(config: AutoscalerConfig, queue_depth: int, capacity_rps: float, share: float | None = None) -> bool:
    """A backlog that is a shortage: ``capacity_rps`` would not drain it within ``share`` (default
    ``QUEUE_HOLD_SHARE``) of the latency target. With a share of 0, any queue is."""
    if queue_depth <= 0:
        return False
    share = QUEUE_HOLD_SHARE if share is None else share
    return capacity_rps <= 0 or queue_depth / capacity_rps >= share * config.latency_target_s


def decide(config: AutoscalerConfig, state: AutoscalerState, obs: LoadObservation) -> ScalingDecision:
    """Desired capacity after observing ``obs`` (its ``time_s`` is *now*). Pure: same inputs, same answer."""
    now = obs.time_s
    kept = tuple((t, r) for t, r in state.history if now - t < config.forecast_window_s)
    history = (*kept, (now, obs.arrival_rate_rps))
    active = obs.arrival_rate_rps > 0 or obs.queue_depth > 0 or obs.in_flight > 0
    last_active = now if active else state.last_active_s
    current = state.desired_capacity_rps

    # Demand: the forecast arrival rate when new capacity would land, and at least what is being served now.
    horizon = config.provision_delay_s + config.decision_period_s
    demand = max(obs.arrival_rate_rps, forecast_rate(history, horizon))
    if obs.mean_service_time_s and obs.mean_service_time_s > 0:
        demand = max(demand, obs.in_flight / obs.mean_service_time_s)
    raw = demand / config.target_utilization
    # Backlog: drain the queue within the latency target (or one decision period, if longer); at most as much
    # again as the demand, since capacity ordered now lands only after the provisioning delay.
    raw += min(demand, obs.queue_depth / max(config.latency_target_s, config.decision_period_s))
    reason = f"demand {demand:.3g} rps at {config.target_utilization:.0%} utilisation, queue {obs.queue_depth}"
    # Tail latency over target *while requests queue* means too little capacity, whatever the rate says.
    if obs.p99_latency_s is not None and obs.queue_depth > 0 and obs.p99_latency_s > config.latency_target_s:
        boost = min(2.0, obs.p99_latency_s / config.latency_target_s)
        base = current if obs.ready_capacity_rps is None else obs.ready_capacity_rps
        if base * boost > raw:
            raw = base * boost
            reason = f"p99 {obs.p99_latency_s:.3g}s over {config.latency_target_s:g}s target with a queue"
    if current > 0 and raw > current * config.max_scale_up_factor:
        raw = current * config.max_scale_up_factor

    recent = tuple((t, r) for t, r in state.recommendations if now - t < config.scale_down_window_s)
    recommendations = (*recent, (now, raw))
    desired: float
    direction: Direction
    if raw > current * (1 + config.tolerance) or (current == 0 and raw > 0):
        desired, direction = raw, "up"
    elif (backlog := queue_holds(config, obs.queue_depth, current)) or raw >= current * (1 - config.tolerance):
        desired, direction = current, "hold"
        if backlog and raw < current:
            reason = "queue present: no scale-down"
    else:
        # Cautious scale-down: the highest recommendation over the window, and at most a bounded step.
        stabilised = max(r for _, r in recommendations)
        floor = current * (1 - config.max_scale_down_fraction)
        desired = max(stabilised, floor, raw)
        direction = "down" if desired < current * (1 - config.tolerance / 2) else "hold"
        if direction == "hold":
            desired = current
        else:
            reason = f"stabilised over {config.scale_down_window_s:g}s: {stabilised:.3g} rps"

    idle_for = math.inf if last_active is None else now - last_active
    if (
        config.scale_to_zero_after_s is not None
        and config.min_capacity_rps == 0
        and not active
        and idle_for >= config.scale_to_zero_after_s
    ):
        desired = 0.0
        direction = "down" if current > 0 else "hold"
        reason = f"idle for {idle_for:.0f}s: scale to zero"
    elif active and desired <= 0:
        desired = max(raw, 1e-6)
        direction = "up"
        reason = "activation from zero"

    desired = min(config.max_capacity_rps, max(config.min_capacity_rps, desired))
    new_state = replace(
        state,
        desired_capacity_rps=desired,
        history=history,
        recommendations=recommendations,
        last_active_s=last_active,
    )
    return ScalingDecision(desired_capacity_rps=desired, direction=direction, reason=reason, state=new_state)


def calibrate_capacity(
    factor: float,
    p99_latency_s: float | None,
    latency_target_s: float,
    queue_depth: int,
    *,
    low: float = 0.5,
    high: float = 2.0,
    raise_below: float = CALIBRATION_RAISE_BELOW,
    lower_above: float = CALIBRATION_LOWER_ABOVE,
) -> float:
    """Correct profiled per-replica capacity by what the tail latency says, a little each decision.

    Profiles are measured on another request mix; the live tail is the truth. Under ``raise_below`` of the target
    with no queue: replicas carry more than the profile claims (+5%). Over ``lower_above``: less (-10%, faster,
    because missing the SLO costs more than a replica). In between it holds. Bounded to ``[low, high]`` so one odd
    window cannot run away.

    The band is 80-90% of the target: the upper edge keeps a 10% margin under the SLO; the lower edge was 60%,
    which by design left 40% of the latency budget unused and kept replicas the SLO did not need (measured on
    both Azure traces, in four 15-minute windows each: the same attainment within 0.02 points in all eight, 14-40%
    cheaper in four; docs/benchmarks.md).
    """
    if not 0 < raise_below < lower_above:
        raise ValueError("need 0 < raise_below < lower_above")
    if p99_latency_s is None:
        return factor
    if p99_latency_s > lower_above * latency_target_s:
        factor /= 1.1
    elif p99_latency_s < raise_below * latency_target_s and queue_depth == 0:
        factor *= 1.05
    return min(high, max(low, factor))
