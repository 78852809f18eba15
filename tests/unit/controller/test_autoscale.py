"""Worker scrapes -> the loop's measured load (LoadMeter), with a fake metrics source (no cluster)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from infleet.controller.autoscale import LoadMeter
from infleet.controller.scrape import (
    LoadSample,
    WorkerMetrics,
    observe,
    parse_worker_metrics,
    quantile_from_buckets,
)
from tests.unit.controller.builders import make_infd

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
    # 50 finished and 6 more queued or running than before: 56 arrived in 10 s
    assert obs.arrival_rate_rps == pytest.approx(5.6)
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


def test_meter_needs_answers_and_two_samples_then_measures_arrivals_tail_and_mix() -> None:
    infd = make_infd(slo={"p99LatencyMs": 2000, "ttftP99Ms": 500, "throughput": {"requestsPerSecond": 5}})
    source = FakeSource()
    meter = LoadMeter(source)
    pods = [{"metadata": {"name": f"p{i}"}} for i in range(3)]
    assert meter.measure("ns/chat", infd, pods, 0.0).load is None  # nobody answers
    for i in range(3):
        source.pages[f"p{i}"] = WorkerMetrics(requests_total=0)
    assert meter.measure("ns/chat", infd, pods, 10.0).load is None  # first sample: no rate yet
    for i in range(3):
        source.pages[f"p{i}"] = WorkerMetrics(
            waiting=10,
            running=4,
            requests_total=40,
            prompt_tokens=40_000,
            generation_tokens=8_000,
            ttft_buckets={0.25: 38, 1.0: 40, float("inf"): 40},
            latency_buckets={5.0: 40, float("inf"): 40},
        )
    got = meter.measure("ns/chat", infd, pods, 20.0)
    assert got.load is not None
    assert got.load.arrival_rate_rps == pytest.approx((120 + 42) / 10)  # finished + the backlog's growth
    assert (got.load.queue_depth, got.load.in_flight) == (30, 12)
    # The SLO declares TTFT, so TTFT's tail is the latency signal, not end-to-end
    assert got.load.p99_latency_s is not None and 0.25 < got.load.p99_latency_s <= 1.0
    assert got.mix is not None and (got.mix.mean_prompt, got.mix.mean_gen) == (1000.0, 200.0)
    meter.forget("ns/chat")
    assert "ns/chat" not in meter.samples


def test_meter_ignores_the_mix_of_too_few_requests() -> None:
    source = FakeSource()
    meter = LoadMeter(source)
    pods = [{"metadata": {"name": "p"}}]
    source.pages["p"] = WorkerMetrics(requests_total=0)
    meter.measure("k", make_infd(), pods, 0.0)
    source.pages["p"] = WorkerMetrics(requests_total=3, prompt_tokens=300, generation_tokens=30)
    got = meter.measure("k", make_infd(), pods, 10.0)
    assert got.load is not None and got.mix is None


def test_energy_is_parsed_and_absent_when_the_worker_cannot_measure() -> None:
    page = '# TYPE infleet_worker_energy_joules counter\ninfleet_worker_energy_joules_total{device="cpu"} 120.5\n'
    page += "# TYPE infleet_worker_energy_measurable gauge\ninfleet_worker_energy_measurable 1\n"
    assert parse_worker_metrics(page).energy_joules == 120.5
    off = "# TYPE infleet_worker_energy_measurable gauge\ninfleet_worker_energy_measurable 0\n"
    assert parse_worker_metrics(off).energy_joules is None


def test_pool_usage_from_two_readings() -> None:
    from infleet.controller.autoscale import PoolCounters, pool_usage

    a, b = PoolCounters(0.0, 1000.0, 500.0), PoolCounters(10.0, 6000.0, 1700.0)
    got = pool_usage(a, b)
    assert got is not None and (got.tokens_per_s, got.watts) == (500.0, 120.0)
    assert pool_usage(b, PoolCounters(20.0, 10.0, 5.0)) is None  # a worker restarted: counters went back
    no_energy = pool_usage(a, PoolCounters(10.0, 2000.0, None))
    assert no_energy is not None and no_energy.watts is None


def test_the_gateway_wakes_a_deployment_at_zero() -> None:
    """No ready worker, requests held at the gateway: the meter sees them and the loop scales up from zero."""
    from infleet.controller.autoscale import GatewayMeter, LoadMeter
    from infleet.controller.gateway_signals import GatewayLoad
    from infleet.policy.loop import LoopState, Observation, PoolView, decide
    from tests.unit.controller.builders import make_pool

    pages = [
        {("ns", "chat"): GatewayLoad(received_total=0.0)},
        {("ns", "chat"): GatewayLoad(received_total=12.0, queue_depth=12.0)},
    ]
    clock = {"t": 0.0}
    gateway = GatewayMeter(fetch=lambda: pages.pop(0), max_age_s=0.0, clock=lambda: clock["t"])
    meter = LoadMeter(FakeSource(), gateway=gateway)
    infd = make_infd(slo={"p99LatencyMs": 2000}, scaling={"minReplicas": 0, "maxReplicas": 4})
    assert meter.measure("ns/chat", infd, [], 0.0).load is None  # first gateway sample
    clock["t"] = 10.0
    got = meter.measure("ns/chat", infd, [], 10.0)
    assert got.load is not None
    assert (got.load.arrival_rate_rps, got.load.queue_depth) == (1.2, 12)
    pool = make_pool()
    obs = Observation(
        now_s=10.0,
        deployment=infd,
        pools={"l4-spot": PoolView(pool=pool, free_devices=8, room_replicas=8)},
        load=got.load,
    )
    plan, _ = decide(obs, LoopState())
    assert sum(plan.serving.values()) >= 1
    assert plan.decision is not None and plan.decision.kind == "ScaleUp"


def test_gateway_arrivals_and_tail_win_and_queues_add_up() -> None:
    from infleet.controller.autoscale import GatewayInterval, combined_load
    from infleet.controller.scrape import Interval

    infd = make_infd(slo={"p99LatencyMs": 2000, "ttftP99Ms": 500})
    workers = Interval(
        time_s=10.0,
        arrival_rate_rps=3.0,
        finished=30,
        queue_depth=4,
        in_flight=6,
        e2e_p99_s=1.0,
        ttft_p99_s=0.2,
        prompt_tokens_per_request=None,
        generated_tokens_per_request=None,
    )
    gateway = GatewayInterval(arrival_rate_rps=5.0, queue_depth=7, in_flight=9, ttft_p99_s=0.9, e2e_p99_s=1.5)
    load = combined_load(infd, 10.0, workers, gateway)
    assert (load.arrival_rate_rps, load.queue_depth, load.in_flight, load.p99_latency_s) == (5.0, 11, 6, 0.9)
