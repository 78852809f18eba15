"""kopf wiring, deliberately thin: every handler reads the object, calls `reconcile`, writes status and Events.

Handlers are registered into a fresh registry (no module-level decorators), so the CLI and tests can build an
operator with their own settings. A per-object lock keeps the timer and the create/update handlers of one
InferenceDeployment from reconciling it at the same time.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from infleet.api import GROUP, VERSION
from infleet.controller.kube import Kube, is_transient
from infleet.controller.loopstate import LoopStates
from infleet.controller.metrics import OperatorMetrics
from infleet.controller.observe import parse_pools
from infleet.controller.reconcile import Settings, emit, reconcile
from infleet.controller.slorules import SloRules
from infleet.controller.snapshot import ClusterView, infleet_devices_by_pool, node_usage, pool_capacity
from infleet.controller.status import merge_conditions
from infleet.policy.conditions import Cond

log = logging.getLogger("infleet.controller")

DEPLOYMENTS = "inferencedeployments"
POOLS = "acceleratorpools"


@dataclass
class Context:
    kube: Kube
    settings: Settings
    metrics: OperatorMetrics
    interval_s: float = 10.0
    slo_rules: SloRules | None = None  # None: no PrometheusRules (unit tests); the CLI always sets one
    states: LoopStates = field(default_factory=LoopStates)
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    guard: threading.Lock = field(default_factory=threading.Lock)

    def lock_for(self, key: str) -> threading.Lock:
        with self.guard:
            return self.locks.setdefault(key, threading.Lock())


def deployment_status_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{DEPLOYMENTS}/{name}/status"


def reconcile_deployment(ctx: Context, body: Mapping[str, Any]) -> None:
    """One reconcile with metrics; transient API trouble becomes kopf.TemporaryError (retried with backoff)."""
    meta = body["metadata"]
    key = f"{meta['namespace']}/{meta['name']}"
    started = time.perf_counter()
    result = "success"
    try:
        with ctx.lock_for(key):
            current = ctx.kube.get(
                f"/apis/{GROUP}/{VERSION}/namespaces/{meta['namespace']}/{DEPLOYMENTS}/{meta['name']}"
            )
            if current is None or current["metadata"].get("deletionTimestamp"):
                return
            now = datetime.now(UTC)
            outcome = reconcile(ctx.kube, current, now, ctx.settings, ctx.metrics, ctx.states)
            ctx.kube.merge_patch(deployment_status_path(meta["namespace"], meta["name"]), {"status": outcome.status})
            emit(ctx.kube, current, outcome, now)
            if ctx.slo_rules is not None:
                ctx.slo_rules.sync(current)
            log.info(
                "reconciled %s: %s",
                key,
                ", ".join(f"{c['type']}={c['status']}" for c in outcome.status.get("conditions", [])),
            )
    except ApiException as exc:
        if is_transient(exc) or exc.status in (404, 409):
            result = "retry"
            raise kopf.TemporaryError(f"Kubernetes API: {exc.status} {exc.reason}", delay=5) from exc
        result = "error"
        raise
    except Exception as exc:
        if is_transient(exc):
            result = "retry"
            raise kopf.TemporaryError(f"Kubernetes API unreachable: {exc}", delay=5) from exc
        result = "error"
        raise
    finally:
        ctx.metrics.observe_reconcile("InferenceDeployment", result, time.perf_counter() - started)


def reconcile_pool(ctx: Context, body: Mapping[str, Any]) -> None:
    """Pool status: nodes, devices, and whether any deployment found it saturated."""
    started = time.perf_counter()
    result = "success"
    try:
        name = body["metadata"]["name"]
        pools, _ = parse_pools([dict(body)])
        if name not in pools:
            result = "permanent_error"
            raise kopf.PermanentError(f"AcceleratorPool {name} is invalid")
        pool = pools[name]
        nodes = ctx.kube.list("/api/v1/nodes")
        pods = ctx.kube.list("/api/v1/pods", field_selector="status.phase!=Succeeded,status.phase!=Failed")
        cap = pool_capacity(pool, node_usage(nodes, pods, {}, ""), {}, 1)
        used = infleet_devices_by_pool(ClusterView(pools=[], nodes=nodes, pods=pods), pools).get(name, {})
        infds = ctx.kube.list(f"/apis/{GROUP}/{VERSION}/{DEPLOYMENTS}")
        by = sorted(
            f"{d['metadata']['namespace']}/{d['metadata']['name']}"
            for d in infds
            for p in (d.get("status") or {}).get("pools") or []
            if p.get("pool") == name and p.get("saturated")
        )
        now = datetime.now(UTC)
        conds = [
            Cond(
                "Ready",
                "True" if cap.nodes else "False",
                "NodesFound" if cap.nodes else "NoNodes",
                f"{cap.nodes} ready node(s) match the nodeSelector"
                if cap.nodes
                else "no ready node matches the nodeSelector",
            ),
            Cond(
                "Saturated",
                "True" if by else "False",
                "ReplicasUnschedulable" if by else "HasCapacity",
                f"replicas stayed unschedulable here; fallback active for {', '.join(by)}"
                if by
                else "no fallback active",
            ),
        ]
        prev = (body.get("status") or {}).get("conditions") or []
        status = {
            "observedGeneration": body["metadata"].get("generation"),
            "nodes": cap.nodes,
            "allocatableDevices": cap.allocatable_devices,
            "allocatedDevices": round(sum(used.values())),
            "saturated": bool(by),
            "conditions": merge_conditions(prev, conds, now, body["metadata"].get("generation")),
        }
        ctx.kube.merge_patch(f"/apis/{GROUP}/{VERSION}/{POOLS}/{name}/status", {"status": status})
        ctx.metrics.pool_saturated.labels(pool=name).set(1 if by else 0)
        spec = pool.spec
        ctx.metrics.set_pool_info(name, spec.accelerator.family, spec.accelerator.product, spec.capacity_type)
    except ApiException as exc:
        result = "retry" if is_transient(exc) else "error"
        raise kopf.TemporaryError(f"Kubernetes API: {exc.status} {exc.reason}", delay=5) from exc
    finally:
        ctx.metrics.observe_reconcile("AcceleratorPool", result, time.perf_counter() - started)


def connection_info(kube: Kube, settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    config = kube.api.configuration
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        trust_env=settings.networking.trust_env,
    )


def register_handlers(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    resource = (GROUP, VERSION, DEPLOYMENTS)

    def on_change(body: kopf.Body, **_: Any) -> None:
        reconcile_deployment(ctx, body)

    def on_delete(body: kopf.Body, **_: Any) -> None:
        # Owner references make the garbage collector remove the workloads; only our own series go here.
        ctx.metrics.forget_deployment(body["metadata"]["namespace"], body["metadata"]["name"])
        if ctx.settings.meter is not None:
            ctx.settings.meter.forget(f"{body['metadata']['namespace']}/{body['metadata']['name']}")
        ctx.states.forget(body["metadata"]["uid"])

    def on_pool(body: kopf.Body, **_: Any) -> None:
        reconcile_pool(ctx, body)

    def on_pool_delete(body: kopf.Body, **_: Any) -> None:
        ctx.metrics.forget_pool(body["metadata"]["name"])

    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        # kopf talks to the API with the same credentials as the operator's client (loaded once in the CLI
        # from --kubeconfig, the service account, or $KUBECONFIG), so both always agree on the cluster.
        return connection_info(ctx.kube, settings)

    kopf.on.login(registry=registry, id="login")(login)
    kopf.on.create(*resource, registry=registry, id="place")(on_change)
    kopf.on.update(*resource, registry=registry, id="replace", field="spec")(on_change)
    kopf.timer(*resource, registry=registry, id="converge", interval=ctx.interval_s, initial_delay=0.5)(on_change)
    kopf.on.delete(*resource, registry=registry, id="forget", optional=True)(on_delete)
    kopf.on.delete(GROUP, VERSION, POOLS, registry=registry, id="forget-pool", optional=True)(on_pool_delete)
    kopf.timer(GROUP, VERSION, POOLS, registry=registry, id="observe", interval=max(ctx.interval_s, 5.0))(on_pool)
    _timers_without_finalizers(registry)


def _timers_without_finalizers(registry: kopf.OperatorRegistry) -> None:
    """Drop the finalizer kopf puts on every object that has a timer.

    kopf adds it so a timer can stop gracefully before its object goes; but with the operator stopped (uninstalled,
    scaled to zero, a test that ended) it makes every InferenceDeployment and AcceleratorPool undeletable, and
    their namespaces hang in Terminating. Our timers need no goodbye: a reconcile is idempotent and owner
    references do the cleanup. kopf has no public switch for this, so the registered timer handlers are rewritten;
    if kopf's internals ever change shape, the finalizers simply stay (with a warning).
    """
    spawning = getattr(registry, "_spawning", None)
    handlers = getattr(spawning, "_handlers", None)
    if not isinstance(handlers, list) or not all(dataclasses.is_dataclass(h) for h in handlers):
        log.warning("kopf internals changed: timers keep their finalizers")
        return
    handlers[:] = [
        dataclasses.replace(h, requires_finalizer=False) if getattr(h, "requires_finalizer", None) else h
        for h in handlers
    ]
