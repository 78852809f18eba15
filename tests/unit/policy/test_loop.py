"""The decision loop: every condition and reason it can give, the decision record, holding, promotion, state."""

from __future__ import annotations

from typing import Any

import pytest

from infleet.controller.loopstate import state_from_json, state_to_json
from infleet.policy import LoadObservation
from infleet.policy.capacity import RequestMix
from infleet.policy.fallback import PoolPods
from infleet.policy.loop import LoopSettings, LoopState, Observation, Plan, PoolReplicas, PoolView, decide
from infleet.policy.warm import WarmWorker
from tests.unit.controller.builders import make_infd, make_pool

T0 = 1_767_268_800.0
H100 = {
    "family": "nvidia-gpu", "product": "NVIDIA-H100-80GB-HBM3", "resourceName": "nvidia.com/gpu",
    "devicesPerNode": 8, "memoryGiBPerDevice": 80,
}  # fmt: skip


def pools(**free: int) -> dict[str, PoolView]:
    """An L4 spot pool (cheap, 2 rps per replica) and an H100 on-demand pool (dear, 10 rps)."""
    l4 = make_pool("l4-spot")
    h100 = make_pool(
        "h100",
        accelerator=H100,
        capacityType="on-demand",
        pricePerDeviceHourUSD=6.88,
        performanceProfiles=[{"modelClass": "llm-8b", "requestsPerSecond": 10, "latencyBoundMs": 2000}],
    )
    return {
        "l4-spot": PoolView(pool=l4, free_devices=free.get("l4", 16), room_replicas=free.get("l4", 16)),
        "h100": PoolView(pool=h100, free_devices=free.get("h100", 8), room_replicas=free.get("h100", 8)),
    }


def obs(infd: Any = None, *, now: float = T0, **over: Any) -> Observation:
    base: dict[str, Any] = {"now_s": now, "deployment": infd or make_infd(), "pools": pools()}
    base.update(over)
    return Observation(**base)


def cond(plan: Plan, type_: str) -> tuple[str, str]:
    c = next(c for c in plan.conditions if c.type == type_)
    return c.status, c.reason


def running(pool: str, n: int, *, ready: int | None = None) -> dict[str, PoolReplicas]:
    r = n if ready is None else ready
    return {pool: PoolReplicas(serving=n, pods=PoolPods(total=n, bound=n, ready=r))}


def test_first_decision_places_the_declared_load_cheapest_and_records_it() -> None:
    plan, state = decide(obs(), LoopState())
    assert dict(plan.serving) == {"l4-spot": 3}  # 5 rps at 2 rps per L4 replica
    assert cond(plan, "Placed") == ("True", "Placed")
    assert cond(plan, "Ready") == ("False", "ReplicasNotReady")
    assert cond(plan, "SLOMet") == ("Unknown", "ReplicasStarting")
    assert cond(plan, "WithinBudget") == ("True", "NoBudget")
    assert plan.decision is not None and (plan.decision.kind, plan.decision.reason) == ("Placement", "Replan")
    assert plan.devices_per_replica == {"l4-spot": 1, "h100": 1}
    row = next(r for r in plan.rows if r.pool == "l4-spot")
    assert (row.desired, row.replica_capacity_rps) == (3, 2.0)
    # The same situation again: nothing new to record.
    again, _ = decide(obs(replicas=running("l4-spot", 3)), state)
    assert again.decision is None
    assert cond(again, "Ready") == ("True", "ReplicasReady")
    assert cond(again, "SLOMet") == ("True", "CapacityCoversLoad")


def test_missing_pools_and_no_fitting_pool_are_explained() -> None:
    plan, _ = decide(obs(make_infd(placement={"pools": ["l4-spot", "ghost"]}), replicas=running("l4-spot", 2)),
                     LoopState())  # fmt: skip
    assert cond(plan, "Placed") == ("False", "PoolNotFound")
    assert plan.touch_workloads is False  # a missing pool changes nothing: what serves keeps serving
    tight = make_infd(slo={"p99LatencyMs": 500, "throughput": {"requestsPerSecond": 5}})
    plan, _ = decide(obs(tight), LoopState())
    status, reason = cond(plan, "Placed")
    assert (status, reason) == ("False", "NoFittingPool")
    assert "profiled at p99 2000 ms, SLO is 500 ms" in next(c.message for c in plan.conditions if c.type == "Placed")
    assert dict(plan.serving) == {}
    assert cond(plan, "Ready") == ("False", "NotPlaced")


def test_no_fitting_pool_keeps_what_runs() -> None:
    tight = make_infd(slo={"p99LatencyMs": 500, "throughput": {"requestsPerSecond": 5}})
    plan, _ = decide(obs(tight, replicas=running("l4-spot", 2)), LoopState())
    assert dict(plan.serving) == {"l4-spot": 2}
    message = next(c.message for c in plan.conditions if c.type == "Placed")
    assert cond(plan, "Placed") == ("False", "NoFittingPool") and "best effort" in message


def test_budget_binding_and_capacity_shortfalls() -> None:
    over = make_infd(cost={"maxHourlyCostUSD": 0.5})  # 3 L4 replicas cost $1.38/h
    plan, _ = decide(obs(over), LoopState())
    assert cond(plan, "Placed") == ("True", "OverBudget")
    assert cond(plan, "WithinBudget") == ("False", "BudgetTooLow")
    assert cond(plan, "SLOMet") == ("False", "InsufficientCapacity")
    short = make_infd(slo={"p99LatencyMs": 2000, "throughput": {"requestsPerSecond": 500}}, scaling={"maxReplicas": 4})
    plan, _ = decide(obs(short), LoopState())
    assert cond(plan, "Placed") == ("False", "InsufficientCapacity")
    assert sum(plan.serving.values()) <= 4
    fine = make_infd(cost={"maxHourlyCostUSD": 10})
    plan, _ = decide(obs(fine), LoopState())
    assert cond(plan, "WithinBudget") == ("True", "WithinBudget")


def test_per_token_budget_without_a_declared_load_is_reported_not_ignored() -> None:
    infd = make_infd(slo={"p99LatencyMs": 2000}, cost={"maxCostPerMillionTokensUSD": 1.0})
    plan, _ = decide(obs(infd), LoopState())
    assert any(reason == "PerTokenBudgetUnbound" for _, reason, _ in plan.events)


def test_waiting_for_an_input_touches_nothing() -> None:
    plan, state = decide(obs(waiting_for="claim models is missing", replicas=running("l4-spot", 2)), LoopState())
    assert plan.touch_workloads is False
    assert cond(plan, "Placed") == ("False", "ModelClaimNotFound")
    assert state == LoopState()


def test_scale_up_on_load_promotes_warm_workers_first() -> None:
    infd = make_infd(scaling={"minReplicas": 1, "maxReplicas": 10})
    _, state = decide(obs(infd, replicas=running("l4-spot", 3)), LoopState())
    warm = (WarmWorker("w-old", "l4-spot", T0 - 600), WarmWorker("w-new", "l4-spot", T0 - 60))
    load = LoadObservation(time_s=T0 + 10, arrival_rate_rps=12.0, queue_depth=10, in_flight=6)
    plan, state = decide(obs(infd, now=T0 + 10, replicas=running("l4-spot", 3), warm_ready=warm, load=load), state)
    assert plan.decision is not None and (plan.decision.kind, plan.decision.reason) == ("ScaleUp", "Load")
    assert sum(plan.serving.values()) > 3
    assert plan.promote[:2] == ("w-old", "w-new")  # ready longest first


def test_scale_down_retires_promoted_workers_first() -> None:
    infd = make_infd(scaling={"minReplicas": 1, "maxReplicas": 10, "scaleDownStabilizationSeconds": 0})
    promoted = (WarmWorker("p-young", "l4-spot", T0 - 10), WarmWorker("p-old", "l4-spot", T0 - 900))
    state = LoopState()
    plan: Plan | None = None
    for i in range(30):  # load falls to almost nothing; the scale-down comes within bounded steps
        load = LoadObservation(time_s=T0 + 10 * i, arrival_rate_rps=0.2)
        plan, state = decide(obs(infd, now=T0 + 10 * i, replicas=running("l4-spot", 6), promoted=promoted, load=load),
                             state)  # fmt: skip
        if plan.retire:
            break
    assert plan is not None and plan.retire and plan.retire[0] == "p-young"
    assert plan.decision is not None and plan.decision.kind == "ScaleDown"


def test_a_missed_scrape_holds_instead_of_snapping_back_to_the_declared_load() -> None:
    infd = make_infd(scaling={"minReplicas": 1, "maxReplicas": 10})
    load = LoadObservation(time_s=T0, arrival_rate_rps=12.0, queue_depth=5)
    plan, state = decide(obs(infd, replicas=running("l4-spot", 3), load=load), LoopState())
    grown = dict(plan.serving)
    assert sum(grown.values()) > 3
    held, _ = decide(obs(infd, now=T0 + 10, replicas={p: running(p, n)[p] for p, n in grown.items()}), state)
    assert dict(held.serving) == grown


def test_saturated_pool_falls_back_with_an_event_and_holds_the_bound() -> None:
    infd = make_infd(slo={"p99LatencyMs": 2000, "throughput": {"requestsPerSecond": 8}}, scaling={"maxReplicas": 4},
                     placement={"fallbackAfterSeconds": 30})  # fmt: skip
    stuck = {"l4-spot": PoolReplicas(serving=4, pods=PoolPods(total=4, bound=1, ready=1, unschedulable=3,
                                                              unschedulable_since_s=T0 - 60))}  # fmt: skip
    plan, state = decide(obs(infd, replicas=stuck, pools=pools(l4=1)), LoopState(decided=True, target={"l4-spot": 4}))
    assert plan.decision is not None and (plan.decision.kind, plan.decision.reason) == ("Fallback", "PoolSaturated")
    assert any(reason == "PoolSaturated" for _, reason, _ in plan.events)
    assert plan.serving.get("h100", 0) >= 1
    assert sum(plan.serving.values()) <= 4
    assert "l4-spot" in state.saturated and next(r for r in plan.rows if r.pool == "l4-spot").saturated


def test_external_mode_pins_the_replicas_and_autoscaling_stays_out() -> None:
    infd = make_infd(slo={"p99LatencyMs": 2000}, scaling={"mode": "External", "replicas": 7, "maxReplicas": 5})
    load = LoadObservation(time_s=T0, arrival_rate_rps=100.0, queue_depth=50)
    plan, _ = decide(obs(infd, load=load), LoopState())
    assert sum(plan.serving.values()) == 5


def test_autoscale_off_uses_the_declared_load_only() -> None:
    load = LoadObservation(time_s=T0, arrival_rate_rps=100.0, queue_depth=50)
    plan, _ = decide(obs(load=load), LoopState(), LoopSettings(autoscale=False))
    assert dict(plan.serving) == {"l4-spot": 3}


@pytest.mark.parametrize("promote", [True, False])
def test_promotion_off_never_promotes(promote: bool) -> None:
    infd = make_infd(scaling={"minReplicas": 1, "maxReplicas": 10})
    warm = (WarmWorker("w", "l4-spot", T0),)
    load = LoadObservation(time_s=T0, arrival_rate_rps=12.0, queue_depth=10)
    plan, _ = decide(obs(infd, replicas=running("l4-spot", 3), warm_ready=warm, load=load), LoopState(),
                     LoopSettings(promote=promote))  # fmt: skip
    assert plan.promote == (("w",) if promote else ())


def test_the_carried_state_survives_its_json_and_a_restart_decides_the_same() -> None:
    infd = make_infd(scaling={"minReplicas": 1, "maxReplicas": 10}, warmPool={"mode": "Auto"})
    mix = RequestMix(mean_prompt=900, mean_gen=180, tail_prompt=3000, prompt_sq_mean=1.5e6)
    state = LoopState()
    replicas = running("l4-spot", 3)
    for i in range(12):
        load = LoadObservation(time_s=T0 + 10 * i, arrival_rate_rps=4.0 + i, queue_depth=i % 3, p99_latency_s=1.2)
        plan, state = decide(obs(infd, now=T0 + 10 * i, replicas=replicas, load=load, mix=mix), state)
        replicas = {p: running(p, n)[p] for p, n in plan.serving.items()}
    restored = state_from_json(state_to_json(state))
    assert restored == state
    final = LoadObservation(time_s=T0 + 130, arrival_rate_rps=20.0, queue_depth=4, p99_latency_s=1.9)
    here = decide(obs(infd, now=T0 + 130, replicas=replicas, load=final, mix=mix), state)
    there = decide(obs(infd, now=T0 + 130, replicas=replicas, load=final, mix=mix), restored)
    assert here == there
    assert state_from_json("not json") == LoopState()
    assert state_from_json(None) == LoopState()


def test_energy_and_cost_per_million_tokens_estimated_then_measured() -> None:
    from infleet.policy.efficiency import PoolUsage

    powered = pools()
    l4 = powered["l4-spot"].pool
    with_power = l4.model_copy(update={"spec": l4.spec.model_copy(update={"power": _power(50.0)})})
    powered["l4-spot"] = PoolView(pool=with_power, free_devices=16, room_replicas=16)
    mix = RequestMix(mean_prompt=1000, mean_gen=200, tail_prompt=3000)
    plan, state = decide(obs(pools=powered, mix=mix), LoopState())
    row = next(r for r in plan.rows if r.pool == "l4-spot")
    # 3 L4 replicas x 50 W for 5 rps x 200 tokens = 1,000 tokens/s: 150 W / 3.6M tokens per hour
    assert row.efficiency_source == "estimated"
    assert row.wh_per_million_tokens == pytest.approx(150 / (1000 * 3600) * 1e6)
    assert row.usd_per_million_tokens == pytest.approx(3 * 0.46 / (1000 * 3600) * 1e6)
    assert plan.efficiency is not None and plan.efficiency.source == "estimated"
    usage = {"l4-spot": PoolUsage(tokens_per_s=500.0, watts=120.0)}
    measured, _ = decide(obs(pools=powered, mix=mix, replicas=running("l4-spot", 3), usage=usage), state)
    mrow = next(r for r in measured.rows if r.pool == "l4-spot")
    assert mrow.efficiency_source == "measured"
    assert mrow.wh_per_million_tokens == pytest.approx(120 / (500 * 3600) * 1e6)
    no_energy = {"l4-spot": PoolUsage(tokens_per_s=500.0, watts=None)}
    half, _ = decide(obs(pools=pools(), replicas=running("l4-spot", 3), usage=no_energy), state)
    hrow = next(r for r in half.rows if r.pool == "l4-spot")
    assert hrow.efficiency_source == "estimated" and hrow.wh_per_million_tokens is None  # no power declared: none
    assert hrow.usd_per_million_tokens == pytest.approx(3 * 0.46 / (500 * 3600) * 1e6)


def _power(typical: float) -> Any:
    from infleet.api import PowerSpec

    return PowerSpec(typical_watts_per_device=typical)


def test_edited_replica_bounds_apply_while_the_load_holds() -> None:
    infd = make_infd(scaling={"minReplicas": 1, "maxReplicas": 10})
    load = LoadObservation(time_s=T0, arrival_rate_rps=1.0)
    plan, state = decide(obs(infd, replicas=running("l4-spot", 1), load=load), LoopState())
    assert sum(plan.serving.values()) == 1
    raised = make_infd(scaling={"minReplicas": 2, "maxReplicas": 10})
    load = LoadObservation(time_s=T0 + 10, arrival_rate_rps=1.0)
    plan, state = decide(obs(raised, now=T0 + 10, replicas=running("l4-spot", 1), load=load), state)
    assert sum(plan.serving.values()) == 2
    lowered = make_infd(scaling={"minReplicas": 1, "maxReplicas": 2})
    load = LoadObservation(time_s=T0 + 20, arrival_rate_rps=1.0)
    plan, _ = decide(obs(lowered, now=T0 + 20, replicas=running("l4-spot", 4), load=load), state)
    assert sum(plan.serving.values()) <= 2


def test_a_saturated_pool_at_max_replicas_falls_back_while_load_is_measured() -> None:
    """All replicas unschedulable on a saturated pool at maxReplicas: the autoscaler must not hold them there
    (before the fix it did, every measured period, and the deployment served nothing until the pool came back)."""
    infd = make_infd(slo={"p99LatencyMs": 2000}, scaling={"minReplicas": 2, "maxReplicas": 3},
                     placement={"fallbackAfterSeconds": 5})  # fmt: skip
    _, state = decide(obs(infd, replicas=running("l4-spot", 3),
                          load=LoadObservation(time_s=T0, arrival_rate_rps=3.0, queue_depth=0)), LoopState())
    stuck = {"l4-spot": PoolReplicas(serving=3, pods=PoolPods(total=3, bound=0, unschedulable=3,
                                                              unschedulable_since_s=T0))}  # fmt: skip
    for i in range(3):
        now = T0 + 10 + 2 * i
        load = LoadObservation(time_s=now, arrival_rate_rps=3.0, queue_depth=9)
        plan, state = decide(obs(infd, now=now, replicas=stuck, pools=pools(l4=0), load=load), state)
        assert plan.serving.get("l4-spot", 0) == 0 and plan.serving.get("h100", 0) >= 1, plan.serving
        assert sum(plan.serving.values()) <= 3
