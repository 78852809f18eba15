"""Static discovery for tests and development: the deployments and replica URLs come from a file
(`--endpoints FILE`, YAML or JSON) or from `--endpoint MODEL=URL[,pool=NAME][,capacity=RPS][,engine=NAME]` flags.
A static replica is routable once a probe succeeds (its runtime's /metrics page, and its worker says `serving`; for
a runtime without metrics, its health path), so workers may start before or after the gateway.

    deployments:
      - model: tiny              # the `model` clients send
        name: chat               # the InferenceDeployment it stands for (default: the model)
        namespace: default
        ttftP99Ms: 300           # optional SLO: the queue timeout derives from it
        p99LatencyMs: 2000
        replicas:
          - {url: "http://127.0.0.1:18001", pool: gpu-a, capacityRps: 4}
          - {url: "http://127.0.0.1:18002", pool: cpu-a, engine: llama-cpp}  # default engine: infleet-worker
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from infleet.runtimes import DEFAULT_ENGINE, RUNTIMES
from infleet_gateway.replicas import DeploymentSpec, EndpointTable, ReplicaSpec


class ConfigError(ValueError):
    """The static endpoints are malformed; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class StaticReplica(_Strict):
    url: str = Field(pattern=r"^https?://[^/\s]+$")
    pool: str = "default"
    capacity_rps: float | None = Field(default=None, gt=0, alias="capacityRps")
    engine: str = DEFAULT_ENGINE  # the replica's serving stack: which page its probe reads

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        if v not in RUNTIMES:
            raise ValueError(f"unknown engine {v!r}; known: {', '.join(RUNTIMES)}")
        return v


class StaticDeployment(_Strict):
    model: str = Field(min_length=1)
    name: str | None = None
    namespace: str = "default"
    ttft_p99_ms: int | None = Field(default=None, gt=0, alias="ttftP99Ms")
    p99_latency_ms: int | None = Field(default=None, gt=0, alias="p99LatencyMs")
    replicas: list[StaticReplica] = Field(default_factory=list)


class StaticEndpoints(_Strict):
    deployments: list[StaticDeployment]


def load_file(path: Path) -> StaticEndpoints:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML/JSON: {exc}") from exc
    try:
        return StaticEndpoints.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from exc


def parse_endpoint_flag(flag: str) -> tuple[str, StaticReplica]:
    """`MODEL=URL[,pool=NAME][,capacity=RPS][,engine=NAME]` -> (model, replica)."""
    model, sep, rest = flag.partition("=")
    if not sep or not model or not rest:
        raise ConfigError(f"--endpoint {flag!r}: expected MODEL=URL[,pool=NAME][,capacity=RPS][,engine=NAME]")
    url, *options = rest.split(",")
    fields: dict[str, object] = {"url": url}
    keys = {"pool": "pool", "capacity": "capacityRps", "engine": "engine"}
    for option in options:
        k, eq, v = option.partition("=")
        if not eq or k not in keys:
            raise ConfigError(f"--endpoint {flag!r}: unknown option {option!r} (pool=NAME, capacity=RPS, engine=NAME)")
        fields[keys[k]] = v
    try:
        return model, StaticReplica.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(f"--endpoint {flag!r}: {_describe(exc)}") from exc


def merge(file: StaticEndpoints | None, flags: Sequence[str]) -> StaticEndpoints:
    deployments = list(file.deployments) if file else []
    for flag in flags:
        model, replica = parse_endpoint_flag(flag)
        existing = next((d for d in deployments if d.model == model), None)
        if existing is None:
            deployments.append(StaticDeployment(model=model, replicas=[replica]))
        else:
            existing.replicas.append(replica)
    return StaticEndpoints(deployments=deployments)


def fill(table: EndpointTable, endpoints: StaticEndpoints) -> None:
    for d in endpoints.deployments:
        spec = DeploymentSpec(namespace=d.namespace, name=d.name or d.model, model=d.model,
                              ttft_slo_s=d.ttft_p99_ms / 1000 if d.ttft_p99_ms else None,
                              latency_slo_s=d.p99_latency_ms / 1000 if d.p99_latency_ms else None)
        table.upsert_deployment(spec)
        table.replace_replicas((spec.namespace, spec.name), [
            ReplicaSpec(replica_id=r.url, url=r.url.rstrip("/"), pool=r.pool, ready=True,
                        capacity_rps=r.capacity_rps, engine=r.engine) for r in d.replicas])


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'top level'}: {e['msg']}" for e in exc.errors())
