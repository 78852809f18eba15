from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from infleet.controller.metrics import OperatorMetrics


def value(m: OperatorMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_names_and_labels_match_the_contract() -> None:
    m = OperatorMetrics()
    m.observe_reconcile("InferenceDeployment", "success", 0.2)
    m.set_deployment("ns", "chat", {"l4": {"desired": 2, "ready": 1, "warm": 1}}, 1.5, {"p99": 2.0})
    assert value(m, "infleet_reconcile_total", kind="InferenceDeployment", result="success") == 1
    assert value(m, "infleet_reconcile_duration_seconds_count", kind="InferenceDeployment") == 1
    labels = {"namespace": "ns", "deployment": "chat", "pool": "l4"}
    assert value(m, "infleet_deployment_replicas", **labels, state="desired") == 2
    assert value(m, "infleet_deployment_replicas", **labels, state="ready") == 1
    assert value(m, "infleet_deployment_replicas", **labels, state="warm") == 1
    assert value(m, "infleet_deployment_cost_per_hour_usd", namespace="ns", deployment="chat") == 1.5
    assert value(m, "infleet_deployment_slo_latency_target_seconds", namespace="ns", deployment="chat", slo="p99") == 2
    assert value(m, "infleet_fleet_cost_per_hour_usd") == 1.5


def test_fleet_cost_sums_deployments_and_forgets_deleted_ones() -> None:
    m = OperatorMetrics()
    m.set_deployment("ns", "a", {"l4": {"desired": 1}}, 1.0, {})
    m.set_deployment("ns", "b", {"h100": {"desired": 1}}, 7.0, {})
    assert value(m, "infleet_fleet_cost_per_hour_usd") == 8.0
    m.set_deployment("ns", "a", {"cpu": {"desired": 1}}, 0.5, {})  # moved pools: the l4 series goes
    assert value(m, "infleet_deployment_replicas", namespace="ns", deployment="a", pool="l4", state="desired") is None
    m.forget_deployment("ns", "b")
    assert value(m, "infleet_fleet_cost_per_hour_usd") == 0.5
    assert value(m, "infleet_deployment_cost_per_hour_usd", namespace="ns", deployment="b") is None


def test_scale_events_count_direction_and_ignore_no_change() -> None:
    m = OperatorMetrics()
    m.count_scale("ns", "a", "l4", 1, 3)
    m.count_scale("ns", "a", "l4", 3, 3)
    m.count_scale("ns", "a", "l4", 3, 0)
    assert value(m, "infleet_scale_events_total", namespace="ns", deployment="a", pool="l4", direction="up") == 1
    assert value(m, "infleet_scale_events_total", namespace="ns", deployment="a", pool="l4", direction="down") == 1


def test_unknown_result_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown reconcile result"):
        OperatorMetrics().observe_reconcile("X", "meh", 1.0)


def test_pool_info_names_what_each_pool_is_and_follows_changes() -> None:
    m = OperatorMetrics()
    m.set_pool_info("h100-spot", "nvidia-gpu", "NVIDIA-H100-80GB-HBM3", "spot")
    m.set_pool_info("h100-spot", "nvidia-gpu", "NVIDIA-H100-80GB-HBM3", "spot")  # every timer tick: still one
    info = {"pool": "h100-spot", "family": "nvidia-gpu", "product": "NVIDIA-H100-80GB-HBM3", "capacity_type": "spot"}
    assert value(m, "infleet_pool_info", **info) == 1
    m.set_pool_info("h100-spot", "nvidia-gpu", "NVIDIA-H200", "spot")  # recreated as other hardware
    assert value(m, "infleet_pool_info", **info) is None
    assert value(m, "infleet_pool_info", **{**info, "product": "NVIDIA-H200"}) == 1
    m.pool_saturated.labels(pool="h100-spot").set(1)
    m.forget_pool("h100-spot")
    assert value(m, "infleet_pool_info", **{**info, "product": "NVIDIA-H200"}) is None
    assert value(m, "infleet_pool_saturated", pool="h100-spot") is None
    m.forget_pool("never-seen")  # no error


def test_efficiency_series_per_pool_and_removed_when_not_reported_again() -> None:
    m = OperatorMetrics()
    m.set_efficiency(
        "ns", "chat", [("l4", "nvidia-gpu", "estimated", 41.7, 0.38), ("cpu", "cpu", "measured", None, 1.2)]
    )
    text = generate_latest(m.registry).decode()
    series = 'deployment="chat",family="nvidia-gpu",namespace="ns",pool="l4",source="estimated"} 41.7'
    assert "infleet_deployment_energy_wh_per_million_tokens{" + series in text
    assert 'pool="cpu"' in text.split("infleet_deployment_cost_usd_per_million_tokens")[-1]
    m.set_efficiency("ns", "chat", [("l4", "nvidia-gpu", "measured", 40.0, 0.35)])
    text = generate_latest(m.registry).decode()
    assert 'source="estimated"' not in text and 'pool="cpu"' not in text
    m.forget_deployment("ns", "chat")
    assert "per_million_tokens{" not in generate_latest(m.registry).decode()
