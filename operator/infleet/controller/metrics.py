"""The operator's own Prometheus series; names and labels are the contract in docs/metrics.md (Operator).

They live in a private registry so tests and several operators in one process never collide, and a
deployment that disappears takes its labelled series with it (`forget_deployment`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

RESULTS = ("success", "retry", "error", "permanent_error")
REPLICA_STATES = ("desired", "ready", "warm")


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.reconcile_total = Counter("infleet_reconcile_total", "Reconciles run.", ["kind", "result"], registry=r)
        self.reconcile_duration = Histogram(
            "infleet_reconcile_duration_seconds", "Time per reconcile.", ["kind"], registry=r
        )
        self.queue_wait = Histogram(
            "infleet_reconcile_queue_wait_seconds",
            "Time a deployment or pool waited, ready, for a reconcile worker; lane urgent: new or edited specs.",
            ["lane"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.events_dropped = Counter(
            "infleet_events_dropped",
            "Kubernetes Events not posted because the queue in front of the API server was full.",
            registry=r,
        )
        self.deployment_replicas = Gauge(
            "infleet_deployment_replicas",
            "Replicas per deployment and pool.",
            ["namespace", "deployment", "pool", "state"],
            registry=r,
        )
        self.deployment_cost = Gauge(
            "infleet_deployment_cost_per_hour_usd",
            "Current hourly cost of the deployment's replicas (serving and warm).",
            ["namespace", "deployment"],
            registry=r,
        )
        self.slo_target = Gauge(
            "infleet_deployment_slo_latency_target_seconds",
            "Declared latency targets.",
            ["namespace", "deployment", "slo"],
            registry=r,
        )
        self.fleet_cost = Gauge("infleet_fleet_cost_per_hour_usd", "The whole fleet's hourly cost.", registry=r)
        self.pool_saturated = Gauge(
            "infleet_pool_saturated",
            "1 while the pool is out of capacity and fallback is active.",
            ["pool"],
            registry=r,
        )
        self.pool_info = Gauge(
            "infleet_pool_info",
            "1 per AcceleratorPool; labels say what it is (join on pool).",
            ["pool", "family", "product", "capacity_type"],
            registry=r,
        )
        self.scale_events = Counter(
            "infleet_scale_events_total",
            "Scaling decisions applied.",
            ["namespace", "deployment", "pool", "direction"],
            registry=r,
        )
        efficiency_labels = ["namespace", "deployment", "pool", "family", "source"]
        self.energy_per_mtok = Gauge(
            "infleet_deployment_energy_wh_per_million_tokens",
            "Energy per million generated tokens per pool, Wh (measured from the workers or estimated).",
            efficiency_labels,
            registry=r,
        )
        self.cost_per_mtok = Gauge(
            "infleet_deployment_cost_usd_per_million_tokens",
            "Cost per million generated tokens per pool, USD (measured tokens or estimated).",
            efficiency_labels,
            registry=r,
        )
        self._efficiency: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
        # What each deployment last reported, so stale pool series can be removed and the fleet cost summed.
        self._pools: dict[tuple[str, str], set[str]] = {}
        self._costs: dict[tuple[str, str], float] = {}
        self._slos: dict[tuple[str, str], set[str]] = {}
        self._pool_info: dict[str, tuple[str, str, str]] = {}  # pool -> (family, product, capacity_type)

    def observe_reconcile(self, kind: str, result: str, seconds: float) -> None:
        if result not in RESULTS:
            raise ValueError(f"unknown reconcile result {result!r}; expected one of {RESULTS}")
        self.reconcile_total.labels(kind=kind, result=result).inc()
        self.reconcile_duration.labels(kind=kind).observe(seconds)

    def set_deployment(
        self,
        namespace: str,
        deployment: str,
        replicas: Mapping[str, Mapping[str, int]],
        cost_per_hour: float,
        slo_targets: Mapping[str, float],
    ) -> None:
        """Publish one deployment's state; `replicas` is pool -> state (desired/ready/warm) -> count."""
        key = (namespace, deployment)
        for pool in self._pools.get(key, set()) - set(replicas):
            for state in REPLICA_STATES:
                self._remove(self.deployment_replicas, namespace, deployment, pool, state)
        for pool, states in replicas.items():
            for state in REPLICA_STATES:
                self.deployment_replicas.labels(namespace, deployment, pool, state).set(states.get(state, 0))
        self._pools[key] = set(replicas)
        for slo in self._slos.get(key, set()) - set(slo_targets):
            self._remove(self.slo_target, namespace, deployment, slo)
        for slo, seconds in slo_targets.items():
            self.slo_target.labels(namespace, deployment, slo).set(seconds)
        self._slos[key] = set(slo_targets)
        self.deployment_cost.labels(namespace, deployment).set(cost_per_hour)
        self._costs[key] = cost_per_hour
        self.fleet_cost.set(sum(self._costs.values()))

    def set_efficiency(
        self, namespace: str, deployment: str, rows: Iterable[tuple[str, str, str, float | None, float | None]]
    ) -> None:
        """Per pool (pool, family, source, Wh per Mtok, $ per Mtok); series not reported again are removed."""
        key = (namespace, deployment)
        seen: set[tuple[str, str, str]] = set()
        for pool, family, source, wh, usd in rows:
            labels = (pool, family, source)
            if wh is not None:
                self.energy_per_mtok.labels(namespace, deployment, *labels).set(wh)
            else:
                self._remove(self.energy_per_mtok, namespace, deployment, *labels)
            if usd is not None:
                self.cost_per_mtok.labels(namespace, deployment, *labels).set(usd)
                seen.add(labels)
        for labels in self._efficiency.get(key, set()) - seen:
            self._remove(self.energy_per_mtok, namespace, deployment, *labels)
            self._remove(self.cost_per_mtok, namespace, deployment, *labels)
        self._efficiency[key] = seen

    def forget_deployment(self, namespace: str, deployment: str) -> None:
        self.set_efficiency(namespace, deployment, ())
        key = (namespace, deployment)
        for pool in self._pools.pop(key, set()):
            for state in REPLICA_STATES:
                self._remove(self.deployment_replicas, namespace, deployment, pool, state)
        for slo in self._slos.pop(key, set()):
            self._remove(self.slo_target, namespace, deployment, slo)
        if self._costs.pop(key, None) is not None:
            self._remove(self.deployment_cost, namespace, deployment)
        self.fleet_cost.set(sum(self._costs.values()))

    def set_saturated(self, saturated: Iterable[str], all_pools: Iterable[str]) -> None:
        hot = set(saturated)
        for pool in set(all_pools) | hot:
            self.pool_saturated.labels(pool=pool).set(1 if pool in hot else 0)

    def set_pool_info(self, pool: str, family: str, product: str, capacity_type: str) -> None:
        """One series per pool: a changed label (a pool recreated as other hardware) replaces the old series."""
        labels = (family, product, capacity_type)
        before = self._pool_info.get(pool)
        if before is not None and before != labels:
            self._remove(self.pool_info, pool, *before)
        self.pool_info.labels(pool, *labels).set(1)
        self._pool_info[pool] = labels

    def forget_pool(self, pool: str) -> None:
        before = self._pool_info.pop(pool, None)
        if before is not None:
            self._remove(self.pool_info, pool, *before)
        self._remove(self.pool_saturated, pool)

    def count_scale(self, namespace: str, deployment: str, pool: str, before: int, after: int) -> None:
        if after != before:
            direction = "up" if after > before else "down"
            self.scale_events.labels(namespace, deployment, pool, direction).inc()

    @staticmethod
    def _remove(metric: Gauge, *labels: str) -> None:
        with contextlib.suppress(KeyError):
            metric.remove(*labels)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
