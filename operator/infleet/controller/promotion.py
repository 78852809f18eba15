"""Warm-pod promotion: a scale-up turns ready warm pods into serving ones (seconds) before starting cold pods.

The decision is the loop's (`infleet.policy.loop.plan_promotion`, from the warm and promoted workers the operator
observes); this module holds the edges:
`WorkerStateClient.promote` tells the worker to serve through its runtime's adapter (infleet-worker: `POST
/admin/state`; vLLM: `POST /wake_up`; runtimes without warm standby are never offered for promotion), then
`apply_promotions` relabels the pod `infleet.io/role=serving` and makes the InferenceDeployment its controller. The
relabel takes the pod out of the warm ReplicaSet's selector, so that ReplicaSet starts a replacement (the replenish)
and the Service selects the pod. Promoted pods carry `infleet.io/promoted=true` and are counted toward their pool's
serving replicas, so the serving Deployment is scaled to `desired - promoted`; on scale-down they go first.
Everything is read back from labels and owner references, so a restarted operator sees exactly what the last one
did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from kubernetes.client.exceptions import ApiException

from infleet.controller.kube import Kube, Obj
from infleet.controller.manifests import LABEL_ROLE, WORKER_PORT, Owner, pod_engine
from infleet.controller.snapshot import parse_time, pod_active
from infleet.runtimes import runtime

log = logging.getLogger("infleet.controller")

LABEL_PROMOTED = "infleet.io/promoted"


class WorkerStateClient(Protocol):
    """Asks one worker to switch to `serving`; False means "not promotable now" (start a cold pod instead)."""

    def promote(self, pod: Obj) -> bool: ...


TokenLookup = Callable[[str], str | None]  # namespace -> the workers' admin token there (None: none known)


def promotable(pod: Obj) -> bool:
    """Whether the pod's runtime has a warm standby to promote (llama.cpp, Neuron and TPU stacks do not)."""
    return runtime(pod_engine(pod)).promotable


class HttpWorkerState:
    """The pod runtime's promotion call (infleet-worker: POST http://<podIP>:8000/admin/state {"state": "serving"};
    vLLM: POST /wake_up); a refusal, timeout, non-2xx or a runtime without warm standby is False.

    The worker's admin API wants `Authorization: Bearer <token>`; `admin_token` looks the token up by the pod's
    namespace (the Secret `infleet-worker-admin` there, see `admin_secret.ensure_admin_secret`). Without a
    lookup, or when it finds none, the request goes without the header (and a worker with a token refuses it).
    """

    def __init__(self, timeout_s: float = 2.0, admin_token: TokenLookup | None = None) -> None:
        self.client = httpx.Client(timeout=timeout_s, trust_env=False)
        self.admin_token = admin_token

    def _headers(self, pod: Obj) -> dict[str, str]:
        if self.admin_token is None:
            return {}
        token = self.admin_token(pod["metadata"].get("namespace", ""))
        return {"Authorization": f"Bearer {token}"} if token else {}

    def promote(self, pod: Obj) -> bool:
        ip = pod.get("status", {}).get("podIP")
        name = pod["metadata"]["name"]
        adapter = runtime(pod_engine(pod))
        call = adapter.warm.promote
        if call is None:
            log.info("warm pod %s runs %s, which has no warm standby; not promoted", name, adapter.engine)
            return False
        if not ip:
            log.info("warm pod %s has no IP yet; not promoted", name)
            return False
        headers = self._headers(pod) if call.needs_admin_token else {}
        try:
            resp = self.client.request(call.method, f"http://{ip}:{WORKER_PORT}{call.path}",
                                       json=dict(call.json) if call.json is not None else None, headers=headers)
        except httpx.HTTPError as exc:
            log.info("warm pod %s did not take the promotion (%s); starting a cold pod instead", name, exc)
            return False
        if not 200 <= resp.status_code < 300:
            log.info("warm pod %s refused the promotion (HTTP %d); starting a cold pod instead", name, resp.status_code)
            return False
        return True


class AssumeAccepted:
    """For simulated clusters only (kwok: no worker runs behind a pod IP): every promotion is taken as accepted."""

    def promote(self, pod: Obj) -> bool:
        return True


@dataclass(frozen=True)
class PromotionPlan:
    promote: list[str] = field(default_factory=list)  # warm pod names, in the policy's promotion order
    retire: list[str] = field(default_factory=list)  # promoted pods to delete (scale-down removes them first)


def is_promoted(pod: Obj, owner_uid: str) -> bool:
    """A serving pod released from a warm ReplicaSet: labelled promoted and controlled by the InferenceDeployment."""
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    if labels.get(LABEL_ROLE) != "serving" or labels.get(LABEL_PROMOTED) != "true":
        return False
    refs = meta.get("ownerReferences") or []
    return any(r.get("uid") == owner_uid and r.get("controller") for r in refs)


def _live(pod: Obj) -> bool:
    return pod_active(pod) and not pod["metadata"].get("deletionTimestamp")


def ready_since_s(pod: Obj) -> float:
    for c in pod.get("status", {}).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("status") == "True":
            at = parse_time(c.get("lastTransitionTime"))
            if at is not None:
                return at.timestamp()
    created = parse_time(pod["metadata"].get("creationTimestamp"))
    return created.timestamp() if created is not None else 0.0


def pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}"


def apply_promotions(
    kube: Kube, owner: Owner, pods: Sequence[Obj], plan: PromotionPlan, client: WorkerStateClient | None
) -> tuple[list[str], list[str]]:
    """Promote and retire as planned; returns (promoted, retired) pod names. Never raises for one pod's failure.

    A worker that does not take the promotion stays warm (the serving Deployment then starts a cold pod). The
    relabel carries the pod's resourceVersion, so a pod that changed meanwhile (replaced, deleted) is skipped.
    """
    by_name = {p["metadata"]["name"]: p for p in pods}
    promoted: list[str] = []
    for name in plan.promote:
        pod = by_name[name]
        if client is None or not client.promote(pod):
            continue
        patch = {
            "metadata": {
                "resourceVersion": pod["metadata"].get("resourceVersion"),
                "labels": {LABEL_ROLE: "serving", LABEL_PROMOTED: "true"},
                "ownerReferences": [owner.reference()],
            }
        }
        try:
            kube.merge_patch(pod_path(owner.namespace, name), patch)
        except ApiException as exc:
            if exc.status not in (404, 409, 422):
                raise
            log.info("warm pod %s changed before it was relabelled (%s); not promoted", name, exc.status)
            continue
        log.info("promoted warm pod %s of %s/%s to serving", name, owner.namespace, owner.name)
        promoted.append(name)
    retired = [name for name in plan.retire if kube.delete(pod_path(owner.namespace, name))]
    if retired:
        log.info("removed promoted pods %s of %s/%s (scale-down)", retired, owner.namespace, owner.name)
    return promoted, retired
