"""One control step: scale up without moving what runs, down within it, big replicas shed only after a while."""

from __future__ import annotations

import dataclasses

import pytest

from infleet.policy import (
    AutoscalerConfig,
    FleetScalingConfig,
    FleetScalingState,
    LoadObservation,
    PlacementRequest,
    PoolOffer,
    scale_step,
    scaling,
)

CFG = FleetScalingConfig(
    AutoscalerConfig(
        latency_target_s=1.0, target_utilization=1.0, scale_down_window_s=30.0, scale_to_zero_after_s=None
    ),
    calibrate=False,
    shed_after_s=60.0,
)


def request(current: dict[str, int], min_replicas: int = 0) -> PlacementRequest:
    offers = (
        PoolOffer(
            "big",
            "h100",
            "on-demand",
            6.0,
            1,
            80.0,
            8,
            10.0,
            cold_start_s=300.0,
            current_replicas=current.get("big", 0),
        ),
        PoolOffer(
            "small",
            "l4",
            "on-demand",
            1.0,
            1,
            24.0,
            8,
            1.5,
            cold_start_s=120.0,
            current_replicas=current.get("small", 0),
        ),
    )
    return PlacementRequest("d", 0.0, 16.0, offers, min_replicas=min_replicas)


def obs(t: float, rate: float, queue: int = 0) -> LoadObservation:
    return LoadObservation(time_s=t, arrival_rate_rps=rate, queue_depth=queue)


def test_scale_up_keeps_what_runs_and_adds_the_cheapest_increment() -> None:
    step = scale_step(CFG, FleetScalingState(), obs(0, 11.0), request({"big": 1}), {"big": 1})
    assert step.replicas["big"] >= 1
    assert step.replicas == {"big": 1, "small": 1}  # 1.5 rps more on an L4, not a second H100


def test_no_scale_down_while_capacity_is_starting() -> None:
    step = scale_step(CFG, FleetScalingState(), obs(0, 1.0), request({"big": 2}), {"big": 1})
    assert step.replicas == {"big": 2}


def test_scale_down_keeps_a_subset_of_what_runs() -> None:
    state = FleetScalingState()
    current = {"big": 1, "small": 4}
    for t in range(0, 120, 15):
        step = scale_step(CFG, state, obs(float(t), 2.0), request(current), current)
        state, current = step.state, step.replicas
    assert set(current) <= {"big", "small"}
    assert current.get("small", 0) <= 4 and current.get("big", 0) <= 1
    assert current != {"big": 1, "small": 4}  # it did scale down
    assert 10.0 * current.get("big", 0) + 1.5 * current.get("small", 0) >= 2.0  # and still covers the demand


def test_a_big_replica_is_shed_only_after_shed_after_s() -> None:
    state = FleetScalingState()
    current = {"big": 2}
    kept_until = None
    for t in range(0, 300, 15):
        step = scale_step(CFG, state, obs(float(t), 3.0), request(current), current)
        state = step.state
        if step.replicas != current:
            kept_until = t
            current = step.replicas
            break
    assert current == {"big": 1}
    assert kept_until is not None and kept_until >= 60


def test_queue_per_replica_raises_capacity_unless_the_backlog_drains_within_the_drain_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """7 waiting on one 10 rps H100 (target 4 per replica): by default capacity grows; with a drain share of 1
    (drained in 0.7 s, inside the 1 s target) it does not."""
    config = dataclasses.replace(CFG, target_queue_per_replica=4.0)
    grown = scale_step(config, FleetScalingState(), obs(0, 5.0, queue=7), request({"big": 1}), {"big": 1})
    assert sum(grown.replicas.values()) > 1
    monkeypatch.setattr(scaling, "QUEUE_PRESSURE_DRAIN_SHARE", 1.0)
    held = scale_step(config, FleetScalingState(), obs(0, 5.0, queue=7), request({"big": 1}), {"big": 1})
    assert held.replicas == {"big": 1}
    deep = scale_step(config, FleetScalingState(), obs(0, 5.0, queue=30), request({"big": 1}), {"big": 1})
    assert sum(deep.replicas.values()) > 1  # 3 s of backlog: a shortage
