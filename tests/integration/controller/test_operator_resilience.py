"""Restart safety and leader election with real `infleet run` processes: kill -9 at staggered points while objects
are being created leaves no duplicate or orphaned workloads, and of two operators only the Lease holder reconciles
(the other takes over within seconds when it dies)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.controller.operator_process import OperatorProcess
from tests.integration.controller.test_operator_on_cluster import (
    ROOT,
    get,
    install,
    placed_and_ready,
    provide_models_pvc,
    remove_models_pv,
    wait_for,
)

pytestmark = pytest.mark.cluster


@pytest.fixture
def namespace(cluster: Any) -> Iterator[str]:
    install(cluster)
    ns = f"ctl-rs-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    provide_models_pvc(cluster, ns)
    try:
        yield ns
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False)
        remove_models_pv(cluster, ns)


def owned_workloads(cluster: Any, ns: str, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    selector = f"infleet.io/deployment={name}"
    deployments = get(cluster, "deployments", "-n", ns, "-l", selector)["items"]
    pods = [
        p for p in get(cluster, "pods", "-n", ns, "-l", selector)["items"] if not p["metadata"].get("deletionTimestamp")
    ]
    return deployments, pods


def test_kill_9_mid_reconcile_then_restart_creates_no_duplicates(cluster: Any, namespace: str, tmp_path: Path) -> None:
    log = tmp_path / "operator.log"
    names = ["small-cpu-model", "chat-llm"]
    for example in names:
        cluster.kubectl("apply", "-n", namespace, "-f", str(ROOT / f"examples/{example}.yaml"))
    saw_partial = False
    # Kill at staggered moments of the first reconciles (login, first pass, status write, mid-apply).
    for delay in (1.0, 1.8, 2.6, 3.4):
        op = OperatorProcess(cluster.kubeconfig, namespace, log, "--standalone").start()
        op.wait_live()
        time.sleep(delay)
        op.kill9()
        counts = [len(owned_workloads(cluster, namespace, n)[0]) for n in names]
        saw_partial = saw_partial or any(counts)
    op = OperatorProcess(cluster.kubeconfig, namespace, log, "--standalone").start()
    try:
        op.wait_live()
        for name in names:
            wait_for(f"{name} placed", lambda name=name: placed_and_ready(cluster, namespace, name), timeout=120)
        time.sleep(6)  # a few more periodic reconciles: nothing may be added
        for name in names:
            obj = get(cluster, "infd", "-n", namespace, name)
            want = {(p["pool"], "serving"): p["desired"] for p in obj["status"]["pools"] if p["desired"]}
            want.update({(p["pool"], "warm"): p["warm"] for p in obj["status"]["pools"] if p["warm"]})
            deployments, pods = owned_workloads(cluster, namespace, name)
            keys = [
                (d["metadata"]["labels"]["infleet.io/pool"], d["metadata"]["labels"]["infleet.io/role"])
                for d in deployments
            ]
            assert len(keys) == len(set(keys)), f"duplicate workloads: {keys}"
            assert set(keys) == set(want), (keys, want)
            assert len(pods) == sum(want.values()), f"{len(pods)} pods for {want}"
            uid = obj["metadata"]["uid"]
            for d in deployments:
                assert [r["uid"] for r in d["metadata"]["ownerReferences"]] == [uid]
            rs_names = {r["metadata"]["name"] for r in get(cluster, "replicasets", "-n", namespace)["items"]}
            for p in pods:
                (ref,) = p["metadata"]["ownerReferences"]
                assert ref["kind"] == "ReplicaSet" and ref["name"] in rs_names, "orphaned pod"
    finally:
        op.stop()
    assert saw_partial, "no kill landed after the operator had started creating objects"


def lease_holder(cluster: Any, namespace: str, name: str) -> str:
    lease = get(cluster, "leases.coordination.k8s.io", "-n", namespace, name) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def test_of_two_operators_only_the_lease_holder_acts_and_handover_takes_seconds(
    cluster: Any, namespace: str, tmp_path: Path
) -> None:
    lease = f"infleet-{namespace}"
    elect = ("--peering", lease, "--leader-election-namespace", namespace)
    first = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / "first.log", *elect)
    second = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / "second.log", *elect)
    try:
        first.start().wait_live()
        wait_for("the first operator to hold the lease", lambda: lease_holder(cluster, namespace, lease), timeout=60)
        holder = lease_holder(cluster, namespace, lease)
        second.start().wait_live()  # stays a warm follower: the lease is held and renewed
        cluster.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples/small-cpu-model.yaml"))
        wait_for("placed", lambda: placed_and_ready(cluster, namespace, "small-cpu-model"), timeout=120)
        time.sleep(3)
        assert lease_holder(cluster, namespace, lease) == holder
        acted = first.metric("infleet_reconcile_total", kind="InferenceDeployment", result="success")
        assert acted >= 1
        for result in ("success", "retry", "error", "permanent_error"):
            assert second.metric("infleet_reconcile_total", kind="InferenceDeployment", result=result) == 0, (
                second.log_tail()
            )
        # Killed hard: the follower takes over once the 4 s lease expires, and reconciles a spec change.
        assert first.proc is not None
        first.proc.kill()
        killed = time.monotonic()
        wait_for("the second operator to take the lease",
                 lambda: lease_holder(cluster, namespace, lease) not in ("", holder), timeout=30)  # fmt: skip
        took_over_s = time.monotonic() - killed
        cluster.kubectl("patch", "infd", "-n", namespace, "small-cpu-model", "--type=merge",
                        "-p", '{"spec":{"scaling":{"minReplicas":2,"maxReplicas":4}}}')  # fmt: skip
        wait_for(
            "the second operator to act",
            lambda: second.metric("infleet_reconcile_total", kind="InferenceDeployment", result="success") > 0,
            timeout=30,
        )
        assert took_over_s <= 5 + 2, f"handover took {took_over_s:.1f}s"  # lease 4 s + renew period + kubectl
    finally:
        first.stop()
        second.stop()


def test_objects_stay_deletable_after_the_operator_is_gone(cluster: Any, namespace: str, tmp_path: Path) -> None:
    op = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / "operator.log", "--standalone").start()
    try:
        op.wait_live()
        cluster.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples/small-cpu-model.yaml"))
        obj = wait_for("placed", lambda: placed_and_ready(cluster, namespace, "small-cpu-model"), timeout=120)
    finally:
        op.stop()
    # A finalizer (kopf puts one on objects with timers or daemons) would block deletion with the operator gone.
    assert not obj["metadata"].get("finalizers"), obj["metadata"].get("finalizers")
    cluster.kubectl("delete", "infd", "-n", namespace, "small-cpu-model", "--wait=true", "--timeout=30s")
    wait_for(
        "owned objects gone",
        lambda: (
            not get(cluster, "deployments,pods", "-n", namespace, "-l", "infleet.io/deployment=small-cpu-model")[
                "items"
            ]
        ),
        timeout=60,
    )
