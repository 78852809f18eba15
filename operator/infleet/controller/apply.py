"""Apply a rendered plan to the cluster, idempotently.

Every object goes through server-side apply under one field manager, so running the same plan twice (or a
restarted operator re-running a half-applied one) converges instead of duplicating. Worker Deployments of the
InferenceDeployment that the plan no longer names are deleted, which is also what moves replicas off a pool.
A Deployment whose rendered spec (hashed into an annotation) and replica count already match is not sent at all,
so a reconcile that changes nothing writes nothing.

The applies of one plan are independent of each other, so they may be sent at once (``FanOut``): a new deployment's
reconcile then waits for its slowest write (creating the Service allocates a ClusterIP, about twice a Deployment
apply on a busy API server) instead of the sum. Deletions follow the applies, so a move starts the new pool's
replicas before it removes the old pool's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial

from infleet.controller.kube import Kube, Obj
from infleet.controller.manifests import (
    ImageConfig,
    Owner,
    Workload,
    label_selector,
    render_deployment,
    render_service,
    selector_labels,
)


def deployments_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    return f"{base}/{name}" if name else base


def services_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/services/{name}"


Write = Callable[[], object]
FanOut = Callable[[Sequence[Write]], None]  # runs every write; raises the first failure once all have finished


def in_turn(writes: Sequence[Write]) -> None:
    for write in writes:
        write()


def fan_out_on(executor: Executor) -> FanOut:
    """Send a plan's writes at once on ``executor`` (sized for every reconcile worker's writes together)."""

    def run(writes: Sequence[Write]) -> None:
        if len(writes) <= 1:
            in_turn(writes)
            return
        futures = [executor.submit(write) for write in writes]
        errors = [exc for f in futures if (exc := f.exception()) is not None]
        if errors:
            raise errors[0]

    return run


@dataclass
class ApplyResult:
    applied: dict[str, int] = field(default_factory=dict)  # Deployment name -> replicas now asked for
    previous: dict[str, int] = field(default_factory=dict)  # Deployment name -> replicas before this apply
    deleted: list[str] = field(default_factory=list)


def existing_workloads(kube: Kube, owner: Owner) -> list[Obj]:
    """The worker Deployments this InferenceDeployment owns (by label, checked against the owner's uid)."""
    items = kube.list(deployments_path(owner.namespace), label_selector=label_selector(selector_labels(owner.name)))
    return [d for d in items if _owned_by(d, owner.uid)]


def _owned_by(obj: Obj, uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


SPEC_HASH = "infleet.io/spec-hash"


def spec_hash(manifest: Obj) -> str:
    """A digest of everything rendered but the replica count (which is compared on its own)."""
    body = {k: v for k, v in manifest.items() if k != "spec"}
    body["spec"] = {k: v for k, v in manifest.get("spec", {}).items() if k != "replicas"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def apply_plan(
    kube: Kube,
    owner: Owner,
    workloads: Iterable[Workload],
    images: ImageConfig | None = None,
    *,
    existing: list[Obj] | None = None,
    applied_services: MutableMapping[str, str] | None = None,
    fan_out: FanOut = in_turn,
) -> ApplyResult:
    """``existing``: the owner's worker Deployments as the watch index has them (None: list them from the API).
    ``applied_services``: Service digests this process applied already (skips re-applying an unchanged one).
    ``fan_out``: how the applies are sent (one after another unless the caller has threads for them)."""
    result = ApplyResult()
    writes: list[Write] = []
    found = existing if existing is not None else existing_workloads(kube, owner)
    current = {d["metadata"]["name"]: d for d in found if _owned_by(d, owner.uid)}
    for name, obj in current.items():
        result.previous[name] = int(obj.get("spec", {}).get("replicas") or 0)
    for w in workloads:
        manifest = render_deployment(w, images)
        name = manifest["metadata"]["name"]
        digest = spec_hash(manifest)
        manifest["metadata"].setdefault("annotations", {})[SPEC_HASH] = digest
        have = current.get(name)
        same = have is not None and (have["metadata"].get("annotations") or {}).get(SPEC_HASH) == digest
        if not (same and result.previous.get(name) == w.replicas):
            writes.append(partial(kube.apply, deployments_path(owner.namespace, name), manifest))
        result.applied[name] = w.replicas
    service = render_service(owner)
    service_key = f"{owner.namespace}/{service['metadata']['name']}/{owner.uid}"
    service_digest = spec_hash(service)
    new_service = applied_services is None or applied_services.get(service_key) != service_digest
    if new_service:
        writes.append(partial(kube.apply, services_path(owner.namespace, service["metadata"]["name"]), service))
    fan_out(writes)
    if new_service and applied_services is not None:
        applied_services[service_key] = service_digest
    for name in sorted(set(current) - set(result.applied)):
        if kube.delete(deployments_path(owner.namespace, name)):
            result.deleted.append(name)
    return result
