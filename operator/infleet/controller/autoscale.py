"""Measure a deployment's load for the decision loop: two scrapes of its ready serving workers -> a LoadObservation.

Only measurement lives here (the loop decides): the last sample per deployment (a rate needs two) is kept in
memory behind a lock, since kopf runs handlers on worker threads. After a restart the first reconcile only samples,
so the loop never acts on a half-measured rate; until workers answer, the loop holds or places on the declared load.
A sample outlives its deployment only until :meth:`LoadMeter.forget`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from infleet.api import InferenceDeployment
from infleet.controller.gateway_signals import DeploymentKey, GatewayLoad
from infleet.controller.kube import Obj
from infleet.controller.manifests import LABEL_POOL
from infleet.controller.observe import Measured
from infleet.controller.scrape import (
    Interval,
    LoadSample,
    MetricsSource,
    WorkerMetrics,
    combine,
    fetch_each,
    interval,
    quantile_from_buckets,
)
from infleet.policy.autoscaler import LoadObservation
from infleet.policy.capacity import RequestMix
from infleet.policy.efficiency import PoolUsage
from infleet.policy.loop import latency_signal

# The tail of the prompt-length distribution relative to its mean, for a measured mix (only the mean is counted by
# the worker); 3.6x is the Azure conversation trace's ratio of its 99th percentile to its mean.
TAIL_TO_MEAN_PROMPT = 3.6
# Fewest finished requests in an interval for its token counts to stand for the mix (fewer: too noisy to act on).
MIN_REQUESTS_FOR_MIX = 20


@dataclass(frozen=True)
class PoolCounters:
    """One pool's workers summed at one instant: generated tokens and (when every worker measures it) joules."""

    time_s: float
    generated_tokens: float
    joules: float | None


def pool_counters(now_s: float, scrapes: list[tuple[Obj, WorkerMetrics]]) -> dict[str, PoolCounters]:
    by_pool: dict[str, list[WorkerMetrics]] = {}
    for pod, metrics in scrapes:
        by_pool.setdefault((pod["metadata"].get("labels") or {}).get(LABEL_POOL, ""), []).append(metrics)
    out = {}
    for pool, ms in by_pool.items():
        joules = None if any(m.energy_joules is None for m in ms) else sum(m.energy_joules or 0.0 for m in ms)
        out[pool] = PoolCounters(now_s, sum(m.generation_tokens for m in ms), joules)
    return out


def pool_usage(before: PoolCounters, now: PoolCounters) -> PoolUsage | None:
    """Generated tokens/s and watts between two readings (None after a counter reset or with no time between)."""
    dt = now.time_s - before.time_s
    tokens = now.generated_tokens - before.generated_tokens
    if dt <= 0 or tokens < 0:
        return None
    watts = None
    if now.joules is not None and before.joules is not None and now.joules >= before.joules:
        watts = (now.joules - before.joules) / dt
    return PoolUsage(tokens_per_s=tokens / dt, watts=watts)


@dataclass(frozen=True, kw_only=True)
class GatewayInterval:
    """One deployment's load as the gateways saw it between two samples."""

    arrival_rate_rps: float
    queue_depth: int
    in_flight: int
    ttft_p99_s: float | None
    e2e_p99_s: float | None


@dataclass
class GatewayMeter:
    """The gateways' /metrics, fetched at most once per ``max_age_s`` for all deployments, and per deployment the
    last sample (a rate needs two). The gateway sees what workers cannot: requests held while no replica is ready
    (scale from zero), arrivals at arrival, and the latency clients get, queueing included."""

    fetch: Callable[[], Mapping[DeploymentKey, GatewayLoad] | None]
    max_age_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    previous: dict[DeploymentKey, tuple[float, GatewayLoad]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _page: tuple[float, Mapping[DeploymentKey, GatewayLoad] | None] | None = None

    def sample(self) -> Mapping[DeploymentKey, GatewayLoad] | None:
        now = self.clock()
        with self.lock:
            if self._page is not None and now - self._page[0] < self.max_age_s:
                return self._page[1]
        page = self.fetch()
        with self.lock:
            self._page = (now, page)
        return page

    def observe(self, key: DeploymentKey, now_s: float) -> GatewayInterval | None:
        page = self.sample()
        load = None if page is None else page.get(key)
        if load is None:
            return None
        with self.lock:
            before = self.previous.get(key)
            self.previous[key] = (now_s, load)
        if before is None or now_s <= before[0]:
            return None
        then, old = before
        dt = now_s - then
        return GatewayInterval(
            arrival_rate_rps=max(0.0, load.received_total - old.received_total) / dt,
            queue_depth=round(load.queue_depth),
            in_flight=round(load.in_flight),
            ttft_p99_s=quantile_from_buckets(_delta(load.ttft_buckets, old.ttft_buckets), 0.99),
            e2e_p99_s=quantile_from_buckets(_delta(load.duration_buckets, old.duration_buckets), 0.99),
        )

    def forget(self, key: DeploymentKey) -> None:
        with self.lock:
            self.previous.pop(key, None)


def _delta(now: Mapping[float, float], before: Mapping[float, float]) -> dict[float, float]:
    return {le: max(0.0, n - before.get(le, 0.0)) for le, n in now.items()}


@dataclass
class LoadMeter:
    source: MetricsSource
    gateway: GatewayMeter | None = None
    samples: dict[str, LoadSample] = field(default_factory=dict)
    pools: dict[str, dict[str, PoolCounters]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def measure(self, key: str, infd: InferenceDeployment, ready_serving_pods: Iterable[Obj], now_s: float) -> Measured:
        """The load since the last call for ``key`` (empty when nothing answered, or on the first sample).

        With gateways, their arrivals, queue and client-side tail are the signal (the workers' queue adds to the
        gateway's), also while no replica is ready: that is how a deployment at zero wakes up.
        """
        scrapes = fetch_each(self.source, ready_serving_pods)
        sample = combine(now_s, [m for _, m in scrapes])
        namespace, _, name = key.partition("/")
        gateway = self.gateway.observe((namespace, name), now_s) if self.gateway is not None else None
        counters = pool_counters(now_s, scrapes) if scrapes else {}
        with self.lock:
            previous = self.samples.get(key)
            if sample is not None:
                self.samples[key] = sample
            before = self.pools.get(key, {})
            if counters:
                self.pools[key] = counters
        usage = {p: u for p, c in counters.items() if p in before and (u := pool_usage(before[p], c)) is not None}
        got = interval(previous, sample) if sample is not None else None
        if got is None and gateway is None:
            return Measured()
        load = combined_load(infd, now_s, got, gateway)
        mix = None
        if (
            got is not None
            and got.finished >= MIN_REQUESTS_FOR_MIX
            and got.prompt_tokens_per_request is not None
            and got.generated_tokens_per_request is not None
        ):
            mix = RequestMix(
                mean_prompt=got.prompt_tokens_per_request,
                mean_gen=max(1.0, got.generated_tokens_per_request),
                tail_prompt=TAIL_TO_MEAN_PROMPT * got.prompt_tokens_per_request,
            )
        return Measured(load=load, mix=mix, usage=usage)

    def forget(self, key: str) -> None:
        with self.lock:
            self.samples.pop(key, None)
            self.pools.pop(key, None)
        if self.gateway is not None:
            namespace, _, name = key.partition("/")
            self.gateway.forget((namespace, name))


def combined_load(
    infd: InferenceDeployment, now_s: float, workers: Interval | None, gateway: GatewayInterval | None
) -> LoadObservation:
    """One LoadObservation from the workers' interval, the gateways' or both (the gateways' arrivals and tail win)."""
    if gateway is None:
        assert workers is not None
        return LoadObservation(
            time_s=now_s,
            arrival_rate_rps=workers.arrival_rate_rps,
            queue_depth=workers.queue_depth,
            in_flight=workers.in_flight,
            p99_latency_s=latency_signal(infd, workers.ttft_p99_s, workers.e2e_p99_s),
        )
    tail = latency_signal(infd, gateway.ttft_p99_s, gateway.e2e_p99_s)
    if tail is None and workers is not None:
        tail = latency_signal(infd, workers.ttft_p99_s, workers.e2e_p99_s)
    return LoadObservation(
        time_s=now_s,
        arrival_rate_rps=gateway.arrival_rate_rps,
        queue_depth=gateway.queue_depth + (workers.queue_depth if workers is not None else 0),
        in_flight=workers.in_flight if workers is not None else gateway.in_flight,
        p99_latency_s=tail,
    )
