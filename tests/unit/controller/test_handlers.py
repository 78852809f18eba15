"""The operator's wiring without a cluster: handlers need no finalizers, a reconcile reads only the index and
writes only what changed, pool status, deletion forgets everything kept for the object."""

from __future__ import annotations

from typing import Any

import kopf

from infleet.controller.handlers import Context, on_event, reconcile_deployment, reconcile_pool, register_handlers
from infleet.controller.metrics import OperatorMetrics
from infleet.controller.reconcile import Settings
from tests.unit.controller.builders import make_infd, make_pool, node
from tests.unit.controller.fakekube import FakeKube

INFD_PATH = "/apis/infleet.io/v1alpha1/namespaces/ns/inferencedeployments/chat"


def test_no_handler_puts_a_finalizer_on_anything() -> None:
    registry = kopf.OperatorRegistry()
    ctx = Context(kube=FakeKube(), settings=Settings(), metrics=OperatorMetrics())  # type: ignore[arg-type]
    register_handlers(registry, ctx)
    handlers = [
        *registry._watching.get_all_handlers(),
        *registry._changing.get_all_handlers(),
        *registry._spawning.get_all_handlers(),
    ]
    assert {str(h.id) for h in registry._watching.get_all_handlers()} == {"deployments"}  # pools: an informer
    assert not any(getattr(h, "requires_finalizer", False) for h in handlers)


def fed_context() -> tuple[Context, FakeKube, dict[str, Any]]:
    kube = FakeKube()
    ctx = Context(kube=kube, settings=Settings(), metrics=OperatorMetrics())  # type: ignore[arg-type]
    pool = make_pool("l4-spot").to_dict()
    pool.update(apiVersion="infleet.io/v1alpha1", kind="AcceleratorPool")
    kube.objects["/apis/infleet.io/v1alpha1/acceleratorpools/l4-spot"] = pool
    on_event(ctx, "AcceleratorPool", "ADDED", pool)
    for i in range(4):
        on_event(
            ctx,
            "Node",
            "ADDED",
            node(f"n{i}", "l4-spot", {"nvidia.com/gpu": "4", "cpu": "32", "memory": "128Gi", "pods": "110"}),
        )
    body = make_infd(slo={"p99LatencyMs": 2000, "throughput": {"requestsPerSecond": 5}}).to_dict()
    body.update(apiVersion="infleet.io/v1alpha1", kind="InferenceDeployment")
    body["metadata"].update(uid="uid-1", generation=1)
    body["spec"]["model"]["source"] = "s3://models/llama"  # no claim to wait for
    kube.objects[INFD_PATH] = body
    on_event(ctx, "InferenceDeployment", "ADDED", body)
    return ctx, kube, body


def test_a_reconcile_reads_the_index_and_a_repeat_writes_nothing() -> None:
    ctx, kube, _ = fed_context()
    again = reconcile_deployment(ctx, ("ns", "chat"))
    assert again == ctx.resync_s  # no scraping configured: only the slow resync
    assert not [c for c in kube.calls if c[0] == "LIST"]  # every read came from the index
    applied = [p for verb, p in kube.writes() if verb == "APPLY"]
    assert any(p.endswith("/deployments/chat-l4-spot") for p in applied)
    assert any(p.endswith("/services/chat") for p in applied)
    status = kube.objects[INFD_PATH]["status"]
    assert status["poolsSummary"] == "l4-spot=3"
    assert status["pools"][0]["replicaCapacityRps"] == 2.0
    assert status["loopState"]
    # The watch delivers what was written; the next reconcile finds nothing to change and writes nothing.
    for path, obj in list(kube.objects.items()):
        if "/deployments/" in path and "apps" in path:
            on_event(ctx, "Deployment", "ADDED", obj)
    on_event(ctx, "InferenceDeployment", "MODIFIED", kube.objects[INFD_PATH])
    before = len(kube.writes())
    reconcile_deployment(ctx, ("ns", "chat"))
    assert kube.writes()[before:] == []


def test_pool_status_counts_nodes_and_devices_and_is_written_once() -> None:
    ctx, kube, _ = fed_context()
    reconcile_pool(ctx, "l4-spot")
    pool = kube.objects["/apis/infleet.io/v1alpha1/acceleratorpools/l4-spot"]
    assert (pool["status"]["nodes"], pool["status"]["allocatableDevices"]) == (4, 16)
    on_event(ctx, "AcceleratorPool", "MODIFIED", pool)
    before = len(kube.writes())
    reconcile_pool(ctx, "l4-spot")
    assert kube.writes()[before:] == []


def test_a_deleted_deployment_leaves_nothing_behind_in_memory() -> None:
    ctx, _kube, body = fed_context()
    reconcile_deployment(ctx, ("ns", "chat"))
    assert len(ctx.states) == 1
    on_event(ctx, "InferenceDeployment", "DELETED", body)
    assert len(ctx.states) == 0 and not ctx.state_written and not ctx.applied_services
    assert reconcile_deployment(ctx, ("ns", "chat")) is None


class SteadyWorkers:
    """Every ready serving pod answers with counters that grow by 30 requests per call."""

    def __init__(self) -> None:
        self.calls = 0

    def fetch(self, pod: Any) -> Any:
        from infleet.controller.scrape import WorkerMetrics

        self.calls += 1
        return WorkerMetrics(requests_total=30.0 * self.calls, latency_buckets={1.0: 30.0 * self.calls})


def test_a_new_leader_continues_from_the_state_in_the_status() -> None:
    from infleet.controller.autoscale import LoadMeter
    from infleet.controller.loopstate import LoopStates
    from tests.unit.controller.builders import pod

    ctx, kube, _ = fed_context()
    ctx.settings = Settings(meter=LoadMeter(SteadyWorkers()))  # type: ignore[arg-type]
    ready = pod(
        "chat-l4-spot-0",
        node_name="n0",
        ready=True,
        labels={
            "app.kubernetes.io/managed-by": "infleet",
            "infleet.io/deployment": "chat",
            "infleet.io/pool": "l4-spot",
            "infleet.io/role": "serving",
        },
    )
    on_event(ctx, "Pod", "ADDED", ready)
    for _ in range(4):
        reconcile_deployment(ctx, ("ns", "chat"))
        ctx.state_written.clear()  # write the state every time here (the 30 s pacing is tested by the repeat test)
        on_event(ctx, "InferenceDeployment", "MODIFIED", kube.objects[INFD_PATH])
    mine = ctx.states.load("uid-1", kube.objects[INFD_PATH]["status"])
    assert mine.rates and mine.scaling.autoscaler.history  # measurements happened
    # A peer (or a restarted operator) has only the status to go by, and finds the same state there.
    peer = LoopStates().load("uid-1", kube.objects[INFD_PATH]["status"])
    assert peer == mine


def test_new_and_edited_deployments_are_queued_ahead_of_settled_ones() -> None:
    from infleet.controller.handlers import unobserved_spec

    body: dict[str, Any] = {"metadata": {"namespace": "ns", "name": "chat", "generation": 2}}
    key = {("ns", "chat")}
    assert unobserved_spec("InferenceDeployment", "ADDED", body) == key  # no status yet
    body["status"] = {"observedGeneration": 1}
    assert unobserved_spec("InferenceDeployment", "MODIFIED", body) == key  # edited
    body["status"]["observedGeneration"] = 2
    assert unobserved_spec("InferenceDeployment", "MODIFIED", body) == set()  # settled
    body["status"]["observedGeneration"] = 1
    assert unobserved_spec("InferenceDeployment", "DELETED", body) == set()
    assert unobserved_spec("Pod", "MODIFIED", body) == set()
