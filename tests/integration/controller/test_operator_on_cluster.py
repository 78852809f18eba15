"""The operator against the real local control plane: examples reach Placed with pods bound to nodes of their
pools, problems become False conditions with Events, deletion cascades, and a full pool triggers fallback
(and the way back). The operator runs as a real `infleet run` subprocess scoped to this module's namespace."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.integration.controller.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[3]
CRDS = [ROOT / "crds/infleet.io_inferencedeployments.yaml", ROOT / "crds/infleet.io_acceleratorpools.yaml"]
EXAMPLES = ["chat-llm", "batch-embedder", "small-cpu-model"]
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 90, every: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def get(cluster: Any, *args: str) -> Any:
    res = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(res.stdout) if res.returncode == 0 else None


def condition(obj: Any, type_: str) -> dict[str, Any]:
    for c in (obj or {}).get("status", {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def install(cluster: Any) -> None:
    args = ["apply", "--server-side", "--force-conflicts"]
    for path in CRDS:
        args += ["-f", str(path)]
    cluster.kubectl(*args)
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/inferencedeployments.infleet.io",
        "crd/acceleratorpools.infleet.io",
    )
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "examples/pools.yaml"))


def provide_models_pvc(cluster: Any, ns: str, claim: str = "models") -> None:
    """The `models` claim the examples load from (`source: pvc://models/...`), bound to a static volume: the
    worker pods mount it, and the scheduler will not place a pod whose claim is missing or unbound."""
    manifests = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{ns}-{claim}", "labels": {"infleet.io/test-owner": ns}},
            "spec": {
                "capacity": {"storage": "100Gi"},
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "hostPath": {"path": "/models"},
                "claimRef": {"namespace": ns, "name": claim},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": ns},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": f"{ns}-{claim}",
                "resources": {"requests": {"storage": "100Gi"}},
            },
        },
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))


def remove_models_pv(cluster: Any, ns: str) -> None:
    cluster.kubectl("delete", "pv", "-l", f"infleet.io/test-owner={ns}", "--wait=false", check=False)


@contextlib.contextmanager
def operator_in_namespace(
    cluster: Any, prefix: str, log_dir: Path, *operator_args: str, models: bool = True, run_pods: bool = False
) -> Iterator[tuple[Any, str, OperatorProcess]]:
    """CRDs and example pools installed, a fresh namespace (with the `models` claim unless told otherwise) and a
    real standalone `infleet run` watching it; everything the helper made is removed on exit. ``run_pods``
    labels the namespace infleet.dev/run-pods=true: the local cluster's pod runner then starts a real worker
    behind each of its pods (docs/architecture.md)."""
    install(cluster)
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    if run_pods:
        cluster.kubectl("label", "namespace", ns, "infleet.dev/run-pods=true")
    if models:
        provide_models_pvc(cluster, ns)
    op = OperatorProcess(cluster.kubeconfig, ns, log_dir / "operator.log", "--standalone", *operator_args).start()
    try:
        op.wait_live()
        yield cluster, ns, op
    finally:
        # Wait until the namespace is gone, with the operator still running: a session that ends (and stops the
        # cluster) mid-deletion would otherwise leave the namespace Terminating in the cluster's state.
        cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False)
        op.stop()
        print(op.log_tail(3000))
        if models:
            remove_models_pv(cluster, ns)


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str, OperatorProcess]]:
    with operator_in_namespace(cluster, "ctl-it", tmp_path_factory.mktemp("operator")) as running:
        yield running


def pods_of(cluster: Any, ns: str, infd: str) -> list[dict[str, Any]]:
    got = get(cluster, "pods", "-n", ns, "-l", f"infleet.io/deployment={infd}")
    return [p for p in (got or {}).get("items", []) if not p["metadata"].get("deletionTimestamp")]


def node_pool(cluster: Any, node_name: str) -> str:
    return str(get(cluster, "node", node_name)["metadata"]["labels"]["karpenter.sh/nodepool"])


def apply_infd(cluster: Any, ns: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(manifest))


def placed_and_ready(cluster: Any, ns: str, name: str) -> Any:
    obj = get(cluster, "infd", "-n", ns, name)
    ok = condition(obj, "Placed").get("status") == "True" and condition(obj, "Ready").get("status") == "True"
    return obj if ok else None


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_is_placed_on_pods_bound_to_its_pools(env: tuple[Any, str, OperatorProcess], example: str) -> None:
    cluster, ns, _ = env
    cluster.kubectl("apply", "-n", ns, "-f", str(ROOT / f"examples/{example}.yaml"))
    manifest = yaml.safe_load((ROOT / f"examples/{example}.yaml").read_text())
    name = manifest["metadata"]["name"]
    obj = wait_for(f"{example} Placed and Ready", lambda: placed_and_ready(cluster, ns, name), timeout=120)
    status_pools = {p["pool"]: p for p in obj["status"]["pools"] if p["desired"] > 0}
    assert status_pools, obj["status"]
    allowed_pools = manifest["spec"].get("placement", {}).get("pools")
    families = manifest["spec"].get("placement", {}).get("families") or manifest["spec"]["model"]["families"]
    pool_objs = {p["metadata"]["name"]: p for p in get(cluster, "acceleratorpools")["items"]}

    def settled() -> list[dict[str, Any]] | None:
        pods = [p for p in pods_of(cluster, ns, name) if p["metadata"]["labels"]["infleet.io/role"] == "serving"]
        want = sum(p["desired"] for p in status_pools.values())
        ready = [
            p
            for p in pods
            if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        ]
        return pods if len(pods) == want and len(ready) == want else None

    pods = wait_for(f"{example} serving pods ready", settled, timeout=60)
    for pod in pods:
        pool = pod["metadata"]["labels"]["infleet.io/pool"]
        assert pool in status_pools
        assert node_pool(cluster, pod["spec"]["nodeName"]) == pool, "pod bound outside its pool"
        assert pool_objs[pool]["spec"]["accelerator"]["family"] in families
        if allowed_pools:
            assert pool in allowed_pools
        resource = pool_objs[pool]["spec"]["accelerator"]["resourceName"]
        assert resource in pod["spec"]["containers"][0]["resources"]["requests"]
        args = pod["spec"]["containers"][0]["args"]
        assert args[args.index("--served-model-name") + 1] == manifest["spec"]["model"]["name"]
        source = manifest["spec"]["model"]["source"]
        if source.startswith("pvc://"):
            claim = source.removeprefix("pvc://").split("/")[0]
            assert {"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}} in pod["spec"][
                "volumes"
            ]
            assert args[args.index("--model") + 1] == "/models/" + source.removeprefix("pvc://")
    if manifest["spec"].get("placement", {}).get("minOnDemandReplicas"):
        assert any(pool_objs[p]["spec"]["capacityType"] == "on-demand" for p in status_pools)
    assert obj["status"]["costPerHourUSD"] > 0
    table = cluster.kubectl("get", "infd", "-n", ns, name).stdout
    assert name in table and "ReplicasReady" not in table  # wide-only column
    summary = ",".join(f"{p}={status_pools[p]['desired']}" for p in sorted(status_pools))
    assert obj["status"]["poolsSummary"] == summary
    assert summary in table.splitlines()[1].split(), table  # the Pools column names every pool with its count
    svc = get(cluster, "service", "-n", ns, name)
    assert svc["spec"]["selector"]["infleet.io/role"] == "serving"


def test_budget_that_cannot_be_met_is_explained(env: tuple[Any, str, OperatorProcess]) -> None:
    cluster, ns, _ = env
    manifest = yaml.safe_load((ROOT / "examples/chat-llm.yaml").read_text())
    manifest["metadata"]["name"] = "too-cheap"
    manifest["spec"]["cost"] = {"maxHourlyCostUSD": 0.5}
    apply_infd(cluster, ns, manifest)

    def budget_false() -> dict[str, Any] | None:
        c = condition(get(cluster, "infd", "-n", ns, "too-cheap"), "WithinBudget")
        return c if c.get("status") == "False" else None

    cond = wait_for("WithinBudget=False", budget_false)
    assert cond["reason"] == "BudgetTooLow"
    assert "cheapest placement that meets the SLO costs" in cond["message"]
    assert "$0.50/h" in cond["message"]
    events = wait_for(
        "BudgetTooLow event",
        lambda: [
            e
            for e in get(cluster, "events", "-n", ns)["items"]
            if e["reason"] == "BudgetTooLow" and e["involvedObject"]["name"] == "too-cheap"
        ],
    )
    assert events[0]["type"] == "Warning"


def test_missing_pool_is_a_false_condition_with_an_event(env: tuple[Any, str, OperatorProcess]) -> None:
    cluster, ns, op = env
    manifest = yaml.safe_load((ROOT / "examples/small-cpu-model.yaml").read_text())
    manifest["metadata"]["name"] = "ghost-pool"
    manifest["spec"]["placement"]["pools"] = ["cpu-spot", "no-such-pool"]
    manifest["spec"]["placement"]["preference"] = ["cpu-spot"]
    apply_infd(cluster, ns, manifest)

    def placed_false() -> dict[str, Any] | None:
        c = condition(get(cluster, "infd", "-n", ns, "ghost-pool"), "Placed")
        return c if c.get("status") == "False" else None

    cond = wait_for("Placed=False", placed_false)
    assert cond["reason"] == "PoolNotFound"
    assert "no-such-pool" in cond["message"]
    wait_for(
        "PoolNotFound event",
        lambda: [e for e in get(cluster, "events", "-n", ns)["items"] if e["reason"] == "PoolNotFound"],
    )
    # Not a retry loop: the same problem produces one Event, and reconciles keep succeeding.
    time.sleep(5)
    events = [e for e in get(cluster, "events", "-n", ns)["items"] if e["reason"] == "PoolNotFound"]
    assert sum(e.get("count", 1) for e in events) == 1
    assert op.metric("infleet_reconcile_total", kind="InferenceDeployment", result="error") == 0


def test_model_that_fits_no_allowed_pool_is_explained(env: tuple[Any, str, OperatorProcess]) -> None:
    cluster, ns, _ = env
    manifest = yaml.safe_load((ROOT / "examples/chat-llm.yaml").read_text())
    manifest["metadata"]["name"] = "too-big"
    manifest["spec"]["model"]["parametersBillions"] = 405  # ~905 GiB in bf16: no L4 node holds it
    manifest["spec"]["placement"] = {"pools": ["l4-spot", "l4-on-demand"]}
    apply_infd(cluster, ns, manifest)

    def placed_false() -> dict[str, Any] | None:
        c = condition(get(cluster, "infd", "-n", ns, "too-big"), "Placed")
        return c if c.get("status") == "False" else None

    cond = wait_for("Placed=False", placed_false)
    assert cond["reason"] == "NoFittingPool"
    # Each pool says why not: the model's footprint against what one replica's devices hold.
    assert "l4-spot: model needs 905 GiB" in cond["message"]
    assert "l4-on-demand: model needs 905 GiB" in cond["message"]
    assert not pods_of(cluster, ns, "too-big")
    assert condition(get(cluster, "infd", "-n", ns, "too-big"), "Ready")["status"] == "False"


def test_missing_model_claim_waits_with_a_clear_condition(env: tuple[Any, str, OperatorProcess]) -> None:
    cluster, ns, _ = env
    manifest = yaml.safe_load((ROOT / "examples/small-cpu-model.yaml").read_text())
    manifest["metadata"]["name"] = "no-claim"
    manifest["spec"]["model"]["source"] = "pvc://other-weights/qwen"
    apply_infd(cluster, ns, manifest)

    def placed_false() -> dict[str, Any] | None:
        c = condition(get(cluster, "infd", "-n", ns, "no-claim"), "Placed")
        return c if c.get("status") == "False" else None

    cond = wait_for("Placed=False", placed_false)
    assert cond["reason"] == "ModelClaimNotFound"
    assert "'other-weights'" in cond["message"]
    assert not pods_of(cluster, ns, "no-claim")
    provide_models_pvc(cluster, ns, "other-weights")
    wait_for("placed once the claim exists", lambda: placed_and_ready(cluster, ns, "no-claim"))


def test_deleting_a_deployment_removes_everything_it_owned(env: tuple[Any, str, OperatorProcess]) -> None:
    cluster, ns, _ = env
    manifest = yaml.safe_load((ROOT / "examples/small-cpu-model.yaml").read_text())
    manifest["metadata"]["name"] = "short-lived"
    apply_infd(cluster, ns, manifest)
    wait_for("placed", lambda: placed_and_ready(cluster, ns, "short-lived"))
    wait_for("pods", lambda: pods_of(cluster, ns, "short-lived"))
    cluster.kubectl("delete", "infd", "-n", ns, "short-lived", "--wait=true", "--timeout=60s")
    selector = "infleet.io/deployment=short-lived"
    wait_for(
        "owned objects gone",
        lambda: not get(cluster, "deployments,services,pods", "-n", ns, "-l", selector)["items"],
        timeout=90,
    )


def _free_cpu(cluster: Any, node_name: str) -> float:
    node = get(cluster, "node", node_name)
    alloc = float(node["status"]["allocatable"]["cpu"])
    pods = get(cluster, "pods", "-A", "--field-selector", f"spec.nodeName={node_name}")["items"]
    used = 0.0
    for p in pods:
        if p["status"].get("phase") in ("Succeeded", "Failed"):
            continue
        for c in p["spec"]["containers"]:
            q = str((c.get("resources") or {}).get("requests", {}).get("cpu", "0"))
            used += float(q[:-1]) / 1000 if q.endswith("m") else float(q)
    return alloc - used


def test_full_pool_falls_back_and_moves_back_when_capacity_returns(env: tuple[Any, str, OperatorProcess]) -> None:
    cluster, ns, _ = env
    # Fill the one h100-spot node's CPU: its GPUs look free, but no worker pod (1 CPU each) can be scheduled.
    nodes = [n["metadata"]["name"] for n in get(cluster, "nodes", "-l", "karpenter.sh/nodepool=h100-spot")["items"]]
    fillers = []
    for node_name in nodes:
        cpu = _free_cpu(cluster, node_name)
        filler = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"filler-{node_name}", "namespace": ns, "labels": {"test": "filler"}},
            "spec": {
                "nodeName": node_name,
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": f"{cpu:g}"}}}],
            },
        }
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(filler))
        fillers.append(filler["metadata"]["name"])
    manifest = yaml.safe_load((ROOT / "examples/chat-llm.yaml").read_text())
    manifest["metadata"]["name"] = "fallback"
    manifest["spec"]["model"]["families"] = ["nvidia-gpu"]
    manifest["spec"]["model"]["runtimes"] = {"nvidia-gpu": manifest["spec"]["model"]["runtimes"]["nvidia-gpu"]}
    manifest["spec"]["placement"] = {
        "pools": ["h100-spot", "h100-on-demand"],
        "spot": "Preferred",
        "fallbackAfterSeconds": 5,
    }
    manifest["spec"]["scaling"] = {"minReplicas": 2, "maxReplicas": 2}
    manifest["spec"]["warmPool"] = {"mode": "Off"}
    manifest["spec"]["cost"] = {}
    apply_infd(cluster, ns, manifest)

    def on(pool: str) -> list[dict[str, Any]]:
        return [p for p in pods_of(cluster, ns, "fallback") if p["metadata"]["labels"]["infleet.io/pool"] == pool]

    # First the cheap spot pool is chosen (its devices are free) and its pods cannot be scheduled...
    wait_for("pending pods on h100-spot", lambda: [p for p in on("h100-spot") if not p["spec"].get("nodeName")])

    def fell_back() -> Any:
        obj = get(cluster, "infd", "-n", ns, "fallback")
        pools = {p["pool"]: p for p in (obj or {}).get("status", {}).get("pools", [])}
        spot, od = pools.get("h100-spot", {}), pools.get("h100-on-demand", {})
        return obj if spot.get("saturated") and od.get("ready") == 2 else None

    # ...then, after fallbackAfterSeconds, they are re-placed on the on-demand pool and the spot pool is saturated.
    obj = wait_for("fallback to h100-on-demand", fell_back, timeout=90)
    assert obj["status"]["lastDecision"]["kind"] in ("Fallback", "Placement")
    bound = [p for p in on("h100-on-demand") if p["spec"].get("nodeName")]
    assert len(bound) == 2
    assert all(node_pool(cluster, p["spec"]["nodeName"]) == "h100-on-demand" for p in bound)
    wait_for("no pending pods left", lambda: not [p for p in on("h100-spot") if not p["spec"].get("nodeName")])
    wait_for(
        "AcceleratorPool h100-spot saturated",
        lambda: (get(cluster, "acceleratorpool", "h100-spot") or {}).get("status", {}).get("saturated"),
    )
    wait_for(  # Events are posted off the reconcile path, a moment after the status
        "a PoolSaturated event",
        lambda: [e for e in get(cluster, "events", "-n", ns)["items"] if e["reason"] == "PoolSaturated"],
        timeout=30,
    )

    # Capacity returns: replicas move back to the cheaper pool, never dropping below 2 ready on the way.
    cluster.kubectl("delete", "pod", "-n", ns, *fillers, "--grace-period=0", "--force", "--wait=true")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        obj = get(cluster, "infd", "-n", ns, "fallback")
        assert obj["status"]["readyReplicas"] >= 2, obj["status"]
        pools = {p["pool"]: p for p in obj["status"]["pools"]}
        if pools.get("h100-spot", {}).get("ready") == 2 and not pools.get("h100-on-demand", {}).get("desired"):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"did not move back to h100-spot: {obj['status']}")
    assert not pools["h100-spot"]["saturated"]
    wait_for("on-demand pods gone", lambda: not on("h100-on-demand"), timeout=60)


def test_auto_warm_pool_gets_warm_pods_the_service_does_not_select(env: tuple[Any, str, OperatorProcess]) -> None:
    cluster, ns, _ = env
    manifest = yaml.safe_load((ROOT / "examples/small-cpu-model.yaml").read_text())
    manifest["metadata"]["name"] = "auto-warm"
    # Declared 2 rps, no worker answering (kwok): the policy assumes the load may double within a cold start and
    # keeps what a quarter of the serving cost buys (4 CPU replicas, about $0.79/h: one $0.14/h cpu-spot replica).
    manifest["spec"]["warmPool"] = {"mode": "Auto", "maxHourlyCostUSD": 0.5}
    apply_infd(cluster, ns, manifest)
    wait_for("placed", lambda: placed_and_ready(cluster, ns, "auto-warm"), timeout=120)

    def warm_ready() -> list[dict[str, Any]] | None:
        warm = [p for p in pods_of(cluster, ns, "auto-warm") if p["metadata"]["labels"]["infleet.io/role"] == "warm"]
        ready = [
            p
            for p in warm
            if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        ]
        return warm if warm and len(ready) == len(warm) else None

    warm = wait_for("warm pods ready", warm_ready, timeout=90)
    # Alone, the cheaper cpu-spot holds it; with this module's other deployments filling cpu-spot it may be
    # cpu-on-demand. Either way: an allowed pool, within a quarter of the serving cost and maxHourlyCostUSD.
    assert {p["metadata"]["labels"]["infleet.io/pool"] for p in warm} <= set(manifest["spec"]["placement"]["pools"])
    args = warm[0]["spec"]["containers"][0]["args"]
    assert args[args.index("--state") + 1] == "warm"

    def counted() -> Any:
        obj = get(cluster, "infd", "-n", ns, "auto-warm")
        return obj if obj and obj["status"].get("warmReplicas") == len(warm) else None

    obj = wait_for("status counts the warm pods", counted)
    assert sum(p["warm"] for p in obj["status"]["pools"]) == len(warm)
    price = {
        p["metadata"]["name"]: p["spec"]["pricePerDeviceHourUSD"] for p in get(cluster, "acceleratorpools")["items"]
    }
    warm_cost = sum(price[p["metadata"]["labels"]["infleet.io/pool"]] for p in warm)  # one CPU slice per replica
    serving_cost = sum(price[p["pool"]] * p["desired"] for p in obj["status"]["pools"])
    assert warm_cost <= min(0.5, 0.25 * serving_cost) + 1e-9, (warm_cost, serving_cost)
    # The Service routes only to pods matching its selector (this cluster makes no EndpointSlices to check
    # routing itself): warm pods must not match it, serving pods must.
    selector = get(cluster, "service", "-n", ns, "auto-warm")["spec"]["selector"]
    serving = [p for p in pods_of(cluster, ns, "auto-warm") if p["metadata"]["labels"]["infleet.io/role"] == "serving"]
    assert serving and all(all(p["metadata"]["labels"].get(k) == v for k, v in selector.items()) for p in serving)
    assert any(warm[0]["metadata"]["labels"].get(k) != v for k, v in selector.items()), "the Service selects warm pods"
