"""Every invalid manifest in invalid_manifests.yaml is rejected by the models AND by the CRD evaluated offline
(schema + CEL with cel-python); every example passes both. The integration tests run the same table against the
real apiserver."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from infleet.api import ManifestError, crdgen, parse_manifest
from infleet.api.v1alpha1 import AcceleratorPool, InferenceDeployment
from tests.unit.api.crd_offline import ROOT, case_manifest, load_cases, offline_errors

BASES, CASES = load_cases()
CRDS = {
    "InferenceDeployment": crdgen.inference_deployment_crd(),
    "AcceleratorPool": crdgen.accelerator_pool_crd(),
}
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
MODEL_CASES = [c for c in CASES if not c.get("update")]


def _example_docs() -> list[tuple[str, dict[str, Any]]]:
    """The infleet.io documents of examples/ (it also ships the `models` claim they load from)."""
    return [(f"{p.name}#{i}", d) for p in EXAMPLES for i, d in enumerate(yaml.safe_load_all(p.read_text()))
            if d and str(d.get("apiVersion", "")).startswith("infleet.io/")]


def _expect(case: dict[str, Any], side: str) -> str:
    return str(case.get(side) or case["expect"])


def test_case_table_is_well_formed() -> None:
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))
    for case in CASES:
        assert case["base"] in BASES
        assert case.get("apiserver") or case.get("expect"), case["name"]
        if not case.get("update"):
            assert case.get("python") or case.get("expect"), case["name"]


@pytest.mark.parametrize("name", sorted(BASES))
def test_bases_are_valid(name: str) -> None:
    parse_manifest(BASES[name])
    assert offline_errors(CRDS[BASES[name]["kind"]], BASES[name]) == []


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c["name"] for c in MODEL_CASES])
def test_models_reject_invalid_manifest(case: dict[str, Any]) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(case_manifest(BASES, case), source="invalid_manifests.yaml", index=1)
    assert _expect(case, "python") in str(info.value)


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c["name"] for c in MODEL_CASES])
def test_offline_crd_rejects_invalid_manifest(case: dict[str, Any]) -> None:
    manifest = case_manifest(BASES, case)
    errors = offline_errors(CRDS[manifest["kind"]], manifest)
    assert errors, "the generated CRD accepts a manifest the models reject"
    if "expect" in case and not case.get("python"):
        # Same message from the CEL rule as from the Python predicate (schema errors are phrased by jsonschema).
        cel_case = "should be" not in case["expect"]
        if cel_case:
            assert any(case["expect"] in e for e in errors), errors


@pytest.mark.parametrize(("where", "doc"), _example_docs(), ids=[w for w, _ in _example_docs()])
def test_examples_pass_models_and_offline_crd(where: str, doc: dict[str, Any]) -> None:
    parsed = parse_manifest(doc, source=where)
    assert offline_errors(CRDS[doc["kind"]], doc) == []
    # What the models serialize is accepted by the CRD too (defaults included).
    assert offline_errors(CRDS[doc["kind"]], parsed.to_dict()) == []


def test_examples_cover_the_issue() -> None:
    docs = [parse_manifest(d) for _, d in _example_docs()]
    pools = [d for d in docs if isinstance(d, AcceleratorPool)]
    deployments = {d.metadata.name: d for d in docs if isinstance(d, InferenceDeployment)}
    nodepools = yaml.safe_load((ROOT / "e2e/cluster/nodepools.yaml").read_text())["pools"]
    # One AcceleratorPool per simulated node pool, selecting it by name, with the same capacity type and
    # tolerating its taints.
    assert sorted(p.metadata.name or "" for p in pools) == sorted(n["name"] for n in nodepools)
    by_name = {p.metadata.name: p for p in pools}
    for nodepool in nodepools:
        pool = by_name[nodepool["name"]]
        assert pool.spec.node_selector == {"karpenter.sh/nodepool": nodepool["name"]}
        assert pool.spec.capacity_type == nodepool["capacityType"]
        tolerated = {(t.key, t.value, t.effect) for t in pool.spec.tolerations}
        for taint in nodepool["taints"]:
            assert (taint["key"], taint["value"], taint["effect"]) in tolerated
        resource = pool.spec.accelerator.resource_name
        allocatable = nodepool["allocatable"]
        if resource == "cpu":
            cpus = pool.spec.accelerator.cpus_per_device or 0
            assert pool.spec.accelerator.devices_per_node * cpus == int(allocatable["cpu"])
        else:
            assert pool.spec.accelerator.devices_per_node == int(allocatable[resource])
    # Spot pools are cheaper than their on-demand twins.
    for pool in pools:
        twin = by_name.get((pool.metadata.name or "").replace("-spot", "-on-demand"))
        if pool.spec.capacity_type == "spot" and twin is not None:
            assert pool.spec.price_per_device_hour_usd < twin.spec.price_per_device_hour_usd
    assert {"chat-llm", "batch-embedder", "small-cpu-model"} <= set(deployments)
    assert deployments["batch-embedder"].spec.placement.spot == "Preferred"
    assert deployments["small-cpu-model"].spec.allowed_families() == ["cpu"]
    assert deployments["chat-llm"].spec.slo.ttft_p99_ms is not None


def test_pools_file_cites_its_prices() -> None:
    text = (ROOT / "examples/pools.yaml").read_text()
    assert "https://aws.amazon.com/ec2/pricing/on-demand/" in text
    assert "https://cloud.google.com/tpu/pricing" in text
    assert "NOT a quote" in text
