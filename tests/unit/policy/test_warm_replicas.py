"""Warm replicas per pool from `warmPool` (the loop's rule): Fixed, Auto through plan_warm_pool, and Off."""

from __future__ import annotations

from typing import Any

from infleet.policy import LoadObservation, PlacementPlan, PlacementRequest, PoolOffer
from infleet.policy.loop import RATE_HISTORY_S, LoopState, _rates, warm_history, warm_replicas
from tests.unit.controller.builders import make_infd


def offer(pool: str, price: float, rps: float, *, free: int = 64, cold: float = 90.0) -> PoolOffer:
    return PoolOffer(
        pool=pool,
        accelerator="c7i",
        capacity_type="spot",
        price_per_device_hour=price,
        devices_per_replica=1,
        device_memory_gib=15,
        free_devices=free,
        replica_capacity_rps=rps,
        cold_start_s=cold,
    )


def request(*offers: PoolOffer, demand: float = 2.0) -> PlacementRequest:
    return PlacementRequest(deployment="chat", demand_rps=demand, model_memory_gib=1.0, offers=offers)


def plan(replicas: dict[str, int]) -> PlacementPlan:
    return PlacementPlan("chat", replicas, cost_per_hour=1.0, capacity_rps=3.0, status="ok")


def infd(**warm: Any) -> Any:
    return make_infd(warmPool=warm)


CHEAP, DEAR = offer("cpu-spot", 0.14, 0.6), offer("cpu-od", 0.36, 0.6)


def test_auto_sizes_from_the_burst_within_a_quarter_of_the_serving_cost() -> None:
    req = request(CHEAP, DEAR)
    desired = {"cpu-spot": 3, "cpu-od": 1}  # serving $0.78/h: a quarter buys one $0.14 warm replica
    history = warm_history((), req.demand_rps, 0.0)
    assert warm_replicas(infd(mode="Auto"), plan(desired), req, desired, history) == {"cpu-spot": 1}
    # A dearer fleet ($1.56/h) affords more warm replicas ($0.39/h), still on the cheaper pool.
    double = {"cpu-spot": 6, "cpu-od": 2}
    assert warm_replicas(infd(mode="Auto"), plan(double), req, double, history) == {"cpu-spot": 2}


def test_auto_respects_max_hourly_cost_and_size() -> None:
    req = request(CHEAP, DEAR)
    desired = {"cpu-spot": 20}
    history = warm_history((), req.demand_rps, 0.0)
    # A doubling (2 rps) at 75% of 0.6 rps per replica: 5 warm replicas, within a quarter of $2.80/h.
    assert warm_replicas(infd(mode="Auto"), plan(desired), req, desired, history) == {"cpu-spot": 5}
    assert warm_replicas(infd(mode="Auto", maxHourlyCostUSD=0.3), plan(desired), req, desired, history) == {
        "cpu-spot": 2
    }
    assert warm_replicas(infd(mode="Auto", size=1), plan(desired), req, desired, history) == {"cpu-spot": 1}


def test_auto_keeps_none_for_steady_measured_load_and_more_for_bursts() -> None:
    req = request(CHEAP)
    desired = {"cpu-spot": 40}
    steady = [(float(t), 2.0) for t in range(0, 600, 10)]
    bursty = [(float(t), 2.0 if (t // 100) % 2 else 0.2) for t in range(0, 600, 10)]
    assert warm_replicas(infd(mode="Auto"), plan(desired), req, desired, warm_history(tuple(steady), 2.0, 600)) == {}
    assert warm_replicas(infd(mode="Auto"), plan(desired), req, desired, warm_history(tuple(bursty), 2.0, 600)) == {
        "cpu-spot": 4
    }


def test_auto_leaves_devices_the_serving_replicas_hold() -> None:
    req = request(offer("cpu-spot", 0.14, 0.6, free=4))
    desired = {"cpu-spot": 4}  # all four devices serve
    assert warm_replicas(infd(mode="Auto"), plan(desired), req, desired, [(0.0, 2.0)]) == {}


def test_fixed_off_and_unplaced() -> None:
    req = request(CHEAP, DEAR)
    desired = {"cpu-spot": 1, "cpu-od": 1}
    assert warm_replicas(infd(mode="Fixed", size=2), plan(desired), req, desired, []) == {"cpu-spot": 2}
    assert warm_replicas(infd(mode="Fixed", size=5, maxHourlyCostUSD=0.3), plan(desired), req, desired, []) == {
        "cpu-spot": 2
    }
    assert warm_replicas(infd(mode="Off"), plan(desired), req, desired, [(0.0, 2.0)]) == {}
    assert warm_replicas(infd(mode="Auto"), None, req, {}, [(0.0, 2.0)]) == {}
    assert warm_replicas(infd(mode="Auto"), plan({}), req, {}, [(0.0, 2.0)]) == {}


def test_history_is_the_measurements_else_the_declared_load() -> None:
    assert warm_history(((1.0, 3.0),), 2.0, 5.0) == [(1.0, 3.0)]
    assert warm_history((), 2.0, 5.0) == [(5.0, 2.0)]
    assert warm_history((), 0.0, 5.0) == []


def test_the_loop_keeps_measured_rates_for_a_bounded_window() -> None:
    rates = LoopState().rates
    period = 10.0
    steps = int(RATE_HISTORY_S / period) + 20
    for i in range(steps):
        rates = _rates(rates, LoadObservation(time_s=i * period, arrival_rate_rps=5.0))
    assert rates[-1] == ((steps - 1) * period, 5.0)
    assert rates[-1][0] - rates[0][0] <= RATE_HISTORY_S
    assert len(rates) == int(RATE_HISTORY_S / period) + 1
    assert _rates(rates, None) == rates  # no measurement: nothing added
