"""Worker metrics for the autoscaler: a one-method seam (`MetricsSource.fetch`) with an HTTP implementation.

The operator scrapes each ready serving pod's `/metrics` and reads it with the names of the pod's runtime
(infleet.runtimes: `infleet_worker_*`, vLLM's `vllm:*`; docs/metrics.md, "Runtimes"), then folds two
consecutive scrapes of a deployment into one `LoadObservation` (arrival rate from the finished-requests counter,
queue depth, running requests, windowed p99 from the latency histogram). On a cluster whose pods run no worker
(kwok), or for a runtime without a metrics endpoint (llama.cpp), `fetch` returns None and the gateway's signals
and the declared throughput stand in.
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
from infleet.controller.manifests import WORKER_PORT, pod_engine
from infleet.policy import LoadObservation
from infleet.runtimes import MetricNames, runtime
from infleet.runtimes.infleet_worker import METRICS as WORKER_METRICS


@dataclass(frozen=True)
class WorkerMetrics:
    """One scrape of one worker (counters are totals since the worker started)."""

    waiting: float = 0.0
    running: float = 0.0
    requests_total: float = 0.0
    latency_buckets: Mapping[float, float] = field(default_factory=dict)  # le (seconds) -> cumulative count
    ttft_buckets: Mapping[float, float] = field(default_factory=dict)
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    energy_joules: float | None = None  # None: the worker cannot measure its device's energy (or says so)


class MetricsSource(Protocol):
    def fetch(self, pod: Obj) -> WorkerMetrics | None: ...


def parse_worker_metrics(text: str, names: MetricNames = WORKER_METRICS) -> WorkerMetrics:
    """One `/metrics` page read with one runtime's names; series the runtime does not expose stay zero/empty.
    Samples with the same name (one per label set: `model_name`, `status`, ...) are summed."""
    scalar = {
        name: key
        for name, key in (
            (names.waiting, "waiting"),
            (names.running, "running"),
            (names.requests_total, "total"),
            (names.prompt_tokens, "prompt"),
            (names.generation_tokens, "gen"),
        )
        if name is not None
    }
    sums = dict.fromkeys(("waiting", "running", "total", "prompt", "gen"), 0.0)
    histograms: dict[str, dict[float, float]] = {n: {} for n in (names.e2e_bucket, names.ttft_bucket) if n}
    joules: float | None = None
    measurable = names.energy_joules is not None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == names.energy_joules:
                joules = (joules or 0.0) + sample.value
            elif sample.name == names.energy_measurable and sample.value == 0:
                measurable = False
            elif sample.name in scalar:
                sums[scalar[sample.name]] += sample.value
            elif sample.name in histograms:
                le = float(sample.labels["le"])
                buckets = histograms[sample.name]
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return WorkerMetrics(
        waiting=sums["waiting"],
        running=sums["running"],
        requests_total=sums["total"],
        latency_buckets=histograms.get(names.e2e_bucket or "", {}),
        ttft_buckets=histograms.get(names.ttft_bucket or "", {}),
        prompt_tokens=sums["prompt"],
        generation_tokens=sums["gen"],
        energy_joules=joules if measurable else None,
    )


class HttpMetricsSource:
    """GET http://<podIP>:8000/metrics with a short timeout, read with the pod's runtime's names; anything but a
    200 page of that runtime is None (so is a pod whose runtime exposes no metrics)."""

    def __init__(self, timeout_s: float = 1.0) -> None:
        self.client = httpx.Client(timeout=timeout_s, trust_env=False)

    def fetch(self, pod: Obj) -> WorkerMetrics | None:
        ip = pod.get("status", {}).get("podIP")
        adapter = runtime(pod_engine(pod))
        names = adapter.metrics
        if not ip or names is None:
            return None
        try:
            resp = self.client.get(f"http://{ip}:{WORKER_PORT}{adapter.metrics_path}")
        except httpx.HTTPError:
            return None
        if resp.status_code != 200 or names.marker not in resp.text:
            return None
        try:
            return parse_worker_metrics(resp.text, names)
        except ValueError:
            return None


def fetch_all(source: MetricsSource, pods: Iterable[Obj], workers: int = 8) -> list[WorkerMetrics]:
    return [m for _, m in fetch_each(source, pods, workers)]


def fetch_each(source: MetricsSource, pods: Iterable[Obj], workers: int = 8) -> list[tuple[Obj, WorkerMetrics]]:
    """(pod, its scrape) for every pod that answered."""
    pods = list(pods)
    if not pods:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(pods))) as pool:
        return [(p, m) for p, m in zip(pods, pool.map(source.fetch, pods), strict=True) if m is not None]


@dataclass(frozen=True)
class LoadSample:
    """A deployment's workers summed at one instant."""

    time_s: float
    waiting: float
    running: float
    requests_total: float
    latency_buckets: Mapping[float, float]
    ttft_buckets: Mapping[float, float] = field(default_factory=dict)
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0


def _summed(histograms: Iterable[Mapping[float, float]]) -> dict[float, float]:
    out: dict[float, float] = {}
    for h in histograms:
        for le, n in h.items():
            out[le] = out.get(le, 0.0) + n
    return out


def combine(time_s: float, scrapes: Iterable[WorkerMetrics]) -> LoadSample | None:
    scrapes = list(scrapes)
    if not scrapes:
        return None
    return LoadSample(
        time_s=time_s,
        waiting=sum(s.waiting for s in scrapes),
        running=sum(s.running for s in scrapes),
        requests_total=sum(s.requests_total for s in scrapes),
        latency_buckets=_summed(s.latency_buckets for s in scrapes),
        ttft_buckets=_summed(s.ttft_buckets for s in scrapes),
        prompt_tokens=sum(s.prompt_tokens for s in scrapes),
        generation_tokens=sum(s.generation_tokens for s in scrapes),
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


@dataclass(frozen=True, kw_only=True)
class Interval:
    """The load between two samples: rates, the tails of the requests finished in between, tokens per request."""

    time_s: float
    arrival_rate_rps: float
    finished: float
    queue_depth: int
    in_flight: int
    e2e_p99_s: float | None
    ttft_p99_s: float | None
    prompt_tokens_per_request: float | None
    generated_tokens_per_request: float | None


def _delta(now: Mapping[float, float], before: Mapping[float, float]) -> dict[float, float]:
    return {le: max(0.0, n - before.get(le, 0.0)) for le, n in now.items()}


def interval(previous: LoadSample | None, now: LoadSample) -> Interval | None:
    """The load between two samples; None until there are two (a rate needs an interval).

    Arrivals are finished requests plus the growth of what is queued or running (a worker counts requests when
    they finish; the autoscaler wants them when they arrive).
    """
    if previous is None or now.time_s <= previous.time_s:
        return None
    dt = now.time_s - previous.time_s
    # A worker that restarted resets its counters: a negative delta means "unknown", counted as nothing.
    finished = max(0.0, now.requests_total - previous.requests_total)
    backlog_growth = (now.waiting + now.running) - (previous.waiting + previous.running)
    arrived = max(0.0, finished + backlog_growth)
    prompt = max(0.0, now.prompt_tokens - previous.prompt_tokens)
    generated = max(0.0, now.generation_tokens - previous.generation_tokens)
    return Interval(
        time_s=now.time_s,
        arrival_rate_rps=arrived / dt,
        finished=finished,
        queue_depth=round(now.waiting),
        in_flight=round(now.running),
        e2e_p99_s=quantile_from_buckets(_delta(now.latency_buckets, previous.latency_buckets), 0.99),
        ttft_p99_s=quantile_from_buckets(_delta(now.ttft_buckets, previous.ttft_buckets), 0.99),
        prompt_tokens_per_request=prompt / finished if finished else None,
        generated_tokens_per_request=generated / finished if finished and generated else None,
    )


def observe(previous: LoadSample | None, now: LoadSample) -> LoadObservation | None:
    """The load between two samples with the end-to-end tail as the latency signal (see ``interval``)."""
    got = interval(previous, now)
    if got is None:
        return None
    return LoadObservation(
        time_s=got.time_s,
        arrival_rate_rps=got.arrival_rate_rps,
        queue_depth=got.queue_depth,
        in_flight=got.in_flight,
        p99_latency_s=got.e2e_p99_s,
    )
