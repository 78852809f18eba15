"""Publish one InferencePool (Gateway API Inference Extension, `inference.networking.k8s.io/v1`) per
InferenceDeployment, selecting its serving pods on every pool, when the cluster has that API.

Users of a conformant gateway (Envoy Gateway, kgateway, Istio) then route to a deployment with their own stack:
an HTTPRoute's backendRef names the InferencePool, and the endpoint picker it references scores our workers on
the gauges docs/metrics.md lists for it. Like `slorules.SloRules`: `render_inference_pool` is pure, the object is
server-side applied with a controller owner reference (the garbage collector deletes it with the deployment),
a cluster without the CRD is normal (one info log; the API is looked up again every `recheck_s`), and a pool
that cannot be written is logged once per cause and never fails the reconcile.

The v1 schema requires an endpoint picker: `endpointPickerRef` names the Service `<deployment>-epp` on port 9002
by default (`EndpointPicker` changes both) with `failureMode: FailOpen`, so while no picker is deployed a
gateway still forwards to some ready pod of the pool rather than failing every request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from kubernetes.client.exceptions import ApiException

from infleet.controller.kube import Kube, Obj, is_transient
from infleet.controller.manifests import WORKER_PORT, Owner, selector_labels, service_name
from infleet.controller.optional_api import OptionalApi, discovery_lists

log = logging.getLogger("infleet.controller")

INFERENCE_GROUP = "inference.networking.k8s.io"
INFERENCE_VERSION = "v1"
INFERENCE_API = f"/apis/{INFERENCE_GROUP}/{INFERENCE_VERSION}"
INFERENCE_POOLS = "inferencepools"


@dataclass(frozen=True, kw_only=True)
class EndpointPicker:
    """The endpoint picker (EPP) Service each InferencePool references."""

    service_template: str = "{deployment}-epp"  # `{deployment}` is replaced by the InferenceDeployment's name
    port: int = 9002
    failure_mode: Literal["FailOpen", "FailClose"] = "FailOpen"

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"endpoint picker port must be within 1..65535, got {self.port}")
        if "{deployment}" not in self.service_template:
            raise ValueError("the endpoint picker service template must contain {deployment}")


def inference_pool_path(namespace: str, name: str) -> str:
    return f"{INFERENCE_API}/namespaces/{namespace}/{INFERENCE_POOLS}/{name}"


def render_inference_pool(owner: Owner, picker: EndpointPicker | None = None) -> Obj:
    """The deployment's InferencePool: same name as its Service, the serving pods of all its pools."""
    picker = picker or EndpointPicker()
    return {
        "apiVersion": f"{INFERENCE_GROUP}/{INFERENCE_VERSION}",
        "kind": "InferencePool",
        "metadata": {
            "name": service_name(owner.name),
            "namespace": owner.namespace,
            "labels": selector_labels(owner.name),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "selector": {"matchLabels": selector_labels(owner.name, role="serving")},
            "targetPorts": [{"number": WORKER_PORT}],
            "endpointPickerRef": {
                "name": picker.service_template.format(deployment=owner.name)[:253],
                "port": {"number": picker.port},
                "failureMode": picker.failure_mode,
            },
        },
    }


def has_inference_pools(kube: Kube) -> bool:
    """Whether API discovery lists `inferencepools` in inference.networking.k8s.io/v1."""
    return discovery_lists(kube, INFERENCE_API, INFERENCE_POOLS)


class InferencePools:
    """Applies `render_inference_pool`; remembers the API's presence for `recheck_s`, logs each cause once."""

    def __init__(self, kube: Kube, picker: EndpointPicker | None = None, recheck_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.picker = picker or EndpointPicker()
        self.api = OptionalApi(
            kube, INFERENCE_API, INFERENCE_POOLS,
            found="InferencePool API found: publishing an InferencePool per InferenceDeployment",
            missing=f"no {INFERENCE_GROUP}/{INFERENCE_VERSION} inferencepools API: InferencePools are skipped",
            recheck_s=recheck_s, clock=clock,
        )  # fmt: skip
        self._logged: set[str] = set()

    def api_available(self) -> bool:
        return self.api.available()

    def sync(self, owner: Owner) -> Obj | None:
        """Apply the deployment's InferencePool; what was applied, or None when skipped or refused. Call it
        for live deployments only (one being deleted needs nothing: the garbage collector removes the pool)."""
        if not self.api_available():
            return None
        pool: dict[str, Any] = render_inference_pool(owner, self.picker)
        meta = pool["metadata"]
        try:
            return self.kube.apply(inference_pool_path(meta["namespace"], meta["name"]), pool)
        except ApiException as exc:
            if is_transient(exc):
                raise
            if exc.status == 404:  # the CRD went away since discovery: look again next time
                self.api.recheck()
            if self._once(f"{owner.namespace}/{owner.name}:{exc.status}"):
                log.warning("%s/%s: could not apply InferencePool %s: %s %s", owner.namespace, owner.name,
                            meta["name"], exc.status, exc.reason)
            return None

    def _once(self, cause: str) -> bool:
        if cause in self._logged:
            return False
        self._logged.add(cause)
        return True
