from __future__ import annotations

from datetime import UTC, datetime

import pytest

from infleet.controller.snapshot import (
    admits,
    group_pods,
    node_usage,
    parse_quantity,
    pool_capacity,
    tolerates,
    unschedulable_since,
)
from tests.unit.controller.builders import make_pool, node, pod

MINE = {"app.kubernetes.io/managed-by": "infleet", "infleet.io/deployment": "chat"}


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", 0.5), ("2", 2.0), ("16Gi", 16 * 2**30), ("1k", 1000.0), (3, 3.0), ("1e3", 1000.0)],
)
def test_parse_quantity(text: str | int, value: float) -> None:
    assert parse_quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["", "abc", "5Qi", "1.2.3"])
def test_parse_quantity_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(bad)


def test_free_devices_count_whole_replicas_per_node_and_own_devices_as_free() -> None:
    pool = make_pool("l4-spot")
    nodes = [
        node("a", "l4-spot", {"nvidia.com/gpu": "4", "cpu": "48", "memory": "180Gi", "pods": "110"}),
        node("b", "l4-spot", {"nvidia.com/gpu": "4", "cpu": "48", "memory": "180Gi", "pods": "110"}),
        node("c", "other", {"nvidia.com/gpu": "4", "cpu": "48", "memory": "180Gi", "pods": "110"}),
        node("d", "l4-spot", {"nvidia.com/gpu": "4"}, cordoned=True),
    ]
    pods = [
        pod("x", node_name="a", requests={"nvidia.com/gpu": "3"}),  # someone else: 1 left on a
        pod("y", node_name="b", requests={"nvidia.com/gpu": "2"}, labels=MINE),  # ours: still ours to use
        pod("z", node_name="b", requests={"nvidia.com/gpu": "1"}, phase="Succeeded"),  # finished: frees devices
    ]
    usage = node_usage(nodes, pods, MINE, "ns")
    assert {u.name for u in usage} == {"a", "b", "c"}
    cap = pool_capacity(pool, usage, {"nvidia.com/gpu": 2.0}, devices_per_replica=2)
    assert cap.nodes == 2
    assert cap.allocatable_devices == 8
    assert cap.allocated_devices == 5
    # a: 1 free -> no 2-GPU replica; b: 4 usable by us -> 2 replicas' worth.
    assert cap.free_devices == 4
    # room for more replicas right now: a none, b 2 GPUs free -> 1.
    assert cap.room_replicas == 1


def test_room_counts_cpu_and_memory_not_just_devices() -> None:
    pool = make_pool("h100")
    nodes = [node("a", "h100", {"nvidia.com/gpu": "8", "cpu": "192", "memory": "2000Gi", "pods": "110"})]
    pods = [pod("filler", node_name="a", requests={"cpu": "192"})]
    cap = pool_capacity(pool, node_usage(nodes, pods, MINE, "ns"), {"nvidia.com/gpu": 1.0, "cpu": 1.0}, 1)
    assert cap.free_devices == 8  # the devices look free...
    assert cap.room_replicas == 0  # ...but no pod fits: this is what fallback is for


def test_max_devices_caps_what_one_deployment_may_take() -> None:
    pool = make_pool("l4-spot", maxDevices=6)
    nodes = [node(n, "l4-spot", {"nvidia.com/gpu": "4"}) for n in "ab"]
    cap = pool_capacity(
        pool, node_usage(nodes, [], MINE, "ns"), {"nvidia.com/gpu": 1.0}, 1, infleet_devices_elsewhere=4
    )
    assert cap.allocatable_devices == 6
    assert cap.free_devices == 2


def test_cpu_pool_devices_are_vcpu_slices() -> None:
    pool = make_pool(
        "cpu-spot",
        tolerations=[],
        accelerator={
            "family": "cpu",
            "product": "c7i",
            "resourceName": "cpu",
            "devicesPerNode": 4,
            "memoryGiBPerDevice": 15,
            "cpusPerDevice": 8,
        },
    )
    nodes = [node("a", "cpu-spot", {"cpu": "32", "memory": "60Gi", "pods": "110"})]
    pods = [pod("x", node_name="a", requests={"cpu": "8"})]
    cap = pool_capacity(pool, node_usage(nodes, pods, MINE, "ns"), {"cpu": 8.0}, 1)
    assert (cap.allocatable_devices, cap.allocated_devices, cap.free_devices, cap.room_replicas) == (4, 1, 3, 3)


def test_group_pods_tracks_the_earliest_unschedulable_time_per_pool() -> None:
    lab = {**MINE, "infleet.io/pool": "h100", "infleet.io/role": "serving"}
    pods = [
        pod("a", node_name="n1", labels=lab, ready=True),
        pod("b", labels=lab, unschedulable_at="2026-01-01T00:00:30Z"),
        pod("c", labels=lab, unschedulable_at="2026-01-01T00:00:10Z"),
        pod("d", labels=lab),  # pending, not yet judged by the scheduler
        pod("w", node_name="n1", labels={**lab, "infleet.io/role": "warm"}, ready=True),
    ]
    got = group_pods(pods)
    h = got.serving["h100"]
    assert (h.total, h.bound, h.ready, h.unschedulable) == (4, 1, 1, 2)
    assert h.unschedulable_since_s == datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC).timestamp()
    assert got.warm == {"h100": 1}


def test_bound_pod_is_never_unschedulable() -> None:
    p = pod("a", node_name="n1", unschedulable_at="2026-01-01T00:00:10Z")
    assert unschedulable_since(p) is None


def test_tolerations_match_taints_as_kubernetes_does() -> None:
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    assert tolerates({"key": "nvidia.com/gpu", "operator": "Exists"}, taint)
    assert tolerates({"key": "nvidia.com/gpu", "value": "present"}, taint)  # operator defaults to Equal
    assert not tolerates({"key": "nvidia.com/gpu", "value": "absent"}, taint)
    assert not tolerates({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}, taint)
    assert tolerates({"operator": "Exists"}, taint)  # no key: every taint
    assert not tolerates({"key": "other", "operator": "Exists"}, taint)


def test_a_pool_is_admitted_where_it_selects_and_tolerates_every_hard_taint() -> None:
    gpu = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    prefer = {"key": "spot", "effect": "PreferNoSchedule"}
    n = node("n1", "l4", {"nvidia.com/gpu": "4"})
    n["spec"]["taints"] = [gpu, prefer]
    selector = {"karpenter.sh/nodepool": "l4"}
    assert admits(selector, [{"key": "nvidia.com/gpu", "operator": "Exists"}], n)  # PreferNoSchedule only steers
    assert not admits(selector, [], n)
    assert not admits({"karpenter.sh/nodepool": "h100"}, [{"operator": "Exists"}], n)
