"""Warm pools stay within their cost cap; promotion order; cost is replica time times price."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.policy import (
    PoolOffer,
    ReplicaInterval,
    WarmPoolConfig,
    WarmWorker,
    account,
    cost_per_million_tokens,
    hourly_cost,
    plan_warm_pool,
    promotion_order,
)
from infleet.policy.warm import burst_rise


def offer(name: str, price: float, cap: float, cold: float = 120.0) -> PoolOffer:
    return PoolOffer(name, "gpu", "on-demand", price, 1, 80.0, 32, cap, cold_start_s=cold)


def test_burst_rise_over_the_horizon() -> None:
    hist = [(0.0, 1.0), (15.0, 1.0), (30.0, 5.0), (200.0, 9.0)]
    assert burst_rise(hist, 60.0) == pytest.approx(4.0)
    assert burst_rise(hist, 300.0) == pytest.approx(8.0)


def test_bursty_load_keeps_more_warm_than_smooth() -> None:
    offers = [offer("a", 1.0, 1.0)]
    smooth = [(t * 15.0, 5.0) for t in range(40)]
    bursty = [(t * 15.0, 5.0 if t % 10 else 12.0) for t in range(40)]
    cfg = WarmPoolConfig(max_cost_fraction=1.0)
    assert plan_warm_pool(offers, 10.0, smooth, cfg).replicas == {}
    assert sum(plan_warm_pool(offers, 10.0, bursty, cfg).replicas.values()) >= 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 30), min_size=2, max_size=40),
    st.floats(0, 50),
    st.floats(0, 1),
    st.one_of(st.none(), st.floats(0, 20)),
)
def test_warm_pool_never_exceeds_its_cost_cap(
    rates: list[float], serving: float, frac: float, cap: float | None
) -> None:
    offers = [offer("a", 2.0, 3.0, 300), offer("b", 0.5, 0.4, 90), offer("c", 4.0, 10.0, 200)]
    cfg = WarmPoolConfig(max_cost_fraction=frac, max_cost_per_hour=cap)
    plan = plan_warm_pool(offers, serving, [(i * 15.0, r) for i, r in enumerate(rates)], cfg)
    limit = serving * frac if cap is None else min(serving * frac, cap)
    assert plan.cost_per_hour <= limit + 1e-9
    assert plan.cost_per_hour == pytest.approx(
        sum(n * {"a": 2.0, "b": 0.5, "c": 4.0}[p] for p, n in plan.replicas.items())
    )


def test_promotion_prefers_capacity_per_dollar_then_oldest() -> None:
    offers = [offer("cheap", 1.0, 2.0), offer("dear", 5.0, 2.0)]
    workers = [WarmWorker("w1", "dear", 0.0), WarmWorker("w2", "cheap", 50.0), WarmWorker("w3", "cheap", 10.0)]
    assert [w.name for w in promotion_order(workers, offers)] == ["w3", "w2", "w1"]


def test_cost_is_replica_time_times_price() -> None:
    report = account(
        [ReplicaInterval("a", 0, 3600), ReplicaInterval("a", 0, 1800), ReplicaInterval("b", 100, 1900)],
        {"a": 2.0, "b": 4.0},
    )
    assert report.replica_hours == {"a": pytest.approx(1.5), "b": pytest.approx(0.5)}
    assert report.cost_usd == pytest.approx(1.5 * 2.0 + 0.5 * 4.0)
    assert hourly_cost({"a": 2, "b": 1}, {"a": 2.0, "b": 4.0}) == pytest.approx(8.0)
    assert cost_per_million_tokens(5.0, 2_000_000) == pytest.approx(2.5)
    with pytest.raises(KeyError):
        account([ReplicaInterval("z", 0, 1)], {})
    with pytest.raises(ValueError, match="ends before"):
        ReplicaInterval("a", 10, 5)
