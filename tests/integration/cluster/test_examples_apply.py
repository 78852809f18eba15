"""`kubectl apply -f examples/` on a fresh cluster places every example: the directory ships the `models` claim
the examples load from, so nothing else has to be created first."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import TestCluster
from tests.integration.controller.operator_process import OperatorProcess
from tests.integration.controller.test_operator_on_cluster import condition, install, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"


def example_deployments() -> list[str]:
    return [d["metadata"]["name"] for p in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
            if d and d.get("kind") == "InferenceDeployment"]


def test_applying_the_examples_directory_places_every_example(cluster: TestCluster, tmp_path: Path) -> None:
    install(cluster)  # the CRDs
    ns = f"it-examples-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    op = OperatorProcess(cluster.kubeconfig, ns, tmp_path / "operator.log", "--standalone").start()
    try:
        op.wait_live()
        cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES))
        names = example_deployments()
        assert len(names) >= 3

        def all_placed() -> bool:
            items = json.loads(cluster.kubectl("get", "infd", "-n", ns, "-o", "json").stdout)["items"]
            placed = {i["metadata"]["name"] for i in items if condition(i, "Placed").get("status") == "True"}
            return placed >= set(names)

        wait_for("every example Placed", all_placed, timeout=180)
        claim = json.loads(cluster.kubectl("get", "pvc", "models", "-n", ns, "-o", "json").stdout)
        assert claim["status"]["phase"] == "Bound"
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False)
        op.stop()
        cluster.kubectl("delete", "pv", "infleet-example-models", "--wait=false", check=False)
