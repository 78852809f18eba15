from __future__ import annotations

from infleet.policy import place
from infleet.policy.capacity import DEFAULT_MIX, RequestMix, estimated_capacity_rps
from infleet.policy.from_api import build_request, candidate_pools, choose, declared_demand_rps, hourly_budget
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


def test_no_profile_means_the_service_model_estimate_never_a_nominal_default() -> None:
    pool, infd = make_pool(performanceProfiles=[]), make_infd()
    c = choose(pool, infd)
    assert c.why_not == ""
    # The roofline's figure for an 8B model on an L4 and a chat-like mix, whatever it is, not a nominal "1.0"
    assert c.capacity_rps == estimated_capacity_rps(pool, infd, 1, DEFAULT_MIX)[0] > 0
    longer = choose(
        make_pool(performanceProfiles=[]), make_infd(), RequestMix(mean_prompt=8000, mean_gen=400, tail_prompt=30000)
    )
    assert 0 < longer.capacity_rps < c.capacity_rps


def test_no_profile_and_unknown_product_is_explained() -> None:
    pool = make_pool(
        performanceProfiles=[],
        accelerator={
            "family": "nvidia-gpu",
            "product": "NVIDIA-B300",
            "resourceName": "nvidia.com/gpu",
            "devicesPerNode": 8,
            "memoryGiBPerDevice": 270,
        },
    )
    c = choose(pool, make_infd())
    assert c.capacity_rps == 0
    assert "no service figures for NVIDIA-B300" in c.why_not


def test_tokens_per_second_become_requests_per_second() -> None:
    tps = make_infd(
        slo={"p99LatencyMs": 2000, "throughput": {"tokensPerSecond": 2100}}, scaling={"maxReplicas": 10}
    )
    mix = RequestMix(mean_prompt=1000, mean_gen=210, tail_prompt=4000)
    assert declared_demand_rps(tps, mix) == 10.0
    pool = make_pool(performanceProfiles=[{"modelClass": "llm-8b", "tokensPerSecond": 420, "latencyBoundMs": 2000}])
    assert choose(pool, tps, mix).capacity_rps == 2.0  # 420 tokens/s at 210 tokens per request
    req = build_request(tps, [choose(pool, tps, mix)], {"l4-spot": 16}, {}, mix=mix)
    assert place(req).replicas == {"l4-spot": 5}


def test_per_token_budget_becomes_an_hourly_cap_at_the_declared_load() -> None:
    mix = RequestMix(mean_prompt=1000, mean_gen=200, tail_prompt=4000)
    infd = make_infd(cost={"maxCostPerMillionTokensUSD": 1.0, "maxHourlyCostUSD": 50})
    # 5 rps x 200 tokens x 3600 s = 3.6M tokens/h -> $3.60/h, tighter than $50/h
    assert hourly_budget(infd, mix) == 3.6
    assert hourly_budget(make_infd(slo={"p99LatencyMs": 2000}, cost={"maxCostPerMillionTokensUSD": 1.0}), mix) is None


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
