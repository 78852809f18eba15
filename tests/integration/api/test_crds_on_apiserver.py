"""The CRDs on the real kube-apiserver: they install, `kubectl explain` teaches the API, the examples are
accepted, the scale subresource works, and every invalid manifest of tests/unit/api/invalid_manifests.yaml is
rejected by the apiserver's own schema/CEL validation with the expected message."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.api.crd_offline import case_manifest, load_cases

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[3]
CRD_FILES = [ROOT / "crds/infleet.io_inferencedeployments.yaml", ROOT / "crds/infleet.io_acceleratorpools.yaml"]
BASES, CASES = load_cases()
CREATE_CASES = [c for c in CASES if not c.get("update")]
UPDATE_CASES = [c for c in CASES if c.get("update")]
# Cluster-scoped objects this module creates carry this label, so cleanup never touches other tests' pools.
OWNER_LABEL = "infleet.io/test-owner"


@pytest.fixture(scope="module")
def crds(cluster: Any) -> Any:
    args = ["apply", "--server-side", "--force-conflicts"]
    for path in CRD_FILES:
        args += ["-f", str(path)]
    cluster.kubectl(*args)
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/inferencedeployments.infleet.io",
        "crd/acceleratorpools.infleet.io",
    )
    return cluster


@pytest.fixture(scope="module")
def namespace(crds: Any) -> Iterator[str]:
    name = f"api-it-{uuid.uuid4().hex[:6]}"
    crds.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        crds.kubectl("delete", "namespace", name, "--wait=false", check=False)
        crds.kubectl("delete", "acceleratorpools", "-l", f"{OWNER_LABEL}={name}", "--wait=false", check=False)


def _yaml(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj, sort_keys=False)


def _named(manifest: dict[str, Any], name: str, owner: str) -> dict[str, Any]:
    meta = {**manifest.get("metadata", {}), "name": name, "labels": {OWNER_LABEL: owner}}
    return {**manifest, "metadata": meta}


def test_crds_are_established_with_names_and_subresources(crds: Any) -> None:
    out = json.loads(crds.kubectl("get", "crd", "inferencedeployments.infleet.io", "-o", "json").stdout)
    assert out["spec"]["names"]["shortNames"] == ["infd"]
    assert set(out["spec"]["versions"][0]["subresources"]) == {"status", "scale"}
    conditions = {c["type"]: c["status"] for c in out["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    out = json.loads(crds.kubectl("get", "crd", "acceleratorpools.infleet.io", "-o", "json").stdout)
    assert out["spec"]["scope"] == "Cluster"
    assert out["spec"]["names"]["shortNames"] == ["accpool"]


def test_kubectl_explain_teaches_the_api(crds: Any) -> None:
    # The OpenAPI document is republished shortly after a CRD changes: retry for a little while.
    deadline = time.monotonic() + 60
    while True:
        res = crds.kubectl("explain", "infd.spec.slo.p99LatencyMs", check=False)
        if res.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert res.returncode == 0, res.stderr
    assert "Target 99th-percentile request latency" in res.stdout
    res = crds.kubectl("explain", "accpool.spec.pricePerDeviceHourUSD")
    assert "Price of one device for one hour" in res.stdout


def test_examples_are_accepted(namespace: str, crds: Any) -> None:
    pools = crds.kubectl("apply", "--dry-run=server", "-f", str(ROOT / "examples/pools.yaml"))
    assert pools.stdout.count("acceleratorpool.infleet.io/") == 8
    for name in ("chat-llm", "batch-embedder", "small-cpu-model"):
        res = crds.kubectl(
            "apply", "-n", namespace, "--dry-run=server", "--validate=strict", "-f", str(ROOT / f"examples/{name}.yaml")
        )
        assert f"inferencedeployment.infleet.io/{name}" in res.stdout


def test_apiserver_fills_defaults_and_prints_columns(namespace: str, crds: Any) -> None:
    manifest = _named(BASES["deployment"], "defaults", namespace)
    crds.kubectl("create", "-n", namespace, "-f", "-", input=_yaml(manifest))
    stored = json.loads(crds.kubectl("get", "infd", "defaults", "-n", namespace, "-o", "json").stdout)["spec"]
    assert stored["scaling"]["minReplicas"] == 1
    assert stored["scaling"]["maxReplicas"] == 4
    assert stored["placement"]["spot"] == "Allowed"
    assert stored["warmPool"]["mode"] == "Off"
    assert stored["model"]["dtype"] == "bf16"
    header = crds.kubectl("get", "infd", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "MODEL", "READY", "REPLICAS", "POOLS", "COST/H", "SLO", "AGE"]


def test_scale_subresource_drives_scaling_replicas(namespace: str, crds: Any) -> None:
    manifest = _named(
        case_manifest(
            BASES,
            {
                "base": "deployment",
                "patch": {"spec": {"scaling": {"mode": "External", "minReplicas": 0, "maxReplicas": 8}}},
            },
        ),
        "scaled",
        namespace,
    )
    crds.kubectl("create", "-n", namespace, "-f", "-", input=_yaml(manifest))
    crds.kubectl("scale", "infd/scaled", "-n", namespace, "--replicas=3")
    stored = json.loads(crds.kubectl("get", "infd", "scaled", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["scaling"]["replicas"] == 3


def test_unknown_fields_are_pruned_without_strict_validation(namespace: str, crds: Any) -> None:
    typo = next(c for c in CASES if c["name"] == "unknown-field-typo")
    manifest = _named(case_manifest(BASES, typo), "pruned", namespace)
    res = crds.kubectl(
        "create",
        "-n",
        namespace,
        "--dry-run=server",
        "--validate=ignore",
        "-o",
        "json",
        "-f",
        "-",
        input=_yaml(manifest),
    )
    assert "maxReplica" not in json.loads(res.stdout)["spec"]["scaling"]


@pytest.mark.parametrize("case", CREATE_CASES, ids=[c["name"] for c in CREATE_CASES])
def test_apiserver_rejects_invalid_manifest(case: dict[str, Any], namespace: str, crds: Any) -> None:
    manifest = _named(case_manifest(BASES, case), f"inv-{case['name']}"[:63], namespace)
    res = crds.kubectl(
        "create",
        "-n",
        namespace,
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input=_yaml(manifest),
        check=False,
    )
    assert res.returncode != 0, f"the apiserver accepted {case['name']}"
    expected = case.get("apiserver") or case["expect"]
    assert expected in res.stderr, res.stderr


@pytest.mark.parametrize("case", UPDATE_CASES, ids=[c["name"] for c in UPDATE_CASES])
def test_apiserver_rejects_changing_an_immutable_field(case: dict[str, Any], namespace: str, crds: Any) -> None:
    base = BASES[case["base"]]
    name = f"imm-{uuid.uuid4().hex[:6]}"
    crds.kubectl("create", "-n", namespace, "-f", "-", input=_yaml(_named(base, name, namespace)))
    kind = base["kind"].lower()
    res = crds.kubectl(
        "patch", kind, name, "-n", namespace, "--type=merge", "-p", json.dumps(case["patch"]), check=False
    )
    assert res.returncode != 0, f"the apiserver accepted {case['name']}"
    assert case["apiserver"] in res.stderr, res.stderr
    # A mutable field on the same object still updates.
    ok = crds.kubectl(
        "patch",
        kind,
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"metadata": {"annotations": {"touched": "yes"}}}),
    )
    assert "patched" in ok.stdout
