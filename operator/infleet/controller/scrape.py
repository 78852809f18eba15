"""Worker metrics for the autoscaler: a one-method seam (`MetricsSource.fetch`) with an HTTP implementation.

The operator scrapes each ready serving pod's `/metrics` (docs/metrics.md, Worker section) and folds two
consecutive scrapes of a deployment into one `LoadObservation` (arrival rate from the finished-requests counter,
queue depth, running requests, windowed p99 from the latency histogram). On a cluster whose pods run no worker
(kwok), `fetch` returns None and placement keeps using the declared throughput.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infleet.controller.kube import Obj
from infleet.policy import LoadObservation

WORKER_PORT = 8000


@dataclass(frozen=True)
class WorkerMetrics:
    """One scrape of one worker (counters are totals since the worker started)."""

    waiting: float = 0.0
    running: float = 0.0
    requests_total: float = 0.0
    latency_buckets: Mapping[float, float] = field(default_factory=dict)  # le (seconds) -> cumulative count


class MetricsSource(Protocol):
    def fetch(self, pod: Obj) -> WorkerMetrics | None: ...


def parse_worker_metrics(text: str) -> WorkerMetrics:
    waiting = running = total = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "infleet_worker_num_requests_waiting":
                waiting += sample.value
            elif sample.name == "infleet_worker_num_requests_running":
                running += sample.value
            elif sample.name == "infleet_worker_requests_total":
                total += sample.value
            elif sample.name == "infleet_worker_request_latency_seconds_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return WorkerMetrics(waiting=waiting, running=running, requests_total=total, latency_buckets=buckets)


class HttpMetricsSource:
    """GET http://<podIP>:8000/metrics with a short timeout; anything but a 200 worker page is None."""

    def __init__(self, timeout_s: float = 1.0) -> None:
        self.client = httpx.Client(timeout=timeout_s, trust_env=False)

    def fetch(self, pod: Obj) -> WorkerMetrics | None:
        ip = pod.get("status", {}).get("podIP")
        if not ip:
            return None
        try:
            resp = self.client.get(f"http://{ip}:{WORKER_PORT}/metrics")
        except httpx.HTTPError:
            return None
        if resp.status_code != 200 or "infleet_worker_" not in resp.text:
            return None
        try:
            return parse_worker_metrics(resp.text)
        except ValueError:
            return None


def fetch_all(source: MetricsSource, pods: Iterable[Obj], workers: int = 8) -> list[WorkerMetrics]:
    pods = list(pods)
    if not pods:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(pods))) as pool:
        return [m for m in pool.map(source.fetch, pods) if m is not None]


@dataclass(frozen=True)
class LoadSample:
    """A deployment's workers summed at one instant."""

    time_s: float
    waiting: float
    running: float
    requests_total: float
    latency_buckets: Mapping[float, float]


def combine(time_s: float, scrapes: Iterable[WorkerMetrics]) -> LoadSample | None:
    scrapes = list(scrapes)
    if not scrapes:
        return None
    buckets: dict[float, float] = {}
    for s in scrapes:
        for le, n in s.latency_buckets.items():
            buckets[le] = buckets.get(le, 0.0) + n
    return LoadSample(
        time_s=time_s,
        waiting=sum(s.waiting for s in scrapes),
        running=sum(s.running for s in scrapes),
        requests_total=sum(s.requests_total for s in scrapes),
        latency_buckets=buckets,
    )


def quantile_from_buckets(buckets: Mapping[float, float], q: float) -> float | None:
    """The q-quantile of a cumulative histogram (linear within the bucket, like PromQL's histogram_quantile)."""
    edges = sorted(buckets)
    if not edges or buckets[edges[-1]] <= 0:
        return None
    rank = q * buckets[edges[-1]]
    lower_edge, lower_count = 0.0, 0.0
    for le in edges:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower_edge
            span = count - lower_count
            return lower_edge + (le - lower_edge) * ((rank - lower_count) / span if span > 0 else 1.0)
        lower_edge, lower_count = le, count
    return None


def observe(previous: LoadSample | None, now: LoadSample) -> LoadObservation | None:
    """The load between two samples; None until there are two (a rate needs an interval)."""
    if previous is None or now.time_s <= previous.time_s:
        return None
    dt = now.time_s - previous.time_s
    # A worker that restarted resets its counters: a negative delta means "unknown", counted as nothing.
    finished = max(0.0, now.requests_total - previous.requests_total)
    window = {le: max(0.0, n - previous.latency_buckets.get(le, 0.0)) for le, n in now.latency_buckets.items()}
    return LoadObservation(
        time_s=now.time_s,
        arrival_rate_rps=finished / dt,
        queue_depth=round(now.waiting),
        in_flight=round(now.running),
        p99_latency_s=quantile_from_buckets(window, 0.99),
    )
