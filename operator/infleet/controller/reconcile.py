"""One reconcile of an InferenceDeployment: observe -> decide -> execute -> status.

``observe`` turns the operator's view of the cluster and the measured load into the loop's Observation,
``infleet.policy.loop.decide`` (the code the simulator runs too) returns the Plan and the next carried state,
``execute`` applies the plan idempotently. Problems only the operator can see (missing pools, a model no pool fits,
a budget no placement meets, an invalid spec) end as False conditions with an Event, never as an exception that
kopf would retry forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from infleet.api import InferenceDeployment
from infleet.controller.apply import FanOut, existing_workloads, in_turn
from infleet.controller.autoscale import LoadMeter
from infleet.controller.execute import execute, status_of
from infleet.controller.index import ClusterIndex
from infleet.controller.kube import Kube, Obj
from infleet.controller.ledger import CapacityLedger, Claim
from infleet.controller.loopstate import LoopStates
from infleet.controller.manifests import ImageConfig, Owner, model_location
from infleet.controller.metrics import OperatorMetrics
from infleet.controller.observe import Measured, claims_of, observe, parse_deployment
from infleet.controller.promotion import WorkerStateClient
from infleet.controller.snapshot import own_pods, pod_ready, read_cluster
from infleet.controller.status import merge_conditions, newly_false, post_event
from infleet.policy.conditions import Cond
from infleet.policy.loop import LoopSettings, Observation, Plan, decide

log = logging.getLogger("infleet.controller")

CONDITION_ORDER = ("Ready", "Placed", "SLOMet", "WithinBudget")


@dataclass(frozen=True)
class Settings:
    images: ImageConfig = field(default_factory=ImageConfig)
    loop: LoopSettings = field(default_factory=LoopSettings)
    meter: LoadMeter | None = None  # None: no scraping; replicas follow the declared load and bounds only
    promotion: WorkerStateClient | None = None  # None: warm pods are never promoted (promoted ones still retire)
    # Makes sure a namespace has the workers' admin Secret before worker pods that mount it are applied.
    admin_secrets: Callable[[str], None] | None = None
    fan_out: FanOut = in_turn  # how one plan's applies are sent (`infleet run`: at once, on a shared thread pool)


@dataclass
class Result:
    status: dict[str, Any]
    events: list[tuple[str, str, str]]  # (type, reason, message)
    saturated: list[str]
    plan: Plan | None = None
    released: bool = False  # the plan wants fewer replicas on some pool than its last claim: room may have freed

    @property
    def short_of_capacity(self) -> bool:
        """Placed less than asked because pools were full: worth deciding again when room frees."""
        return self.plan is not None and self.plan.placement is not None and (
            self.plan.placement.status == "insufficient_capacity"
        )


@dataclass(frozen=True, kw_only=True)
class Observed:
    """An observation with the objects it came from (execute needs the pods and the worker Deployments)."""

    obs: Observation
    owner: Owner
    pods: list[Obj]
    workloads: list[Obj] | None  # None: not indexed (execute lists them)


def owner_of(body: Obj) -> Owner:
    meta = body["metadata"]
    return Owner(body["apiVersion"], body["kind"], meta["name"], meta["namespace"], meta["uid"])


def observe_deployment(
    kube: Kube,
    body: Obj,
    infd: InferenceDeployment,
    now: datetime,
    settings: Settings,
    index: ClusterIndex | None = None,
    claims: Sequence[Claim] = (),
) -> Observed:
    """Read what one decision needs: the cluster view, the deployment's pods and Deployments, its load.

    From the watch index when there is one (no API read at all), else with LISTs (``infleet plan``, one-shot use).
    """
    owner = owner_of(body)
    key = (owner.namespace, owner.name)
    if index is not None:
        view = index.view()
        mine = index.pods_of(key)
        workloads: list[Obj] | None = [w for w in index.workloads_of(key) if owned_by(w, owner.uid)]
        serving_deployments = serving_replicas_of(workloads or [])
        claim = claim_name(infd)
        waiting = None if claim is None or index.has_claim(owner.namespace, claim) else missing_claim_message(
            infd, owner.namespace, claim
        )
    else:
        view = read_cluster(kube)
        mine = own_pods(view, owner.namespace, owner.name)
        workloads = None
        serving_deployments = serving_replicas_of(existing_workloads(kube, owner))
        waiting = missing_claim(kube, infd, owner.namespace)
    measured = Measured()
    if settings.meter is not None and settings.loop.autoscale:
        ready_serving = [
            p for p in mine if (p["metadata"].get("labels") or {}).get("infleet.io/role") == "serving" and pod_ready(p)
        ]
        measured = settings.meter.measure(f"{owner.namespace}/{owner.name}", infd, ready_serving, now.timestamp())
    obs = observe(
        infd=infd,
        uid=owner.uid,
        view=view,
        own_pods=mine,
        serving_deployments=serving_deployments,
        measured=measured,
        now_s=now.timestamp(),
        waiting_for=waiting,
        claims=claims,
    )
    return Observed(obs=obs, owner=owner, pods=mine, workloads=workloads)


def reconcile(
    kube: Kube,
    body: Obj,
    now: datetime,
    settings: Settings,
    metrics: OperatorMetrics,
    states: LoopStates,
    index: ClusterIndex | None = None,
    applied_services: MutableMapping[str, str] | None = None,
    ledger: CapacityLedger | None = None,
) -> Result:
    meta = body["metadata"]
    previous = body.get("status") or {}
    try:
        infd = parse_deployment(body)
    except ValidationError as exc:
        return invalid_spec(previous, exc, now, meta.get("generation"))
    key = (meta["namespace"], meta["name"])
    with ledger.decisions if ledger is not None else nullcontext():
        claims = ledger.others(key, index.bound_on if index is not None else None) if ledger is not None else ()
        seen = observe_deployment(kube, body, infd, now, settings, index, claims)
        plan, next_state = decide(seen.obs, states.load(meta["uid"], previous), settings.loop)
        released = ledger.set(key, claims_of(seen.obs, plan)) if ledger is not None and plan.touch_workloads else False
    if plan.touch_workloads and settings.admin_secrets is not None:
        settings.admin_secrets(seen.owner.namespace)
    done = execute(
        kube,
        owner=seen.owner,
        obs=seen.obs,
        plan=plan,
        pods=seen.pods,
        images=settings.images,
        promotion=settings.promotion,
        existing=seen.workloads,
        applied_services=applied_services,
        fan_out=settings.fan_out,
    )
    if done.applied is not None and done.applied.deleted:
        log.info("removed workloads %s of %s/%s", done.applied.deleted, seen.owner.namespace, seen.owner.name)
    if plan.touch_workloads:
        status = status_of(infd, seen.obs, plan)
        status["loopState"] = states.store(meta["uid"], next_state)
    else:  # waiting: say why, leave the pools' lines as they were
        serving = [r.pods for r in seen.obs.replicas.values()]
        status = {"replicas": sum(p.total for p in serving), "readyReplicas": sum(p.ready for p in serving)}
    status["lastDecision"] = (
        previous.get("lastDecision")
        if plan.decision is None
        else {
            "time": _stamp(now),
            "kind": plan.decision.kind,
            "reason": plan.decision.reason,
            "message": plan.decision.message,
        }
    )
    _record_metrics(metrics, seen.obs, plan)
    result = finish(
        previous.get("conditions") or [],
        conds=list(plan.conditions),
        status=status,
        now=now,
        generation=meta.get("generation"),
        events=list(plan.events),
        saturated=sorted(r.pool for r in plan.rows if r.saturated),
        plan=plan,
    )
    result.released = released
    return result


def _record_metrics(metrics: OperatorMetrics, obs: Observation, plan: Plan) -> None:
    ns, name = obs.deployment.metadata.namespace or "", obs.deployment.metadata.name or ""
    current = {p: r.serving for p, r in obs.replicas.items()}
    for pool in sorted(set(current) | set(plan.serving)):
        if current.get(pool, 0) != plan.serving.get(pool, 0):
            metrics.count_scale(ns, name, pool, current.get(pool, 0), plan.serving.get(pool, 0))
    metrics.set_efficiency(
        ns,
        name,
        [
            (r.pool, r.family, r.efficiency_source, r.wh_per_million_tokens, r.usd_per_million_tokens)
            for r in plan.rows
            if r.usd_per_million_tokens is not None
        ],
    )
    metrics.set_deployment(
        ns,
        name,
        {r.pool: {"desired": r.desired, "ready": r.ready, "warm": r.warm} for r in plan.rows},
        plan.cost_per_hour,
        dict(plan.slo_targets),
    )


def invalid_spec(previous: Obj, exc: ValidationError, now: datetime, generation: int | None) -> Result:
    conds = [
        Cond("Placed", "False", "InvalidSpec", f"the spec is invalid: {exc.errors()[0].get('msg')}"),
        Cond("Ready", "False", "InvalidSpec", "fix the spec; nothing is placed until then"),
    ]
    return finish(
        previous.get("conditions") or [],
        conds=conds,
        status={"replicas": 0, "readyReplicas": 0},
        now=now,
        generation=generation,
        events=[],
    )


def finish(
    prev: list[Obj],
    *,
    conds: list[Cond],
    status: dict[str, Any],
    now: datetime,
    generation: int | None,
    events: list[tuple[str, str, str]],
    saturated: list[str] | None = None,
    plan: Plan | None = None,
) -> Result:
    order = {t: i for i, t in enumerate(CONDITION_ORDER)}
    conds = sorted(conds, key=lambda c: order.get(c.type, 99))
    status = dict(status)
    status["conditions"] = merge_conditions(prev, conds, now, generation)
    if generation is not None:
        status["observedGeneration"] = generation
    events = [*[("Warning", c.reason, f"{c.type}=False: {c.message}") for c in newly_false(prev, conds)], *events]
    return Result(status=status, events=events, saturated=saturated or [], plan=plan)


def _stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def claim_name(infd: InferenceDeployment) -> str | None:
    return model_location(infd.spec.model.source, infd.spec.model.name).claim


def missing_claim_message(infd: InferenceDeployment, namespace: str, claim: str) -> str:
    return (
        f"spec.model.source {infd.spec.model.source} names PersistentVolumeClaim {claim!r}, which does not "
        f"exist in namespace {namespace}; create it (with the model's weights) and placement continues"
    )


def missing_claim(kube: Kube, infd: InferenceDeployment, namespace: str) -> str | None:
    """Why placement waits for the model's PersistentVolumeClaim, or None when it exists (or none is needed).

    Pods mounting a missing claim would stay Pending on every pool (and look like saturation), so placement waits
    for it, touching nothing that already runs.
    """
    claim = claim_name(infd)
    if claim is None or kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}") is not None:
        return None
    return missing_claim_message(infd, namespace, claim)


def serving_replicas_of(workloads: list[Obj]) -> dict[str, int]:
    """Each pool's serving Deployment ``spec.replicas`` (promoted pods are counted separately)."""
    out: dict[str, int] = {}
    for d in workloads:
        labels = d["metadata"].get("labels") or {}
        if labels.get("infleet.io/role") == "serving":
            out[labels["infleet.io/pool"]] = int(d.get("spec", {}).get("replicas") or 0)
    return out


def owned_by(obj: Obj, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def emit(kube: Kube, body: Obj, result: Result, now: datetime) -> None:
    for type_, reason, message in result.events:
        try:
            post_event(kube, body, type_=type_, reason=reason, message=message, now=now)
        except Exception as exc:  # an Event is best effort; the condition already says it
            log.warning("could not post event %s: %s", reason, exc)
