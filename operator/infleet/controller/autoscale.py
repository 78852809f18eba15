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
from infleet.controller.observe import Measured
from infleet.controller.scrape import LoadSample, MetricsSource, combine, fetch_all, interval
from infleet.policy.autoscaler import LoadObservation
from infleet.policy.capacity import RequestMix
from infleet.policy.loop import latency_signal

# The tail of the prompt-length distribution relative to its mean, for a measured mix (only the mean is counted by
# the worker); 3.6x is the Azure conversation trace's ratio of its 99th percentile to its mean.
TAIL_TO_MEAN_PROMPT = 3.6
# Fewest finished requests in an interval for its token counts to stand for the mix (fewer: too noisy to act on).
MIN_REQUESTS_FOR_MIX = 20


@dataclass
class LoadMeter:
    source: MetricsSource
    samples: dict[str, LoadSample] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def measure(self, key: str, infd: InferenceDeployment, ready_serving_pods: Iterable[Obj], now_s: float) -> Measured:
        """The load since the last call for ``key`` (empty when no worker answered, or on the first sample)."""
        sample = combine(now_s, fetch_all(self.source, ready_serving_pods))
        if sample is None:
            return Measured()
        with self.lock:
            previous = self.samples.get(key)
            self.samples[key] = sample
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
        return Measured(load=load, mix=mix)

    def forget(self, key: str) -> None:
        with self.lock:
            self.samples.pop(key, None)
