"""One reconcile pass of an InferenceDeployment: snapshot -> plan -> apply -> status.

Everything the pass decides comes from the cluster as it is now plus the deployment's own status (which pools
were saturated), so a restarted operator picks up exactly where the last one stopped. Problems only the operator
can see (missing pools, a model no pool fits, a budget no placement meets, an invalid spec) end as False
conditions with an Event, never as an exception that kopf would retry forever.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from infleet.api import AcceleratorPool, InferenceDeployment
from infleet.controller.apply import apply_plan, existing_workloads
from infleet.controller.autoscale import Autoscaling
from infleet.controller.fallback import Saturation, cap_saturated, hold_serving, update_saturation
from infleet.controller.kube import Kube, Obj
from infleet.controller.manifests import (
    Device,
    ImageConfig,
    Owner,
    PoolRuntime,
    RuntimeOverride,
    Workload,
    label_selector,
    model_location,
    selector_labels,
)
from infleet.controller.metrics import OperatorMetrics
from infleet.controller.promotion import (
    WorkerStateClient,
    apply_promotions,
    plan_promotion,
    promoted_by_pool,
    serving_replicas,
)
from infleet.controller.snapshot import (
    ClusterView,
    group_pods,
    infleet_devices_by_pool,
    node_usage,
    own_pods,
    parse_quantity,
    pod_ready,
    pool_capacity,
    read_cluster,
)
from infleet.controller.status import Cond, budget_condition, merge_conditions, newly_false, post_event, ready_condition
from infleet.controller.warmpool import warm_history, warm_replicas
from infleet.policy import PlacementPlan, PlacementRequest, place
from infleet.policy.from_api import PoolChoice, build_request, candidate_pools, choose
from infleet.policy.scaling import FleetScalingStep

log = logging.getLogger("infleet.controller")

DEVICE_OF_FAMILY: Mapping[str, Device] = {
    "nvidia-gpu": "cuda",
    "aws-neuron": "neuron",
    "google-tpu": "xla",
    "cpu": "cpu",
}
# What every worker pod asks for besides its devices (host memory for loading weights, a core for the server).
DEFAULT_WORKER_REQUESTS: Mapping[str, str] = {"cpu": "1", "memory": "2Gi"}


@dataclass(frozen=True)
class Settings:
    images: ImageConfig = field(default_factory=ImageConfig)
    fallback_after: timedelta | None = None  # overrides every deployment's placement.fallbackAfterSeconds
    autoscaling: Autoscaling | None = None  # None: replicas follow the declared throughput only
    promotion: WorkerStateClient | None = None  # None: warm pods are never promoted (promoted ones still retire)


@dataclass
class Result:
    status: dict[str, Any]
    events: list[tuple[str, str, str]]  # (type, reason, message)
    saturated: list[str]


def parse_deployment(body: Obj) -> InferenceDeployment:
    return InferenceDeployment.model_validate({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")})


def parse_pools(items: list[Obj]) -> dict[str, AcceleratorPool]:
    out = {}
    for item in items:
        try:
            pool = AcceleratorPool.model_validate({k: item[k] for k in ("apiVersion", "kind", "metadata", "spec")})
        except (ValidationError, KeyError) as exc:
            log.warning("skipping invalid AcceleratorPool %s: %s", item.get("metadata", {}).get("name"), exc)
            continue
        out[pool.metadata.name or ""] = pool
    return out


def runtime_for(infd: InferenceDeployment, family: str) -> RuntimeOverride:
    override = infd.spec.model.runtime_for(family)
    if override is None:
        return RuntimeOverride()
    res = override.resources
    return RuntimeOverride(
        image=override.image,
        args=tuple(override.args),
        env={e.name: e.value or "" for e in override.env if e.value is not None},
        requests={k: str(v) for k, v in (res.requests if res else {}).items()},
        limits={k: str(v) for k, v in (res.limits if res else {}).items()},
    )


def pool_runtime(choice: PoolChoice) -> PoolRuntime:
    spec = choice.pool.spec
    acc = spec.accelerator
    units = (acc.cpus_per_device or 1) if acc.family == "cpu" else 1
    defaults = dict(DEFAULT_WORKER_REQUESTS)
    if acc.family == "cpu":
        defaults.pop("cpu")
    return PoolRuntime(
        name=choice.pool.metadata.name or "",
        device=DEVICE_OF_FAMILY[acc.family],
        node_selector=dict(spec.node_selector),
        tolerations=tuple(t.to_dict() for t in spec.tolerations),
        resource_name=acc.resource_name,
        devices_per_replica=choice.devices_per_replica,
        units_per_device=units,
        default_requests=defaults,
    )


def replica_requests(runtime: PoolRuntime, override: RuntimeOverride) -> dict[str, float]:
    req = {k: parse_quantity(v) for k, v in runtime.default_requests.items()}
    if runtime.resource_name:
        req[runtime.resource_name] = float(runtime.devices_per_replica * runtime.units_per_device)
    req.update({k: parse_quantity(v) for k, v in override.requests.items()})
    return req


def previous_saturation(body: Obj, now: datetime) -> dict[str, Saturation]:
    pools = (body.get("status") or {}).get("pools") or []
    return {p["pool"]: Saturation(since=now, message="saturated before") for p in pools if p.get("saturated")}


def reconcile(kube: Kube, body: Obj, now: datetime, settings: Settings, metrics: OperatorMetrics) -> Result:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    previous_status = body.get("status") or {}
    prev_conditions = previous_status.get("conditions") or []
    generation = meta.get("generation")
    try:
        infd = parse_deployment(body)
    except ValidationError as exc:
        invalid = [
            Cond("Placed", "False", "InvalidSpec", f"the spec is invalid: {exc.errors()[0].get('msg')}"),
            Cond("Ready", "False", "InvalidSpec", "fix the spec; nothing is placed until then"),
        ]
        return _finish(
            prev_conditions,
            conds=invalid,
            status={"replicas": 0, "readyReplicas": 0},
            now=now,
            generation=generation,
            events=[],
        )

    waiting = _wait_for_claim(kube, infd, namespace, name, prev_conditions, now, generation)
    if waiting is not None:
        return waiting

    view = read_cluster(kube)
    pools = parse_pools(view.pools)
    chosen, missing = candidate_pools(infd, pools)
    choices = [choose(p, infd) for p in chosen]
    usable = [c for c in choices if c.capacity_rps > 0]
    owner = Owner(body["apiVersion"], body["kind"], name, namespace, meta["uid"])
    mine = own_pods(view, namespace, name)
    pods = group_pods(mine)
    serving_pods = pods.serving
    free, room = _room(view, usable=usable, infd=infd, namespace=namespace, name=name, pools=pools)
    saturated = update_saturation(
        previous_saturation(body, now),
        serving_pods,
        room,
        now,
        settings.fallback_after or timedelta(seconds=infd.spec.placement.fallback_after_seconds),
    )
    deployment_replicas = _current_serving(kube, owner)
    # Promoted pods (released from a warm ReplicaSet) serve beside the Deployment's pods and count with them.
    promoted = {pool: len(ps) for pool, ps in promoted_by_pool(mine, owner.uid).items()}
    current = {p: deployment_replicas.get(p, 0) + promoted.get(p, 0) for p in set(deployment_replicas) | set(promoted)}
    request = build_request(
        infd, usable, free, current, infd.spec.scaling.replicas if infd.spec.scaling.mode == "External" else None
    )
    request = replace(request, offers=cap_saturated(request.offers, saturated, serving_pods))
    plan = place(request) if usable else None
    step = None
    if settings.autoscaling is not None and infd.spec.scaling.mode == "Auto" and plan is not None:
        ready_now = {pool: pp.ready for pool, pp in serving_pods.items() if pp.ready}
        step = settings.autoscaling.step(
            f"{namespace}/{name}", infd, request, ready_now, _ready_serving(mine), now.timestamp()
        )
        if step is not None:
            plan = _plan_of_step(request, step)

    budget = infd.spec.cost.max_hourly_cost_usd
    unmet = plan is not None and plan.status not in ("ok", "idle")
    # When the plan falls short, would it meet the SLO without the budget? Then the budget is what binds.
    cheapest = _cheapest_meeting_slo(request) if unmet and budget is not None else None
    budget_bound = cheapest is not None and budget is not None and cheapest > budget + 1e-9
    conds: list[Cond] = []
    events: list[tuple[str, str, str]] = []
    placed_ok = plan is not None and plan.status in ("ok", "idle")
    if missing:
        conds.append(
            Cond(
                "Placed",
                "False",
                "PoolNotFound",
                f"placement names AcceleratorPool(s) that do not exist: {', '.join(missing)}",
            )
        )
    elif plan is None:
        detail = (
            "; ".join(f"{c.pool.metadata.name}: {c.why_not}" for c in choices)
            or "no AcceleratorPool of an allowed family exists"
        )
        conds.append(
            Cond("Placed", "False", "NoFittingPool", f"no allowed pool can serve the model within the SLO ({detail})")
        )
    elif plan.status in ("ok", "idle"):
        conds.append(Cond("Placed", "True", "Placed", _describe(plan)))
    elif budget_bound:
        conds.append(
            Cond(
                "Placed",
                "True" if plan.total_replicas else "False",
                "OverBudget",
                f"the budget allows only a best effort: {_describe(plan)}; see WithinBudget",
            )
        )
    else:
        conds.append(Cond("Placed", "False", "InsufficientCapacity", f"{plan.reason}; placed {_describe(plan)}"))

    target = dict(plan.replicas) if plan is not None else {}
    ready = {pool: pp.ready for pool, pp in serving_pods.items()}
    price = {o.pool: o.replica_price_per_hour for o in request.offers}
    desired = hold_serving(target, current, ready, price)
    measured = settings.autoscaling.rate_history(f"{namespace}/{name}") if settings.autoscaling is not None else []
    history = warm_history(measured, request.demand_rps, now.timestamp())
    warm = warm_replicas(infd, plan, request, desired, history)
    runtimes = {c.pool.metadata.name or "": c for c in usable}
    promotion = plan_promotion(mine, owner.uid, desired, deployment_replicas, request.offers)
    if settings.promotion is None:
        promotion = replace(promotion, promote=[])
    done, retired = apply_promotions(kube, owner, mine, promotion, settings.promotion)
    pool_of = {p["metadata"]["name"]: (p["metadata"].get("labels") or {}).get("infleet.io/pool", "") for p in mine}
    for pod_name in done:
        promoted[pool_of[pod_name]] = promoted.get(pool_of[pod_name], 0) + 1
    for pod_name in retired:
        promoted[pool_of[pod_name]] = promoted.get(pool_of[pod_name], 0) - 1
    workloads = []
    for pool, n in serving_replicas(desired, promoted).items():
        if pool in runtimes:
            fam = runtimes[pool].pool.spec.accelerator.family
            workloads.append(
                Workload(
                    owner,
                    pool_runtime(runtimes[pool]),
                    "serving",
                    n,
                    infd.spec.model.name,
                    runtime_for(infd, fam),
                    infd.spec.model.source,
                )
            )
    for pool, n in warm.items():
        fam = runtimes[pool].pool.spec.accelerator.family
        workloads.append(
            Workload(
                owner,
                pool_runtime(runtimes[pool]),
                "warm",
                n,
                infd.spec.model.name,
                runtime_for(infd, fam),
                infd.spec.model.source,
            )
        )
    applied = apply_plan(kube, owner, workloads, settings.images)
    for w in workloads:
        if w.role == "serving":
            metrics.count_scale(namespace, name, w.pool.name, current.get(w.pool.name, 0), desired[w.pool.name])
    for pool, before in current.items():
        if pool not in desired:
            metrics.count_scale(namespace, name, pool, before, 0)

    # Status
    cost = sum(price.get(p, 0.0) * n for p, n in desired.items()) + sum(price.get(p, 0.0) * n for p, n in warm.items())
    total_desired = sum(desired.values())
    total_ready = sum(ready.values())
    serving_cost = sum(price.get(p, 0.0) * n for p, n in desired.items())
    conds.append(budget_condition(serving_cost, budget, cheapest if budget_bound else serving_cost))
    conds.append(_slo_condition(plan, total_ready, sum(target.values())))
    conds.append(ready_condition(total_desired, total_ready, placed_ok))
    pool_rows = []
    all_pools = sorted(set(desired) | set(serving_pods) | set(warm) | set(pods.warm) | set(saturated))
    for pool in all_pools:
        family = pools[pool].spec.accelerator.family if pool in pools else "cpu"
        pool_rows.append(
            {
                "pool": pool,
                "family": family,
                "desired": desired.get(pool, 0),
                "ready": ready.get(pool, 0),
                "warm": pods.warm.get(pool, 0),
                "costPerHourUSD": round(price.get(pool, 0.0) * (desired.get(pool, 0) + warm.get(pool, 0)), 6),
                "saturated": pool in saturated,
            }
        )
    status: dict[str, Any] = {
        "replicas": sum(pp.total for pp in serving_pods.values()),
        "readyReplicas": total_ready,
        "warmReplicas": sum(pods.warm.values()),
        "selector": label_selector(selector_labels(name, role="serving")),
        "pools": pool_rows,
        "poolsSummary": pools_summary(desired),
        "costPerHourUSD": round(cost, 6),
    }
    newly_saturated = sorted(set(saturated) - set(previous_saturation(body, now)))
    if newly_saturated or target != _previous_desired(previous_status) or not previous_status.get("lastDecision"):
        kind, reason = ("Fallback", "PoolSaturated") if newly_saturated else ("Placement", "Replan")
        if step is not None and not newly_saturated and step.decision.direction != "hold":
            kind, reason = ("ScaleUp", "Load") if step.decision.direction == "up" else ("ScaleDown", "Load")
            message_prefix = f"{step.decision.reason}; "
        else:
            message_prefix = ""
        message = _describe(plan) if plan is not None else conds[0].message
        if newly_saturated:
            why = "; ".join(saturated[p].message for p in newly_saturated)
            message = f"pool(s) {', '.join(newly_saturated)} out of capacity ({why}); now {message}"
            events.append(("Warning", "PoolSaturated", message))
        message = message_prefix + message
        status["lastDecision"] = {"time": _stamp(now), "kind": kind, "reason": reason, "message": message[:32000]}
    else:
        status["lastDecision"] = previous_status.get("lastDecision")
    if applied.deleted:
        log.info("removed workloads %s of %s/%s", applied.deleted, namespace, name)
    metrics.set_deployment(
        namespace,
        name,
        {p: {"desired": desired.get(p, 0), "ready": ready.get(p, 0), "warm": pods.warm.get(p, 0)} for p in all_pools},
        cost,
        _slo_targets(infd),
    )
    return _finish(
        prev_conditions,
        conds=conds,
        status=status,
        now=now,
        generation=generation,
        events=events,
        saturated=sorted(saturated),
    )


def pools_summary(desired: Mapping[str, int]) -> str:
    """`kubectl get infd`'s Pools column: desired serving replicas per pool, by name ("" when none)."""
    return ",".join(f"{pool}={n}" for pool, n in sorted(desired.items()) if n > 0)


def _wait_for_claim(
    kube: Kube,
    infd: InferenceDeployment,
    namespace: str,
    name: str,
    prev_conditions: list[Obj],
    now: datetime,
    generation: int | None,
) -> Result | None:
    """A Result saying the model's PersistentVolumeClaim is missing, or None when there is nothing to wait for.

    Pods mounting a missing claim would stay Pending on every pool (and look like saturation), so placement waits
    for it, touching nothing that already runs.
    """
    claim = model_location(infd.spec.model.source, infd.spec.model.name).claim
    if claim is None or kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}") is not None:
        return None
    message = (
        f"spec.model.source {infd.spec.model.source} names PersistentVolumeClaim {claim!r}, which does not "
        f"exist in namespace {namespace}; create it (with the model's weights) and placement continues"
    )
    serving = group_pods(own_pods(read_cluster(kube), namespace, name)).serving
    ready_now = sum(pp.ready for pp in serving.values())
    total = sum(pp.total for pp in serving.values())
    conds = [
        Cond("Placed", "False", "ModelClaimNotFound", message),
        ready_condition(total, ready_now, placed=False) if total else Cond("Ready", "False", "NotPlaced", message),
    ]
    return _finish(
        prev_conditions,
        conds=conds,
        status={"replicas": total, "readyReplicas": ready_now},
        now=now,
        generation=generation,
        events=[],
    )


def _ready_serving(pods: list[Obj]) -> list[Obj]:
    return [p for p in pods if (p["metadata"].get("labels") or {}).get("infleet.io/role") == "serving" and pod_ready(p)]


def _plan_of_step(request: PlacementRequest, step: FleetScalingStep) -> PlacementPlan:
    """The autoscaler's replicas in the plan shape the status code reads (capacity vs. the desired capacity)."""
    offers = {o.pool: o for o in request.offers}
    replicas = {p: n for p, n in sorted(step.replicas.items()) if n > 0 and p in offers}
    capacity = sum(offers[p].replica_capacity_rps * step.calibration * n for p, n in replicas.items())
    cost = sum(offers[p].replica_price_per_hour * n for p, n in replicas.items())
    want = step.decision.desired_capacity_rps
    short = max(0.0, want - capacity)
    return PlacementPlan(
        deployment=request.deployment,
        replicas=replicas,
        cost_per_hour=cost,
        capacity_rps=capacity,
        status="ok" if short <= 1e-6 else "insufficient_capacity",
        shortfall_rps=short,
        reason=step.decision.reason,
        solver="scale_step",
    )


def _finish(
    prev: list[Obj],
    *,
    conds: list[Cond],
    status: dict[str, Any],
    now: datetime,
    generation: int | None,
    events: list[tuple[str, str, str]],
    saturated: list[str] | None = None,
) -> Result:
    order = {t: i for i, t in enumerate(("Ready", "Placed", "SLOMet", "WithinBudget"))}
    conds = sorted(conds, key=lambda c: order.get(c.type, 99))
    status = dict(status)
    status["conditions"] = merge_conditions(prev, conds, now, generation)
    if generation is not None:
        status["observedGeneration"] = generation
    events = [*[("Warning", c.reason, f"{c.type}=False: {c.message}") for c in newly_false(prev, conds)], *events]
    return Result(status=status, events=events, saturated=saturated or [])


def _stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe(plan: PlacementPlan) -> str:
    if not plan.replicas:
        return "0 replicas"
    pools = ", ".join(f"{p}={n}" for p, n in plan.replicas.items())
    return f"{plan.total_replicas} replica(s) on {pools} at ${plan.cost_per_hour:.2f}/h"


def _room(
    view: ClusterView,
    *,
    usable: list[PoolChoice],
    infd: InferenceDeployment,
    namespace: str,
    name: str,
    pools: Mapping[str, AcceleratorPool],
) -> tuple[dict[str, int], dict[str, int]]:
    """Free devices per pool for this deployment (policy input) and room for more replicas now."""
    usage = node_usage(view.nodes, view.pods, selector_labels(name), namespace)
    infleet_use = infleet_devices_by_pool(view, pools)
    free: dict[str, int] = {}
    room: dict[str, int] = {}
    me = f"{namespace}/{name}"
    for choice in usable:
        runtime = pool_runtime(choice)
        fam = choice.pool.spec.accelerator.family
        elsewhere = sum(v for k, v in infleet_use.get(runtime.name, {}).items() if k != me)
        cap = pool_capacity(
            choice.pool,
            usage,
            replica_requests(runtime, runtime_for(infd, fam)),
            choice.devices_per_replica,
            int(elsewhere),
        )
        free[runtime.name] = cap.free_devices
        room[runtime.name] = cap.room_replicas
    return free, room


def _current_serving(kube: Kube, owner: Owner) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in existing_workloads(kube, owner):
        labels = d["metadata"].get("labels") or {}
        if labels.get("infleet.io/role") == "serving":
            out[labels["infleet.io/pool"]] = int(d.get("spec", {}).get("replicas") or 0)
    return out


def _previous_desired(status: Obj) -> dict[str, int]:
    return {p["pool"]: p.get("desired", 0) for p in status.get("pools") or [] if p.get("desired")}


def _cheapest_meeting_slo(request: Any) -> float | None:
    """What the cheapest SLO-meeting placement would cost without the budget (None: none exists)."""
    unbounded = place(replace(request, budget_per_hour=None))
    return unbounded.cost_per_hour if unbounded.status in ("ok", "idle") else None


def _slo_condition(plan: PlacementPlan | None, ready: int, target: int) -> Cond:
    if plan is None or plan.status not in ("ok", "idle"):
        short = f"{plan.shortfall_rps:.3g}" if plan is not None else "all"
        return Cond(
            "SLOMet", "False", "InsufficientCapacity", f"placed capacity leaves {short} of the expected load uncovered"
        )
    if ready < target:
        return Cond(
            "SLOMet",
            "Unknown",
            "ReplicasStarting",
            f"{ready}/{target} replicas ready; capacity is planned to meet the SLO",
        )
    return Cond(
        "SLOMet",
        "True",
        "CapacityCoversLoad",
        f"ready capacity {plan.capacity_rps:.3g} covers the expected load within the SLO (from pool profiles)",
    )


def _slo_targets(infd: InferenceDeployment) -> dict[str, float]:
    slo = infd.spec.slo
    out = {"p99": slo.p99_latency_ms / 1000}
    if slo.ttft_p99_ms is not None:
        out["ttft"] = slo.ttft_p99_ms / 1000
    if slo.tpot_p99_ms is not None:
        out["tpot"] = slo.tpot_p99_ms / 1000
    return out


def emit(kube: Kube, body: Obj, result: Result, now: datetime) -> None:
    for type_, reason, message in result.events:
        try:
            post_event(kube, body, type_=type_, reason=reason, message=message, now=now)
        except Exception as exc:  # an Event is best effort; the condition already says it
            log.warning("could not post event %s: %s", reason, exc)
