"""Warm-pod promotion: the decision (the loop's, from the pods as the operator observes them: which warm pods, which
promoted pods retire) and the applier with fakes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from kubernetes.client.exceptions import ApiException

from infleet.controller.execute import serving_after_promotions
from infleet.controller.manifests import Owner
from infleet.controller.observe import promoted_workers, warm_workers
from infleet.controller.promotion import (
    LABEL_PROMOTED,
    AssumeAccepted,
    HttpWorkerState,
    PromotionPlan,
    apply_promotions,
)
from infleet.policy import PoolOffer, loop
from tests.unit.controller.builders import make_infd

UID = "infd-uid"
OWNER = Owner("infleet.io/v1alpha1", "InferenceDeployment", "chat", "ns", UID)
RS_REF = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid", "controller": True}


def offer(pool: str, price: float, rps: float) -> PoolOffer:
    return PoolOffer(
        pool=pool,
        accelerator="cpu",
        capacity_type="spot",
        price_per_device_hour=price,
        devices_per_replica=1,
        device_memory_gib=16,
        free_devices=8,
        replica_capacity_rps=rps,
    )


def wpod(
    name: str,
    pool: str,
    *,
    role: str = "warm",
    ready_at: str | None = "2026-01-01T00:01:00Z",
    promoted: bool = False,
    deleting: bool = False,
) -> dict[str, Any]:
    labels = {"infleet.io/deployment": "chat", "infleet.io/pool": pool, "infleet.io/role": role}
    refs = [RS_REF]
    if promoted:
        labels[LABEL_PROMOTED] = "true"
        refs = [OWNER.reference()]
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "labels": labels,
        "ownerReferences": refs,
        "resourceVersion": "7",
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:05:00Z"
    conds = [{"type": "Ready", "status": "True", "lastTransitionTime": ready_at}] if ready_at else []
    return {"metadata": meta, "status": {"phase": "Running", "podIP": "127.100.0.9", "conditions": conds}}


OFFERS = [offer("cheap", 0.1, 1.0), offer("dear", 1.0, 1.0)]


def plan_promotion(
    pods: list[dict[str, Any]], uid: str, desired: dict[str, int], deployment_replicas: dict[str, int],
    offers: list[PoolOffer],
) -> PromotionPlan:
    """The operator's path: its observation of the pods, then the loop's promotion decision."""
    promoted = promoted_workers(pods, uid)
    serving = dict(deployment_replicas)
    for w in promoted:
        serving[w.pool] = serving.get(w.pool, 0) + 1
    obs = loop.Observation(
        now_s=0.0, deployment=make_infd(), pools={},
        replicas={p: loop.PoolReplicas(serving=n) for p, n in serving.items()},
        warm_ready=warm_workers(pods), promoted=promoted,
    )  # fmt: skip
    promote, retire = loop.plan_promotion(obs, desired, tuple(offers))
    return PromotionPlan(promote=list(promote), retire=list(retire))


def test_scale_up_promotes_ready_warm_pods_on_the_short_pool_up_to_the_shortfall() -> None:
    pods = [
        wpod("w-young", "cheap", ready_at="2026-01-01T00:09:00Z"),
        wpod("w-old", "cheap", ready_at="2026-01-01T00:01:00Z"),
        wpod("w-mid", "cheap", ready_at="2026-01-01T00:05:00Z"),
        wpod("w-unready", "cheap", ready_at=None),
        wpod("w-dear", "dear"),  # dear wants nothing more
    ]
    plan = plan_promotion(pods, UID, {"cheap": 4, "dear": 1}, {"cheap": 2, "dear": 1}, OFFERS)
    assert plan == PromotionPlan(promote=["w-old", "w-mid"], retire=[])  # ready longest first, shortfall 2


def test_policy_order_across_pools_prefers_capacity_per_dollar() -> None:
    pods = [wpod("w-dear", "dear", ready_at="2026-01-01T00:00:01Z"), wpod("w-cheap", "cheap")]
    plan = plan_promotion(pods, UID, {"cheap": 1, "dear": 1}, {}, OFFERS)
    assert plan.promote == ["w-cheap", "w-dear"]


def test_no_promotion_when_the_pool_has_what_it_wants_counting_promoted_pods() -> None:
    pods = [wpod("w1", "cheap"), wpod("p1", "cheap", role="serving", promoted=True)]
    assert plan_promotion(pods, UID, {"cheap": 3}, {"cheap": 2}, OFFERS) == PromotionPlan()


def test_deleting_warm_pods_and_pools_without_a_shortfall_are_never_promoted() -> None:
    pods = [wpod("gone", "cheap", deleting=True), wpod("other", "dear")]
    assert plan_promotion(pods, UID, {"cheap": 2}, {"cheap": 0}, OFFERS).promote == []


def test_scale_down_retires_promoted_pods_first_youngest_first() -> None:
    pods = [
        wpod("p-old", "cheap", role="serving", promoted=True, ready_at="2026-01-01T00:01:00Z"),
        wpod("p-young", "cheap", role="serving", promoted=True, ready_at="2026-01-01T00:08:00Z"),
        wpod("p-gone-pool", "dear", role="serving", promoted=True),
    ]
    plan = plan_promotion(pods, UID, {"cheap": 2}, {"cheap": 1}, OFFERS)
    assert plan.promote == []
    assert plan.retire == ["p-young", "p-gone-pool"]  # cheap: 1 + 2 > 2; dear left the plan
    deeper = plan_promotion(pods, UID, {"cheap": 0}, {"cheap": 3}, OFFERS)
    assert sorted(deeper.retire) == ["p-gone-pool", "p-old", "p-young"]  # never more than the promoted pods


def test_promoted_means_labelled_and_controlled_by_this_deployment() -> None:
    mine = wpod("p", "cheap", role="serving", promoted=True)
    foreign = wpod("f", "cheap", role="serving", promoted=True)
    foreign["metadata"]["ownerReferences"] = [{**OWNER.reference(), "uid": "someone-else"}]
    plain = wpod("s", "cheap", role="serving")
    found = promoted_workers([mine, foreign, plain], UID)
    assert [(w.name, w.pool) for w in found] == [("p", "cheap")]


def test_serving_deployment_is_scaled_to_desired_less_promoted() -> None:
    plan = loop.Plan(serving={"cheap": 3, "dear": 1}, warm={})
    assert serving_after_promotions(plan, {"cheap": 2, "dear": 4}, {}, [], []) == {"cheap": 1, "dear": 0}
    # one more promoted now on cheap, one retired on dear
    moved = serving_after_promotions(plan, {"cheap": 2, "dear": 4}, {"w": "cheap", "p": "dear"}, ["w"], ["p"])
    assert moved == {"cheap": 0, "dear": 0}


class FakeKube:
    def __init__(self, conflict: set[str] | None = None) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.deleted: list[str] = []
        self.conflict = conflict or set()

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path.rsplit("/", 1)[1] in self.conflict:
            raise ApiException(status=409, reason="Conflict")
        self.patches.append((path, body))
        return body

    def delete(self, path: str) -> bool:
        self.deleted.append(path)
        return True


class FakeWorkers:
    def __init__(self, accept: set[str]) -> None:
        self.accept = accept
        self.asked: list[str] = []

    def promote(self, pod: dict[str, Any]) -> bool:
        self.asked.append(pod["metadata"]["name"])
        return pod["metadata"]["name"] in self.accept


def test_applier_tells_the_worker_then_relabels_and_reowns_the_pod() -> None:
    pods = [wpod("w1", "cheap"), wpod("w2", "cheap"), wpod("p1", "cheap", role="serving", promoted=True)]
    kube = FakeKube()
    workers = FakeWorkers(accept={"w1"})
    done, retired = apply_promotions(
        kube,  # type: ignore[arg-type]
        OWNER,
        pods,
        PromotionPlan(promote=["w1", "w2"], retire=["p1"]),
        workers,
    )
    assert (done, retired) == (["w1"], ["p1"])
    assert workers.asked == ["w1", "w2"]  # w2 refused: stays warm, nothing patched
    assert kube.patches == [
        (
            "/api/v1/namespaces/ns/pods/w1",
            {
                "metadata": {
                    "resourceVersion": "7",
                    "labels": {"infleet.io/role": "serving", LABEL_PROMOTED: "true"},
                    "ownerReferences": [OWNER.reference()],
                }
            },
        )
    ]
    assert kube.deleted == ["/api/v1/namespaces/ns/pods/p1"]


def test_applier_skips_a_pod_that_changed_and_promotes_nothing_without_a_client() -> None:
    pods = [wpod("w1", "cheap"), wpod("w2", "cheap")]
    kube = FakeKube(conflict={"w1"})
    done, _ = apply_promotions(kube, OWNER, pods, PromotionPlan(promote=["w1", "w2"]), AssumeAccepted())  # type: ignore[arg-type]
    assert done == ["w2"]
    idle = FakeKube()
    assert apply_promotions(idle, OWNER, pods, PromotionPlan(promote=["w1"]), None) == ([], [])  # type: ignore[arg-type]
    assert idle.patches == []


def test_applier_raises_other_api_errors() -> None:
    class Broken(FakeKube):
        def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
            raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(ApiException):
        apply_promotions(Broken(), OWNER, [wpod("w1", "cheap")], PromotionPlan(promote=["w1"]), AssumeAccepted())  # type: ignore[arg-type]


def test_http_client_posts_the_state_and_treats_refusals_as_not_promotable() -> None:
    seen: list[tuple[str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.content))
        if request.url.host == "127.100.0.1":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200 if request.url.host == "10.0.0.1" else 503, json={"state": "serving"})

    client = HttpWorkerState()
    client.client = httpx.Client(transport=httpx.MockTransport(handler))
    pod = wpod("w", "cheap")
    pod["status"]["podIP"] = "10.0.0.1"
    assert client.promote(pod)
    assert seen[0] == ("http://10.0.0.1:8000/admin/state", b'{"state":"serving"}')
    pod["status"]["podIP"] = "127.100.0.1"
    assert not client.promote(pod)  # kwok: nothing listens
    pod["status"]["podIP"] = "10.0.0.2"
    assert not client.promote(pod)  # 503: the worker is not ready to serve
    del pod["status"]["podIP"]
    assert not client.promote(pod)


def test_http_client_sends_the_namespace_admin_token() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json={"state": "serving"})

    tokens = {"ns": "tok-ns"}
    client = HttpWorkerState(admin_token=tokens.get)
    client.client = httpx.Client(transport=httpx.MockTransport(handler))
    pod = wpod("w", "cheap")
    pod["status"]["podIP"] = "10.0.0.1"
    pod["metadata"]["namespace"] = "ns"
    assert client.promote(pod)
    pod["metadata"]["namespace"] = "elsewhere"  # no token known there: no header at all
    assert client.promote(pod)
    assert seen == ["Bearer tok-ns", None]
