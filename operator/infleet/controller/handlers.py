"""The operator's wiring: watches feed an index and a reconcile queue; the elected leader's workers reconcile.

kopf runs the process (login, start-up and clean-up, liveness) and delivers InferenceDeployment events; informers
(:mod:`infleet.controller.informer`) watch the AcceleratorPools, the Pods and Nodes of the whole cluster (device use
is cluster-wide, whatever namespaces the operator serves), the worker Deployments and the PersistentVolumeClaims;
reconciles start only once every informer has delivered its first listing. Every
event lands in the :class:`~infleet.controller.index.ClusterIndex`, which says which deployments it concerns; those
keys go to the :class:`~infleet.controller.workqueue.WorkQueue`. A reconcile reads only the index (no LIST per
pass), writes only what changed, and asks to run again after the autoscaler's period (Auto mode with scraping) or
a slow resync. Only the holder of the Lease (:mod:`infleet.controller.leader`) reconciles; other replicas keep
their indexes and queues warm and take over within seconds. No handler puts a finalizer on anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from infleet.api import GROUP, VERSION
from infleet.controller.events import EventRecorder
from infleet.controller.index import ClusterIndex, Key
from infleet.controller.inferencepool import InferencePools
from infleet.controller.informer import Informer
from infleet.controller.kube import Kube, Obj
from infleet.controller.leader import LeaseElector
from infleet.controller.ledger import CapacityLedger
from infleet.controller.loopstate import LoopStates
from infleet.controller.manifests import MANAGED_BY, MANAGER
from infleet.controller.metrics import OperatorMetrics
from infleet.controller.observe import parse_pools
from infleet.controller.reconcile import Settings, emit, owner_of, reconcile
from infleet.controller.slorules import SloRules
from infleet.controller.snapshot import infleet_devices_by_pool, node_usage, pool_capacity
from infleet.controller.status import merge_conditions
from infleet.controller.workqueue import WorkQueue
from infleet.policy.conditions import Cond

log = logging.getLogger("infleet.controller")

DEPLOYMENTS = "inferencedeployments"
POOLS = "acceleratorpools"
# How long a loop state that only grew (new measurements, same decision) may wait before it is written to status.
STATE_WRITE_EVERY_S = 30.0
# How often an unchanged PrometheusRule is applied again anyway (someone may have deleted or edited it).
RULES_RESYNC_S = 300.0


@dataclass
class Context:
    kube: Kube
    settings: Settings
    metrics: OperatorMetrics
    interval_s: float = 10.0  # the autoscaler's period: how often an Auto deployment is measured and decided
    resync_s: float = 60.0  # every other deployment and pool is reconciled at least this often
    namespaces: tuple[str, ...] = ()  # () : every namespace
    workers: int = 4
    coalesce_s: float = 1.0  # ordinary events of one deployment within this window cost one reconcile
    slo_rules: SloRules | None = None  # None: no PrometheusRules (unit tests); the CLI always sets one
    inference_pools: InferencePools | None = None  # None: no InferencePools (unit tests); the CLI always sets one
    states: LoopStates = field(default_factory=LoopStates)
    index: ClusterIndex = field(default_factory=ClusterIndex)
    ledger: CapacityLedger = field(default_factory=CapacityLedger)
    events: EventRecorder | None = None  # None: Events are posted inside the reconcile (unit tests)
    elector: LeaseElector | None = None  # None: standalone, always active
    queue: WorkQueue | None = None
    informers: list[Informer] = field(default_factory=list)
    applied_services: dict[str, str] = field(default_factory=dict)
    short: set[Key] = field(default_factory=set)  # deployments last placed short of capacity: woken when room frees
    state_written: dict[str, float] = field(default_factory=dict)  # uid -> monotonic time of the last state write
    # uid -> (generation, APIs present, when) of the last PrometheusRule and InferencePool sync
    rules_synced: dict[str, tuple[int, tuple[bool, bool], float]] = field(default_factory=dict)

    def active(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    def wake_short(self, but: Key | None = None) -> None:
        """Queue the deployments that were short of capacity: a pod left a node, a node offers room, a plan shrank."""
        self.enqueue({k for k in list(self.short) if k != but})

    def enqueue(self, keys: set[Key], *, urgent: set[Key] | frozenset[Key] = frozenset()) -> None:
        if self.queue is not None:
            for key in sorted(urgent):
                self.queue.add(("infd", *key), urgent=True)
            for key in keys - urgent:
                self.queue.add(("infd", *key))


def deployment_status_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{DEPLOYMENTS}/{name}/status"


# -- reconciles --------------------------------------------------------------------------------------------------


def reconcile_key(ctx: Context, key: Hashable) -> float | None:
    """One queued key; returns when it should run again (None: only on an event)."""
    kind, namespace, name = cast(tuple[str, str, str], key)
    if kind == "pool":
        reconcile_pool(ctx, name)
        return ctx.resync_s
    return reconcile_deployment(ctx, (namespace, name))


def reconcile_deployment(ctx: Context, key: Key) -> float | None:
    """Observe, decide, execute; write status and Events only when something changed."""
    started = time.perf_counter()
    result = "success"
    try:
        body = ctx.index.deployment(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            forget_deployment(ctx, key, body)
            return None
        now = datetime.now(UTC)
        outcome = reconcile(
            ctx.kube, body, now, ctx.settings, ctx.metrics, ctx.states, index=ctx.index,
            applied_services=ctx.applied_services, ledger=ctx.ledger,
        )  # fmt: skip
        (ctx.short.add if outcome.short_of_capacity else ctx.short.discard)(key)
        if outcome.released:
            ctx.wake_short(but=key)
        write_status(ctx, body, outcome.status)
        if ctx.events is not None:
            ctx.events.record(body, outcome.events, now)
        else:
            emit(ctx.kube, body, outcome, now)
        sync_rules(ctx, body)
        if outcome.events:
            log.info("reconciled %s/%s: %s", *key, "; ".join(r for _, r, _ in outcome.events))
        scaling = body.get("spec", {}).get("scaling") or {}
        auto = ctx.settings.meter is not None and scaling.get("mode", "Auto") == "Auto"
        return ctx.interval_s if auto else ctx.resync_s
    except Exception:
        result = "error"
        raise
    finally:
        ctx.metrics.observe_reconcile("InferenceDeployment", result, time.perf_counter() - started)


def write_status(ctx: Context, body: Obj, status: dict[str, Any]) -> None:
    """Patch the status when it differs; a loop state that only grew waits up to STATE_WRITE_EVERY_S."""
    meta = body["metadata"]
    previous = body.get("status") or {}
    uid = meta["uid"]
    changed = {k: v for k, v in status.items() if k != "loopState" and previous.get(k) != v}
    state_due = time.monotonic() - ctx.state_written.get(uid, -1e9) >= STATE_WRITE_EVERY_S
    state_changed = status.get("loopState") not in (None, previous.get("loopState"))
    with_state = state_changed and (state_due or bool(changed))
    if not changed and not with_state:
        return
    patch = dict(status) if with_state else {k: v for k, v in status.items() if k != "loopState"}
    ctx.kube.merge_patch(deployment_status_path(meta["namespace"], meta["name"]), {"status": patch})
    if with_state:
        ctx.state_written[uid] = time.monotonic()
        ctx.states.mark_written(uid, str(status["loopState"]))


def sync_rules(ctx: Context, body: Obj) -> None:
    """Apply the SLO rule and the InferencePool when the spec changed, their API appeared, or every RULES_RESYNC_S."""
    if ctx.slo_rules is None and ctx.inference_pools is None:
        return
    uid, generation = body["metadata"]["uid"], int(body["metadata"].get("generation") or 0)
    available = (
        ctx.slo_rules.api_available() if ctx.slo_rules is not None else False,
        ctx.inference_pools.api_available() if ctx.inference_pools is not None else False,
    )
    last = ctx.rules_synced.get(uid)
    now = time.monotonic()
    if last is None or last[:2] != (generation, available) or now - last[2] >= RULES_RESYNC_S:
        if ctx.slo_rules is not None:
            ctx.slo_rules.sync(body)
        if ctx.inference_pools is not None:
            ctx.inference_pools.sync(owner_of(body))
        ctx.rules_synced[uid] = (generation, available, now)


def forget_deployment(ctx: Context, key: Key, body: Obj | None) -> None:
    """Drop everything kept for a deployment that is gone (owner references remove its workloads)."""
    namespace, name = key
    ctx.short.discard(key)
    if ctx.ledger.forget(key):
        ctx.wake_short()
    ctx.metrics.forget_deployment(namespace, name)
    if ctx.settings.meter is not None:
        ctx.settings.meter.forget(f"{namespace}/{name}")
    uid = (body or {}).get("metadata", {}).get("uid")
    if uid:
        ctx.states.forget(uid)
        ctx.state_written.pop(uid, None)
        ctx.rules_synced.pop(uid, None)
    for service_key in [k for k in list(ctx.applied_services) if k.startswith(f"{namespace}/{name}/")]:
        ctx.applied_services.pop(service_key, None)


def reconcile_pool(ctx: Context, name: str) -> None:
    """Pool status: nodes, devices, and whether any deployment found it saturated."""
    started = time.perf_counter()
    result = "success"
    try:
        view = ctx.index.view()
        body = next((p for p in view.pools if p["metadata"]["name"] == name), None)
        if body is None:
            ctx.metrics.forget_pool(name)
            return
        pools, invalid = parse_pools([body])
        if name not in pools:
            result = "permanent_error"
            log.warning("AcceleratorPool %s is invalid: %s", name, "; ".join(invalid))
            return
        pool = pools[name]
        usage = node_usage(view.nodes, view.pods, {}, "", totals=view.node_requests, counts=view.node_pod_counts)
        cap = pool_capacity(pool, usage, {}, 1)
        used = infleet_devices_by_pool(view, pools).get(name, {})
        by = sorted(
            f"{d['metadata']['namespace']}/{d['metadata']['name']}"
            for k in ctx.index.deployment_keys()
            if (d := ctx.index.deployment(k)) is not None
            for p in (d.get("status") or {}).get("pools") or []
            if p.get("pool") == name and p.get("saturated")
        )
        status = pool_status(body, cap.nodes, cap.allocatable_devices, round(sum(used.values())), by)
        if any((body.get("status") or {}).get(k) != v for k, v in status.items()):
            ctx.kube.merge_patch(f"/apis/{GROUP}/{VERSION}/{POOLS}/{name}/status", {"status": status})
        ctx.metrics.pool_saturated.labels(pool=name).set(1 if by else 0)
        spec = pool.spec
        ctx.metrics.set_pool_info(name, spec.accelerator.family, spec.accelerator.product, spec.capacity_type)
    except Exception:
        result = "error"
        raise
    finally:
        ctx.metrics.observe_reconcile("AcceleratorPool", result, time.perf_counter() - started)


def pool_status(body: Obj, nodes: int, allocatable: int, allocated: int, saturated_for: list[str]) -> dict[str, Any]:
    conds = [
        Cond("Ready", "True" if nodes else "False", "NodesFound" if nodes else "NoNodes",
             f"{nodes} ready node(s) match the nodeSelector" if nodes else "no ready node matches the nodeSelector"),
        Cond("Saturated", "True" if saturated_for else "False",
             "ReplicasUnschedulable" if saturated_for else "HasCapacity",
             f"replicas stayed unschedulable here; fallback active for {', '.join(saturated_for)}"
             if saturated_for else "no fallback active"),
    ]  # fmt: skip
    prev = (body.get("status") or {}).get("conditions") or []
    generation = body["metadata"].get("generation")
    return {
        "observedGeneration": generation,
        "nodes": nodes,
        "allocatableDevices": allocatable,
        "allocatedDevices": allocated,
        "saturated": bool(saturated_for),
        "conditions": merge_conditions(prev, conds, datetime.now(UTC), generation),
    }


# -- watches -----------------------------------------------------------------------------------------------------


def on_event(ctx: Context, kind: str, event_type: str | None, body: Obj) -> None:
    """Fold a watch event into the index and queue what it concerns."""
    offered = ctx.index.nodes_offered
    keys = ctx.index.apply(kind, event_type, body)
    ctx.enqueue(keys, urgent=unobserved_spec(kind, event_type, body))
    if ctx.short and (
        (kind == "Pod" and event_type == "DELETED" and (body.get("spec") or {}).get("nodeName"))  # devices freed
        or ctx.index.nodes_offered != offered  # a node joined a pool, or lost what kept pods off it
    ):
        ctx.wake_short()
    if kind == "AcceleratorPool" and ctx.queue is not None:
        ctx.queue.add(("pool", "", (body.get("metadata") or {}).get("name") or ""))
    if kind == "InferenceDeployment" and event_type == "DELETED":
        forget_deployment(ctx, (body["metadata"].get("namespace") or "", body["metadata"]["name"]), body)


def unobserved_spec(kind: str, event_type: str | None, body: Obj) -> set[Key]:
    """The deployment whose spec generation its status has not caught up with: new or edited, so it goes first."""
    if kind != "InferenceDeployment" or event_type == "DELETED":
        return set()
    meta = body.get("metadata") or {}
    if (body.get("status") or {}).get("observedGeneration") == meta.get("generation"):
        return set()
    return {(meta.get("namespace") or "", meta.get("name") or "")}


def informers_for(ctx: Context) -> list[Informer]:
    """Pods and Nodes cluster-wide; worker Deployments and claims in the served namespaces."""

    def handler(kind: str, event_type: str | None, body: Obj) -> None:
        on_event(ctx, kind, event_type, body)

    managed = {"labelSelector": f"{MANAGED_BY}={MANAGER}"}
    out = [
        Informer(ctx.kube, "Pod", "/api/v1/pods", handler,
                 query={"fieldSelector": "status.phase!=Succeeded,status.phase!=Failed"}),
        Informer(ctx.kube, "Node", "/api/v1/nodes", handler),
        # Pools through an informer too (not kopf): reconciles start only once every pool is known, or a restarted
        # operator would find "no pool" for a moment and remove what serves.
        Informer(ctx.kube, "AcceleratorPool", f"/apis/{GROUP}/{VERSION}/{POOLS}", handler),
    ]  # fmt: skip
    scopes = [f"/namespaces/{ns}" for ns in ctx.namespaces] or [""]
    for scope in scopes:
        out.append(Informer(ctx.kube, "Deployment", f"/apis/apps/v1{scope}/deployments", handler, query=managed))
        out.append(Informer(ctx.kube, "PersistentVolumeClaim", f"/api/v1{scope}/persistentvolumeclaims", handler))
    return out


def start(ctx: Context) -> None:
    """Start the informers, wait for their first listing, then the reconcile workers and the resync."""
    ctx.queue = WorkQueue(
        lambda key: reconcile_key(ctx, key),
        workers=ctx.workers,
        is_active=ctx.active,
        coalesce_s=ctx.coalesce_s,
        on_wait=lambda lane, waited_s: ctx.metrics.queue_wait.labels(lane=lane).observe(waited_s),
    )
    ctx.events = EventRecorder(ctx.kube, on_drop=ctx.metrics.events_dropped.inc)
    ctx.events.start()
    ctx.informers = informers_for(ctx)
    for informer in ctx.informers:
        informer.start()
    for informer in ctx.informers:
        informer.synced.wait(60)
    if ctx.elector is not None:

        def on_change(leading: bool) -> None:
            if leading:
                resync(ctx)

        ctx.elector.on_change = on_change
        ctx.elector.start()
    ctx.queue.start()
    resync(ctx)


def resync(ctx: Context) -> None:
    """Queue every known deployment and pool (start-up, taking over leadership)."""
    ctx.enqueue(set(ctx.index.deployment_keys()))
    if ctx.queue is not None:
        for pool in list(ctx.index.pools):
            ctx.queue.add(("pool", "", pool))


def stop(ctx: Context, timeout_s: float = 10.0) -> None:
    """Graceful stop: release the Lease first (a peer takes over at once), then let in-flight reconciles end."""
    if ctx.elector is not None:
        ctx.elector.release()
    for informer in ctx.informers:
        informer.stop.set()
    if ctx.queue is not None:
        ctx.queue.stop(timeout_s)
    if ctx.events is not None:
        ctx.events.stop()


def register_handlers(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    def deployment_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
        on_event(ctx, "InferenceDeployment", event.get("type"), dict(body))

    def startup(**_: Any) -> None:
        threading.Thread(target=start, args=(ctx,), name="operator-start", daemon=True).start()

    def cleanup(**_: Any) -> None:
        stop(ctx)

    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        # kopf talks to the API with the same credentials as the operator's client (loaded once in the CLI
        # from --kubeconfig, the service account, or $KUBECONFIG), so both always agree on the cluster.
        return connection_info(ctx.kube, settings)

    def probe(**_: Any) -> dict[str, Any]:
        return {"leader": ctx.active(), "queue": ctx.queue.depth() if ctx.queue else 0, **ctx.index.sizes()}

    kopf.on.login(registry=registry, id="login")(login)
    kopf.on.startup(registry=registry, id="start")(startup)
    kopf.on.cleanup(registry=registry, id="stop")(cleanup)
    kopf.on.probe(registry=registry, id="index")(probe)
    kopf.on.event(GROUP, VERSION, DEPLOYMENTS, registry=registry, id="deployments")(deployment_event)


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
