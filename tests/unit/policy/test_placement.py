"""Placement: limits, memory fit, spot share, budget, and optimality against brute force on small instances."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.policy import PlacementRequest, PoolOffer, place, place_fleet


def offer(name: str, price: float, cap: float, **kw: object) -> PoolOffer:
    base: dict[str, object] = {
        "accelerator": "gpu",
        "capacity_type": "on-demand",
        "price_per_device_hour": price,
        "devices_per_replica": 1,
        "device_memory_gib": 80.0,
        "free_devices": 16,
        "replica_capacity_rps": cap,
    }
    base.update(kw)
    return PoolOffer(pool=name, **base)  # type: ignore[arg-type]


def test_picks_the_cheapest_capacity_and_mixes_types() -> None:
    offers = (offer("big", 6.0, 10.0), offer("small", 1.0, 1.5))
    plan = place(PlacementRequest("d", 11.0, 16.0, offers))
    # 1 big + 1 small = 7.0/h beats 2 big (12.0) and 8 small (8.0)
    assert plan.replicas == {"big": 1, "small": 1}
    assert plan.status == "ok"
    assert plan.cost_per_hour == pytest.approx(7.0)


def test_never_picks_a_pool_the_model_does_not_fit() -> None:
    offers = (offer("tiny-mem", 0.1, 100.0, device_memory_gib=8.0), offer("ok", 5.0, 10.0))
    plan = place(PlacementRequest("d", 5.0, 16.0, offers))
    assert "tiny-mem" not in plan.replicas
    assert plan.replicas == {"ok": 1}


def test_no_fitting_pool_is_reported() -> None:
    plan = place(PlacementRequest("d", 5.0, 500.0, (offer("a", 1.0, 1.0),)))
    assert plan.status == "no_fitting_pool"
    assert plan.replicas == {}


def test_pool_limits_and_best_effort_shortfall() -> None:
    offers = (offer("a", 1.0, 1.0, max_replicas=3), offer("b", 2.0, 1.0, free_devices=2))
    plan = place(PlacementRequest("d", 10.0, 16.0, offers))
    assert plan.replicas == {"a": 3, "b": 2}
    assert plan.status == "insufficient_capacity"
    assert plan.shortfall_rps == pytest.approx(5.0)


def test_budget_caps_cost() -> None:
    plan = place(PlacementRequest("d", 10.0, 16.0, (offer("a", 1.0, 1.0),), budget_per_hour=4.0))
    assert plan.cost_per_hour <= 4.0
    assert plan.status == "over_budget"


def test_spot_share_is_bounded() -> None:
    offers = (offer("od", 3.0, 1.0), offer("spot", 1.0, 1.0, capacity_type="spot"))
    plan = place(PlacementRequest("d", 4.0, 16.0, offers, max_spot_fraction=0.5))
    assert plan.replicas.get("od", 0) >= 2
    assert place(PlacementRequest("d", 4.0, 16.0, offers, max_spot_fraction=0.0)).replicas == {"od": 4}


def test_preference_breaks_ties() -> None:
    offers = (offer("a", 1.0, 1.0, preference=1), offer("b", 1.0, 1.0, preference=0))
    assert place(PlacementRequest("d", 2.0, 16.0, offers)).replicas == {"b": 2}


def test_zero_demand_is_idle_unless_a_minimum_is_set() -> None:
    offers = (offer("a", 1.0, 1.0),)
    assert place(PlacementRequest("d", 0.0, 16.0, offers)).status == "idle"
    assert place(PlacementRequest("d", 0.0, 16.0, offers, min_replicas=2)).replicas == {"a": 2}


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="capacity_type"):
        offer("a", 1.0, 1.0, capacity_type="reserved")
    with pytest.raises(ValueError, match="demand_rps"):
        PlacementRequest("d", -1.0, 1.0, ())
    with pytest.raises(ValueError, match="twice"):
        PlacementRequest("d", 1.0, 1.0, (offer("a", 1.0, 1.0), offer("a", 2.0, 1.0)))


def test_fleet_shares_pool_devices() -> None:
    offers = (offer("cheap", 1.0, 1.0, free_devices=4), offer("dear", 3.0, 1.0))
    reqs = [PlacementRequest(f"d{i}", 3.0, 16.0, offers) for i in range(2)]
    fleet = place_fleet(reqs, shared_free_devices={"cheap": 4, "dear": 16})
    assert sum(p.replicas.get("cheap", 0) for p in fleet.plans.values()) <= 4
    assert all(p.status == "ok" for p in fleet.plans.values())
    assert fleet.cost_per_hour == pytest.approx(4 * 1.0 + 2 * 3.0)


def brute_force(req: PlacementRequest) -> float | None:
    usable = req.usable_offers()
    best: float | None = None
    ranges = [range(o.replica_limit + 1) for o in usable]
    for counts in itertools.product(*ranges):
        cap = sum(n * o.replica_capacity_rps for n, o in zip(counts, usable, strict=True))
        od = sum(
            n * o.replica_capacity_rps for n, o in zip(counts, usable, strict=True) if o.capacity_type == "on-demand"
        )
        cost = sum(n * o.replica_price_per_hour for n, o in zip(counts, usable, strict=True))
        if cap + 1e-9 < req.demand_rps or od + 1e-9 < (1 - req.max_spot_fraction) * req.demand_rps:
            continue
        if sum(counts) < req.min_replicas:
            continue
        if best is None or cost < best:
            best = cost
    return best


offer_st = st.builds(
    lambda i, price, cap, dev, mem, free, spot: offer(
        f"p{i}",
        price,
        cap,
        devices_per_replica=dev,
        device_memory_gib=mem,
        free_devices=free,
        capacity_type="spot" if spot else "on-demand",
    ),
    st.integers(0, 10_000),
    st.floats(0.1, 10.0),
    st.floats(0.5, 8.0),
    st.integers(1, 2),
    st.sampled_from([16.0, 24.0, 80.0]),
    st.integers(0, 8),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(offer_st, min_size=1, max_size=3, unique_by=lambda o: o.pool),
    st.floats(0.0, 12.0),
    st.sampled_from([10.0, 20.0, 60.0]),
    st.sampled_from([0.0, 0.5, 1.0]),
)
def test_optimal_on_small_instances(offers: list[PoolOffer], demand: float, memory: float, spot: float) -> None:
    req = PlacementRequest("d", demand, memory, tuple(offers), max_spot_fraction=spot)
    plan = place(req)
    by_pool = {o.pool: o for o in offers}
    for pool, n in plan.replicas.items():
        o = by_pool[pool]
        assert n <= o.replica_limit, "exceeds a pool limit"
        assert o.fits(memory), "picked a pool the model does not fit"
    expected = brute_force(req)
    if expected is None:
        assert plan.status != "ok"
    else:
        assert plan.status in ("ok", "idle")
        assert plan.cost_per_hour == pytest.approx(expected, rel=1e-4, abs=1e-6)
