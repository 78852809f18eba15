"""infleet.io/v1alpha1: the InferenceDeployment and AcceleratorPool resources as typed models.

These classes are the source of truth: `infleet.api.crdgen` generates the CRD YAML in ``crds/`` from them
(descriptions, bounds, enums, defaults, CEL rules), and a unit test keeps the committed YAML equal to the
generated one. JSON names are camelCase with units in the name (``p99LatencyMs``, ``maxHourlyCostUSD``);
Python attributes are snake_case. Unknown fields are errors, so a typo never silently becomes a default.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, ConfigDict, Field

from infleet.api._base import LIST_SET, Immutable, KubeModel, ListType, Rule

GROUP = "infleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

INFERENCE_DEPLOYMENT_KIND = "InferenceDeployment"
INFERENCE_DEPLOYMENT_PLURAL = "inferencedeployments"
INFERENCE_DEPLOYMENT_SINGULAR = "inferencedeployment"
INFERENCE_DEPLOYMENT_SHORT_NAMES = ("infd",)

ACCELERATOR_POOL_KIND = "AcceleratorPool"
ACCELERATOR_POOL_PLURAL = "acceleratorpools"
ACCELERATOR_POOL_SINGULAR = "acceleratorpool"
ACCELERATOR_POOL_SHORT_NAMES = ("accpool",)

CATEGORIES = ("infleet",)

Family = Literal["nvidia-gpu", "aws-neuron", "google-tpu", "cpu"]
FAMILIES: tuple[Family, ...] = ("nvidia-gpu", "aws-neuron", "google-tpu", "cpu")

Dtype = Literal["bf16", "fp16", "fp8", "int8", "int4", "fp32"]
# Bytes per weight for each dtype: the model's footprint is parameters x bytes x MEMORY_OVERHEAD.
DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
# Head-room over the raw weights for activations, KV cache and runtime buffers when only a parameter count is
# given. Users with a better number set `model.memoryGiB`.
MEMORY_OVERHEAD = 1.2

Task = Literal["text-generation", "embedding", "classification"]
CapacityType = Literal["on-demand", "spot"]
SpotPolicy = Literal["Never", "Allowed", "Preferred"]
PlacementObjective = Literal["Cost", "Energy", "Carbon"]
ScalingMode = Literal["Auto", "External"]
WarmPoolMode = Literal["Off", "Fixed", "Auto"]
ConditionStatus = Literal["True", "False", "Unknown"]

# Condition types of an InferenceDeployment.
CONDITION_READY = "Ready"
CONDITION_PLACED = "Placed"
CONDITION_SLO_MET = "SLOMet"
CONDITION_WITHIN_BUDGET = "WithinBudget"
DEPLOYMENT_CONDITION_TYPES = (CONDITION_READY, CONDITION_PLACED, CONDITION_SLO_MET, CONDITION_WITHIN_BUDGET)
# Condition types of an AcceleratorPool (`Ready` too: nodes found, spec valid).
CONDITION_SATURATED = "Saturated"
POOL_CONDITION_TYPES = (CONDITION_READY, CONDITION_SATURATED)

# For a CPU pool the "device" is a slice of this many vCPUs unless the pool says otherwise.
CPU_RESOURCE_NAME = "cpu"

T = TypeVar("T")


def _unique(items: list[T]) -> list[T]:
    seen: list[T] = []
    for item in items:
        if item in seen:
            raise ValueError(f"duplicate entry {item!r}")
        seen.append(item)
    return items


# Bounded strings and lists keep the apiserver's CEL cost estimate low and reject absurd input early.
EfficiencySource = Literal["measured", "estimated"]
Name = Annotated[str, Field(min_length=1, max_length=253)]
ShortString = Annotated[str, Field(max_length=1024)]
LongString = Annotated[str, Field(max_length=4096)]
NameSet = Annotated[list[Name], AfterValidator(_unique)]
FamilySet = Annotated[list[Family], AfterValidator(_unique)]
# A Kubernetes resource quantity ("4", "16Gi", 2).
Quantity = int | str


# ---------------------------------------------------------------------------------------------------------
# Shared pieces


class ObjectMeta(KubeModel):
    """The subset of Kubernetes metadata infleet reads; everything else is kept but not interpreted."""

    model_config = ConfigDict(extra="allow")

    name: Name | None = Field(default=None, description="Object name.")
    namespace: Name | None = Field(default=None, description="Namespace (InferenceDeployment only).")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")
    generation: int | None = Field(default=None, description="Generation, bumped on every spec change.")
    uid: str | None = Field(default=None, description="Unique ID assigned by the apiserver.")
    resource_version: str | None = Field(default=None, description="Resource version for optimistic locking.")


class Condition(KubeModel):
    """A standard Kubernetes condition (the shape of metav1.Condition)."""

    type: Annotated[str, Field(min_length=1, max_length=316)] = Field(
        description="Condition type, e.g. Ready, Placed, SLOMet, WithinBudget (deployments) or Ready, Saturated "
        "(pools)."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: Annotated[str, Field(max_length=1024)] = Field(
        default="", description="One CamelCase word saying why the condition is in this state, for machines."
    )
    message: Annotated[str, Field(max_length=32768)] = Field(
        default="", description="What happened and what to do about it, for humans."
    )
    last_transition_time: datetime | None = Field(
        default=None, description="When the condition last changed status (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation this condition was computed from."
    )


class EnvVar(KubeModel):
    """An environment variable for the serving container (the shape of a core/v1 EnvVar)."""

    name: Annotated[str, Field(min_length=1, max_length=256)] = Field(description="Variable name.")
    value: LongString | None = Field(default=None, description="Literal value.")
    value_from: dict[str, Any] | None = Field(
        default=None,
        description="A core/v1 EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, ...), passed through to "
        "the pod unchanged.",
    )


class ResourceRequirements(KubeModel):
    """Compute resources for the serving container, merged over what infleet derives from the pool."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Minimum resources (e.g. cpu: 4, memory: 16Gi)."
    )
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Maximum resources.")


# ---------------------------------------------------------------------------------------------------------
# InferenceDeployment

# Serving stacks (`runtimes.<family>.engine`) and the families each runs on; infleet.runtimes has one adapter per
# name (a unit test keeps the two in step).
Engine = Literal["infleet-worker", "vllm", "llama-cpp", "neuron-vllm", "vllm-tpu"]
DEFAULT_ENGINE: Engine = "infleet-worker"
ENGINES_FOR_FAMILY: dict[str, tuple[str, ...]] = {
    "nvidia-gpu": ("infleet-worker", "vllm"),
    "aws-neuron": ("infleet-worker", "neuron-vllm"),
    "google-tpu": ("infleet-worker", "vllm-tpu"),
    "cpu": ("infleet-worker", "llama-cpp"),
}


def _engine_check(family: str) -> Callable[[Runtimes], bool]:
    """The Python side of the per-family engine rule (CEL in `Runtimes.cel_rules`)."""

    def check(runtimes: Runtimes) -> bool:
        override = runtimes.for_family(family)
        return override is None or override.engine is None or override.engine in ENGINES_FOR_FAMILY[family]

    return check



class RuntimeOverride(KubeModel):
    """How to run the model on one accelerator family: a Neuron or TPU build differs from a CUDA one."""

    engine: Engine | None = Field(
        default=None,
        description="Serving stack on this family: infleet-worker (unset: the default, every family), vllm "
        "(nvidia-gpu), llama-cpp (cpu), neuron-vllm (aws-neuron) or vllm-tpu (google-tpu). It picks the "
        "container's command line, probes, metric names and warm standby; see docs/runtimes.md.",
    )
    image: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None,
        description="Container image for this family (defaults to the operator's worker image, or the engine's "
        "upstream image).",
    )
    args: Annotated[list[LongString], Field(max_length=64)] = Field(
        default_factory=list, description="Extra arguments appended to the engine's command line."
    )
    env: Annotated[list[EnvVar], Field(max_length=64)] = Field(
        default_factory=list, description="Extra environment variables for the serving container."
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description="Container resources, merged over the accelerator request infleet derives from the pool.",
    )


class Runtimes(KubeModel):
    """Per-family runtime overrides; a family without an entry uses the defaults."""

    nvidia_gpu: RuntimeOverride | None = Field(
        default=None, alias="nvidia-gpu", description="Overrides on NVIDIA GPU pools (CUDA build)."
    )
    aws_neuron: RuntimeOverride | None = Field(
        default=None, alias="aws-neuron", description="Overrides on AWS Inferentia/Trainium pools (Neuron build)."
    )
    google_tpu: RuntimeOverride | None = Field(
        default=None, alias="google-tpu", description="Overrides on Google TPU pools (XLA build)."
    )
    cpu: RuntimeOverride | None = Field(default=None, description="Overrides on CPU pools.")

    cel_rules: ClassVar[tuple[Rule, ...]] = tuple(
        Rule(
            cel=f"!has(self.{cel_field}) || !has(self.{cel_field}.engine) || "
            f"self.{cel_field}.engine in [{', '.join(repr(e) for e in ENGINES_FOR_FAMILY[family])}]",
            message=f"runtimes.{family}.engine must be one of {', '.join(ENGINES_FOR_FAMILY[family])}",
            check=_engine_check(family),
        )
        for family, cel_field in (
            ("nvidia-gpu", "nvidia__dash__gpu"),
            ("aws-neuron", "aws__dash__neuron"),
            ("google-tpu", "google__dash__tpu"),
            ("cpu", "cpu"),
        )
    )

    def for_family(self, family: str) -> RuntimeOverride | None:
        """The override for `family`, or None when the defaults apply."""
        return {
            "nvidia-gpu": self.nvidia_gpu,
            "aws-neuron": self.aws_neuron,
            "google-tpu": self.google_tpu,
            "cpu": self.cpu,
        }.get(family)

    def families(self) -> list[str]:
        """Families with an override."""
        return [family for family in FAMILIES if self.for_family(family) is not None]


class ModelSpec(KubeModel):
    """Which model to serve and what it needs."""

    name: Annotated[
        Name, Immutable("model.name is immutable: create a new InferenceDeployment to serve another model")
    ] = Field(description="Model name, reported as the `model` label on metrics and served as the API model id.")
    source: Annotated[str, Field(min_length=1, max_length=2048)] = Field(
        description="Where the worker loads the weights from: a URI such as pvc://claim/path, file:///models/x or "
        "s3://bucket/prefix, or builtin://NAME for one of the worker's built-in random-weight shapes (tests, "
        "benchmarks)."
    )
    task: Task = Field(
        default="text-generation",
        description="What the model does; TTFT and time-per-output-token targets apply to text-generation only.",
    )
    parameters_billions: float | None = Field(
        default=None, gt=0, description="Parameter count in billions; with dtype it gives the memory footprint."
    )
    dtype: Dtype = Field(default="bf16", description="Weight precision: bf16, fp16, fp8, int8, int4 or fp32.")
    memory_gib: float | None = Field(
        default=None,
        gt=0,
        description="Accelerator memory one replica needs, in GiB. Overrides the footprint derived from "
        "parametersBillions x bytes(dtype) x 1.2.",
    )
    families: Annotated[FamilySet, Field(max_length=4), LIST_SET] = Field(
        description="Accelerator families this model has a build for: nvidia-gpu, aws-neuron, google-tpu, cpu."
    )
    model_class: Annotated[str, Field(max_length=253)] | None = Field(
        default=None,
        description="A class name (e.g. llm-8b) matched against AcceleratorPool performanceProfiles when no "
        "profile names this model directly.",
    )
    runtimes: Runtimes | None = Field(default=None, description="Per-family image, args, env and resources.")

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.parametersBillions) || has(self.memoryGiB)",
            message="model: set parametersBillions or memoryGiB, so infleet can tell which pools the model fits",
            check=lambda m: m.parameters_billions is not None or m.memory_gib is not None,
        ),
        Rule(
            cel="size(self.families) > 0",
            message="model.families must list at least one accelerator family the model can run on",
            check=lambda m: len(m.families) > 0,
        ),
        Rule(
            cel="!has(self.runtimes) || ("
            "(!has(self.runtimes.nvidia__dash__gpu) || 'nvidia-gpu' in self.families) && "
            "(!has(self.runtimes.aws__dash__neuron) || 'aws-neuron' in self.families) && "
            "(!has(self.runtimes.google__dash__tpu) || 'google-tpu' in self.families) && "
            "(!has(self.runtimes.cpu) || 'cpu' in self.families))",
            message="model.runtimes has an entry for a family that is not in model.families",
            check=lambda m: m.runtimes is None or all(f in m.families for f in m.runtimes.families()),
        ),
    )

    def footprint_gib(self) -> float:
        """Accelerator memory one replica needs: memoryGiB if set, else derived from the parameter count."""
        if self.memory_gib is not None:
            return self.memory_gib
        assert self.parameters_billions is not None  # guaranteed by the rule above
        # 1e9 parameters x bytes each, in GiB.
        return self.parameters_billions * 1e9 * DTYPE_BYTES[self.dtype] * MEMORY_OVERHEAD / 2**30

    def runtime_for(self, family: str) -> RuntimeOverride | None:
        """The runtime override for `family`, if any."""
        return None if self.runtimes is None else self.runtimes.for_family(family)


class ThroughputSpec(KubeModel):
    """The load the deployment is expected to carry; it sizes the initial placement."""

    requests_per_second: float | None = Field(default=None, gt=0, description="Expected requests per second.")
    tokens_per_second: float | None = Field(
        default=None, gt=0, description="Expected generated tokens per second (text-generation)."
    )


class SLOSpec(KubeModel):
    """The service-level objective infleet places and scales for."""

    p99_latency_ms: int = Field(
        gt=0, description="Target 99th-percentile request latency (arrival to last token), in milliseconds."
    )
    ttft_p99_ms: int | None = Field(
        default=None, gt=0, description="Target p99 time to first token in milliseconds (text-generation only)."
    )
    tpot_p99_ms: int | None = Field(
        default=None,
        gt=0,
        description="Target p99 time per output token in milliseconds (text-generation only).",
    )
    throughput: ThroughputSpec | None = Field(default=None, description="Expected load.")


class CostSpec(KubeModel):
    """Spending limits; a placement that cannot meet them sets WithinBudget=False."""

    max_hourly_cost_usd: float | None = Field(
        default=None, gt=0, description="Most the serving replicas (not the warm pool) may cost per hour, in USD."
    )
    max_cost_per_million_tokens_usd: float | None = Field(
        default=None,
        gt=0,
        description="Most one million generated tokens may cost at the expected throughput, in USD.",
    )


class PlacementSpec(KubeModel):
    """Where replicas may run and in what order of preference."""

    pools: Annotated[NameSet, Field(max_length=64), LIST_SET] | None = Field(
        default=None,
        description="AcceleratorPool names replicas may run on. Unset: any pool of an allowed family.",
    )
    families: Annotated[FamilySet, Field(max_length=4), LIST_SET] | None = Field(
        default=None,
        description="Accelerator families allowed here, a subset of model.families. Unset: all of model.families.",
    )
    preference: Annotated[NameSet, Field(max_length=64), LIST_SET] | None = Field(
        default=None,
        description="Pool names to try first, in order; the rest are ordered by cost. Must be within pools if "
        "pools is set.",
    )
    spot: SpotPolicy = Field(
        default="Allowed",
        description="Spot capacity: Never (on-demand only), Allowed (when cheapest), Preferred (spot first).",
    )
    min_on_demand_replicas: int = Field(
        default=0, ge=0, description="Replicas that must run on on-demand capacity whatever the spot policy."
    )
    fallback_after_seconds: int = Field(
        default=120,
        ge=0,
        description="How long a replica may stay unscheduled on a pool before infleet places it on the next one.",
    )
    objective: PlacementObjective = Field(
        default="Cost",
        description="What placement minimises within the SLO and cost.maxHourlyCostUSD: Cost ($ per hour), Energy "
        "(Wh per hour: devices x the pool's power.typicalWattsPerDevice) or Carbon (that energy x the pool's "
        "power.gridCarbonGramsPerKWh). Ties go to the cheaper plan. Under Energy (Carbon) only pools that "
        "declare those figures are used.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.pools) || size(self.pools) > 0",
            message="placement.pools, when set, must name at least one AcceleratorPool",
            check=lambda p: p.pools is None or len(p.pools) > 0,
        ),
        Rule(
            cel="!has(self.families) || size(self.families) > 0",
            message="placement.families, when set, must name at least one accelerator family",
            check=lambda p: p.families is None or len(p.families) > 0,
        ),
        Rule(
            cel="!has(self.preference) || !has(self.pools) || self.preference.all(p, p in self.pools)",
            message="placement.preference may only name pools listed in placement.pools",
            check=lambda p: p.preference is None or p.pools is None or all(x in p.pools for x in p.preference),
        ),
    )


class ScalingSpec(KubeModel):
    """How the replica count follows load."""

    mode: ScalingMode = Field(
        default="Auto",
        description="Auto: infleet's autoscaler sets the replica count. External: the scale subresource "
        "(scaling.replicas) does, e.g. driven by an HPA or KEDA.",
    )
    replicas: int | None = Field(
        default=None,
        ge=0,
        description="Desired replicas in External mode (the scale subresource's spec.replicas); clamped to "
        "[minReplicas, maxReplicas].",
    )
    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas; 0 allows scale to zero.")
    max_replicas: int = Field(default=4, ge=1, description="Most replicas.")
    target_queue_depth_per_replica: float = Field(
        default=4.0, gt=0, description="Queued requests per replica the autoscaler aims for."
    )
    target_p99_latency_ms: int | None = Field(
        default=None,
        gt=0,
        description="p99 latency the autoscaler scales up at, in milliseconds; at most slo.p99LatencyMs. "
        "Unset: 90% of slo.ttftP99Ms when declared (the autoscaler then watches p99 TTFT), else of slo.p99LatencyMs.",
    )
    scale_up_stabilization_seconds: int = Field(
        default=0, ge=0, description="Window over which scale-up recommendations are smoothed, in seconds."
    )
    scale_down_stabilization_seconds: int = Field(
        default=300, ge=0, description="Window over which scale-down recommendations are smoothed, in seconds."
    )
    scale_to_zero_after_seconds: int = Field(
        default=600, ge=0, description="Idle time before scaling to zero when minReplicas is 0, in seconds."
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="scaling.minReplicas must not exceed scaling.maxReplicas",
            check=lambda s: s.min_replicas <= s.max_replicas,
        ),
    )


class WarmPoolSpec(KubeModel):
    """Pods with the model loaded but taking no traffic, so scale-up skips the cold start."""

    mode: WarmPoolMode = Field(
        default="Off",
        description="Off: no warm pods. Fixed: keep `size` warm pods. Auto: size it from the recent scale-up rate.",
    )
    size: int | None = Field(default=None, ge=0, description="Warm pods to keep in Fixed mode (cap in Auto mode).")
    max_hourly_cost_usd: float | None = Field(
        default=None, gt=0, description="Most the warm pool may cost per hour, in USD."
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.mode != 'Fixed' || has(self.size)",
            message="warmPool.size is required when warmPool.mode is Fixed",
            check=lambda w: w.mode != "Fixed" or w.size is not None,
        ),
    )


class InferenceDeploymentSpec(KubeModel):
    """What to serve, the SLO and budget to meet, and where it may run."""

    model: ModelSpec = Field(description="The model to serve.")
    slo: SLOSpec = Field(description="Latency and throughput targets.")
    cost: CostSpec = Field(default_factory=CostSpec, description="Spending limits.")
    placement: PlacementSpec = Field(default_factory=PlacementSpec, description="Allowed pools and preferences.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Replica bounds and autoscaling targets.")
    warm_pool: WarmPoolSpec = Field(default_factory=WarmPoolSpec, description="Pre-loaded idle replicas.")

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.placement.families) || self.placement.families.all(f, f in self.model.families)",
            message="placement.families may only name families listed in model.families",
            check=lambda s: s.placement.families is None or all(f in s.model.families for f in s.placement.families),
        ),
        Rule(
            cel="self.placement.minOnDemandReplicas <= self.scaling.maxReplicas",
            message="placement.minOnDemandReplicas must not exceed scaling.maxReplicas",
            check=lambda s: s.placement.min_on_demand_replicas <= s.scaling.max_replicas,
        ),
        Rule(
            cel="!has(self.scaling.targetP99LatencyMs) || self.scaling.targetP99LatencyMs <= self.slo.p99LatencyMs",
            message="scaling.targetP99LatencyMs must not exceed slo.p99LatencyMs: scale up before the SLO is missed",
            check=lambda s: (
                s.scaling.target_p99_latency_ms is None or s.scaling.target_p99_latency_ms <= s.slo.p99_latency_ms
            ),
        ),
        Rule(
            cel="self.model.task == 'text-generation' || (!has(self.slo.ttftP99Ms) && !has(self.slo.tpotP99Ms))",
            message="slo.ttftP99Ms and slo.tpotP99Ms apply only to model.task text-generation",
            check=lambda s: (
                s.model.task == "text-generation" or (s.slo.ttft_p99_ms is None and s.slo.tpot_p99_ms is None)
            ),
        ),
    )

    def allowed_families(self) -> list[str]:
        """Families replicas may use: placement.families if set, else model.families."""
        if self.placement.families is not None:
            return [f for f in self.placement.families if f in self.model.families]
        return list(self.model.families)


class PoolReplicas(KubeModel):
    """Replicas of this deployment on one pool."""

    pool: Name = Field(description="AcceleratorPool name.")
    family: Family = Field(description="The pool's accelerator family.")
    desired: int = Field(default=0, ge=0, description="Serving replicas infleet wants on this pool.")
    ready: int = Field(default=0, ge=0, description="Serving replicas ready on this pool.")
    warm: int = Field(default=0, ge=0, description="Warm (loaded, idle) replicas on this pool.")
    cost_per_hour_usd: float = Field(default=0.0, ge=0, description="What this pool's replicas cost per hour, USD.")
    saturated: bool = Field(default=False, description="True when the pool could not fit the desired replicas.")
    replica_capacity_rps: float = Field(
        default=0.0,
        ge=0,
        description="Requests per second one replica on this pool sustains within the SLO, as the operator plans "
        "it (profile or service-model estimate, calibrated); the gateway weighs replicas by it.",
    )
    wh_per_million_tokens: float | None = Field(
        default=None, ge=0, description="Energy per million generated tokens on this pool, Wh (see efficiencySource)."
    )
    cost_per_million_tokens_usd: float | None = Field(
        default=None, ge=0, description="Cost per million generated tokens on this pool, USD (see efficiencySource)."
    )
    efficiency_source: EfficiencySource | None = Field(
        default=None,
        description="measured (the workers' token and energy counters) or estimated (planned tokens, pool power).",
    )


class Efficiency(KubeModel):
    """Energy and cost per million generated tokens of the whole deployment."""

    wh_per_million_tokens: float | None = Field(default=None, ge=0, description="Energy per million tokens, Wh.")
    cost_per_million_tokens_usd: float | None = Field(
        default=None, ge=0, description="Cost per million tokens, USD."
    )
    source: EfficiencySource = Field(
        default="estimated",
        description="measured when every pool's workers report tokens and energy; estimated otherwise (planned "
        "tokens at the declared or measured load, the pools' power.typicalWattsPerDevice).",
    )


class Decision(KubeModel):
    """The last placement or scaling decision and why it was made."""

    time: datetime = Field(description="When the decision was made (RFC 3339).")
    kind: Annotated[str, Field(max_length=63)] = Field(
        description="What was decided: Placement, ScaleUp, ScaleDown, ScaleToZero, Fallback or WarmPool."
    )
    reason: Annotated[str, Field(max_length=1024)] = Field(description="One CamelCase word saying why.")
    message: Annotated[str, Field(max_length=32768)] = Field(default="", description="The reasoning, for humans.")


class InferenceDeploymentStatus(KubeModel):
    """What infleet observed and did."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation the status reflects."
    )
    conditions: Annotated[
        list[Condition],
        Field(max_length=16),
        ListType("map", ("type",)),
    ] = Field(default_factory=list, description="Ready, Placed, SLOMet and WithinBudget, with reasons and messages.")
    replicas: int = Field(default=0, ge=0, description="Serving replicas that exist (all pools).")
    ready_replicas: int = Field(default=0, ge=0, description="Serving replicas that are ready (all pools).")
    warm_replicas: int = Field(default=0, ge=0, description="Warm replicas (all pools).")
    selector: Annotated[str, Field(max_length=4096)] | None = Field(
        default=None, description="Label selector of the serving pods, for the scale subresource (HPA, KEDA)."
    )
    pools: Annotated[
        list[PoolReplicas],
        Field(max_length=64),
        ListType("map", ("pool",)),
    ] = Field(default_factory=list, description="Replicas per pool.")
    pools_summary: Annotated[str, Field(max_length=4096)] | None = Field(
        default=None,
        description="Desired serving replicas per pool, e.g. h100-spot=2,l4-on-demand=1 (the Pools column).",
    )
    cost_per_hour_usd: float = Field(default=0.0, ge=0, description="Current cost per hour of all replicas, in USD.")
    last_decision: Decision | None = Field(default=None, description="The last placement or scaling decision.")
    efficiency: Efficiency | None = Field(
        default=None, description="Energy (Wh) and cost ($) per million generated tokens, measured or estimated."
    )
    loop_state: Annotated[str, Field(max_length=65536)] | None = Field(
        default=None,
        description="The operator's decision-loop state (compact JSON: scaling history, calibration, saturation), "
        "kept here so a restarted operator or a peer taking over continues where the last one stopped.",
    )

    def condition(self, type_: str) -> Condition | None:
        """The condition of this type, if present."""
        return next((c for c in self.conditions if c.type == type_), None)


class InferenceDeployment(KubeModel):
    """A model served across accelerator pools at the lowest cost that meets its SLO."""

    api_version: Literal["infleet.io/v1alpha1"] = Field(
        default="infleet.io/v1alpha1", description="infleet.io/v1alpha1"
    )
    kind: Literal["InferenceDeployment"] = Field(default="InferenceDeployment", description="InferenceDeployment")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: InferenceDeploymentSpec = Field(description="Desired state.")
    status: InferenceDeploymentStatus | None = Field(default=None, description="Observed state.")


# ---------------------------------------------------------------------------------------------------------
# AcceleratorPool


class Toleration(KubeModel):
    """A core/v1 Toleration that infleet adds to pods placed on this pool."""

    key: Annotated[str, Field(max_length=316)] | None = Field(default=None, description="Taint key to tolerate.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: Annotated[str, Field(max_length=63)] | None = Field(default=None, description="Taint value (Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; unset tolerates all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.operator != 'Exists' || !has(self.value)",
            message="a toleration with operator Exists takes no value",
            check=lambda t: t.operator != "Exists" or t.value is None,
        ),
        Rule(
            cel="has(self.key) || self.operator == 'Exists'",
            message="a toleration without a key must use operator Exists (it then tolerates every taint)",
            check=lambda t: t.key is not None or t.operator == "Exists",
        ),
    )


class AcceleratorSpec(KubeModel):
    """The accelerator every node of the pool carries."""

    family: Annotated[
        Family, Immutable("accelerator.family is immutable: create a new AcceleratorPool for other hardware")
    ] = Field(description="nvidia-gpu, aws-neuron, google-tpu or cpu.")
    product: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        description="Product name, e.g. NVIDIA-H100-80GB-HBM3, inferentia2, tpu-v5-lite-podslice, c7i."
    )
    resource_name: Annotated[
        str,
        Field(min_length=1, max_length=253),
        Immutable("accelerator.resourceName is immutable: create a new AcceleratorPool instead"),
    ] = Field(
        description="Extended resource a replica requests per device: nvidia.com/gpu, aws.amazon.com/neuron, "
        "google.com/tpu, or cpu for a CPU pool (a device is then a slice of cpusPerDevice vCPUs)."
    )
    devices_per_node: int = Field(ge=1, description="Devices each node offers (allocatable resourceName).")
    memory_gib_per_device: float = Field(
        gt=0, description="Memory per device in GiB (HBM for accelerators, RAM per slice for CPU pools)."
    )
    cpus_per_device: int | None = Field(default=None, ge=1, description="CPU pools only: vCPUs in one device slice.")

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="(self.family == 'cpu') == (self.resourceName == 'cpu')",
            message="accelerator.resourceName must be cpu exactly when accelerator.family is cpu",
            check=lambda a: (a.family == "cpu") == (a.resource_name == CPU_RESOURCE_NAME),
        ),
        Rule(
            cel="self.family == 'cpu' || !has(self.cpusPerDevice)",
            message="accelerator.cpusPerDevice applies only to cpu pools",
            check=lambda a: a.family == "cpu" or a.cpus_per_device is None,
        ),
    )


class PowerSpec(KubeModel):
    """The devices' power draw, and the grid's carbon intensity, for energy estimates and energy-aware placement."""

    typical_watts_per_device: float = Field(
        gt=0,
        le=100000,
        description="Typical power of one device while serving, in watts (a CPU pool: one cpusPerDevice slice).",
    )
    max_watts_per_device: float | None = Field(
        default=None,
        gt=0,
        le=100000,
        description="Most power one device may draw (its TDP or board power limit), in watts.",
    )
    grid_carbon_grams_per_kwh: float | None = Field(
        default=None,
        ge=0,
        le=5000,
        description="Carbon intensity of the electricity the pool runs on, in grams of CO2-equivalent per kWh.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.maxWattsPerDevice) || double(self.maxWattsPerDevice) >= double(self.typicalWattsPerDevice)",
            message="power.maxWattsPerDevice must be at least power.typicalWattsPerDevice",
            check=lambda p: p.max_watts_per_device is None or p.max_watts_per_device >= p.typical_watts_per_device,
        ),
    )


class PerformanceProfile(KubeModel):
    """Measured capacity of one replica on this pool for a model or model class."""

    model: Annotated[str, Field(max_length=253)] | None = Field(
        default=None, description="Model name (InferenceDeployment spec.model.name) this profile is for."
    )
    model_class: Annotated[str, Field(max_length=253)] | None = Field(
        default=None, description="Model class (spec.model.modelClass) this profile is for."
    )
    devices_per_replica: int = Field(default=1, ge=1, description="Devices one replica uses.")
    requests_per_second: float | None = Field(
        default=None, gt=0, description="Requests per second one replica sustains within latencyBoundMs."
    )
    tokens_per_second: float | None = Field(
        default=None, gt=0, description="Generated tokens per second one replica sustains within latencyBoundMs."
    )
    latency_bound_ms: int = Field(gt=0, description="The p99 latency, in milliseconds, the throughput holds at.")

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.model) != has(self.modelClass)",
            message="a performance profile names exactly one of model or modelClass",
            check=lambda p: (p.model is None) != (p.model_class is None),
        ),
        Rule(
            cel="has(self.requestsPerSecond) || has(self.tokensPerSecond)",
            message="a performance profile needs requestsPerSecond or tokensPerSecond",
            check=lambda p: p.requests_per_second is not None or p.tokens_per_second is not None,
        ),
    )


class AcceleratorPoolSpec(KubeModel):
    """A set of nodes with one kind of accelerator, one capacity type and one price."""

    node_selector: Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=32)] = Field(
        description="Labels that select this pool's nodes, e.g. karpenter.sh/nodepool: l4-spot."
    )
    tolerations: Annotated[list[Toleration], Field(max_length=32)] = Field(
        default_factory=list, description="Tolerations for the pool's taints, added to every pod placed here."
    )
    accelerator: AcceleratorSpec = Field(description="The accelerator on every node.")
    capacity_type: Annotated[
        CapacityType, Immutable("capacityType is immutable: create a new AcceleratorPool for other capacity")
    ] = Field(description="on-demand or spot (spot capacity can be reclaimed at any time).")
    price_per_device_hour_usd: float = Field(
        ge=0, description="Price of one device for one hour, in USD (instance price / devicesPerNode)."
    )
    max_devices: int | None = Field(
        default=None, ge=0, description="Most devices infleet may use in this pool (all deployments). Unset: all."
    )
    cold_start_seconds: int = Field(
        default=120,
        ge=0,
        description="Expected seconds from creating a pod here to it serving (node provisioning, image pull, load).",
    )
    performance_profiles: Annotated[list[PerformanceProfile], Field(max_length=64)] = Field(
        default_factory=list, description="Measured per-replica throughput for models or model classes."
    )
    power: PowerSpec | None = Field(
        default=None,
        description="Power per device (typical and maximum watts) and the grid's carbon intensity. Unset: the "
        "pool's energy is unknown and placement.objective Energy or Carbon does not use it.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="size(self.nodeSelector) > 0",
            message="nodeSelector must have at least one label, or the pool would claim every node",
            check=lambda s: len(s.node_selector) > 0,
        ),
    )


class AcceleratorPoolStatus(KubeModel):
    """What infleet observed about the pool's nodes and usage."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation the status reflects."
    )
    conditions: Annotated[
        list[Condition],
        Field(max_length=16),
        ListType("map", ("type",)),
    ] = Field(default_factory=list, description="Ready and Saturated, with reasons and messages.")
    nodes: int = Field(default=0, ge=0, description="Ready nodes matching nodeSelector.")
    allocatable_devices: int = Field(default=0, ge=0, description="Devices the nodes offer (capped by maxDevices).")
    allocated_devices: int = Field(default=0, ge=0, description="Devices infleet pods request.")
    saturated: bool = Field(default=False, description="True when a replica did not fit in the pool.")


class AcceleratorPool(KubeModel):
    """A cluster-wide pool of accelerator nodes that InferenceDeployments can place replicas on."""

    api_version: Literal["infleet.io/v1alpha1"] = Field(
        default="infleet.io/v1alpha1", description="infleet.io/v1alpha1"
    )
    kind: Literal["AcceleratorPool"] = Field(default="AcceleratorPool", description="AcceleratorPool")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: AcceleratorPoolSpec = Field(description="Desired state.")
    status: AcceleratorPoolStatus | None = Field(default=None, description="Observed state.")


Manifest = InferenceDeployment | AcceleratorPool
