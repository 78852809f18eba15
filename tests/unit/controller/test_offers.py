from __future__ import annotations

from infleet.policy import place
from infleet.policy.from_api import build_request, candidate_pools, choose
from tests.unit.controller.builders import make_infd, make_pool


def test_profile_by_model_class_gives_capacity_and_devices() -> None:
    c = choose(make_pool(), make_infd())
    assert c.why_not == ""
    assert c.capacity_rps == 2
    assert c.devices_per_replica == 1


def test_profile_looser_than_the_slo_cannot_promise_it() -> None:
    c = choose(make_pool(), make_infd(slo={"p99LatencyMs": 1000, "throughput": {"requestsPerSecond": 5}}))
    assert c.capacity_rps == 0
    assert "profiled at p99 2000 ms, SLO is 1000 ms" in c.why_not


def test_model_too_big_for_the_node_is_explained() -> None:
    big = make_infd(
        model={
            "name": "llama-405b",
            "source": "s3://m",
            "parametersBillions": 405,
            "families": ["nvidia-gpu"],
            "modelClass": "llm-8b",
        }
    )
    c = choose(make_pool(performanceProfiles=[]), big)
    assert c.capacity_rps == 0
    assert "devices per replica, nodes have 4" in c.why_not


def test_no_profile_and_declared_load_means_unusable() -> None:
    c = choose(make_pool(performanceProfiles=[]), make_infd())
    assert c.capacity_rps == 0
    assert c.why_not == "no performance profile for this model"


def test_candidates_respect_names_and_families_and_report_missing_pools() -> None:
    pools = {"l4-spot": make_pool("l4-spot"), "h100": make_pool("h100")}
    infd = make_infd(placement={"pools": ["l4-spot", "ghost"], "preference": ["l4-spot"]})
    chosen, missing = candidate_pools(infd, pools)
    assert [p.metadata.name for p in chosen] == ["l4-spot"]
    assert missing == ["ghost"]
    cpu_only = make_infd(placement={"families": ["cpu"]})
    assert candidate_pools(cpu_only, pools) == ([], [])


def test_request_carries_budget_spot_policy_and_free_devices() -> None:
    pools = [make_pool("l4-spot"), make_pool("l4-od", capacityType="on-demand", pricePerDeviceHourUSD=1.15)]
    infd = make_infd(cost={"maxHourlyCostUSD": 10}, placement={"spot": "Never"})
    req = build_request(infd, [choose(p, infd) for p in pools], {"l4-spot": 8, "l4-od": 8}, {})
    assert req.budget_per_hour == 10
    assert req.max_spot_fraction == 0.0
    assert req.demand_rps == 5
    plan = place(req)
    assert plan.status == "ok"
    assert plan.replicas == {"l4-od": 3}


def test_external_scaling_pins_the_replica_count_within_bounds() -> None:
    infd = make_infd(slo={"p99LatencyMs": 2000}, scaling={"mode": "External", "replicas": 9, "maxReplicas": 5})
    pool = make_pool()
    req = build_request(infd, [choose(pool, infd)], {"l4-spot": 8}, {}, replicas_override=9)
    assert (req.min_replicas, req.max_replicas) == (5, 5)
    assert place(req).replicas == {"l4-spot": 5}
