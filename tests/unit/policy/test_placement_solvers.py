"""Placement solvers: which path produced a plan, its certified gap, warm starts, and the exact search's limits."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.policy import PlacementRequest, PoolOffer, place, place_fleet
from infleet.policy.placement_exact import Subproblem, solve_exact


def offer(name: str, price: float, cap: float, **kw: object) -> PoolOffer:
    base: dict[str, object] = {
        "accelerator": "gpu",
        "capacity_type": "on-demand",
        "price_per_device_hour": price,
        "devices_per_replica": 1,
        "device_memory_gib": 80.0,
        "free_devices": 64,
        "replica_capacity_rps": cap,
    }
    base.update(kw)
    return PoolOffer(pool=name, **base)  # type: ignore[arg-type]


def random_fleet(n: int, seed: int, pools: int = 4) -> tuple[list[PlacementRequest], dict[str, int]]:
    rng = random.Random(seed)
    names = [f"p{j}" for j in range(pools)]
    prices = [rng.uniform(0.3, 5.0) for _ in names]
    kinds = ["on-demand"] + [rng.choice(["on-demand", "spot"]) for _ in names[1:]]
    requests = []
    for i in range(n):
        offers = tuple(
            offer(p, pr, rng.uniform(0.5, 10.0), capacity_type=k) for p, pr, k in zip(names, prices, kinds, strict=True)
        )
        requests.append(
            PlacementRequest(f"d{i}", rng.uniform(0, 20), 10.0, offers, max_spot_fraction=rng.choice([0.5, 1.0]))
        )
    return requests, {p: rng.randint(2, 3 * n) for p in names}


def test_one_deployment_is_exact_with_no_gap() -> None:
    fleet = place_fleet([PlacementRequest("d", 11.0, 16.0, (offer("big", 6.0, 10.0), offer("small", 1.0, 1.5)))])
    plan = fleet.plans["d"]
    assert plan.solver == "exact"
    assert plan.mip_gap == 0.0
    assert fleet.mip_gap == 0.0
    assert fleet.lower_bound_per_hour == pytest.approx(plan.cost_per_hour) == pytest.approx(7.0)


def test_binding_shared_devices_are_decomposed_with_a_certified_gap() -> None:
    offers = (offer("cheap", 1.0, 1.0), offer("dear", 3.0, 1.0))
    reqs = [PlacementRequest(f"d{i}", 3.0, 16.0, offers) for i in range(3)]
    fleet = place_fleet(reqs, shared_free_devices={"cheap": 4, "dear": 64})
    assert {p.solver for p in fleet.plans.values()} == {"decomposed"}
    assert sum(p.replicas.get("cheap", 0) for p in fleet.plans.values()) <= 4
    assert fleet.cost_per_hour == pytest.approx(4 * 1.0 + 5 * 3.0)
    assert fleet.lower_bound_per_hour <= fleet.cost_per_hour + 1e-9
    assert fleet.mip_gap == pytest.approx((fleet.cost_per_hour - fleet.lower_bound_per_hour) / fleet.cost_per_hour)


def test_shared_devices_that_do_not_bind_leave_each_deployment_exact() -> None:
    reqs, _ = random_fleet(5, seed=1)
    fleet = place_fleet(reqs, shared_free_devices={p.pool: 10_000 for p in reqs[0].offers})
    alone = sum(place(r).cost_per_hour for r in reqs)
    assert {p.solver for p in fleet.plans.values()} == {"exact"}
    assert fleet.cost_per_hour == pytest.approx(alone)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 8), st.integers(0, 10_000))
def test_decomposed_bound_and_plan_bracket_the_joint_optimum(n: int, seed: int) -> None:
    reqs, shared = random_fleet(n, seed)
    joint = place_fleet(reqs, shared_free_devices=shared, method="joint", time_limit_s=30)
    dec = place_fleet(reqs, shared_free_devices=shared)
    for pool, used in dec.devices_used.items():
        assert used <= shared[pool], "decomposed plan exceeds a shared pool"
    if all(p.solver == "milp" for p in joint.plans.values()) and all(p.status == "ok" for p in joint.plans.values()):
        assert dec.lower_bound_per_hour <= joint.cost_per_hour * (1 + 1e-6) + 1e-6
        assert dec.cost_per_hour >= joint.cost_per_hour * (1 - 1e-6) - 1e-6
        assert all(p.status == "ok" for p in dec.plans.values())


def test_joint_milp_at_its_time_limit_says_so_with_its_gap() -> None:
    reqs, shared = random_fleet(300, seed=7, pools=12)
    fleet = place_fleet(reqs, shared_free_devices=shared, method="joint", time_limit_s=0.3)
    solvers = {p.solver for p in fleet.plans.values()}
    assert solvers <= {"milp-time-limit", "greedy"}
    assert 0.0 < fleet.mip_gap <= 1.0
    assert fleet.lower_bound_per_hour < fleet.cost_per_hour
    assert all(p.mip_gap == pytest.approx(fleet.mip_gap) for p in fleet.plans.values())


def test_previous_plan_is_kept_on_a_tie_and_ignored_when_infeasible() -> None:
    req = PlacementRequest("d", 2.0, 16.0, (offer("a", 1.0, 1.0), offer("b", 1.0, 1.0)))
    fresh = place(req)
    other = "b" if fresh.replicas == {"a": 2} else "a"
    assert place(req, previous={other: 2}).replicas == {other: 2}
    assert place(req, previous={other: 1}).replicas == fresh.replicas  # too small: not a plan, not kept
    cheaper = PlacementRequest("d", 2.0, 16.0, (offer("a", 1.0, 1.0), offer("b", 0.5, 1.0)))
    assert place(cheaper, previous={"a": 2}).replicas == {"b": 2}  # a better plan still wins


def test_joint_method_uses_the_previous_plan_as_a_cutoff() -> None:
    reqs, shared = random_fleet(6, seed=3)
    best = place_fleet(reqs, shared_free_devices=shared, method="joint", time_limit_s=30)
    previous = {name: dict(p.replicas) for name, p in best.plans.items()}
    again = place_fleet(reqs, shared_free_devices=shared, method="joint", time_limit_s=30, previous=previous)
    assert again.cost_per_hour == pytest.approx(best.cost_per_hour)
    assert {p.solver for p in again.plans.values()} <= {"milp", "previous"}


def test_bad_method_and_time_limit_are_rejected() -> None:
    req = PlacementRequest("d", 1.0, 16.0, (offer("a", 1.0, 1.0),))
    with pytest.raises(ValueError, match="method"):
        place_fleet([req], method="anneal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time_limit_s"):
        place(req, time_limit_s=0)


def test_exact_search_reports_its_node_limit() -> None:
    sub = Subproblem(
        cost=(1.0, 1.1, 1.2),
        price=(1.0, 1.1, 1.2),
        capacity=(1.3, 1.7, 2.9),
        on_demand=(True, True, False),
        upper=(50, 50, 50),
        demand=40.0,
        on_demand_demand=10.0,
    )
    limited = solve_exact(sub, node_limit=3)
    assert not limited.proven
    full = solve_exact(sub)
    assert full.proven
    assert full.x is not None
    assert sub.feasible(full.x)
    assert solve_exact(sub, incumbent=full.x).objective == pytest.approx(full.objective)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 100_000), st.sampled_from([0.0, 0.5, 1.0]), st.integers(0, 3), st.booleans())
def test_exact_search_matches_highs_on_twelve_pools(seed: int, spot: float, minimum: int, capped: bool) -> None:
    rng = random.Random(seed)
    offers = tuple(
        offer(
            f"p{j}",
            rng.uniform(0.2, 7.0),
            rng.uniform(0.5, 20.0),
            capacity_type="spot" if j % 2 else "on-demand",
            devices_per_replica=rng.choice([1, 2, 4]),
            free_devices=rng.randint(0, 200),
        )
        for j in range(12)
    )
    req = PlacementRequest(
        "d",
        rng.uniform(0, 60),
        10.0,
        offers,
        max_spot_fraction=spot,
        min_replicas=minimum,
        max_replicas=rng.randint(minimum, 40) if capped else None,
        budget_per_hour=rng.uniform(5, 80) if capped else None,
    )
    ours = place(req)
    highs = place_fleet([req], method="joint", time_limit_s=30).plans["d"]
    assert ours.solver in ("exact", "milp-best-effort", "none")  # none: no pool offers a single replica
    assert ours.solver != "none" or not ours.replicas
    assert ours.status == highs.status
    if highs.solver == "milp":
        assert ours.cost_per_hour == pytest.approx(highs.cost_per_hour, rel=1e-6, abs=1e-9)


def test_a_fleet_keeps_its_previous_plan_when_nothing_is_cheaper() -> None:
    offers = (offer("cheap", 1.0, 1.0), offer("dear", 3.0, 1.0))
    reqs = [PlacementRequest(f"d{i}", 3.0, 16.0, offers) for i in range(3)]
    shared = {"cheap": 4, "dear": 64}
    optimum = place_fleet(reqs, shared_free_devices=shared, method="joint")
    previous = {name: dict(p.replicas) for name, p in optimum.plans.items()}
    kept = place_fleet(reqs, shared_free_devices=shared, previous=previous)
    assert {p.solver for p in kept.plans.values()} == {"previous"}
    assert {n: dict(p.replicas) for n, p in kept.plans.items()} == previous
    assert kept.lower_bound_per_hour <= kept.cost_per_hour


def test_best_effort_is_proven_and_says_so() -> None:
    offers = (offer("a", 1.0, 1.0, max_replicas=3), offer("b", 2.0, 1.0, free_devices=2))
    plan = place(PlacementRequest("d", 10.0, 16.0, offers))
    assert plan.solver == "milp-best-effort"
    assert plan.status == "insufficient_capacity"
    assert plan.mip_gap == 0.0
