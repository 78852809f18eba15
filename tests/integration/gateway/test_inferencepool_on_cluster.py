"""The per-deployment InferencePool on the real control plane: nothing is written while the cluster lacks the
`inferencepools` API; once the CRD exists the pool is applied (the API server validates it against the v1 field
constraints), selects the deployment's serving pods, and goes with the deployment (owner reference, garbage
collector). The sync is called directly here; wiring it into the reconcile is the operator's part.

The CRD is a stand-in (`inferencepool-crd.yaml`), removed at the end so other modules see a cluster without it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infleet.controller.inferencepool import InferencePools
from infleet.controller.kube import Kube
from infleet.controller.manifests import Owner
from tests.integration.controller.test_operator_on_cluster import get, install, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[3]
STAND_IN_CRD = Path(__file__).with_name("inferencepool-crd.yaml")
CRD_NAME = "inferencepools.inference.networking.k8s.io"


@pytest.fixture(scope="module")
def env(cluster: Any) -> Iterator[tuple[Any, str]]:
    if cluster.kubectl("get", "crd", CRD_NAME, check=False).returncode == 0:
        pytest.skip(f"{CRD_NAME} already exists in this cluster; this test adds and removes it")
    install(cluster)
    ns = f"gw-infpool-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        yield cluster, ns
    finally:
        cluster.kubectl("delete", "-f", str(STAND_IN_CRD), "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def create_infd(cluster: Any, ns: str, name: str) -> Owner:
    manifest: dict[str, Any] = yaml.safe_load((ROOT / "examples/small-cpu-model.yaml").read_text())
    manifest["metadata"]["name"] = name
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(manifest))
    body = get(cluster, "infd", "-n", ns, name)
    return Owner("infleet.io/v1alpha1", "InferenceDeployment", name, ns, body["metadata"]["uid"])


def test_inference_pool_follows_the_crd_and_the_deployment(env: tuple[Any, str]) -> None:
    cluster, ns = env
    kube = Kube.connect(cluster.kubeconfig)
    owner = create_infd(cluster, ns, "chat")
    pools = InferencePools(kube, recheck_s=0.0)
    assert pools.sync(owner) is None  # no API: skipped, nothing raised

    cluster.kubectl("apply", "-f", str(STAND_IN_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    applied = wait_for("the InferencePool API in discovery", lambda: pools.sync(owner), timeout=30)
    stored = get(cluster, "inferencepools", "-n", ns, "chat")
    assert stored["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "infleet", "infleet.io/deployment": "chat", "infleet.io/role": "serving"}
    assert stored["spec"]["targetPorts"] == [{"number": 8000}]
    assert stored["spec"]["endpointPickerRef"]["failureMode"] == "FailOpen"
    assert stored["spec"]["endpointPickerRef"]["kind"] == "Service"  # defaulted by the API server
    assert applied["metadata"]["uid"] == stored["metadata"]["uid"]
    assert pools.sync(owner) is not None  # idempotent: a second apply converges to the same object
    (ref,) = stored["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"]) == ("InferenceDeployment", "chat", owner.uid)

    cluster.kubectl("delete", "infd", "-n", ns, "chat", "--wait=true", "--timeout=60s")
    wait_for("the pool deleted with its deployment",
             lambda: get(cluster, "inferencepools", "-n", ns, "chat") is None or None, timeout=90)
