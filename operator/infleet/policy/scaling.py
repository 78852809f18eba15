"""One control-loop step for one deployment: observation -> desired capacity -> replicas per pool.

This joins the autoscaler (capacity in requests/s) and placement (replicas per pool) the way the operator and the
simulator both run them, so the rules below hold in both:

* **Scale up without moving what runs.** Only the missing capacity is placed, on what the pools have left: a
  replica that serves is never replaced by a cheaper one that would first take a cold start.
* **Scale down within what runs.** The cheapest subset of the current replicas that still covers the demand.
* **Nothing is shed while capacity is still starting**: the start was ordered for a reason seen moments ago.
* **Big replicas are shed late.** When one replica is more than a scale-down step (an H100 serving a load that
  has fallen by a third), it goes only after the demand has fit without it for ``shed_after_s``, three cold starts
  by default: releasing it saves its price per hour, getting it back costs a cold start of minutes during which
  the SLO is at risk, so it is kept (ski-rental style) until it has been idle for several times that cost.
* **The replica bounds hold**: a scale-up adds at most ``maxReplicas`` minus what runs.
* **Scale-up stabilisation** (``scale_up_window_s``, HPA's ``scaleUp.stabilizationWindowSeconds``): a scale-up goes
  only as high as the lowest recommendation over the window, so a one-period spike does not buy replicas.
* **Queue per replica** (``target_queue_per_replica``): a backlog deeper than the target per running replica raises
  the desired capacity in proportion, at most doubling it per decision.
* **Profiles are corrected by the live tail** (:func:`~infleet.policy.autoscaler.calibrate_capacity`), judged only
  on a settled fleet (every replica ready).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from infleet.policy.autoscaler import (
    CALIBRATION_LOWER_ABOVE,
    CALIBRATION_RAISE_BELOW,
    AutoscalerConfig,
    AutoscalerState,
    LoadObservation,
    ScalingDecision,
    calibrate_capacity,
    decide,
)
from infleet.policy.placement import place
from infleet.policy.types import PlacementRequest, PoolOffer

SHED_AFTER_COLD_STARTS = 3.0
# Queue per replica raises capacity only when the current capacity would not drain the backlog within this share
# of the latency target (0: whenever the backlog per replica exceeds the target, as before round 2).
QUEUE_PRESSURE_DRAIN_SHARE = 0.0


@dataclass(frozen=True)
class FleetScalingConfig:
    autoscaler: AutoscalerConfig
    calibrate: bool = True
    scale_up_window_s: float = 0.0
    target_queue_per_replica: float | None = None
    shed_after_s: float | None = None  # None: SHED_AFTER_COLD_STARTS x the longest cold start among the pools
    # calibrate_capacity's hold band (fractions of the latency target): raise capacity below, lower it above.
    calibration_band: tuple[float, float] = (CALIBRATION_RAISE_BELOW, CALIBRATION_LOWER_ABOVE)


@dataclass(frozen=True)
class FleetScalingState:
    autoscaler: AutoscalerState = field(default_factory=AutoscalerState)
    calibration: float = 1.0
    spare_since_s: float | None = None


@dataclass(frozen=True)
class FleetScalingStep:
    replicas: dict[str, int]
    decision: ScalingDecision
    state: FleetScalingState
    calibration: float


def _calibrated(offers: tuple[PoolOffer, ...], factor: float) -> tuple[PoolOffer, ...]:
    return tuple(dataclasses.replace(o, replica_capacity_rps=o.replica_capacity_rps * factor) for o in offers)


def _held(offer: PoolOffer) -> int:
    return offer.current_replicas if offer.max_replicas is None else min(offer.current_replicas, offer.max_replicas)


def scale_step(
    config: FleetScalingConfig,
    state: FleetScalingState,
    obs: LoadObservation,
    request: PlacementRequest,
    ready: Mapping[str, int],
) -> FleetScalingStep:
    """Replicas per pool after observing ``obs``.

    ``request.offers`` carry the current serving replicas (``current_replicas``, ready or starting) and uncalibrated
    profile capacities; ``request.demand_rps`` is ignored (the autoscaler decides it); ``ready`` counts the ready
    serving replicas per pool. Pure: the same inputs give the same step.
    """
    # Replicas a pool is capped below (a saturated pool keeps only what the scheduler bound) are not held there:
    # their capacity is re-placed on the other pools, within maxReplicas, instead of waiting on a pool that cannot
    # take them.
    current = {o.pool: _held(o) for o in request.offers if _held(o) > 0}
    settled = {p: n for p, n in ready.items() if n > 0} == current
    factor = state.calibration
    if config.calibrate and settled:
        raise_below, lower_above = config.calibration_band
        factor = calibrate_capacity(
            factor,
            obs.p99_latency_s,
            config.autoscaler.latency_target_s,
            obs.queue_depth,
            raise_below=raise_below,
            lower_above=lower_above,
        )
    offers = _calibrated(request.offers, factor)
    caps = {o.pool: o.replica_capacity_rps for o in offers}
    have = sum(caps.get(p, 0.0) * n for p, n in current.items())
    ready_cap = sum(caps.get(p, 0.0) * n for p, n in ready.items())
    auto_state = dataclasses.replace(state.autoscaler, desired_capacity_rps=have)
    decision = decide(config.autoscaler, auto_state, dataclasses.replace(obs, ready_capacity_rps=ready_cap))
    want = _queue_pressure(config, decision.desired_capacity_rps, have, obs.queue_depth, sum(current.values()))
    if want > decision.desired_capacity_rps and _drains_soon(config, obs.queue_depth, have):
        want = decision.desired_capacity_rps
    want = _up_stabilised(config, decision, want, have, obs.time_s)
    decision = dataclasses.replace(decision, desired_capacity_rps=want)
    spare_since = state.spare_since_s
    target = dict(current)
    if want > have + 1e-9:
        spare_since = None
        left = tuple(
            dataclasses.replace(o, free_devices=max(0, o.free_devices - o.current_replicas * o.devices_per_replica))
            for o in offers
        )
        room = None if request.max_replicas is None else max(0, request.max_replicas - sum(current.values()))
        if room != 0:
            extra = place(
                dataclasses.replace(request, demand_rps=want - have, offers=left, min_replicas=0, max_replicas=room)
            )
            for p, n in extra.replicas.items():
                target[p] = target.get(p, 0) + n
        if sum(target.values()) < request.min_replicas:
            target = dict(place(dataclasses.replace(request, demand_rps=want, offers=offers)).replicas)
    elif want < have - 1e-9 and settled:
        capped = tuple(dataclasses.replace(o, max_replicas=_held(o)) for o in offers)
        target = dict(place(dataclasses.replace(request, demand_rps=want, offers=capped)).replicas)
        if target == current:
            target, spare_since = _shed_one(config, decision, offers, current, obs.time_s, spare_since, request)
        else:
            spare_since = None
    else:
        spare_since = None
    target = _within_bounds(target, request, offers, want)
    new_state = FleetScalingState(autoscaler=decision.state, calibration=factor, spare_since_s=spare_since)
    return FleetScalingStep(replicas=target, decision=decision, state=new_state, calibration=factor)


def _within_bounds(
    target: dict[str, int], request: PlacementRequest, offers: tuple[PoolOffer, ...], want: float
) -> dict[str, int]:
    """A target the replica bounds allow: an edited minReplicas/maxReplicas applies even when the load holds."""
    total = sum(target.values())
    if total < request.min_replicas:
        grown = place(dataclasses.replace(request, demand_rps=want, offers=offers)).replicas
        return {p: max(n, target.get(p, 0)) for p, n in grown.items()} if sum(grown.values()) else target
    if request.max_replicas is not None and total > request.max_replicas:
        capped = tuple(dataclasses.replace(o, max_replicas=target.get(o.pool, 0)) for o in offers)
        return dict(place(dataclasses.replace(request, demand_rps=want, offers=capped)).replicas)
    return target


def _queue_pressure(config: FleetScalingConfig, want: float, have: float, queue: int, replicas: int) -> float:
    """Raise the desired capacity when the backlog per replica exceeds ``scaling.targetQueueDepthPerReplica``."""
    target = config.target_queue_per_replica
    if target is None or queue <= 0 or have <= 0:
        return want
    per_replica = queue / max(1, replicas)
    if per_replica <= target:
        return want
    return max(want, have * min(2.0, per_replica / target))


def _drains_soon(config: FleetScalingConfig, queue: int, have: float) -> bool:
    """A backlog the current capacity clears within ``QUEUE_PRESSURE_DRAIN_SHARE`` of the latency target."""
    share = QUEUE_PRESSURE_DRAIN_SHARE
    return share > 0 and have > 0 and queue / have < share * config.autoscaler.latency_target_s


def _up_stabilised(
    config: FleetScalingConfig, decision: ScalingDecision, want: float, have: float, now: float
) -> float:
    """A scale-up reaches only the lowest recommendation of the last ``scale_up_window_s`` (never below ``have``)."""
    if config.scale_up_window_s <= 0 or want <= have:
        return want
    recent = [r for t, r in decision.state.recommendations if now - t < config.scale_up_window_s]
    return max(have, min([want, *recent]))


def _shed_one(
    config: FleetScalingConfig,
    decision: ScalingDecision,
    offers: tuple[PoolOffer, ...],
    current: dict[str, int],
    now: float,
    spare_since: float | None,
    request: PlacementRequest,
) -> tuple[dict[str, int], float | None]:
    need = max((r for _, r in decision.state.recommendations), default=0.0)
    by_pool = {o.pool: o for o in offers}
    have = sum(by_pool[p].replica_capacity_rps * n for p, n in current.items())
    spare = [p for p, n in current.items() if n > 0 and have - by_pool[p].replica_capacity_rps >= need]
    if not spare or sum(current.values()) <= request.min_replicas:
        return current, None
    since = now if spare_since is None else spare_since
    after = config.shed_after_s
    if after is None:
        after = SHED_AFTER_COLD_STARTS * max(by_pool[p].cold_start_s for p in current)
    if now - since < after:
        return current, since
    # The least capacity per dollar goes first.
    drop = max(
        spare,
        key=lambda p: (by_pool[p].replica_price_per_hour / max(by_pool[p].replica_capacity_rps, 1e-9), p),
    )
    out = dict(current)
    out[drop] -= 1
    return {p: n for p, n in out.items() if n}, None
