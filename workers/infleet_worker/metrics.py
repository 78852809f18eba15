"""Prometheus metrics, named exactly as in docs/metrics.md (the contract the operator, dashboards, SLO rules
and simulator share). The queue/running/KV gauges read the engine live at scrape time, and their names are the
ones the Gateway API Inference Extension's endpoint picker is configured with."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infleet_worker.energy import EnergyMeter
from infleet_worker.engine import Engine, FinishedRequest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LIFECYCLE_STATES = ("starting", "warm", "serving", "draining")
STARTUP_PHASES = ("import", "load", "warmup", "total")
FINISH_STATUSES = ("stop", "length", "abort", "error", "rejected")


class EnergyCollector(Collector):
    """`energy_joules_total{device}` read from the meter at scrape time (absent when nothing is measurable) and
    `energy_measurable` (1/0; 0 until the device is known)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.meter: EnergyMeter | None = None

    def collect(self) -> Iterator[Metric]:
        meter = self.meter
        measurable = GaugeMetricFamily("infleet_worker_energy_measurable",
                                       "1 when the device's energy counter can be read (reason in the log if 0)",
                                       labels=["model"])
        measurable.add_metric([self.model], 1.0 if meter is not None and meter.measurable else 0.0)
        yield measurable
        if meter is None or not meter.measurable:
            return
        joules = CounterMetricFamily("infleet_worker_energy_joules",
                                     "Energy the device used since the worker started, from its hardware counter",
                                     labels=["model", "device"])
        for device, value in sorted(meter.read().joules_by_device.items()):
            joules.add_metric([self.model, device], value)
        yield joules


class WorkerMetrics:
    """All worker series, in their own registry (one per server, so tests can run several in a process)."""

    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        self.model = model
        self.registry = registry or CollectorRegistry()
        r, m = self.registry, ["model"]
        p = "infleet_worker_"
        self.waiting = Gauge(p + "num_requests_waiting", "Requests admitted and queued, not yet running", m,
                             registry=r)
        self.running = Gauge(p + "num_requests_running", "Requests in the running batch", m, registry=r)
        self.kv_usage = Gauge(p + "kv_cache_usage_perc", "Share of the KV cache's blocks requests hold, 0..1", m,
                              registry=r)
        self.kv_tokens = Gauge(p + "kv_cache_tokens", "Tokens whose keys and values requests hold (a shared prefix "
                               "once per request)", m, registry=r)
        self.kv_capacity = Gauge(p + "kv_cache_capacity_tokens", "Tokens the KV cache can hold (blocks x block size)",
                                 m, registry=r)
        self.kv_blocks = Gauge(p + "kv_cache_blocks", "KV-cache blocks requests hold", m, registry=r)
        self.kv_capacity_blocks = Gauge(p + "kv_cache_capacity_blocks", "KV-cache blocks in the pool", m, registry=r)
        self.preemptions = Counter(p + "preemptions", "Running requests preempted (blocks released, recomputed "
                                   "later) because the KV pool ran out", m, registry=r)
        self.latency = Histogram(p + "request_latency_seconds", "Arrival to last token, per finished request", m,
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Arrival to first generated token", m,
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram(p + "time_per_output_token_seconds", "Mean gap between output tokens, per request",
                              m, buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter(p + "requests", "Finished requests by status", [*m, "status"], registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens processed", m, registry=r)
        self.generation_tokens = Counter(p + "generation_tokens", "Tokens generated", m, registry=r)
        self.prefix_query = Counter(p + "prefix_cache_query_tokens", "Prompt tokens looked up in the prefix cache", m,
                                    registry=r)
        self.prefix_hit = Counter(p + "prefix_cache_hit_tokens", "Prompt tokens found in the prefix cache (no prefill)",
                                  m, registry=r)
        self.prefix_blocks = Gauge(p + "prefix_cache_blocks", "KV blocks indexed for prefix reuse (held or idle)", m,
                                   registry=r)
        self.prefix_capacity = Gauge(p + "prefix_cache_capacity_blocks", "Blocks the prefix cache may use: the "
                                     "whole KV pool (0: prefix caching off)", m, registry=r)
        self.batch_size = Histogram(p + "batch_size", "Sequences in each engine step", m, buckets=BATCH_BUCKETS,
                                    registry=r)
        self.model_load = Gauge(p + "model_load_seconds", "Time to load the weights", m, registry=r)
        self.startup = Gauge(p + "startup_phase_seconds", "Start-up phases, process start to ready",
                             [*m, "phase"], registry=r)
        self.lifecycle = Gauge(p + "lifecycle_state", "1 for the current lifecycle state", [*m, "state"],
                               registry=r)
        self.energy = EnergyCollector(model)
        r.register(self.energy)
        for status in FINISH_STATUSES:
            self.requests.labels(model, status)  # export zeros so rate() works from the first scrape
        self.set_state("starting")

    def bind_engine(self, engine: Engine) -> None:
        self.waiting.labels(self.model).set_function(lambda: engine.num_waiting)
        self.running.labels(self.model).set_function(lambda: engine.num_running)
        self.kv_usage.labels(self.model).set_function(lambda: engine.kv_usage)
        self.kv_tokens.labels(self.model).set_function(lambda: engine.kv_tokens_held)
        self.kv_capacity.labels(self.model).set(engine.kv_capacity_tokens)
        pool = engine.pool
        self.kv_blocks.labels(self.model).set_function(lambda: pool.blocks_in_use)
        self.kv_capacity_blocks.labels(self.model).set(pool.num_blocks)
        self.preemptions.labels(self.model)
        prefix = engine.prefix
        self.prefix_blocks.labels(self.model).set_function(lambda: prefix.cached_blocks if prefix is not None else 0)
        self.prefix_capacity.labels(self.model).set(prefix.num_blocks if prefix is not None else 0)
        self.prefix_query.labels(self.model)
        self.prefix_hit.labels(self.model)

    def bind_energy(self, meter: EnergyMeter) -> None:
        self.energy.meter = meter

    def set_state(self, state: str) -> None:
        for s in LIFECYCLE_STATES:
            self.lifecycle.labels(self.model, s).set(1.0 if s == state else 0.0)

    def set_startup(self, phases: dict[str, float]) -> None:
        for phase in STARTUP_PHASES:
            if phase in phases:
                self.startup.labels(self.model, phase).set(phases[phase])
        if "load" in phases:
            self.model_load.labels(self.model).set(phases["load"])

    # EngineObserver
    def on_first_token(self, ttft_s: float) -> None:
        self.ttft.labels(self.model).observe(ttft_s)

    def on_finished(self, req: FinishedRequest) -> None:
        self.requests.labels(self.model, req.finish_reason).inc()
        self.latency.labels(self.model).observe(req.latency_s)
        if req.tpot_s is not None:
            self.tpot.labels(self.model).observe(req.tpot_s)

    def on_rejected(self) -> None:
        self.requests.labels(self.model, "rejected").inc()

    def on_step(self, batch_size: int, prefill_tokens: int, decode_tokens: int) -> None:
        self.batch_size.labels(self.model).observe(batch_size)

    def on_prefilled(self, n: int) -> None:
        self.prompt_tokens.labels(self.model).inc(n)

    def on_prefix_lookup(self, prompt_tokens: int, hit_tokens: int) -> None:
        self.prefix_query.labels(self.model).inc(prompt_tokens)
        if hit_tokens:
            self.prefix_hit.labels(self.model).inc(hit_tokens)

    def on_preempted(self) -> None:
        self.preemptions.labels(self.model).inc()

    def on_tokens_generated(self, n: int) -> None:
        self.generation_tokens.labels(self.model).inc(n)
