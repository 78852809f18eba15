"""The per-deployment SLO PrometheusRule on the real control plane: nothing fails (and nothing is written) while
the cluster lacks the `prometheusrules` API; once it exists the running operator finds it, applies a rule with the
deployment's burn-rate alerts, and the rule goes with the deployment (owner reference, garbage collector).

The CRD used is a minimal stand-in written for these tests (`prometheusrule-crd.yaml`): the real Prometheus
Operator CRD cannot be downloaded here. The tests run in file order (without the API first) and the stand-in is
removed at the end so other modules still see a cluster without the Prometheus Operator.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.controller.operator_process import OperatorProcess
from tests.integration.controller.test_operator_on_cluster import (
    apply_infd,
    get,
    operator_in_namespace,
    placed_and_ready,
    wait_for,
)

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[3]
STAND_IN_CRD = Path(__file__).with_name("prometheusrule-crd.yaml")
CRD_NAME = "prometheusrules.monitoring.coreos.com"


def crd_installed(cluster: Any) -> bool:
    return cluster.kubectl("get", "crd", CRD_NAME, check=False).returncode == 0


def small_model(name: str) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((ROOT / "examples/small-cpu-model.yaml").read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"]["warmPool"] = {"mode": "Off"}
    return manifest


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str, OperatorProcess]]:
    if crd_installed(cluster):
        pytest.skip(f"{CRD_NAME} already exists in this cluster; these tests need to add and remove it")
    try:
        with operator_in_namespace(cluster, "ctl-slo", tmp_path_factory.mktemp("operator")) as running:
            yield running
    finally:
        cluster.kubectl("delete", "-f", str(STAND_IN_CRD), "--wait=false", check=False)


def test_without_the_api_deployments_are_placed_and_one_info_is_logged(
    env: tuple[Any, str, OperatorProcess],
) -> None:
    cluster, ns, op = env
    apply_infd(cluster, ns, small_model("no-rules"))
    wait_for("placed without the PrometheusRule API", lambda: placed_and_ready(cluster, ns, "no-rules"), timeout=120)
    log = op.log_tail(200_000)
    assert log.count("no monitoring.coreos.com/v1 prometheusrules API") == 1, log[-3000:]
    assert "could not apply PrometheusRule" not in log
    assert op.metric("infleet_reconcile_total", kind="InferenceDeployment", result="error") == 0


def test_rule_appears_with_the_alerts_and_goes_with_the_deployment(env: tuple[Any, str, OperatorProcess]) -> None:
    cluster, ns, op = env
    cluster.kubectl("apply", "-f", str(STAND_IN_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    apply_infd(cluster, ns, small_model("with-rules"))
    infd = wait_for("placed", lambda: placed_and_ready(cluster, ns, "with-rules"), timeout=120)
    # The operator looks for the API again every 30 s, so both deployments get a rule without a restart.
    rule = wait_for("the SLO rule", lambda: get(cluster, "prometheusrules", "-n", ns, "infleet-slo-with-rules"), 90)
    (ref,) = rule["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"]) == ("InferenceDeployment", "with-rules", infd["metadata"]["uid"])
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == {"InfleetLatencySLOBudgetBurn", "InfleetTTFTSLOBudgetBurn"}  # the example sets ttftP99Ms
    assert any('deployment="with-rules"' in r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    wait_for("the earlier deployment's rule", lambda: get(cluster, "prometheusrules", "-n", ns, "infleet-slo-no-rules"))
    assert "InfleetLatencySLOBudgetBurn" in yaml.safe_dump(get(cluster, "prometheusrules", "-n", ns))

    cluster.kubectl("delete", "infd", "-n", ns, "with-rules", "--wait=true", "--timeout=60s")
    wait_for(
        "the rule deleted with its deployment",
        lambda: get(cluster, "prometheusrules", "-n", ns, "infleet-slo-with-rules") is None,
        timeout=90,
    )
    assert get(cluster, "prometheusrules", "-n", ns, "infleet-slo-no-rules") is not None
    assert "could not apply PrometheusRule" not in op.log_tail(200_000)
