"""The typed models: Kubernetes JSON names, defaults, derived values, and the manifest loader's errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from infleet.api import (
    AcceleratorPool,
    InferenceDeployment,
    InferenceDeploymentSpec,
    ManifestError,
    ModelSpec,
    SLOSpec,
    load_manifests,
)
from infleet.api._base import to_kube_name

ROOT = Path(__file__).resolve().parents[3]

DEPLOYMENT = """\
apiVersion: infleet.io/v1alpha1
kind: InferenceDeployment
metadata: {name: d1, namespace: ns}
spec:
  model: {name: m, source: builtin://tiny, parametersBillions: 8, dtype: bf16, families: [nvidia-gpu, cpu]}
  slo: {p99LatencyMs: 1000}
  cost: {maxHourlyCostUSD: 12.5}
"""

POOL = """\
apiVersion: infleet.io/v1alpha1
kind: AcceleratorPool
metadata: {name: p1}
spec:
  nodeSelector: {karpenter.sh/nodepool: cpu-spot}
  accelerator: {family: cpu, product: c7i, resourceName: cpu, devicesPerNode: 4, cpusPerDevice: 8,
                memoryGiBPerDevice: 15}
  capacityType: spot
  pricePerDeviceHourUSD: 0.14
"""


@pytest.mark.parametrize(
    ("snake", "camel"),
    [
        ("max_hourly_cost_usd", "maxHourlyCostUSD"),
        ("price_per_device_hour_usd", "pricePerDeviceHourUSD"),
        ("memory_gib_per_device", "memoryGiBPerDevice"),
        ("p99_latency_ms", "p99LatencyMs"),
        ("ttft_p99_ms", "ttftP99Ms"),
        ("cold_start_seconds", "coldStartSeconds"),
        ("grid_carbon_grams_per_kwh", "gridCarbonGramsPerKWh"),
        ("name", "name"),
    ],
)
def test_json_names_keep_units(snake: str, camel: str) -> None:
    assert to_kube_name(snake) == camel


def test_loads_multi_document_yaml_with_defaults() -> None:
    docs = load_manifests(DEPLOYMENT + "---\n" + POOL + "---\n")
    assert [type(d) for d in docs] == [InferenceDeployment, AcceleratorPool]
    deployment, pool = docs
    assert isinstance(deployment, InferenceDeployment)
    assert isinstance(pool, AcceleratorPool)
    spec = deployment.spec
    assert spec.cost.max_hourly_cost_usd == 12.5
    assert spec.scaling.min_replicas == 1
    assert spec.scaling.max_replicas == 4
    assert spec.scaling.mode == "Auto"
    assert spec.placement.spot == "Allowed"
    assert spec.warm_pool.mode == "Off"
    assert spec.allowed_families() == ["nvidia-gpu", "cpu"]
    assert pool.spec.accelerator.cpus_per_device == 8
    assert pool.spec.cold_start_seconds == 120


def test_round_trip_through_kubernetes_json() -> None:
    (deployment,) = load_manifests(DEPLOYMENT)
    data = deployment.to_dict()
    assert data["spec"]["cost"] == {"maxHourlyCostUSD": 12.5}
    assert "parametersBillions" in data["spec"]["model"]
    assert "memoryGiB" not in data["spec"]["model"], "unset optional fields are left out"
    assert InferenceDeployment.model_validate(data) == deployment


def test_python_names_construct_models_too() -> None:
    spec = InferenceDeploymentSpec(
        model=ModelSpec(name="m", source="builtin://tiny", memory_gib=3, families=["cpu"]),
        slo=SLOSpec(p99_latency_ms=500),
    )
    assert spec.model.footprint_gib() == 3
    assert spec.to_dict()["model"]["memoryGiB"] == 3


@pytest.mark.parametrize(
    ("params", "dtype", "gib"),
    [(8, "bf16", 8e9 * 2 * 1.2 / 2**30), (8, "int4", 8e9 * 0.5 * 1.2 / 2**30), (1, "fp32", 1e9 * 4 * 1.2 / 2**30)],
)
def test_footprint_from_parameters_and_dtype(params: float, dtype: str, gib: float) -> None:
    model = ModelSpec.model_validate(
        {"name": "m", "source": "x", "parametersBillions": params, "dtype": dtype, "families": ["cpu"]}
    )
    assert model.footprint_gib() == pytest.approx(gib)
    explicit = model.model_copy(update={"memory_gib": 40.0})
    assert explicit.footprint_gib() == 40.0


def test_runtime_override_per_family() -> None:
    model = ModelSpec.model_validate(
        {
            "name": "m",
            "source": "x",
            "memoryGiB": 2,
            "families": ["nvidia-gpu", "aws-neuron"],
            "runtimes": {
                "aws-neuron": {
                    "image": "neuron:1",
                    "env": [{"name": "A", "value": "1"}],
                    "resources": {"limits": {"memory": "8Gi", "cpu": 2}},
                }
            },
        }
    )
    neuron = model.runtime_for("aws-neuron")
    assert neuron is not None
    assert neuron.image == "neuron:1"
    assert neuron.resources is not None
    assert neuron.resources.limits == {"memory": "8Gi", "cpu": 2}
    assert model.runtime_for("nvidia-gpu") is None


def test_unknown_field_is_an_error_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(POOL + "---\n" + DEPLOYMENT.replace("maxHourlyCostUSD", "maxHourlyCostUsd"))
    with pytest.raises(ManifestError) as info:
        load_manifests(path)
    err = info.value
    assert err.source == str(path)
    assert err.index == 2
    assert err.what == "InferenceDeployment d1"
    assert err.problems == [("spec.cost.maxHourlyCostUsd", "unknown field (check the spelling; see `kubectl explain`)")]
    assert str(err).startswith(f"{path}: document 2 (InferenceDeployment d1):\n  spec.cost.maxHourlyCostUsd:")


def test_every_problem_of_a_document_is_reported() -> None:
    bad = DEPLOYMENT.replace("p99LatencyMs: 1000", "p99LatencyMs: -1").replace("[nvidia-gpu, cpu]", "[gpu]")
    with pytest.raises(ManifestError) as info:
        load_manifests(bad)
    paths = [p for p, _ in info.value.problems]
    assert paths == ["spec.model.families[0]", "spec.slo.p99LatencyMs"]
    assert "greater than 0" in info.value.problems[1][1]


def test_rule_violation_reads_as_the_rule_message() -> None:
    bad = DEPLOYMENT.replace(
        "slo: {p99LatencyMs: 1000}", "slo: {p99LatencyMs: 1000}\n  scaling: {minReplicas: 3, maxReplicas: 2}"
    )
    with pytest.raises(ManifestError) as info:
        load_manifests(bad)
    assert info.value.problems == [("spec.scaling", "scaling.minReplicas must not exceed scaling.maxReplicas")]


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        ("- just\n- a list\n", "", "expected a mapping, got list"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n", "apiVersion", "expected infleet.io/v1alpha1"),
        ("apiVersion: infleet.io/v1alpha1\nkind: Widget\n", "kind", "got 'Widget'"),
        ("a: [unclosed\n", "", "not valid YAML"),
    ],
)
def test_not_an_infleet_object(text: str, path: str, reason: str) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifests(text)
    (problem,) = info.value.problems
    assert problem[0] == path
    assert reason in problem[1]


def test_empty_documents_are_skipped_and_text_is_not_mistaken_for_a_path() -> None:
    assert load_manifests("---\n---\n") == []
    assert load_manifests("") == []
    # A one-line string that is not a file is parsed as YAML, not opened ...
    with pytest.raises(ManifestError, match="expected a mapping, got str"):
        load_manifests("just-a-word")
    # ... unless it is clearly a manifest file name: then the missing file is the error.
    with pytest.raises(FileNotFoundError, match=r"no-such-file\.yaml: no such manifest file"):
        load_manifests("no-such-file.yaml")


def test_status_round_trip() -> None:
    (deployment,) = load_manifests(DEPLOYMENT)
    status = {
        "observedGeneration": 3,
        "replicas": 2,
        "readyReplicas": 1,
        "selector": "infleet.io/deployment=d1",
        "costPerHourUSD": 2.3,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "NoPoolFits",
                "message": "model needs 18 GiB",
                "lastTransitionTime": "2026-01-02T03:04:05Z",
            },
        ],
        "pools": [
            {
                "pool": "l4-spot",
                "family": "nvidia-gpu",
                "desired": 2,
                "ready": 1,
                "warm": 0,
                "costPerHourUSD": 0.92,
                "saturated": True,
            }
        ],
        "lastDecision": {"time": "2026-01-02T03:04:05Z", "kind": "Fallback", "reason": "PoolSaturated"},
    }
    full = InferenceDeployment.model_validate({**deployment.to_dict(), "status": status})
    assert full.status is not None
    ready = full.status.condition("Ready")
    assert ready is not None
    assert ready.reason == "NoPoolFits"
    assert full.status.condition("SLOMet") is None
    assert full.to_dict()["status"]["conditions"][0]["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    with pytest.raises(ValidationError):
        InferenceDeployment.model_validate({**deployment.to_dict(), "status": {**status, "replicas": -1}})
