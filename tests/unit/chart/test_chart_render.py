"""The chart through the real helm: lint, template with each ci/ values file, schema refusals, and what the
rendered objects say (security, RBAC shape, CRDs equal to crds/, generated files current)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infleet.slo import operator_alerts, recording_rules
from tests.unit.chart.chart_helpers import CHART, REPO, Render, by_component, by_kind, run_helm

VALUES_FILES = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))


def operator_pod(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = by_component(objs, "Deployment", "operator")
    return dict(dep["spec"]["template"]["spec"])


def test_there_are_several_values_files() -> None:
    assert len(VALUES_FILES) >= 4


@pytest.mark.parametrize("values", VALUES_FILES)
def test_helm_lint_strict(helm: Path, values: str) -> None:
    res = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(CHART / "ci" / values))
    assert "0 chart(s) failed" in res.stdout, res.stdout


@pytest.mark.parametrize("values", VALUES_FILES)
def test_template_renders_valid_objects(render: Render, values: str) -> None:
    objs = render(values)
    assert by_component(objs, "Deployment", "operator")
    for o in objs:
        assert o.get("apiVersion") and o.get("kind") and o.get("metadata", {}).get("name"), o


@pytest.mark.parametrize(("sets", "message"), [
    (("unknownKey=1",), "additional properties 'unknownKey' not allowed"),
    (("image.tagg=x",), "additional properties 'tagg' not allowed"),
    (("replicaCount=two",), "want integer"),
    (("crds.keep=maybe",), "want boolean"),
    (("metrics.port=70000",), "maximum"),
    (("operator.logFormat=xml",), "value must be one of"),
    (("serviceMonitor.interval=often",), "does not match pattern"),
    (("watchNamespaces[0]=Not_A_Namespace",), "does not match pattern"),
])
def test_schema_refuses_bad_values(helm: Path, sets: tuple[str, ...], message: str) -> None:
    args = ["template", "x", str(CHART)]
    for s in sets:
        args += ["--set", s]
    res = run_helm(helm, *args, check=False)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr


def test_standalone_with_many_replicas_is_refused(helm: Path) -> None:
    res = run_helm(helm, "template", "x", str(CHART), "--set", "peering.standalone=true", "--set", "replicaCount=2",
                   check=False)
    assert res.returncode != 0 and "standalone" in res.stderr


def test_operator_pod_is_hardened(render: Render) -> None:
    dep = by_component(render(), "Deployment", "operator")[0]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), "a read-only root needs a writable /tmp"


def test_operator_args_follow_values(render: Render) -> None:
    args = operator_pod(render("ha-values.yaml"))["containers"][0]["args"]
    assert args[0] == "run"
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args
    assert "--peering=infleet-ha" in args and "--fallback-after-seconds=120" in args
    assert "--image-repository=registry.example.com/infleet/worker" in args
    default = operator_pod(render())["containers"][0]["args"]
    assert "--all-namespaces" in default and "--peering=infleet" in default
    assert not any(a.startswith("--fallback-after-seconds") for a in default)
    minimal = operator_pod(render("minimal-values.yaml"))
    assert "--standalone" in minimal["containers"][0]["args"] and "--metrics-port=0" in minimal["containers"][0]["args"]
    assert minimal["serviceAccountName"] == "my-precreated-sa"


def test_the_operator_cli_accepts_the_rendered_args(render: Render) -> None:
    """The chart's flags exist in `infleet run` (parsed by the real argument parser, nothing run)."""
    from infleet.cli import build_parser

    parser = build_parser()
    for values in VALUES_FILES:
        c = operator_pod(render(values))["containers"][0]
        assert c["command"] == ["infleet"]
        ns = parser.parse_args(c["args"])
        assert ns.command == "run"


def test_rbac_has_no_wildcards_and_only_the_worker_admin_secret(render: Render) -> None:
    (role,) = by_component(render("monitoring-values.yaml"), "ClusterRole", "operator")
    secret_rules = []
    for rule in role["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
        assert "configmaps" not in rule["resources"]
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
        if "secrets" in rule["resources"]:
            assert rule["resources"] == ["secrets"], rule
            secret_rules.append(rule)
    # Secrets: create the workers' admin Secret; read and repair only that one by name; never list or watch.
    assert sorted((tuple(r["verbs"]), tuple(r.get("resourceNames", ()))) for r in secret_rules) == [
        (("create",), ()), (("get", "patch"), ("infleet-worker-admin",))]
    # The one namespaced Role: leader election on a Lease in the release's namespace.
    (lease_role,) = by_kind(render(), "Role")
    assert lease_role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch"]}
    ]


def test_network_policy_admits_only_operator_gateway_and_scraper(render: Render) -> None:
    assert not by_kind(render(), "NetworkPolicy"), "cluster-wide with no namespaces listed: nothing to render"
    objs = render(sets=("watchNamespaces={team-a,team-b}",), namespace="infleet-system", release="rel")
    policies = by_kind(objs, "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["team-a", "team-b"]
    spec = policies[0]["spec"]
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/managed-by": "infleet"}}
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}]
    peers = rule["from"]
    operator_pod = by_kind(objs, "Deployment")[0]["spec"]["template"]["metadata"]["labels"]
    operator_peer = peers[0]
    assert operator_peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "infleet-system"}}
    assert operator_peer["podSelector"]["matchLabels"].items() <= operator_pod.items()
    assert peers[1] == {"namespaceSelector": {}, "podSelector": {"matchLabels": {
        "app.kubernetes.io/component": "gateway"}}}
    assert peers[2]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    assert len(peers) == 3
    listed = render(sets=("networkPolicy.namespaces={models}",
                          "networkPolicy.extraFrom[0].namespaceSelector.matchLabels.team=a"))
    (policy,) = by_kind(listed, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == "models"
    assert policy["spec"]["ingress"][0]["from"][-1] == {"namespaceSelector": {"matchLabels": {"team": "a"}}}
    assert not by_kind(render(sets=("networkPolicy.enabled=false", "watchNamespaces={a}")), "NetworkPolicy")


def test_rbac_options(render: Render) -> None:
    def groups(objs: list[dict[str, Any]]) -> set[str]:
        return {g for r in by_component(objs, "ClusterRole", "operator")[0]["rules"] for g in r["apiGroups"]}

    assert "monitoring.coreos.com" in groups(render())
    minimal = render("minimal-values.yaml")
    assert "monitoring.coreos.com" not in groups(minimal)
    assert not by_kind(minimal, "Role"), "a standalone operator elects no leader"
    assert not by_kind(minimal, "ServiceAccount")
    assert not by_kind(render(sets=("rbac.create=false",)), "ClusterRole")

    def resources(objs: list[dict[str, Any]]) -> set[str]:
        return {res for r in by_component(objs, "ClusterRole", "operator")[0]["rules"] for res in r["resources"]}

    assert "namespaces" not in resources(render()), "cluster-wide kopf does not observe namespaces"
    assert "namespaces" in resources(render("ha-values.yaml")), "kopf observes the namespaces it is given"


def _crd_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_chart_crds_are_copies_of_repo_crds() -> None:
    repo = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "files" / "crds").glob("*.yaml")}
    assert repo, "crds/ is empty"
    assert chart == repo, "copy crds/*.yaml to charts/infleet/files/crds/"


def test_rendered_crds_equal_repo_crds_plus_keep_policy(render: Render) -> None:
    want = {d["metadata"]["name"]: d for p in (REPO / "crds").glob("*.yaml") for d in _crd_docs(p)}
    got = {d["metadata"]["name"]: d for d in by_kind(render(), "CustomResourceDefinition")}
    assert set(got) == set(want)
    for name, crd in got.items():
        meta = crd["metadata"]
        assert meta["annotations"]["helm.sh/resource-policy"] == "keep"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "infleet"
        assert crd["spec"] == want[name]["spec"], f"{name}: rendered spec differs from crds/"


def test_crd_opt_out_and_no_keep(render: Render) -> None:
    assert not by_kind(render("ha-values.yaml"), "CustomResourceDefinition")
    for crd in by_kind(render("minimal-values.yaml"), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})


def test_monitoring_objects(render: Render) -> None:
    objs = render("monitoring-values.yaml")
    (sm,) = by_component(objs, "ServiceMonitor", "operator")
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (pm,) = by_kind(objs, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "infleet"}
    targets = {r["targetLabel"] for r in pm["spec"]["podMetricsEndpoints"][0]["relabelings"]}
    assert targets == {"deployment", "pool", "role"}
    (rule,) = by_kind(objs, "PrometheusRule")
    assert rule["spec"]["groups"] == recording_rules()["groups"] + operator_alerts()["groups"], (
        "regenerate charts/infleet/files/*.yaml with python -m infleet.slo.render")
    (quiet,) = by_kind(render("monitoring-values.yaml", sets=("prometheusRule.operatorAlerts=false",)),
                       "PrometheusRule")
    assert quiet["spec"]["groups"] == recording_rules()["groups"]
    maps = by_kind(objs, "ConfigMap")
    assert {m["metadata"]["namespace"] for m in maps} == {"monitoring"}
    assert all(m["metadata"]["labels"]["grafana_dashboard"] == "1" for m in maps)
    shipped = {p.name: json.loads(p.read_text()) for p in (CHART / "dashboards").glob("*.json")}
    got = {k: json.loads(v) for m in maps for k, v in m["data"].items()}
    assert got == shipped
    assert not by_kind(render(), "ServiceMonitor") and not by_kind(render(), "ConfigMap")


def test_example_pools(render: Render) -> None:
    pools = by_kind(render("ha-values.yaml"), "AcceleratorPool")
    assert {p["metadata"]["name"] for p in pools} == {"l4-spot", "cpu-on-demand"}
    assert not by_kind(render(), "AcceleratorPool")


@pytest.mark.parametrize(("name", "what"), [("recording-rules.yaml", "recording"),
                                            ("operator-alerts.yaml", "operator-alerts")])
def test_rule_files_are_current(name: str, what: str) -> None:
    fresh = subprocess.run([sys.executable, "-m", "infleet.slo.render", what], capture_output=True, text=True,
                           check=True).stdout
    assert (CHART / "files" / name).read_text() == fresh, (
        f"regenerate: python -m infleet.slo.render {what} > charts/infleet/files/{name}")


def test_values_schema_is_current() -> None:
    out = subprocess.run([sys.executable, str(CHART / "hack" / "schema.py")], capture_output=True, text=True,
                         check=True).stdout
    assert (CHART / "values.schema.json").read_text() == out, "regenerate: python charts/infleet/hack/schema.py"


def test_readme_is_current() -> None:
    out = subprocess.run([sys.executable, str(CHART / "hack" / "readme.py"), "--check"], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_value_is_documented_and_in_the_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) == set(schema["properties"])
    from jsonschema import Draft7Validator  # type: ignore[import-untyped]

    Draft7Validator(schema).validate(values)
    for f in VALUES_FILES:
        Draft7Validator(schema).validate(yaml.safe_load((CHART / "ci" / f).read_text()) or {})


def test_package_ships_dashboards_and_crds_but_not_hack(helm: Path, tmp_path: Path) -> None:
    import tarfile

    run_helm(helm, "package", str(CHART), "-d", str(tmp_path))
    (pkg,) = tmp_path.glob("infleet-*.tgz")
    with tarfile.open(pkg) as tar:
        names = tar.getnames()
    assert "infleet/values.schema.json" in names and "infleet/README.md" in names
    assert {f"infleet/dashboards/{p.name}" for p in (CHART / "dashboards").glob("*.json")} <= set(names)
    assert {f"infleet/files/crds/{p.name}" for p in (REPO / "crds").glob("*.yaml")} <= set(names)
    assert not [n for n in names if n.startswith("infleet/hack/")], "hack/ is excluded by .helmignore"
