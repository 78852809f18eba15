"""What the gateway knows about deployments and their replicas: filled by discovery (static file or the API
watch) and by the worker probes, read by admission on every request (no API call per request)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from infleet.policy.routing import ReplicaLoad, ReplicaState, WorkerReading
from infleet.runtimes import DEFAULT_ENGINE

DEFAULT_MAX_IN_FLIGHT = 16


@dataclass(frozen=True, kw_only=True)
class ReplicaSpec:
    """A replica as discovery reports it."""

    replica_id: str  # pod namespace/name, or the URL in static mode
    url: str  # base URL, e.g. http://10.0.0.7:8000
    pool: str
    ready: bool  # the pod is Ready (kube mode); static replicas start unready until probed
    terminating: bool = False
    capacity_rps: float | None = None
    engine: str = DEFAULT_ENGINE  # the serving stack (`runtimes.<family>.engine`): what the probe reads


@dataclass(kw_only=True)
class Replica:
    """A replica plus what the gateway learns at run time (its own in-flight count, the worker's gauges)."""

    spec: ReplicaSpec
    in_flight: int = 0
    probe_ok: bool | None = None  # None: not probed yet
    worker_state: str | None = None  # the worker's lifecycle state from its /metrics, when it exports one
    worker: WorkerReading | None = None
    cooldown_until_s: float = -math.inf  # after a connection failure: unroutable until then or a good probe

    @property
    def replica_id(self) -> str:
        return self.spec.replica_id

    def routing_state(self, now_s: float, *, probe_gates_ready: bool) -> ReplicaState:
        if self.spec.terminating or self.worker_state == "draining":
            return "draining"
        if self.worker_state == "warm":
            return "warm"
        if not self.spec.ready or now_s < self.cooldown_until_s or self.worker_state == "starting":
            return "unready"
        if probe_gates_ready and not self.probe_ok:
            return "unready"
        return "serving"


@dataclass(frozen=True, kw_only=True)
class DeploymentSpec:
    namespace: str
    name: str
    model: str
    ttft_slo_s: float | None = None  # spec.slo.ttftP99Ms
    latency_slo_s: float | None = None  # spec.slo.p99LatencyMs
    pool_capacity_rps: tuple[tuple[str, float], ...] = ()  # status.pools[].replicaCapacityRps

    def capacity_of(self, pool: str) -> float | None:
        return dict(self.pool_capacity_rps).get(pool)


@dataclass(kw_only=True)
class Deployment:
    spec: DeploymentSpec
    replicas: dict[str, Replica] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.spec.namespace, self.spec.name)

    def capacity(self, replica: Replica) -> float | None:
        """The replica's own capacity (static mode) or its pool's from the deployment's status."""
        return replica.spec.capacity_rps if replica.spec.capacity_rps is not None \
            else self.spec.capacity_of(replica.spec.pool)

    def max_in_flight(self, replica: Replica, default: int) -> int:
        """Little's law: a replica sustaining C req/s within a latency L holds about C*L requests; without both
        numbers, the flat default."""
        cap = self.capacity(replica)
        if cap is None or self.spec.latency_slo_s is None:
            return default
        return max(1, math.ceil(cap * self.spec.latency_slo_s))

    def loads(self, now_s: float, *, default_max_in_flight: int, probe_gates_ready: bool) -> list[ReplicaLoad]:
        return [ReplicaLoad(replica_id=r.replica_id, pool=r.spec.pool,
                            state=r.routing_state(now_s, probe_gates_ready=probe_gates_ready),
                            in_flight=r.in_flight, max_in_flight=self.max_in_flight(r, default_max_in_flight),
                            capacity_rps=self.capacity(r), worker=r.worker)
                for r in self.replicas.values()]

    def serving_count(self, now_s: float, *, probe_gates_ready: bool) -> int:
        return sum(r.routing_state(now_s, probe_gates_ready=probe_gates_ready) == "serving"
                   for r in self.replicas.values())


class EndpointTable:
    """Deployments by (namespace, name) and by served model name; `on_change` runs after every update so the
    admission queues can hand waiting requests to a replica that just became routable."""

    def __init__(self) -> None:
        self.deployments: dict[tuple[str, str], Deployment] = {}
        self.listeners: list[Callable[[tuple[str, str]], None]] = []

    def by_model(self, model: str) -> Deployment | None:
        matches = [d for d in self.deployments.values() if d.spec.model == model]
        if not matches:
            return None
        return min(matches, key=lambda d: d.key)  # the same model in two namespaces: one stable choice

    def models(self) -> list[str]:
        return sorted({d.spec.model for d in self.deployments.values()})

    def upsert_deployment(self, spec: DeploymentSpec) -> Deployment:
        key = (spec.namespace, spec.name)
        dep = self.deployments.get(key)
        if dep is None:
            dep = self.deployments[key] = Deployment(spec=spec)
        else:
            dep.spec = spec
        self._changed(key)
        return dep

    def remove_deployment(self, key: tuple[str, str]) -> None:
        if self.deployments.pop(key, None) is not None:
            self._changed(key)

    def upsert_replica(self, key: tuple[str, str], spec: ReplicaSpec) -> None:
        """Add or update one replica; its run-time state (in-flight, probes) survives the update."""
        dep = self.deployments.get(key)
        if dep is None:
            dep = self.deployments[key] = Deployment(spec=DeploymentSpec(namespace=key[0], name=key[1], model=""))
        existing = dep.replicas.get(spec.replica_id)
        if existing is None:
            dep.replicas[spec.replica_id] = Replica(spec=spec)
        else:
            if (existing.spec.url, existing.spec.engine) != (spec.url, spec.engine):
                # a new pod IP or serving stack: what we learned about the old one is void
                existing.probe_ok, existing.worker_state, existing.worker = None, None, None
            existing.spec = spec
        self._changed(key)

    def remove_replica(self, key: tuple[str, str], replica_id: str) -> None:
        dep = self.deployments.get(key)
        if dep is not None and dep.replicas.pop(replica_id, None) is not None:
            self._changed(key)

    def replace_replicas(self, key: tuple[str, str], specs: Iterable[ReplicaSpec]) -> None:
        specs = list(specs)
        dep = self.deployments.get(key)
        if dep is not None:
            for rid in set(dep.replicas) - {s.replica_id for s in specs}:
                del dep.replicas[rid]
        for s in specs:
            self.upsert_replica(key, s)
        self._changed(key)

    def all_replicas(self) -> list[tuple[Deployment, Replica]]:
        return [(d, r) for d in self.deployments.values() for r in d.replicas.values()]

    def notify(self, key: tuple[str, str]) -> None:
        self._changed(key)

    def _changed(self, key: tuple[str, str]) -> None:
        for listener in self.listeners:
            listener(key)
