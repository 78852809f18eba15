"""The chart on the real control plane: install, upgrade, uninstall with the objects checked, every rendered
object accepted by the API server (server-side dry run, so the real schemas and CRD validation), and the
operator's RBAC checked with SubjectAccessReviews and by running the operator under its ServiceAccount.

The CRDs may already exist (other tests apply crds/): the install takes ownership of them, and the test never
deletes them, since `crds.keep` leaves them on uninstall and other tests share the cluster.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infleet_devcluster.ports import free_port
from tests.integration.chart.chart_cluster import (
    CHART,
    apply_crds,
    cleanup,
    deployment_manifest,
    helm,
    kube_json,
    operator_process,
    pool_manifest,
    pvc_manifest,
    serviceaccount_kubeconfig,
    unique,
    wait_for,
)

pytestmark = pytest.mark.cluster

MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}  # no Prometheus Operator CRDs here


@pytest.fixture(scope="module")
def ns(cluster: Any) -> Iterator[str]:
    apply_crds(cluster)  # the dry-run tests run before the install; the install then takes the CRDs over
    name = unique("chart-it")
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def base_values(ns: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release watches only its own namespace, so its operator never touches other tests' objects."""
    path = tmp_path_factory.mktemp("values") / "base.yaml"
    path.write_text(yaml.safe_dump({"watchNamespaces": [ns]}))
    return path


@pytest.fixture(scope="module")
def release(cluster: Any, ns: str, base_values: Path) -> Iterator[str]:
    name = unique("rel")
    helm(cluster, "install", name, str(CHART), "-n", ns, "-f", str(base_values), "--take-ownership", "--wait",
         "--timeout", "120s")
    yield name
    helm(cluster, "uninstall", name, "-n", ns, "--wait", check=False)


def sa_name(release: str) -> str:
    return f"{release}-infleet"


def can_i(cluster: Any, ns: str, release: str, verb: str, resource: str, *, namespace: str | None = None) -> bool:
    """Ask the API server (a SubjectAccessReview) whether the chart's ServiceAccount may do this.

    ``resource`` is ``plural[.group][/subresource]``; a review names the group explicitly, so it also works for
    kinds whose CRD is not installed (PrometheusRule)."""
    res_group, _, sub = resource.partition("/")
    plural, _, group = res_group.partition(".")
    attrs = {"verb": verb, "group": group, "resource": plural, "subresource": sub}
    if namespace:
        attrs["namespace"] = namespace
    review = {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": f"system:serviceaccount:{ns}:{sa_name(release)}",
                 "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
                 "resourceAttributes": attrs},
    }
    out = cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review))
    allowed: bool = json.loads(out.stdout)["status"].get("allowed", False)
    return allowed


@pytest.mark.parametrize("values", sorted(p.name for p in (CHART / "ci").glob("*-values.yaml")))
def test_every_rendered_object_passes_server_side_dry_run(cluster: Any, ns: str, values: str) -> None:
    res = helm(cluster, "template", unique("dry"), str(CHART), "-n", ns, "-f", str(CHART / "ci" / values),
               "--set", f"dashboards.namespace={ns}")
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    # Objects for the watched namespaces (the workers' NetworkPolicies in ha-values' team-a/team-b) are checked by
    # the render tests; this one needs them in the release's namespace.
    kept = [d for d in docs if d["kind"] not in MONITORING_KINDS and d["metadata"].get("namespace", ns) == ns]
    assert kept
    out = cluster.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", input=yaml.safe_dump_all(kept),
                          check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("(server dry run)") == len(kept)


def test_dry_run_is_a_real_schema_check(cluster: Any, ns: str) -> None:
    """A rendered object the API rejects fails the same check (so a pass above means something)."""
    res = helm(cluster, "template", "bad", str(CHART), "-n", ns, "--set", "examplePools.enabled=true",
               "--set", "examplePools.pools[0].name=bad-pool",
               "--set", "examplePools.pools[0].spec.capacityType=sometimes")
    pools = [d for d in yaml.safe_load_all(res.stdout) if d and d["kind"] == "AcceleratorPool"]
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(pools), check=False)
    assert out.returncode != 0 and "capacityType" in out.stderr


def test_install_creates_the_objects(cluster: Any, ns: str, release: str) -> None:
    status = json.loads(helm(cluster, "status", release, "-n", ns, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    dep = kube_json(cluster, "-n", ns, "get", "deployment", f"{release}-infleet")
    assert dep["status"].get("readyReplicas") == 1, "kwok runs the pod: the Deployment becomes ready"
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    kube_json(cluster, "-n", ns, "get", "serviceaccount", sa_name(release))
    kube_json(cluster, "get", "clusterrole", f"{release}-infleet")
    kube_json(cluster, "-n", ns, "get", "service", f"{release}-infleet-metrics")
    for crd in ("inferencedeployments.infleet.io", "acceleratorpools.infleet.io"):
        meta = kube_json(cluster, "get", "crd", crd)["metadata"]
        assert meta["annotations"]["meta.helm.sh/release-name"] == release
        assert meta["annotations"]["helm.sh/resource-policy"] == "keep"


ALLOWED = [
    ("list", "inferencedeployments.infleet.io"), ("watch", "inferencedeployments.infleet.io"),
    ("patch", "inferencedeployments.infleet.io/status"),
    ("update", "inferencedeployments.infleet.io/finalizers"),
    ("list", "acceleratorpools.infleet.io"), ("patch", "acceleratorpools.infleet.io/status"),
    ("create", "deployments.apps"), ("patch", "deployments.apps"), ("delete", "deployments.apps"),
    ("list", "persistentvolumeclaims"), ("watch", "persistentvolumeclaims"),
    ("list", "deployments.apps"), ("watch", "deployments.apps"), ("create", "services"), ("patch", "services"),
    ("list", "pods"), ("watch", "pods"), ("patch", "pods"), ("delete", "pods"), ("list", "nodes"),
    ("watch", "nodes"), ("create", "events"), ("create", "secrets"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),

    ("create", "prometheusrules.monitoring.coreos.com"), ("watch", "namespaces"),
]
REFUSED = [
    ("get", "secrets"), ("list", "secrets"), ("list", "configmaps"), ("create", "pods"),
    ("patch", "nodes"), ("delete", "nodes"), ("delete", "inferencedeployments.infleet.io"),
    ("create", "acceleratorpools.infleet.io"), ("delete", "acceleratorpools.infleet.io"),
    ("delete", "services"), ("update", "deployments.apps"),
    ("delete", "persistentvolumeclaims"), ("patch", "inferencedeployments.infleet.io"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"), ("create", "serviceaccounts/token"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"), ("delete", "events"),
    ("create", "leases.coordination.k8s.io"),
    ("impersonate", "users"), ("create", "pods/exec"), ("patch", "pods/status"), ("update", "deployments.apps/scale"),
    ("update", "inferencedeployments.infleet.io/status"), ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
]


@pytest.mark.parametrize(("verb", "resource"), ALLOWED)
def test_serviceaccount_may(cluster: Any, ns: str, release: str, verb: str, resource: str) -> None:
    assert can_i(cluster, ns, release, verb, resource)


@pytest.mark.parametrize(("verb", "resource"), REFUSED)
def test_serviceaccount_may_not(cluster: Any, ns: str, release: str, verb: str, resource: str) -> None:
    assert not can_i(cluster, ns, release, verb, resource)


def test_leases_only_in_the_release_namespace(cluster: Any, ns: str, release: str) -> None:
    for verb in ("get", "create", "patch"):
        assert can_i(cluster, ns, release, verb, "leases.coordination.k8s.io", namespace=ns)
    assert not can_i(cluster, ns, release, "patch", "leases.coordination.k8s.io", namespace="kube-system")


def test_operator_runs_under_its_serviceaccount(cluster: Any, ns: str, release: str, tmp_path: Path) -> None:
    """The real operator, authenticated as the chart's ServiceAccount, reconciles a deployment with no 403.

    This is what proves least privilege is also enough privilege."""
    kubeconfig = serviceaccount_kubeconfig(cluster, ns, sa_name(release), tmp_path / "sa.kubeconfig")
    pool = unique("chart-cpu")
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(pool_manifest(pool)))
    # A pvc:// source, so the operator also has to read the claim (as in production).
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(pvc_manifest(ns, "models")))
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(deployment_manifest(ns, "chat", pool,
                                                                                 "pvc://models/tiny")))
    metrics_port, health_port = free_port(), free_port()
    # Exactly the arguments the chart gave the operator's container, but ports free on this machine.
    container = kube_json(cluster, "-n", ns, "get", "deployment", f"{release}-infleet")["spec"]["template"]["spec"][
        "containers"][0]
    args = [a for a in container["args"][1:]
            if not a.startswith(("--metrics-port=", "--liveness-port=", "--bind-address=", "--log-format="))]
    assert f"--namespace={ns}" in args and "--peering=infleet" in args
    log = tmp_path / "operator.log"
    try:
        with operator_process(kubeconfig, log, *args, "--interval=2", f"--metrics-port={metrics_port}",
                              "--bind-address=127.0.0.1", f"--liveness-port={health_port}") as proc:
            def placed() -> bool:
                assert proc.poll() is None, f"operator exited:\n{log.read_text()[-3000:]}"
                out = cluster.kubectl("-n", ns, "get", "deployments.apps", "-l",
                                      "app.kubernetes.io/managed-by=infleet,infleet.io/deployment=chat",
                                      "-o", "name", check=False).stdout
                return bool(out.strip())

            wait_for("the operator to create the worker Deployment", placed, timeout=90)
            status = wait_for("the InferenceDeployment's status", lambda: kube_json(
                cluster, "-n", ns, "get", "inferencedeployments.infleet.io", "chat").get("status"), timeout=60)
            assert status.get("conditions"), status
            def holder() -> str:
                res = cluster.kubectl("-n", ns, "get", "leases.coordination.k8s.io", "infleet", "-o",
                                      "jsonpath={.spec.holderIdentity}", check=False)
                return res.stdout.strip() if res.returncode == 0 else ""

            assert wait_for("the operator to hold its Lease", holder, timeout=30)
            body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            assert re.search(r'infleet_reconcile_total\{[^}]*result="success"[^}]*\} [1-9]', body), body[-2000:]
            urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5)
    finally:
        cleanup(cluster, (ns, "inferencedeployments.infleet.io", "chat"), (None, "acceleratorpools.infleet.io", pool))
    text = log.read_text()
    # The leading "[date time,millis]" is dropped first: a timestamp ending in ",403" is not a refusal.
    forbidden = [line for line in text.splitlines()
                 if re.search(r"\b403\b|[Ff]orbidden", re.sub(r"^\[[^\]]*\]", "", line))]
    assert not forbidden, "the operator was refused something:\n" + "\n".join(forbidden[:20])


def test_upgrade_changes_objects(cluster: Any, ns: str, release: str, base_values: Path, tmp_path: Path) -> None:
    values = tmp_path / "upgrade.yaml"
    values.write_text(yaml.safe_dump({
        "replicaCount": 2,
        "operator": {"interval": 5},
        "rbac": {"prometheusRules": False},
        "podDisruptionBudget": {"enabled": True},
        "examplePools": {"enabled": True, "pools": [
            {"name": f"{release}-pool", "spec": pool_manifest("x")["spec"]}]},
    }))
    assert can_i(cluster, ns, release, "create", "prometheusrules.monitoring.coreos.com")
    helm(cluster, "upgrade", release, str(CHART), "-n", ns, "-f", str(base_values), "-f", str(values), "--wait",
         "--timeout", "120s")
    try:
        dep = kube_json(cluster, "-n", ns, "get", "deployment", f"{release}-infleet")
        assert dep["spec"]["replicas"] == 2
        assert "--interval=5" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert not can_i(cluster, ns, release, "create", "prometheusrules.monitoring.coreos.com")
        kube_json(cluster, "-n", ns, "get", "poddisruptionbudget", f"{release}-infleet")
        pool = kube_json(cluster, "get", "acceleratorpools.infleet.io", f"{release}-pool")
        assert pool["spec"]["capacityType"] == "on-demand"
        history = json.loads(helm(cluster, "history", release, "-n", ns, "-o", "json").stdout)
        assert [h["revision"] for h in history] == [1, 2]
    finally:
        # Back to defaults: the pool goes (it is a release object), the rest of the module sees revision 3.
        helm(cluster, "upgrade", release, str(CHART), "-n", ns, "--reset-values", "-f", str(base_values), "--wait",
             "--timeout", "120s")
    assert cluster.kubectl("get", "acceleratorpools.infleet.io", f"{release}-pool", check=False).returncode != 0


def test_uninstall_removes_everything_but_the_crds(cluster: Any, ns: str, release: str) -> None:
    helm(cluster, "uninstall", release, "-n", ns, "--wait", "--timeout", "120s")
    for args in (("-n", ns, "get", "deployment", f"{release}-infleet"),
                 ("-n", ns, "get", "serviceaccount", sa_name(release)),
                 ("-n", ns, "get", "service", f"{release}-infleet-metrics"),
                 ("get", "clusterrole", f"{release}-infleet"),
                 ("get", "clusterrolebinding", f"{release}-infleet")):
        res = cluster.kubectl(*args, check=False)
        assert res.returncode != 0 and "NotFound" in res.stderr, args
    for crd in ("inferencedeployments.infleet.io", "acceleratorpools.infleet.io"):
        assert cluster.kubectl("get", "crd", crd, check=False).returncode == 0, f"{crd} was deleted despite keep"
    assert not can_i(cluster, ns, release, "list", "pods")
    listed = helm(cluster, "list", "-n", ns, "-q").stdout.split()
    assert release not in listed


def test_helm_binary_is_the_pinned_one(cluster: Any) -> None:
    out = subprocess.run([str(cluster.binary("helm")), "version", "--short"], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("v4.")
