"""The watch index: trimmed copies, per-node request totals kept incrementally, and which deployments an event
concerns (what triggers a reconcile)."""

from __future__ import annotations

from infleet.controller.index import ClusterIndex
from infleet.controller.snapshot import node_usage
from tests.unit.controller.builders import node, pod

MANAGED = {"app.kubernetes.io/managed-by": "infleet", "infleet.io/deployment": "chat", "infleet.io/pool": "l4"}


def index_with_deployment() -> ClusterIndex:
    idx = ClusterIndex()
    idx.apply("InferenceDeployment", "ADDED", {"metadata": {"namespace": "ns", "name": "chat", "generation": 1},
                                               "spec": {}})  # fmt: skip
    return idx


def test_node_totals_follow_pods_as_they_bind_change_and_go() -> None:
    idx = index_with_deployment()
    idx.apply("Node", "ADDED", node("n1", "l4", {"nvidia.com/gpu": "4", "pods": "110"}))
    other = pod("x", node_name="n1", requests={"nvidia.com/gpu": "2"}, namespace="other")
    idx.apply("Pod", "ADDED", other)
    mine = pod("w", node_name="n1", requests={"nvidia.com/gpu": "1"}, labels=MANAGED)
    assert idx.apply("Pod", "ADDED", mine) == {("ns", "chat")}
    assert idx.node_requests["n1"]["nvidia.com/gpu"] == 3
    view = idx.view()
    assert [p["metadata"]["name"] for p in view.pods] == ["w"]  # only infleet's pods travel with the view
    use = node_usage(view.nodes, view.pods, {"infleet.io/deployment": "chat"}, "ns", totals=view.node_requests,
                     counts=view.node_pod_counts)  # fmt: skip
    assert use[0].requested_by_others == {"nvidia.com/gpu": 2} and use[0].requested_by_own == {"nvidia.com/gpu": 1}
    idx.apply("Pod", "DELETED", {"metadata": {"namespace": "other", "name": "x"}})  # a relist's minimal body
    assert idx.node_requests["n1"]["nvidia.com/gpu"] == 1
    assert idx.apply("Pod", "DELETED", {"metadata": {"namespace": "ns", "name": "w"}}) == {("ns", "chat")}
    assert "n1" not in idx.node_requests and idx.pods_of(("ns", "chat")) == []


def test_only_changes_that_matter_trigger_a_reconcile() -> None:
    idx = index_with_deployment()
    p = pod("w", node_name="n1", labels=MANAGED)
    assert idx.apply("Pod", "ADDED", p) == {("ns", "chat")}
    assert idx.apply("Pod", "MODIFIED", p) == set()  # nothing a decision reads changed
    ready = pod("w", node_name="n1", labels=MANAGED, ready=True)
    assert idx.apply("Pod", "MODIFIED", ready) == {("ns", "chat")}
    status_only = {"metadata": {"namespace": "ns", "name": "chat", "generation": 1}, "spec": {},
                   "status": {"replicas": 3}}  # fmt: skip
    assert idx.apply("InferenceDeployment", "MODIFIED", status_only) == set()  # our own status write
    edited = {"metadata": {"namespace": "ns", "name": "chat", "generation": 2}, "spec": {}}
    assert idx.apply("InferenceDeployment", "MODIFIED", edited) == {("ns", "chat")}
    assert idx.apply("Pod", "ADDED", pod("y", namespace="ns")) == set()  # not ours


def test_trimmed_copies_keep_only_what_the_operator_reads() -> None:
    idx = ClusterIndex()
    fat = pod("w", node_name="n1", labels=MANAGED, ready=True)
    fat["spec"]["containers"][0]["env"] = [{"name": "BIG", "value": "x" * 10_000}]
    fat["metadata"]["managedFields"] = [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]
    idx.apply("Pod", "ADDED", fat)
    kept = idx.pods[("ns", "w")]
    assert "env" not in kept["spec"]["containers"][0] and "managedFields" not in kept["metadata"]
    assert kept["status"]["conditions"][0]["type"] == "Ready"


def test_node_events_concern_only_deployments_this_operator_serves() -> None:
    idx = index_with_deployment()
    elsewhere = {**MANAGED, "infleet.io/deployment": "other"}
    idx.apply("Pod", "ADDED", pod("o", labels=elsewhere, namespace="not-served"))  # pending, another namespace
    idx.apply("Pod", "ADDED", pod("w", labels=MANAGED))  # pending, ours
    assert idx.apply("Node", "ADDED", node("n9", "l4", {"nvidia.com/gpu": "4"})) == {("ns", "chat")}
