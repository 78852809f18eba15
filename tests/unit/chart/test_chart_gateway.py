"""The chart's infleet-gateway: two hardened replicas with probes, a Service, a PDB, read-only RBAC on exactly
what discovery watches, flags the real `infleet-gateway` parser accepts, and the off switch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.unit.chart.chart_helpers import CHART, Render, by_component, by_kind, run_helm


def gateway_deployment(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = by_component(objs, "Deployment", "gateway")
    return dep


def test_gateway_is_deployed_by_default_with_two_replicas_probes_and_a_pdb(render: Render) -> None:
    objs = render()
    dep = gateway_deployment(objs)
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["infleet-gateway"]
    assert c["image"].startswith("ghcr.io/infleet/gateway:")
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["affinity"]["podAntiAffinity"], "replicas spread over nodes by default"
    (svc,) = by_component(objs, "Service", "gateway")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    (pdb,) = by_component(objs, "PodDisruptionBudget", "gateway")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    operator = by_component(objs, "Deployment", "operator")[0]
    assert operator["spec"]["selector"]["matchLabels"] != dep["spec"]["selector"]["matchLabels"]


def test_gateway_rbac_reads_only_pods_and_inferencedeployments(render: Render) -> None:
    objs = render()
    (role,) = by_component(objs, "ClusterRole", "gateway")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert granted == {("", "pods", "list"), ("", "pods", "watch"),
                       ("infleet.io", "inferencedeployments", "list"),
                       ("infleet.io", "inferencedeployments", "watch")}
    (binding,) = by_component(objs, "ClusterRoleBinding", "gateway")
    (sa,) = by_component(objs, "ServiceAccount", "gateway")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "infleet-system"}]
    assert gateway_deployment(objs)["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_the_gateway_cli_accepts_the_rendered_args(render: Render) -> None:
    from infleet_gateway.cli import build_parser

    parser = build_parser()
    ha = gateway_deployment(render("ha-values.yaml"))
    args = ha["spec"]["template"]["spec"]["containers"][0]["args"]
    ns = parser.parse_args(args)
    assert ns.kube and ns.prefix_affinity_chars == 256 and ns.cold_start_timeout == 600
    assert ns.port == 8080
    assert ha["spec"]["replicas"] == 3
    default = parser.parse_args(gateway_deployment(render())["spec"]["template"]["spec"]["containers"][0]["args"])
    assert (default.max_queue, default.max_attempts, default.prefix_affinity_chars) == (256, 3, 0)


def test_gateway_off_switch_and_monitoring(render: Render) -> None:
    minimal = render("minimal-values.yaml")
    assert not [o for o in minimal
                if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "gateway"]
    (sm,) = by_component(render("monitoring-values.yaml"), "ServiceMonitor", "gateway")
    assert sm["spec"]["endpoints"][0]["port"] == "http"
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True, "keep the deployment's namespace label"
    assert not by_component(render(sets=("rbac.create=false",)), "ClusterRole", "gateway")
    assert not by_component(render(sets=("gateway.podDisruptionBudget.enabled=false",)), "PodDisruptionBudget",
                            "gateway")
    assert by_kind(render(), "Deployment")


def test_schema_refuses_bad_gateway_values(helm: Path) -> None:
    for sets, message in ((("gateway.maxAttempts=0",), "minimum"), (("gateway.port=0",), "minimum"),
                          (("gateway.colour=red",), "additional properties 'colour' not allowed")):
        args = ["template", "x", str(CHART)]
        for s in sets:
            args += ["--set", s]
        res = run_helm(helm, *args, check=False)
        assert res.returncode != 0
        assert message in res.stderr, res.stderr
