"""The gateway's Prometheus series, named exactly as in docs/metrics.md (Gateway section). The first six are a
contract the operator scales on (`infleet.controller.gateway_signals` parses them); every series carries
`namespace` and `deployment` (the InferenceDeployment)."""

from __future__ import annotations

import contextlib
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

# The worker's layout (docs/metrics.md), so an SLO target is an exact bucket boundary here too.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
M = TypeVar("M", bound=MetricWrapperBase)
REJECT_REASONS = ("queue_full", "queue_timeout", "upstream_error", "shutting_down")
ROUTE_REASONS = ("least_load", "affinity", "affinity_spill")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, d = self.registry, ["namespace", "deployment"]
        p = "infleet_gateway_"
        self.queue_depth = Gauge(p + "queue_depth", "Requests waiting in the gateway queue for a replica", d,
                                 registry=r)
        self.in_flight = Gauge(p + "in_flight", "Requests sent upstream and not finished", d, registry=r)
        self.received = Counter(p + "requests_received", "Requests accepted for a known model, at arrival", d,
                                registry=r)
        self.ttft = Histogram(p + "ttft_seconds", "Arrival at the gateway to the first generated token "
                              "(streamed requests)", d, buckets=LATENCY_BUCKETS, registry=r)
        self.duration = Histogram(p + "request_duration_seconds", "Arrival at the gateway to the last byte, "
                                  "queueing included", d, buckets=LATENCY_BUCKETS, registry=r)
        self.rejected = Counter(p + "rejected", "Requests answered with an error by the gateway itself",
                                [*d, "reason"], registry=r)
        self.queue_wait = Histogram(p + "queue_wait_seconds", "Time a request waited for a replica with room", d,
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram(p + "overhead_seconds", "The gateway's own time before the request goes "
                                  "upstream (parsing, routing), queueing excluded", d, buckets=OVERHEAD_BUCKETS,
                                  registry=r)
        rep = [*d, "pool", "replica"]
        self.replica_in_flight = Gauge(p + "replica_in_flight", "Requests in flight per replica", rep, registry=r)
        self.routed = Counter(p + "routed", "Routing decisions per replica and reason (least_load, affinity, "
                              "affinity_spill)", [*rep, "reason"], registry=r)
        self.upstream_failures = Counter(p + "upstream_failures", "Upstream failures by phase (before_first_byte:"
                                         " retried; mid_stream: the client got an error event)",
                                         [*d, "pool", "phase"], registry=r)
        self.replicas = Gauge(p + "replicas", "Replicas known to the gateway by routing state", [*d, "state"],
                              registry=r)
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}

    def child(self, metric: M, *labels: str) -> M:
        """`metric.labels(*labels)`, memoised: the per-request path touches about ten series, and the client
        library's label lookup (validation, locking) costs more than the update itself."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found  # type: ignore[return-value]

    def declare(self, namespace: str, deployment: str) -> None:
        """Export zeros for a deployment as soon as it is known, so rate() and the operator see it at once."""
        self.queue_depth.labels(namespace, deployment).set(0)
        self.in_flight.labels(namespace, deployment)
        self.received.labels(namespace, deployment)
        for reason in REJECT_REASONS:
            self.rejected.labels(namespace, deployment, reason)

    def forget_replica(self, namespace: str, deployment: str, pool: str, replica: str) -> None:
        self._children.pop((id(self.replica_in_flight), (namespace, deployment, pool, replica)), None)
        with contextlib.suppress(KeyError):
            self.replica_in_flight.remove(namespace, deployment, pool, replica)
