"""Per-deployment admission: a bounded FIFO of requests waiting for a replica with room.

A request that finds a replica with room (and nobody ahead of it) goes at once; otherwise it waits, first come
first served, until `pump` hands it a replica: after a request finishes, a replica turns ready, or discovery
changes. It gives up after its deadline: the SLO-derived wait while the deployment has serving replicas, the
longer cold-start wait while it has none (scale from zero: the operator sees the queue and starts one).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from infleet.policy.routing import RouteDecision, RoutingConfig, route
from infleet_gateway.metrics import GatewayMetrics
from infleet_gateway.replicas import Deployment, EndpointTable, Replica


@dataclass(frozen=True, kw_only=True)
class AdmissionConfig:
    max_queue: int = 256  # per deployment; beyond it a request gets 429 at once
    queue_timeout_slo_multiple: float = 2.0  # wait at most this many times the TTFT (else p99 latency) SLO...
    min_queue_timeout_s: float = 1.0  # ... but at least this long
    default_queue_timeout_s: float = 10.0  # when the deployment declares no SLO
    cold_start_timeout_s: float = 300.0  # how long requests are held while the deployment has no serving replica
    default_max_in_flight: int = 16  # per replica, when capacity or latency SLO is unknown
    probe_gates_ready: bool = True  # static mode: a replica is routable only after a good probe

    def __post_init__(self) -> None:
        if self.max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if min(self.queue_timeout_slo_multiple, self.min_queue_timeout_s, self.default_queue_timeout_s,
               self.cold_start_timeout_s) <= 0:
            raise ValueError("queue timeouts must be > 0")
        if self.default_max_in_flight < 1:
            raise ValueError("default_max_in_flight must be >= 1")

    def queue_timeout_s(self, dep: Deployment) -> float:
        slo = dep.spec.ttft_slo_s or dep.spec.latency_slo_s
        if slo is None:
            return self.default_queue_timeout_s
        return max(self.min_queue_timeout_s, self.queue_timeout_slo_multiple * slo)


class QueueFullError(Exception):
    pass


class ShuttingDownError(Exception):
    """The gateway is stopping: queued requests are answered at once so clients retry on another replica."""


class QueueTimeoutError(Exception):
    def __init__(self, waited_s: float, cold: bool) -> None:
        super().__init__(f"waited {waited_s:.1f}s")
        self.waited_s, self.cold = waited_s, cold


@dataclass(kw_only=True)
class Slot:
    """A replica reserved for one request; `release` exactly once when the request is over."""

    deployment: Deployment
    replica: Replica
    decision: RouteDecision
    queued_s: float


@dataclass(kw_only=True)
class _Waiter:
    future: asyncio.Future[Slot]
    prefix_key: str | None
    exclude: frozenset[str]
    arrived_s: float
    held_until_s: float | None = None  # last time this waiter saw the deployment with no serving replica


class Admission:
    def __init__(self, table: EndpointTable, metrics: GatewayMetrics, config: AdmissionConfig,
                 routing: RoutingConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.table, self.metrics, self.config, self.routing, self.clock = table, metrics, config, routing, clock
        self.queues: dict[tuple[str, str], collections.deque[_Waiter]] = {}
        self.closing = False
        table.listeners.append(self.pump)

    def close(self) -> None:
        """Refuse new requests and release every queued one with ShuttingDownError (in-flight ones go on)."""
        self.closing = True
        for key, queue in self.queues.items():
            while queue:
                waiter = queue.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(ShuttingDownError("the gateway is shutting down"))
            self._set_depth(key)

    def queue_depth(self, key: tuple[str, str]) -> int:
        return len(self.queues.get(key, ()))

    async def acquire(self, dep: Deployment, *, prefix_key: str | None = None,
                      exclude: frozenset[str] = frozenset()) -> Slot:
        """A slot on a routable replica, waiting in the deployment's queue if needed."""
        if self.closing:
            raise ShuttingDownError("the gateway is shutting down")
        key = dep.key
        queue = self.queues.setdefault(key, collections.deque())
        now = self.clock()
        if not queue:
            slot = self._try_route(dep, prefix_key, exclude, now)
            if slot is not None:
                return slot
        if len(queue) >= self.config.max_queue:
            raise QueueFullError(f"{len(queue)} requests already queued for {dep.spec.model}")
        waiter = _Waiter(future=asyncio.get_running_loop().create_future(), prefix_key=prefix_key,
                         exclude=exclude, arrived_s=now)
        queue.append(waiter)
        self._set_depth(key)
        try:
            while True:
                timeout = self._deadline(dep, waiter) - self.clock()
                if timeout <= 0:
                    cold = dep.serving_count(self.clock(), probe_gates_ready=self.config.probe_gates_ready) == 0
                    raise QueueTimeoutError(self.clock() - now, cold)
                # Wake at least once a second: the deadline depends on whether replicas exist, which can change.
                done, _ = await asyncio.wait({waiter.future}, timeout=min(timeout, 1.0))
                if done:
                    return waiter.future.result()
                self.pump(key)
                if waiter.future.done():
                    return waiter.future.result()
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.release(waiter.future.result())  # handed a replica just as we gave up: give it back
            else:
                waiter.future.cancel()
            raise
        finally:
            if waiter in queue:
                queue.remove(waiter)
            self._set_depth(key)

    def _deadline(self, dep: Deployment, waiter: _Waiter) -> float:
        """A request held while no replica served (a scale from zero, a fallback's cold start) gets the SLO-derived
        queue wait from when a replica serves again, not from its arrival: it waited for capacity, not in line."""
        now = self.clock()
        serving = dep.serving_count(now, probe_gates_ready=self.config.probe_gates_ready)
        if not serving:
            waiter.held_until_s = now
            return waiter.arrived_s + self.config.cold_start_timeout_s
        start = max(waiter.arrived_s, waiter.held_until_s or waiter.arrived_s)
        return start + self.config.queue_timeout_s(dep)

    def retry_after_s(self, dep: Deployment) -> int:
        return max(1, math.ceil(self.config.queue_timeout_s(dep)))

    def release(self, slot: Slot) -> None:
        r = slot.replica
        r.in_flight = max(0, r.in_flight - 1)
        d = slot.deployment.spec
        m = self.metrics
        m.child(m.in_flight, d.namespace, d.name).dec()
        m.child(m.replica_in_flight, d.namespace, d.name, r.spec.pool, r.replica_id).set(r.in_flight)
        self.pump(slot.deployment.key)

    def pump(self, key: tuple[str, str]) -> None:
        """Hand replicas with room to the waiters, in arrival order."""
        queue = self.queues.get(key)
        dep = self.table.deployments.get(key)
        if not queue or dep is None:
            return
        now = self.clock()
        while queue:
            waiter = queue[0]
            if waiter.future.done():
                queue.popleft()
                continue
            slot = self._try_route(dep, waiter.prefix_key, waiter.exclude, now, queued_since=waiter.arrived_s)
            if slot is None:
                break
            queue.popleft()
            waiter.future.set_result(slot)
        self._set_depth(key)

    def _try_route(self, dep: Deployment, prefix_key: str | None, exclude: frozenset[str], now: float,
                   queued_since: float | None = None) -> Slot | None:
        loads = dep.loads(now, default_max_in_flight=self.config.default_max_in_flight,
                          probe_gates_ready=self.config.probe_gates_ready)
        decision = route(loads, now_s=now, config=self.routing, prefix_key=prefix_key, exclude=exclude)
        if decision is None and exclude:  # a retry: a replica tried before beats no replica at all
            decision = route(loads, now_s=now, config=self.routing, prefix_key=prefix_key)
        if decision is None:
            return None
        replica = dep.replicas[decision.replica_id]
        replica.in_flight += 1
        d = dep.spec
        m = self.metrics
        m.child(m.in_flight, d.namespace, d.name).inc()
        m.child(m.replica_in_flight, d.namespace, d.name, replica.spec.pool, replica.replica_id).set(replica.in_flight)
        m.child(m.routed, d.namespace, d.name, replica.spec.pool, replica.replica_id, decision.reason).inc()
        return Slot(deployment=dep, replica=replica, decision=decision,
                    queued_s=0.0 if queued_since is None else now - queued_since)

    def _set_depth(self, key: tuple[str, str]) -> None:
        # Only pending waiters are queued: pump pops a waiter before resolving it, acquire removes its own.
        self.metrics.child(self.metrics.queue_depth, *key).set(len(self.queues.get(key, ())))
