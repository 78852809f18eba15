"""What every runtime adapter provides, as plain data: no Kubernetes client, no HTTP, no I/O.

An adapter answers four questions for the operator, the gateway and the simulator: how to start the serving
container (command, arguments, environment, probes), which Prometheus names carry infleet's signals, whether and
how a warm replica is promoted (and drained), and what service model the simulator should assume.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Device = Literal["cuda", "neuron", "xla", "cpu"]
Role = Literal["serving", "warm"]
# Every runtime listens here, so the Service, the InferencePool and the gateway need no per-runtime port.
SERVING_PORT = 8000


@dataclass(frozen=True, kw_only=True)
class ServingContext:
    """What a runtime needs to know to start one replica of one deployment on one pool."""

    model_path: str  # where the weights are, as the container sees them (a path or a hub id)
    served_name: str  # the API model id clients ask for
    device: Device
    devices_per_replica: int  # accelerators (or CPU slices) each replica is given
    units_per_device: int = 1  # resource units per device (vCPUs of a CPU slice)
    resource_name: str | None = None  # the pool's device resource, e.g. "nvidia.com/gpu", "aws.amazon.com/neuron"
    role: Role = "serving"
    weights_dtype: str = "bf16"  # spec.model.dtype (placement sizes memory by it, so the runtime must serve it)


@dataclass(frozen=True, kw_only=True)
class Launch:
    """The serving container's entry point and what it asks for."""

    command: Sequence[str]
    args: Sequence[str]
    env: Sequence[Mapping[str, Any]] = ()  # core/v1 EnvVar objects, rendered before the user's own
    readiness_path: str
    liveness_path: str
    # Extra container fields (e.g. a lifecycle hook); empty for most runtimes.
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class MetricNames:
    """Prometheus sample names that carry infleet's signals (docs/metrics.md, "Runtimes"). None: not exposed."""

    marker: str  # a substring every page of this runtime contains (tells its /metrics from anything else)
    waiting: str | None
    running: str | None
    kv_usage: str | None
    requests_total: str | None  # finished requests (a counter's sample name, `_total` included)
    e2e_bucket: str | None  # end-to-end latency histogram (the `_bucket` sample)
    ttft_bucket: str | None
    prompt_tokens: str | None
    generation_tokens: str | None
    energy_joules: str | None = None
    energy_measurable: str | None = None
    # The gateway's probe also reads these (gateway/infleet_gateway/probe.py):
    kv_usage_fallback: str | None = None  # an older release's name for kv_usage, read only when kv_usage is absent
    lifecycle_state: str | None = None  # a gauge that is 1 on the label `state` the replica is in (warm, draining)


@dataclass(frozen=True, kw_only=True)
class HttpCall:
    """One request the operator sends to a replica (path relative to http://<podIP>:<port>)."""

    method: Literal["GET", "POST"]
    path: str
    json: Mapping[str, Any] | None = None
    needs_admin_token: bool = False  # infleet-worker's admin API wants its bearer token


@dataclass(frozen=True, kw_only=True)
class WarmStandby:
    """How a warm replica is held and promoted. `promote` None: no warm standby (warm = a cold replica kept
    running and started from scratch to serve, so the operator never promotes it)."""

    mechanism: str  # one line for docs and events
    promote: HttpCall | None


@dataclass(frozen=True, kw_only=True)
class Drain:
    """How a replica finishes in-flight work before it goes: an HTTP call, or SIGTERM's own graceful shutdown."""

    mechanism: str
    call: HttpCall | None = None


@dataclass(frozen=True, kw_only=True)
class ServiceDefaults:
    """What the simulator assumes of this runtime (infleet.sim.fleet): seconds from a ready warm replica to serving,
    from each project's documentation (not measured here); None: no warm standby, so the simulator, like the
    operator, never promotes a warm replica and a scale-up waits for a cold start (the pool's coldStartSeconds)."""

    promote_s: float | None


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """One serving stack's adapter."""

    engine: str  # the API's `runtimes.<family>.engine` value
    families: Sequence[str]  # accelerator families it serves on
    images: Mapping[str, str]  # device -> default image; empty: the operator's worker image (ImageConfig)
    launch: Callable[[ServingContext], Launch]
    metrics: MetricNames | None  # None: no Prometheus endpoint (the gateway's signals drive scaling)
    warm: WarmStandby
    drain: Drain
    sim: ServiceDefaults
    quantisation: str  # one line for docs/runtimes.md
    version: str  # the upstream version whose flags, endpoints and metric names the adapter follows
    metrics_path: str = "/metrics"
    # A GET that answers 200 once the model is loaded, without waiting behind requests in flight: what the gateway
    # probes for a runtime with no metrics page (for the others it probes `metrics_path`).
    health_path: str = "/health"
    container_name: str = "server"
    admin_token: bool = False  # mount infleet-worker's admin token Secret into the container

    @property
    def promotable(self) -> bool:
        return self.warm.promote is not None
