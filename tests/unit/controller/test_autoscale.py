"""Worker scrape -> LoadObservation -> the policy's scale_step, with a fake metrics source (no cluster)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from infleet.controller.autoscale import Autoscaling
from infleet.controller.scrape import (
    LoadSample,
    WorkerMetrics,
    observe,
    parse_worker_metrics,
    quantile_from_buckets,
)
from infleet.policy.from_api import build_request, choose
from tests.unit.controller.builders import make_infd, make_pool

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60)


def worker_page(waiting: int, running: int, latencies: list[float], status: str = "stop") -> str:
    """A /metrics page rendered by prometheus-client with the contract's names (docs/metrics.md)."""
    r = CollectorRegistry()
    Gauge("infleet_worker_num_requests_waiting", "", ["model"], registry=r).labels("m").set(waiting)
    Gauge("infleet_worker_num_requests_running", "", ["model"], registry=r).labels("m").set(running)
    c = Counter("infleet_worker_requests", "", ["model", "status"], registry=r)
    h = Histogram("infleet_worker_request_latency_seconds", "", ["model"], buckets=BUCKETS, registry=r)
    for x in latencies:
        c.labels("m", status).inc()
        h.labels("m").observe(x)
    return generate_latest(r).decode()


def test_parse_reads_the_contract_names() -> None:
    m = parse_worker_metrics(worker_page(3, 5, [0.2, 0.3, 1.2]))
    assert (m.waiting, m.running, m.requests_total) == (3, 5, 3)
    assert m.latency_buckets[0.25] == 1
    assert m.latency_buckets[1.5] == 3
    assert m.latency_buckets[float("inf")] == 3


def test_quantile_interpolates_within_the_bucket() -> None:
    buckets = {0.1: 0.0, 0.2: 100.0, float("inf"): 100.0}
    assert quantile_from_buckets(buckets, 0.5) == pytest.approx(0.15)
    assert quantile_from_buckets({0.1: 0.0, float("inf"): 0.0}, 0.99) is None


def test_observe_needs_two_samples_and_survives_counter_resets() -> None:
    a = LoadSample(10.0, 0, 0, 100, {1.0: 100, float("inf"): 100})
    b = LoadSample(20.0, 4, 2, 150, {1.0: 140, float("inf"): 150})
    assert observe(None, a) is None
    obs = observe(a, b)
    assert obs is not None
    assert obs.arrival_rate_rps == pytest.approx(5.0)
    assert (obs.queue_depth, obs.in_flight) == (4, 2)
    # 10 of the window's 50 requests took over 1 s: the p99 lies in +Inf, reported as the last finite bound
    # (what PromQL's histogram_quantile does).
    assert obs.p99_latency_s == pytest.approx(1.0)
    inside = observe(a, LoadSample(20.0, 0, 0, 200, {0.5: 50, 1.0: 200, float("inf"): 200}))
    assert inside is not None and inside.p99_latency_s is not None
    assert 0.5 < inside.p99_latency_s < 1.0
    restarted = LoadSample(30.0, 0, 0, 3, {1.0: 3, float("inf"): 3})
    again = observe(b, restarted)
    assert again is not None and again.arrival_rate_rps == 0.0


class FakeSource:
    """Returns scripted scrapes per pod name; pods it does not know answer nothing (like kwok's)."""

    def __init__(self) -> None:
        self.pages: dict[str, WorkerMetrics] = {}

    def fetch(self, pod: dict[str, Any]) -> WorkerMetrics | None:
        return self.pages.get(pod["metadata"]["name"])


def test_scale_up_on_measured_load_without_moving_running_replicas() -> None:
    infd = make_infd(scaling={"minReplicas": 1, "maxReplicas": 10})  # declared 5 rps; profiles give 2 rps/replica
    pool = make_pool()
    request = build_request(infd, [choose(pool, infd)], {"l4-spot": 16}, {"l4-spot": 3})
    source = FakeSource()
    auto = Autoscaling(source, period_s=10)
    pods = [{"metadata": {"name": f"p{i}"}} for i in range(3)]
    assert auto.step("ns/chat", infd, request, {"l4-spot": 3}, pods, 0.0) is None  # nobody answers
    for i in range(3):
        source.pages[f"p{i}"] = WorkerMetrics(requests_total=0)
    assert auto.step("ns/chat", infd, request, {"l4-spot": 3}, pods, 10.0) is None  # first sample: no rate yet
    for i in range(3):
        source.pages[f"p{i}"] = WorkerMetrics(waiting=10, running=4, requests_total=40)  # 12 rps over 10 s
    step = auto.step("ns/chat", infd, request, {"l4-spot": 3}, pods, 20.0)
    assert step is not None
    assert step.decision.direction == "up"
    assert step.replicas["l4-spot"] > 3
    assert step.replicas["l4-spot"] <= 10
    auto.forget("ns/chat")
    assert "ns/chat" not in auto.samples and "ns/chat" not in auto.states
