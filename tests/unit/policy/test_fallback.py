from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from infleet.policy import PoolOffer
from infleet.policy.fallback import PoolPods, Saturation, cap_saturated, hold_serving, update_saturation

NOW = 1_767_268_800.0
AFTER = 30.0


def test_pool_saturates_only_after_pods_stay_unschedulable_past_the_deadline() -> None:
    young = {"h100": PoolPods(total=3, bound=1, unschedulable=2, unschedulable_since_s=NOW - 10)}
    assert update_saturation({}, young, {"h100": 0}, NOW, AFTER) == {}
    old = {"h100": PoolPods(total=3, bound=1, unschedulable=2, unschedulable_since_s=NOW - 31)}
    sat = update_saturation({}, old, {"h100": 0}, NOW, AFTER)
    assert list(sat) == ["h100"]
    assert "2 replica(s) unschedulable for 31s" in sat["h100"].message


def test_saturation_persists_without_room_and_lifts_when_room_returns() -> None:
    before = {"h100": Saturation(since_s=NOW - 300, message="full")}
    calm = {"h100": PoolPods(total=1, bound=1, ready=1)}
    assert update_saturation(before, calm, {"h100": 0}, NOW, AFTER) == before
    assert update_saturation(before, calm, {"h100": 2}, NOW, AFTER) == {}


def test_saturated_pool_is_capped_at_what_it_actually_holds() -> None:
    offers = (
        PoolOffer("h100", "H100", "on-demand", 6.88, 1, 80, 16, 10.0),
        PoolOffer("l4", "L4", "spot", 0.46, 1, 22, 8, 2.0),
    )
    capped = cap_saturated(
        offers, {"h100": Saturation(since_s=NOW, message="full")}, {"h100": PoolPods(total=3, bound=1)}
    )
    assert capped[0].max_replicas == 1
    assert capped[1] == offers[1]


def test_fallback_drops_pending_replicas_at_once() -> None:
    # h100 had 3 (1 ready, 2 pending); plan now wants h100=1, l4=2.
    desired = hold_serving({"h100": 1, "l4": 2}, {"h100": 3}, {"h100": 1}, {"h100": 6.88, "l4": 0.46})
    assert desired == {"h100": 1, "l4": 2}


def test_moving_back_keeps_ready_replicas_until_the_cheaper_ones_are_ready() -> None:
    price = {"cheap": 1.0, "dear": 5.0}
    # Target: all 3 on cheap. Nothing ready on cheap yet: dear keeps its 2 ready replicas.
    assert hold_serving({"cheap": 3}, {"cheap": 1, "dear": 2}, {"cheap": 1, "dear": 2}, price) == {
        "cheap": 3,
        "dear": 2,
    }
    # One more ready on cheap: one dear replica may go.
    assert hold_serving({"cheap": 3}, {"cheap": 3, "dear": 2}, {"cheap": 2, "dear": 2}, price) == {
        "cheap": 3,
        "dear": 1,
    }
    # All ready on cheap: dear goes away.
    assert hold_serving({"cheap": 3}, {"cheap": 3, "dear": 1}, {"cheap": 3, "dear": 1}, price) == {"cheap": 3}


def test_scale_down_sheds_the_most_expensive_ready_replicas_first() -> None:
    price = {"a": 1.0, "b": 3.0}
    got = hold_serving({"a": 1, "b": 1}, {"a": 2, "b": 2}, {"a": 2, "b": 2}, price)
    assert got == {"a": 1, "b": 1}
    got = hold_serving({"a": 2}, {"a": 2, "b": 2}, {"a": 2, "b": 1}, price)
    assert got == {"a": 2}  # one not-ready b dropped, then the ready one (3 ready > target 2)


def test_the_way_back_never_exceeds_max_replicas_and_still_progresses() -> None:
    """Fallback to a dear pool, then the cheap one has room again: a rolling move within maxReplicas=5."""
    price = {"cheap": 1.0, "dear": 5.0}
    current, ready = {"dear": 5}, {"dear": 5}
    moves = 0
    while current != {"cheap": 5} and moves < 20:
        desired = hold_serving({"cheap": 5}, current, ready, price, max_total=5)
        assert sum(desired.values()) <= 5
        current = desired
        ready = dict(desired)  # the next decision finds every replica ready
        moves += 1
    assert current == {"cheap": 5}


@given(
    target=st.dictionaries(st.sampled_from("abc"), st.integers(0, 6), max_size=3),
    current=st.dictionaries(st.sampled_from("abc"), st.integers(0, 6), max_size=3),
    ready_share=st.floats(0, 1),
    bound=st.integers(1, 8),
)
def test_serving_replicas_never_exceed_the_bound(
    target: dict[str, int], current: dict[str, int], ready_share: float, bound: int
) -> None:
    # The loop only ever asks for a target within the bound, and what runs came from earlier bounded decisions.
    target = _clip(target, bound)
    current = _clip(current, bound)
    ready = {p: int(n * ready_share) for p, n in current.items()}
    desired = hold_serving(target, current, ready, {"a": 1.0, "b": 2.0, "c": 3.0}, max_total=bound)
    assert sum(desired.values()) <= bound


def _clip(replicas: dict[str, int], bound: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for pool, n in sorted(replicas.items()):
        take = min(n, bound - sum(out.values()))
        if take > 0:
            out[pool] = take
    return out
