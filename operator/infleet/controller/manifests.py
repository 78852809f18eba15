"""Plan -> Kubernetes objects, pure: one apps/v1 Deployment per (InferenceDeployment, pool, role) and one
Service selecting the serving pods.

Names are deterministic (`<infd>-<pool>`, `<infd>-<pool>-warm`, Service `<infd>`) so a restarted operator
finds, rather than duplicates, what an earlier run created; owner references on every object let the
garbage collector cascade a deletion; labels follow docs/metrics.md so dashboards and the scraper can select.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from infleet import __version__
from infleet.runtimes import DEFAULT_ENGINE, SERVING_PORT, ServingContext, runtime

Role = Literal["serving", "warm"]
Device = Literal["cuda", "neuron", "xla", "cpu"]

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "infleet"
LABEL_DEPLOYMENT = "infleet.io/deployment"
LABEL_POOL = "infleet.io/pool"
LABEL_ROLE = "infleet.io/role"
ANNOTATION_MODEL = "infleet.io/model"
# The serving stack of a pod (docs/runtimes.md); absent on infleet-worker pods, so their manifests stay as they were.
ANNOTATION_RUNTIME = "infleet.io/runtime"
WORKER_PORT = SERVING_PORT
# The worker's admin API (/admin/*: promote, demote, drain) requires this bearer token; the operator keeps it in a
# Secret per namespace (infleet.controller.admin_secret) and the worker pods read it from there.
ADMIN_TOKEN_ENV = "INFLEET_WORKER_ADMIN_TOKEN"
ADMIN_SECRET_NAME = "infleet-worker-admin"
ADMIN_SECRET_KEY = "token"

# Image per device family; `--image-repository`/`--image-tag` (or a model's runtime override) replace them.
IMAGE_SUFFIX: Mapping[str, str] = {"cuda": "cuda", "neuron": "neuron", "xla": "tpu", "cpu": "cpu"}
DEFAULT_IMAGE_REPOSITORY = "ghcr.io/infleet/worker"

_MAX_NAME = 63  # a DNS label: the Service name must be one, and pod names derive from Deployment names


@dataclass(frozen=True)
class Owner:
    """The InferenceDeployment every rendered object belongs to."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class PoolRuntime:
    """What a worker pod needs from its AcceleratorPool to land on (and only on) that pool's nodes."""

    name: str
    device: Device
    node_selector: Mapping[str, str]
    tolerations: Sequence[Mapping[str, Any]] = ()
    resource_name: str | None = None  # e.g. "nvidia.com/gpu", or "cpu" for a CPU pool
    devices_per_replica: int = 0
    units_per_device: int = 1  # resource units in one device (a CPU pool's device is a slice of N vCPUs)
    default_requests: Mapping[str, str] = field(default_factory=dict)  # e.g. memory for the worker process


@dataclass(frozen=True)
class ContainerOverrides:
    """The model spec's `runtimes.<family>` entry, resolved (the API's `RuntimeOverride`): the engine, and image,
    extra args, env and resources over what the engine's adapter renders."""

    engine: str = DEFAULT_ENGINE
    image: str | None = None
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    env_from: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # name -> valueFrom (secretKeyRef, ...)
    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    """One (deployment, pool, role) group of identical worker pods."""

    owner: Owner
    pool: PoolRuntime
    role: Role
    replicas: int
    model: str
    runtime: ContainerOverrides = field(default_factory=ContainerOverrides)
    source: str = ""  # spec.model.source; empty: the worker is given the model name
    dtype: str = "bf16"  # spec.model.dtype: the weight precision the replica must serve in


@dataclass(frozen=True)
class ImageConfig:
    repository: str = DEFAULT_IMAGE_REPOSITORY
    tag: str = __version__

    def image_for(self, device: str) -> str:
        return f"{self.repository}-{IMAGE_SUFFIX[device]}:{self.tag}"


def _bounded(name: str) -> str:
    """Keep `name` a DNS label: long names keep a readable prefix plus a stable hash of the whole."""
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: _MAX_NAME - 11].rstrip('-')}-{digest}"


def workload_name(deployment: str, pool: str, role: Role) -> str:
    base = f"{deployment}-{pool}"
    return _bounded(base if role == "serving" else f"{base}-warm")


def service_name(deployment: str) -> str:
    return _bounded(deployment)


def selector_labels(deployment: str, pool: str | None = None, role: Role | None = None) -> dict[str, str]:
    labels = {MANAGED_BY: MANAGER, LABEL_DEPLOYMENT: deployment}
    if pool is not None:
        labels[LABEL_POOL] = pool
    if role is not None:
        labels[LABEL_ROLE] = role
    return labels


def label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


MODELS_MOUNT = "/models"


@dataclass(frozen=True)
class ModelLocation:
    """How the worker finds the weights: its --model argument and, for a PVC, the volume to mount."""

    argument: str
    claim: str | None = None


def model_location(source: str, name: str) -> ModelLocation:
    """``builtin://tiny`` -> ``tiny``; ``file:///m/x`` -> ``/m/x``; ``pvc://claim/sub/dir`` -> the claim mounted
    read-only at /models/claim and ``/models/claim/sub/dir``; anything else is passed to the worker as is."""
    if not source:
        return ModelLocation(name)
    scheme, sep, rest = source.partition("://")
    if not sep:
        return ModelLocation(source)
    if scheme == "builtin":
        return ModelLocation(rest)
    if scheme == "file":
        return ModelLocation(rest if rest.startswith("/") else f"/{rest}")
    if scheme == "pvc":
        claim, _, sub = rest.partition("/")
        if not claim:
            raise ValueError(f"model source {source!r}: pvc:// needs a claim name")
        path = f"{MODELS_MOUNT}/{claim}" + (f"/{sub}" if sub else "")
        return ModelLocation(path, claim)
    return ModelLocation(source)


def pod_engine(pod: Mapping[str, Any]) -> str:
    """The serving stack a pod runs, from its annotation (none: infleet-worker)."""
    annotations = pod.get("metadata", {}).get("annotations") or {}
    return str(annotations.get(ANNOTATION_RUNTIME) or DEFAULT_ENGINE)


def admin_token_env() -> dict[str, Any]:
    """The worker's admin token from the namespace's Secret. `optional`: a pod that starts before the Secret exists
    runs with its admin API answering loopback only (safe; the operator then starts cold pods instead of
    promoting it) rather than failing to start."""
    return {
        "name": ADMIN_TOKEN_ENV,
        "valueFrom": {"secretKeyRef": {"name": ADMIN_SECRET_NAME, "key": ADMIN_SECRET_KEY, "optional": True}},
    }


def render_deployment(w: Workload, images: ImageConfig | None = None) -> dict[str, Any]:
    images = images or ImageConfig()
    labels = selector_labels(w.owner.name, w.pool.name, w.role)
    resources: dict[str, dict[str, str]] = {"requests": dict(w.pool.default_requests), "limits": {}}
    if w.pool.resource_name and w.pool.devices_per_replica > 0:
        count = str(w.pool.devices_per_replica * w.pool.units_per_device)
        resources["requests"][w.pool.resource_name] = count
        resources["limits"][w.pool.resource_name] = count
    resources["requests"].update(w.runtime.requests)
    resources["limits"].update(w.runtime.limits)
    location = model_location(w.source, w.model)
    adapter = runtime(w.runtime.engine)
    launch = adapter.launch(
        ServingContext(
            model_path=location.argument,
            served_name=w.model,
            device=w.pool.device,
            devices_per_replica=w.pool.devices_per_replica,
            units_per_device=w.pool.units_per_device,
            resource_name=w.pool.resource_name,
            role=w.role,
            weights_dtype=w.dtype,
        )
    )
    reserved = {ADMIN_TOKEN_ENV} if adapter.admin_token else set()
    env = (
        [dict(e) for e in launch.env]
        + [{"name": k, "value": v} for k, v in sorted(w.runtime.env.items()) if k not in reserved]
        + [{"name": k, "valueFrom": dict(v)} for k, v in sorted(w.runtime.env_from.items()) if k not in reserved]
        + ([admin_token_env()] if adapter.admin_token else [])
    )
    image = w.runtime.image or adapter.images.get(w.pool.device) or images.image_for(w.pool.device)
    container: dict[str, Any] = {
        "name": adapter.container_name,
        "image": image,
        "command": list(launch.command),
        "args": [*launch.args, *w.runtime.args],
        "ports": [{"name": "http", "containerPort": WORKER_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": launch.readiness_path, "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": launch.liveness_path, "port": "http"}, "periodSeconds": 10},
        "env": env,
        "resources": {k: v for k, v in resources.items() if v},
        **launch.extra,
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "nodeSelector": dict(w.pool.node_selector),
        "tolerations": [dict(t) for t in w.pool.tolerations],
    }
    if location.claim is not None:
        pod_spec["volumes"] = [
            {"name": "models", "persistentVolumeClaim": {"claimName": location.claim, "readOnly": True}}
        ]
        container["volumeMounts"] = [
            {"name": "models", "mountPath": f"{MODELS_MOUNT}/{location.claim}", "readOnly": True}
        ]
    annotations = {ANNOTATION_MODEL: w.model}
    if adapter.engine != DEFAULT_ENGINE:
        annotations[ANNOTATION_RUNTIME] = adapter.engine
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": workload_name(w.owner.name, w.pool.name, w.role),
            "namespace": w.owner.namespace,
            "labels": labels,
            "annotations": dict(annotations),
            "ownerReferences": [w.owner.reference()],
        },
        "spec": {
            "replicas": w.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }


def render_service(owner: Owner) -> dict[str, Any]:
    """The deployment's one Service: only serving pods take traffic, whichever pool they run on."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(owner.name),
            "namespace": owner.namespace,
            "labels": selector_labels(owner.name),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "selector": selector_labels(owner.name, role="serving"),
            "ports": [{"name": "http", "port": WORKER_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
