"""Measure a deployment's load for the decision loop: two scrapes of its ready serving workers -> a LoadObservation.

Only measurement lives here (the loop decides): the last sample per deployment (a rate needs two) is kept in
memory behind a lock, since kopf runs handlers on worker threads. After a restart the first reconcile only samples,
so the loop never acts on a half-measured rate; until workers answer, the loop holds or places on the declared load.
A sample outlives its deployment only until :meth:`LoadMeter.forget`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from infleet.api import InferenceDeployment
from infleet.controller.kube import Obj
from infleet.controller.manifests import LABEL_POOL
from infleet.controller.observe import Measured
from infleet.controller.scrape import LoadSample, MetricsSource, WorkerMetrics, combine, fetch_each, interval
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


@dataclass
class LoadMeter:
    source: MetricsSource
    samples: dict[str, LoadSample] = field(default_factory=dict)
    pools: dict[str, dict[str, PoolCounters]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def measure(self, key: str, infd: InferenceDeployment, ready_serving_pods: Iterable[Obj], now_s: float) -> Measured:
        """The load since the last call for ``key`` (empty when no worker answered, or on the first sample)."""
        scrapes = fetch_each(self.source, ready_serving_pods)
        sample = combine(now_s, [m for _, m in scrapes])
        if sample is None:
            return Measured()
        counters = pool_counters(now_s, scrapes)
        with self.lock:
            previous = self.samples.get(key)
            self.samples[key] = sample
            before = self.pools.get(key, {})
            self.pools[key] = counters
        usage = {p: u for p, c in counters.items() if p in before and (u := pool_usage(before[p], c)) is not None}
        got = interval(previous, sample)
        if got is None:
            return Measured()
        load = LoadObservation(
            time_s=got.time_s,
            arrival_rate_rps=got.arrival_rate_rps,
            queue_depth=got.queue_depth,
            in_flight=got.in_flight,
            p99_latency_s=latency_signal(infd, got.ttft_p99_s, got.e2e_p99_s),
        )
        mix = None
        if (
            got.finished >= MIN_REQUESTS_FOR_MIX
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
