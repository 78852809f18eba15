"""The routing rule: load normalised by capacity, never a non-serving replica, bounded-load prefix affinity."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.policy.routing import ReplicaLoad, RoutingConfig, WorkerReading, has_room, route

CFG = RoutingConfig()


def replica(rid: str, *, in_flight: int = 0, cap: float | None = None, state: str = "serving",
            limit: int = 8, worker: WorkerReading | None = None) -> ReplicaLoad:
    return ReplicaLoad(replica_id=rid, pool="p-" + rid, state=state, in_flight=in_flight,  # type: ignore[arg-type]
                       max_in_flight=limit, capacity_rps=cap, worker=worker)


def test_least_outstanding_when_capacities_are_unknown() -> None:
    picked = route([replica("a", in_flight=3), replica("b", in_flight=1), replica("c", in_flight=2)],
                   now_s=0.0, config=CFG)
    assert picked is not None
    assert picked.replica_id == "b"
    assert picked.reason == "least_load"


def test_a_fast_replica_takes_more_work_than_a_slow_one() -> None:
    # 4 outstanding on a 10 rps replica finishes before 1 outstanding on a 1 rps one.
    fast, slow = replica("fast", in_flight=4, cap=10.0), replica("slow", in_flight=1, cap=1.0)
    picked = route([fast, slow], now_s=0.0, config=CFG)
    assert picked is not None
    assert picked.replica_id == "fast"


def test_split_follows_capacity_when_requests_pile_up() -> None:
    """Routing 40 requests that never finish: the in-flight split tracks the 3:1 capacity ratio."""
    counts = {"fast": 0, "slow": 0}
    for _ in range(40):
        reps = [replica(k, in_flight=v, cap=3.0 if k == "fast" else 1.0, limit=100) for k, v in counts.items()]
        picked = route(reps, now_s=0.0, config=CFG)
        assert picked is not None
        counts[picked.replica_id] += 1
    assert counts == {"fast": 30, "slow": 10}


@pytest.mark.parametrize("state", ["warm", "draining", "unready"])
def test_never_a_replica_that_is_not_serving(state: str) -> None:
    idle_but_not_serving = replica("x", state=state, cap=100.0)
    busy = replica("busy", in_flight=7)
    picked = route([idle_but_not_serving, busy], now_s=0.0, config=CFG)
    assert picked is not None
    assert picked.replica_id == "busy"
    assert route([idle_but_not_serving], now_s=0.0, config=CFG) is None


def test_full_replicas_leave_the_caller_to_queue() -> None:
    assert route([replica("a", in_flight=8), replica("b", in_flight=8)], now_s=0.0, config=CFG) is None


def test_excluded_replicas_are_skipped_for_a_retry() -> None:
    picked = route([replica("a"), replica("b", in_flight=5)], now_s=0.0, config=CFG, exclude={"a"})
    assert picked is not None
    assert picked.replica_id == "b"


def test_a_fresh_worker_reading_counts_work_other_gateways_sent() -> None:
    busy_elsewhere = replica("a", worker=WorkerReading(at_s=9.5, waiting=5, running=2))
    other = replica("b", in_flight=2)
    picked = route([busy_elsewhere, other], now_s=10.0, config=CFG)
    assert picked is not None
    assert picked.replica_id == "b"


def test_a_stale_worker_reading_is_ignored() -> None:
    stale = replica("a", worker=WorkerReading(at_s=0.0, waiting=50, running=8))
    other = replica("b", in_flight=2)
    picked = route([stale, other], now_s=100.0, config=CFG)
    assert picked is not None
    assert picked.replica_id == "a"


def test_a_full_kv_cache_means_no_room() -> None:
    full = replica("a", in_flight=1, worker=WorkerReading(at_s=0.0, waiting=0, running=1, kv_usage=0.99))
    assert not has_room(full, 0.0, CFG)
    assert has_room(full, 10.0, CFG)  # once the reading is stale, only our own count matters


def test_prefix_affinity_is_sticky_and_spreads_keys() -> None:
    cfg = RoutingConfig(prefix_affinity=True)
    reps = [replica(f"r{i}") for i in range(4)]
    homes = {}
    for k in range(200):
        first = route(reps, now_s=0.0, config=cfg, prefix_key=f"system prompt {k}")
        again = route(reps, now_s=0.0, config=cfg, prefix_key=f"system prompt {k}")
        assert first is not None
        assert again is not None
        assert first.replica_id == again.replica_id
        assert first.reason == "affinity"
        homes[k] = first.replica_id
    spread = Counter(homes.values())
    assert len(spread) == 4
    assert min(spread.values()) >= 20  # 64 virtual nodes each: no replica starves


def test_a_hot_prefix_spills_over_within_the_load_bound() -> None:
    cfg = RoutingConfig(prefix_affinity=True, load_bound=1.25)
    counts = {f"r{i}": 0 for i in range(4)}
    reasons = Counter()
    for _ in range(40):
        reps = [replica(k, in_flight=v, limit=100) for k, v in counts.items()]
        picked = route(reps, now_s=0.0, config=cfg, prefix_key="the same long system prompt")
        assert picked is not None
        counts[picked.replica_id] += 1
        reasons[picked.reason] += 1
    assert max(counts.values()) <= 1.25 * 40 / 4 + 1
    assert reasons["affinity"] >= 10
    assert reasons["affinity_spill"] > 0


def test_removing_a_replica_only_moves_its_own_keys() -> None:
    cfg = RoutingConfig(prefix_affinity=True)
    four = [replica(f"r{i}") for i in range(4)]
    three = four[:3]
    moved = 0
    for k in range(300):
        before = route(four, now_s=0.0, config=cfg, prefix_key=str(k))
        after = route(three, now_s=0.0, config=cfg, prefix_key=str(k))
        assert before is not None
        assert after is not None
        if before.replica_id != "r3":
            moved += before.replica_id != after.replica_id
    assert moved == 0


def test_bad_config_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="load_bound"):
        RoutingConfig(load_bound=0.5)


replicas_st = st.lists(
    st.builds(
        lambda i, inf, cap, state, limit: replica(f"r{i}", in_flight=inf, cap=cap, state=state, limit=limit),
        st.integers(0, 1000), st.integers(0, 20), st.one_of(st.none(), st.floats(0.01, 100.0)),
        st.sampled_from(["serving", "warm", "draining", "unready"]), st.integers(1, 20),
    ),
    max_size=8, unique_by=lambda r: r.replica_id,
)


@settings(max_examples=300, deadline=None)
@given(replicas_st, st.booleans(), st.one_of(st.none(), st.text(max_size=20)))
def test_property_the_pick_is_serving_with_room_and_none_only_when_no_one_has_room(
        reps: list[ReplicaLoad], affinity: bool, key: str | None) -> None:
    cfg = RoutingConfig(prefix_affinity=affinity)
    picked = route(reps, now_s=0.0, config=cfg, prefix_key=key)
    eligible = [r for r in reps if r.state == "serving" and r.in_flight < r.max_in_flight]
    if not eligible:
        assert picked is None
        return
    assert picked is not None
    chosen = next(r for r in reps if r.replica_id == picked.replica_id)
    assert chosen in eligible
    if picked.reason == "least_load":
        best = min((r.in_flight + 1) / (r.capacity_rps or 1.0) for r in eligible)
        assert picked.score == pytest.approx(best)


@settings(max_examples=200, deadline=None)
@given(replicas_st, st.text(max_size=20))
def test_property_routing_is_deterministic(reps: list[ReplicaLoad], key: str) -> None:
    cfg = RoutingConfig(prefix_affinity=True)
    assert route(reps, now_s=1.0, config=cfg, prefix_key=key) == route(list(reps), now_s=1.0, config=cfg,
                                                                        prefix_key=key)
