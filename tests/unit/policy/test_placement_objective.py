"""Placement objective: cost, energy or carbon; the budget still bounds cost, and ties go to the cheaper plan."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.api import AcceleratorPool, InferenceDeployment, load_manifests
from infleet.policy import PlacementRequest, PoolOffer, place, place_fleet
from infleet.policy.from_api import placement_request


def offer(name: str, price: float, cap: float, watts: float | None, **kw: object) -> PoolOffer:
    base: dict[str, object] = {
        "accelerator": name,
        "capacity_type": "on-demand",
        "price_per_device_hour": price,
        "devices_per_replica": 1,
        "device_memory_gib": 24.0,
        "free_devices": 32,
        "replica_capacity_rps": cap,
        "watts_per_device": watts,
    }
    base.update(kw)
    return PoolOffer(pool=name, **base)  # type: ignore[arg-type]


# A CPU slice: cheapest per unit of capacity ($0.05 per rps) but 25 Wh per rps; an L4: $0.115 and 7.2 Wh per rps.
CPU = offer("cpu", 0.05, 1.0, 25.0)
L4 = offer("l4", 1.15, 10.0, 72.0)


def test_energy_objective_moves_from_the_cheap_hungry_cpu_to_the_l4() -> None:
    by_cost = place(PlacementRequest("d", 10.0, 8.0, (CPU, L4)))
    by_energy = place(PlacementRequest("d", 10.0, 8.0, (CPU, L4), objective="energy"))
    assert by_cost.replicas == {"cpu": 10}
    assert by_energy.replicas == {"l4": 1}
    assert by_energy.energy_wh_per_hour == pytest.approx(72.0)
    assert by_cost.energy_wh_per_hour == pytest.approx(250.0)
    assert by_energy.cost_per_hour > by_cost.cost_per_hour


def test_budget_still_bounds_cost_under_energy() -> None:
    plan = place(PlacementRequest("d", 10.0, 8.0, (CPU, L4), objective="energy", budget_per_hour=0.8))
    assert plan.cost_per_hour <= 0.8
    assert plan.status == "ok"
    assert plan.replicas == {"cpu": 10}


def test_equal_energy_goes_to_the_cheaper_pool() -> None:
    offers = (offer("dear", 2.0, 5.0, 100.0), offer("cheap", 1.0, 5.0, 100.0))
    assert place(PlacementRequest("d", 5.0, 8.0, offers, objective="energy")).replicas == {"cheap": 1}


def test_carbon_objective_follows_the_grid() -> None:
    coal = offer("coal", 1.0, 5.0, 100.0, carbon_g_per_kwh=800.0)
    hydro = offer("hydro", 1.5, 5.0, 100.0, carbon_g_per_kwh=30.0)
    assert place(PlacementRequest("d", 5.0, 8.0, (coal, hydro))).replicas == {"coal": 1}
    plan = place(PlacementRequest("d", 5.0, 8.0, (coal, hydro), objective="carbon"))
    assert plan.replicas == {"hydro": 1}
    assert plan.carbon_g_per_hour == pytest.approx(100.0 / 1000 * 30.0)


def test_pools_without_the_objectives_figures_are_not_used() -> None:
    unknown = offer("unknown", 0.01, 100.0, None)
    assert place(PlacementRequest("d", 10.0, 8.0, (unknown, L4), objective="energy")).replicas == {"l4": 1}
    plan = place(PlacementRequest("d", 10.0, 8.0, (unknown,), objective="energy"))
    assert plan.status == "no_fitting_pool"
    assert "power figures" in plan.reason
    no_grid = place(PlacementRequest("d", 10.0, 8.0, (L4,), objective="carbon"))
    assert no_grid.status == "no_fitting_pool"
    assert "carbon intensity" in no_grid.reason
    assert place(PlacementRequest("d", 10.0, 8.0, (unknown,))).energy_wh_per_hour is None


def test_bad_objective_and_power_are_rejected() -> None:
    with pytest.raises(ValueError, match="objective"):
        PlacementRequest("d", 1.0, 8.0, (L4,), objective="speed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="watts_per_device"):
        offer("x", 1.0, 1.0, -5.0)


def test_fleet_mixes_objectives_per_deployment() -> None:
    reqs = [
        PlacementRequest("green", 10.0, 8.0, (CPU, L4), objective="energy"),
        PlacementRequest("thrifty", 10.0, 8.0, (CPU, L4)),
    ]
    fleet = place_fleet(reqs, shared_free_devices={"cpu": 64, "l4": 64})
    assert fleet.plans["green"].replicas == {"l4": 1}
    assert fleet.plans["thrifty"].replicas == {"cpu": 10}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.1, 5.0), st.floats(0.5, 6.0), st.floats(10.0, 700.0), st.integers(0, 6)),
        min_size=1,
        max_size=3,
    ),
    st.floats(0.0, 12.0),
)
def test_energy_optimal_on_small_instances(pools: list[tuple[float, float, float, int]], demand: float) -> None:
    offers = tuple(offer(f"p{i}", pr, cap, w, free_devices=free) for i, (pr, cap, w, free) in enumerate(pools))
    plan = place(PlacementRequest("d", demand, 8.0, offers, objective="energy"))
    best: float | None = None
    for counts in itertools.product(*[range(o.free_devices + 1) for o in offers]):
        if sum(n * o.replica_capacity_rps for n, o in zip(counts, offers, strict=True)) + 1e-9 < demand:
            continue
        energy = sum(n * (o.watts_per_device or 0.0) for n, o in zip(counts, offers, strict=True))
        best = energy if best is None else min(best, energy)
    if best is None:
        assert plan.status != "ok"
    else:
        assert plan.energy_wh_per_hour == pytest.approx(best, rel=1e-3, abs=1e-6)


def test_the_api_objective_and_pool_power_reach_the_request() -> None:
    root = Path(__file__).resolve().parents[3] / "examples"
    docs = [
        m for f in sorted(root.glob("*.yaml")) if "apiVersion: infleet.io/" in f.read_text() for m in load_manifests(f)
    ]
    pools = [m for m in docs if isinstance(m, AcceleratorPool)]
    dep = next(m for m in docs if isinstance(m, InferenceDeployment) and m.metadata.name == "small-cpu-model")
    assert placement_request(dep, pools).objective == "cost"
    green = dep.model_copy(
        update={
            "spec": dep.spec.model_copy(
                update={"placement": dep.spec.placement.model_copy(update={"objective": "Energy"})}
            )
        }
    )
    request = placement_request(green, pools)
    assert request.objective == "energy"
    watts = {o.pool: o.watts_per_device for o in request.offers}
    assert watts["cpu-spot"] == pytest.approx(17.5)
    assert all(o.carbon_g_per_kwh is None for o in request.offers)  # the examples leave the grid unset
