"""Property test: on schema-valid random specs, the Python predicates and the CRD's CEL rules (cel-python) accept
and reject exactly the same objects, with the same messages."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infleet.api import ManifestError, crdgen, parse_manifest
from tests.unit.api.crd_offline import offline_errors

DEPLOYMENT_CRD = crdgen.inference_deployment_crd()
POOL_CRD = crdgen.accelerator_pool_crd()
FAMILIES = ["nvidia-gpu", "aws-neuron", "google-tpu", "cpu"]
POOLS = ["a", "b", "c"]
ENGINES = ["infleet-worker", "vllm", "llama-cpp", "neuron-vllm", "vllm-tpu"]


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


families = st.lists(st.sampled_from(FAMILIES), unique=True, max_size=4)
pools = st.lists(st.sampled_from(POOLS), unique=True, max_size=3)
small = st.integers(min_value=0, max_value=6)


@st.composite
def deployments(draw: st.DrawFn) -> dict[str, Any]:
    model_families = draw(families)
    runtimes = draw(st.lists(st.sampled_from(FAMILIES), unique=True, max_size=2))
    model = _drop_none(
        {
            "name": "m",
            "source": "builtin://tiny",
            "task": draw(st.sampled_from(["text-generation", "embedding"])),
            "families": model_families,
            "parametersBillions": draw(_maybe(st.just(1))),
            "memoryGiB": draw(_maybe(st.just(2))),
            "runtimes": {f: _drop_none({"image": "x", "engine": draw(_maybe(st.sampled_from(ENGINES)))})
                         for f in runtimes} or None,
        }
    )
    slo = _drop_none(
        {
            "p99LatencyMs": draw(st.integers(min_value=1, max_value=5)),
            "ttftP99Ms": draw(_maybe(st.just(1))),
        }
    )
    placement = _drop_none(
        {
            "pools": draw(_maybe(pools)),
            "families": draw(_maybe(families)),
            "preference": draw(_maybe(pools)),
            "minOnDemandReplicas": draw(_maybe(small)),
            "objective": draw(_maybe(st.sampled_from(["Cost", "Energy", "Carbon"]))),
        }
    )
    scaling = _drop_none(
        {
            "minReplicas": draw(_maybe(small)),
            "maxReplicas": draw(_maybe(st.integers(min_value=1, max_value=6))),
            "targetP99LatencyMs": draw(_maybe(st.integers(min_value=1, max_value=5))),
        }
    )
    warm = _drop_none({"mode": draw(st.sampled_from(["Off", "Fixed", "Auto"])), "size": draw(_maybe(small))})
    spec = {"model": model, "slo": slo, "placement": placement, "scaling": scaling, "warmPool": warm}
    return {"apiVersion": "infleet.io/v1alpha1", "kind": "InferenceDeployment", "metadata": {"name": "d"}, "spec": spec}


@st.composite
def pools_(draw: st.DrawFn) -> dict[str, Any]:
    family = draw(st.sampled_from(FAMILIES))
    accelerator = _drop_none(
        {
            "family": family,
            "product": "p",
            "resourceName": draw(st.sampled_from(["cpu", "nvidia.com/gpu"])),
            "devicesPerNode": 4,
            "memoryGiBPerDevice": 16,
            "cpusPerDevice": draw(_maybe(st.just(8))),
        }
    )
    profile = _drop_none(
        {
            "model": draw(_maybe(st.just("m"))),
            "modelClass": draw(_maybe(st.just("c"))),
            "requestsPerSecond": draw(_maybe(st.just(1.5))),
            "tokensPerSecond": draw(_maybe(st.just(10))),
            "latencyBoundMs": 100,
        }
    )
    selector = draw(st.sampled_from([{}, {"karpenter.sh/nodepool": "x"}]))
    toleration = _drop_none(
        {
            "key": draw(_maybe(st.just("nvidia.com/gpu"))),
            "operator": draw(st.sampled_from(["Exists", "Equal"])),
            "value": draw(_maybe(st.just("present"))),
        }
    )
    power = _drop_none(
        {
            "typicalWattsPerDevice": draw(st.sampled_from([50, 72])),
            "maxWattsPerDevice": draw(_maybe(st.sampled_from([60, 72]))),
            "gridCarbonGramsPerKWh": draw(_maybe(st.just(400))),
        }
    )
    spec = {
        "power": draw(_maybe(st.just(power))),
        "nodeSelector": selector,
        "accelerator": accelerator,
        "capacityType": "spot",
        "pricePerDeviceHourUSD": 1.0,
        "performanceProfiles": [profile],
        "tolerations": [toleration],
    }
    spec = _drop_none(spec)
    return {"apiVersion": "infleet.io/v1alpha1", "kind": "AcceleratorPool", "metadata": {"name": "p"}, "spec": spec}


def _python_messages(manifest: dict[str, Any]) -> set[str] | None:
    """Rule messages from the models, or None when the object is valid."""
    try:
        parse_manifest(manifest)
    except ManifestError as exc:
        return {msg for _, reason in exc.problems for msg in reason.split("; ")}
    return None


def _agree(crd: dict[str, Any], manifest: dict[str, Any]) -> None:
    cel = {e.split(": ", 1)[1] for e in offline_errors(crd, manifest)}
    python = _python_messages(manifest)
    if python is None:
        assert cel == set(), f"CEL rejects what Python accepts: {cel}"
    else:
        assert cel, f"Python rejects what CEL accepts: {python}"
        # pydantic does not evaluate an outer model's rules once an inner model failed, so Python may report
        # fewer messages; each one it reports must be a CEL failure too.
        assert python <= cel, (python, cel)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deployments())
def test_deployment_rules_agree(manifest: dict[str, Any]) -> None:
    _agree(DEPLOYMENT_CRD, manifest)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools_())
def test_pool_rules_agree(manifest: dict[str, Any]) -> None:
    _agree(POOL_CRD, manifest)
