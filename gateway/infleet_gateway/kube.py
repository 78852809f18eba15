"""Discovery through the Kubernetes API: a small informer (list, then watch from the list's resourceVersion, relist
on 410 Gone or any error) for the serving worker pods and one for the InferenceDeployments. Events land in a
local cache on the event loop, which rebuilds the affected deployment's entry in the EndpointTable; requests
never call the API.

The gateway reads only pods (label-selected) and inferencedeployments (get, list, watch); see the chart's RBAC.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from infleet.runtimes import DEFAULT_ENGINE
from infleet_gateway.replicas import DeploymentSpec, EndpointTable, ReplicaSpec

log = logging.getLogger(__name__)

# These equal infleet.controller.manifests' (tests/unit/gateway checks it); the gateway may not import the
# controller.
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "infleet"
LABEL_DEPLOYMENT = "infleet.io/deployment"
LABEL_POOL = "infleet.io/pool"
LABEL_ROLE = "infleet.io/role"
ANNOTATION_RUNTIME = "infleet.io/runtime"  # the pod's serving stack; absent: infleet-worker
WORKER_PORT = 8000
SERVING_SELECTOR = f"{MANAGED_BY}={MANAGER},{LABEL_ROLE}=serving"
GROUP, VERSION, PLURAL = "infleet.io", "v1alpha1", "inferencedeployments"

Obj = Mapping[str, Any]
Key = tuple[str, str]


def pod_ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def worker_port(pod: Obj) -> int:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "http" and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    return WORKER_PORT


def replica_of(pod: Obj) -> tuple[Key, ReplicaSpec] | None:
    """The replica a serving pod stands for; None for a pod without a deployment label or an IP yet."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    deployment, ns = labels.get(LABEL_DEPLOYMENT), meta.get("namespace")
    ip = (pod.get("status") or {}).get("podIP")
    if not deployment or not ns or not ip or labels.get(LABEL_ROLE) != "serving":
        return None
    host = f"[{ip}]" if ":" in ip else ip
    # The operator annotates each pod with the engine it rendered for the pool's family (what its own scraper
    # reads), so a rollout from one runtime to another probes each pod as what it runs.
    engine = (meta.get("annotations") or {}).get(ANNOTATION_RUNTIME) or DEFAULT_ENGINE
    return (ns, deployment), ReplicaSpec(
        replica_id=f"{ns}/{meta.get('name')}", url=f"http://{host}:{worker_port(pod)}",
        pool=labels.get(LABEL_POOL) or "default", ready=pod_ready(pod),
        terminating=bool(meta.get("deletionTimestamp")), engine=str(engine))


def deployment_of(infd: Obj) -> tuple[Key, DeploymentSpec] | None:
    meta = infd.get("metadata") or {}
    spec = infd.get("spec") or {}
    model = (spec.get("model") or {}).get("name")
    if not meta.get("namespace") or not meta.get("name") or not isinstance(model, str):
        return None
    slo = spec.get("slo") or {}
    ttft, p99 = slo.get("ttftP99Ms"), slo.get("p99LatencyMs")
    capacities = []
    for pool in (infd.get("status") or {}).get("pools") or []:
        cap = pool.get("replicaCapacityRps")
        if isinstance(pool.get("pool"), str) and isinstance(cap, int | float) and cap > 0:
            capacities.append((pool["pool"], float(cap)))
    key = (meta["namespace"], meta["name"])
    return key, DeploymentSpec(namespace=key[0], name=key[1], model=model,
                               ttft_slo_s=ttft / 1000 if isinstance(ttft, int | float) else None,
                               latency_slo_s=p99 / 1000 if isinstance(p99, int | float) else None,
                               pool_capacity_rps=tuple(sorted(capacities)))


class DiscoveryCache:
    """The informers' view, applied to the EndpointTable one deployment at a time (runs on the event loop)."""

    def __init__(self, table: EndpointTable) -> None:
        self.table = table
        self.pods: dict[str, tuple[Key, ReplicaSpec]] = {}  # pod uid -> replica
        self.deployments: dict[Key, DeploymentSpec] = {}
        self.synced: set[str] = set()

    def replace(self, kind: str, items: list[Obj]) -> None:
        before = self._keys()
        if kind == "pods":
            self.pods = {}
            for pod in items:
                self._pod_event("ADDED", pod)
        else:
            self.deployments = {}
            for infd in items:
                self._infd_event("ADDED", infd)
        self.synced.add(kind)
        for key in before | self._keys():
            self._rebuild(key)

    def event(self, kind: str, event_type: str, obj: Obj) -> None:
        key = self._pod_event(event_type, obj) if kind == "pods" else self._infd_event(event_type, obj)
        for k in key:
            self._rebuild(k)

    def _pod_event(self, event_type: str, pod: Obj) -> set[Key]:
        uid = str((pod.get("metadata") or {}).get("uid") or (pod.get("metadata") or {}).get("name"))
        old = self.pods.pop(uid, None)
        touched = {old[0]} if old else set()
        if event_type != "DELETED":
            new = replica_of(pod)
            if new is not None:
                self.pods[uid] = new
                touched.add(new[0])
        return touched

    def _infd_event(self, event_type: str, infd: Obj) -> set[Key]:
        parsed = deployment_of(infd)
        meta = infd.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED" or parsed is None:
            self.deployments.pop(key, None)
        else:
            self.deployments[key] = parsed[1]
        return {key}

    def _keys(self) -> set[Key]:
        return set(self.deployments) | {k for k, _ in self.pods.values()}

    def _rebuild(self, key: Key) -> None:
        spec = self.deployments.get(key)
        replicas = [r for k, r in self.pods.values() if k == key]
        if spec is None and not replicas:
            self.table.remove_deployment(key)
            return
        self.table.upsert_deployment(spec or DeploymentSpec(namespace=key[0], name=key[1], model=""))
        self.table.replace_replicas(key, replicas)


class KubeDiscovery:
    """Runs the two informers in threads (the official client is synchronous) and feeds DiscoveryCache."""

    def __init__(self, table: EndpointTable, loop: asyncio.AbstractEventLoop, *, kubeconfig: Path | None,
                 namespace: str | None, on_synced: Callable[[], None], watch_timeout_s: int = 60) -> None:
        self.cache = DiscoveryCache(table)
        self.loop, self.kubeconfig, self.namespace = loop, kubeconfig, namespace
        self.on_synced, self.watch_timeout_s = on_synced, watch_timeout_s
        self.stop = threading.Event()

    def _api(self) -> Any:
        from kubernetes import client, config

        if self.kubeconfig is not None:
            return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.ApiClient()
        except config.ConfigException:
            return config.new_client_from_config()  # type: ignore[no-untyped-call]

    async def run(self) -> None:
        from kubernetes import client

        api = self._api()
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        ns = self.namespace
        if ns:
            pods = _bind(core.list_namespaced_pod, ns, label_selector=SERVING_SELECTOR)
            infds = _bind(custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL)
        else:
            pods = _bind(core.list_pod_for_all_namespaces, label_selector=SERVING_SELECTOR)
            infds = _bind(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        threads = [threading.Thread(target=self._inform, args=(kind, fn), daemon=True, name=f"informer-{kind}")
                   for kind, fn in (("pods", pods), ("inferencedeployments", infds))]
        for t in threads:
            t.start()
        try:
            await asyncio.Event().wait()
        finally:
            self.stop.set()

    def _inform(self, kind: str, list_fn: Callable[..., Any]) -> None:
        from kubernetes import watch

        backoff = 0.5
        while not self.stop.is_set():
            try:
                raw = list_fn(_preload_content=False)
                listed = json.loads(raw.data)
                version = listed["metadata"]["resourceVersion"]
                self.loop.call_soon_threadsafe(self._replace, kind, listed.get("items") or [])
                backoff = 0.5
                while not self.stop.is_set():
                    w = watch.Watch()  # type: ignore[no-untyped-call]
                    opts = {"resource_version": version, "timeout_seconds": self.watch_timeout_s,
                            "allow_watch_bookmarks": True, "deserialize": False}
                    for event in w.stream(list_fn, **opts):  # type: ignore[no-untyped-call]
                        obj = event.get("object") or {}
                        if event["type"] == "ERROR":
                            raise _GoneError(str(obj.get("message")))
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if event["type"] != "BOOKMARK":
                            self.loop.call_soon_threadsafe(self.cache.event, kind, event["type"], obj)
                        if self.stop.is_set():
                            w.stop()  # type: ignore[no-untyped-call]
            except Exception as exc:  # relist after any failure: the API may be restarting or the watch expired
                if self.stop.is_set():
                    return
                log.warning("%s watch failed (%s: %s); relisting in %.1fs", kind, type(exc).__name__, exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _replace(self, kind: str, items: list[Obj]) -> None:
        self.cache.replace(kind, items)
        if self.cache.synced >= {"pods", "inferencedeployments"}:
            self.on_synced()


class _GoneError(Exception):
    pass


def _bind(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
    def call(**more: Any) -> Any:
        return fn(*args, **kwargs, **more)

    call.__doc__ = fn.__doc__  # kubernetes.watch inspects the list function's docstring for the return type
    return call
