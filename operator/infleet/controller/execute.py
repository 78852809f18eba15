"""Execute: apply the decision loop's Plan to the cluster, idempotently, and render the status it leads to.

Nothing is decided here. Promotions are attempted in the plan's order (a worker that refuses stays warm and the
serving Deployment starts a cold pod instead); each serving Deployment is scaled to the plan's serving replicas less
the pool's promoted pods; warm Deployments to the plan's warm count; the Service selects serving pods.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from infleet.api import InferenceDeployment
from infleet.controller.apply import ApplyResult, FanOut, apply_plan, in_turn
from infleet.controller.kube import Kube, Obj
from infleet.controller.manifests import ImageConfig, Owner, label_selector, selector_labels
from infleet.controller.observe import workload
from infleet.controller.promotion import PromotionPlan, WorkerStateClient, apply_promotions
from infleet.policy.loop import Observation, Plan, PoolRow


@dataclass(frozen=True, kw_only=True)
class Executed:
    applied: ApplyResult | None  # None: workloads were left alone (plan.touch_workloads is False)
    promoted: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()


def serving_after_promotions(
    plan: Plan, promoted_now: Mapping[str, int], pool_of: Mapping[str, str], done: Sequence[str], retired: Sequence[str]
) -> dict[str, int]:
    """Replicas per serving Deployment: the plan's serving count less the promoted pods that serve beside it."""
    promoted = dict(promoted_now)
    for pod in done:
        promoted[pool_of[pod]] = promoted.get(pool_of[pod], 0) + 1
    for pod in retired:
        promoted[pool_of[pod]] = promoted.get(pool_of[pod], 0) - 1
    return {pool: max(0, n - promoted.get(pool, 0)) for pool, n in plan.serving.items()}


def execute(
    kube: Kube,
    *,
    owner: Owner,
    obs: Observation,
    plan: Plan,
    pods: Sequence[Obj],
    images: ImageConfig,
    promotion: WorkerStateClient | None,
    existing: list[Obj] | None = None,
    applied_services: MutableMapping[str, str] | None = None,
    fan_out: FanOut = in_turn,
) -> Executed:
    if not plan.touch_workloads:
        return Executed(applied=None)
    promotions = PromotionPlan(promote=list(plan.promote), retire=list(plan.retire))
    done, retired = apply_promotions(kube, owner, pods, promotions, promotion)
    pool_of = {w.name: w.pool for w in (*obs.warm_ready, *obs.promoted)}
    promoted_now: dict[str, int] = {}
    for w in obs.promoted:
        promoted_now[w.pool] = promoted_now.get(w.pool, 0) + 1
    infd = obs.deployment
    workloads = []
    for pool, n in serving_after_promotions(plan, promoted_now, pool_of, done, retired).items():
        if pool in plan.devices_per_replica:
            api_pool = obs.pools[pool].pool
            workloads.append(workload(owner, infd, api_pool, plan.devices_per_replica[pool], "serving", n))
    for pool, n in plan.warm.items():
        api_pool = obs.pools[pool].pool
        workloads.append(workload(owner, infd, api_pool, plan.devices_per_replica[pool], "warm", n))
    applied = apply_plan(
        kube, owner, workloads, images, existing=existing, applied_services=applied_services, fan_out=fan_out
    )
    return Executed(applied=applied, promoted=tuple(done), retired=tuple(retired))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def row_status(row: PoolRow) -> dict[str, Any]:
    efficiency = {
        "whPerMillionTokens": _rounded(row.wh_per_million_tokens),
        "costPerMillionTokensUSD": _rounded(row.usd_per_million_tokens),
        "efficiencySource": row.efficiency_source,
    }
    return {
        "pool": row.pool,
        "family": row.family,
        "desired": row.desired,
        "ready": row.ready,
        "warm": row.warm,
        "costPerHourUSD": row.cost_per_hour,
        "saturated": row.saturated,
        "replicaCapacityRps": round(row.replica_capacity_rps, 6),
        **({k: v for k, v in efficiency.items() if v is not None} if row.usd_per_million_tokens is not None else {}),
    }


def pools_summary(desired: Mapping[str, int]) -> str:
    """`kubectl get infd`'s Pools column: desired serving replicas per pool, by name ("" when none)."""
    return ",".join(f"{pool}={n}" for pool, n in sorted(desired.items()) if n > 0)


def status_of(infd: InferenceDeployment, obs: Observation, plan: Plan) -> dict[str, Any]:
    """The status fields the plan determines (conditions, lastDecision and loopState are added by the caller)."""
    name = infd.metadata.name or ""
    serving = [r.pods for r in obs.replicas.values()]
    status: dict[str, Any] = {
        "replicas": sum(p.total for p in serving),
        "readyReplicas": sum(p.ready for p in serving),
        "warmReplicas": sum(r.warm for r in obs.replicas.values()),
        "selector": label_selector(selector_labels(name, role="serving")),
        "pools": [row_status(r) for r in plan.rows],
        "poolsSummary": pools_summary(plan.serving),
        "costPerHourUSD": round(plan.cost_per_hour, 6),
    }
    if plan.efficiency is not None:
        eff = plan.efficiency
        status["efficiency"] = {
            k: v
            for k, v in (
                ("whPerMillionTokens", _rounded(eff.wh_per_million_tokens)),
                ("costPerMillionTokensUSD", _rounded(eff.usd_per_million_tokens)),
                ("source", eff.source),
            )
            if v is not None
        }
    return status
