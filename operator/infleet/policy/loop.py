"""The decision loop of one InferenceDeployment: ``decide(observation, state) -> (plan, next state)``.

The operator and the simulator both run exactly this function; they differ only in how they observe (the operator
from its watch indexes and scrapes, the simulator from its simulated fleet) and how they execute the plan. Every
decision lives here: which pools are usable and at what capacity, fallback from saturated pools and the careful way
back, placement, autoscaling and capacity calibration, warm-pool sizing, which warm workers to promote and which
promoted ones to retire, the conditions with their reasons, and the decision record for ``status.lastDecision``.

Pure: no Kubernetes, no clock (``now_s`` is in the observation), no I/O. The carried :class:`LoopState` is small and
JSON-serialisable (:func:`state_to_json`), so the operator persists it in the deployment's status and a restarted
operator, or a peer taking over, continues where the last one stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from infleet.api import AcceleratorPool, InferenceDeployment
from infleet.policy.autoscaler import AutoscalerConfig, LoadObservation
from infleet.policy.capacity import DEFAULT_MIX, RequestMix, slo_seconds
from infleet.policy.conditions import Cond, ConditionStatus, budget_condition, ready_condition
from infleet.policy.efficiency import Efficiency, PoolUsage, pool_efficiency, total_efficiency
from infleet.policy.fallback import PoolPods, Saturation, cap_saturated, hold_serving, update_saturation
from infleet.policy.from_api import PoolChoice, build_request, candidate_pools, choose
from infleet.policy.placement import place
from infleet.policy.scaling import FleetScalingConfig, FleetScalingState, FleetScalingStep, scale_step
from infleet.policy.types import PlacementPlan, PlacementRequest, PoolOffer
from infleet.policy.warm import WarmPoolConfig, WarmWorker, plan_warm_pool, promotion_order

# Arrival-rate history kept for warm-pool sizing: longer than any pool's cold start.
RATE_HISTORY_S = 1800.0
# The autoscaler's utilisation target: one value for the operator and the simulator. A replica's capacity is already
# what it sustains *within the SLO* (the profile bounded by the service model, corrected by calibrate_capacity), so
# this is not the only margin. 0.95, was 0.8: tuned with bench/tune_loop.py on the two Azure traces (train), the
# generated shapes held out as test (docs/benchmarks.md, Simulator).
TARGET_UTILIZATION = 0.95
# Latency the autoscaler aims at, as a share of the SLO target, when scaling.targetP99LatencyMs is unset. 0.9, was
# 0.8: calibrate_capacity's hold band (it lowers capacity above 90% of this target, raises it below 80%) is itself a
# margin, and at 0.8 calibration aimed at 64-72% of the SLO and kept replicas the SLO did not need. 1.0 was cheaper
# still on the clean train replays but lost 1.8 points of attainment on conversation under faults (tuned with
# TARGET_UTILIZATION, on the same traces, clean and under bench/sim_compare.py's FAULTS).
LATENCY_TARGET_SHARE = 0.9
# Weight of a new measurement of the request mix (exponential smoothing per decision): capacity estimates follow a
# shift in prompt lengths within a few minutes without flapping on one period's noisy tail.
MIX_WEIGHT = 0.2


@dataclass(frozen=True, kw_only=True)
class PoolView:
    """One AcceleratorPool as the deployment sees it now: devices it may use and room the scheduler has."""

    pool: AcceleratorPool
    free_devices: int  # unallocated devices a replica could take (node fit) plus those this deployment holds
    room_replicas: int  # more replicas of this deployment that fit on the pool's nodes now


@dataclass(frozen=True, kw_only=True)
class PoolReplicas:
    """The deployment's replicas on one pool."""

    serving: int = 0  # serving replicas asked for: the serving Deployment's replicas plus promoted pods
    pods: PoolPods = field(default_factory=PoolPods)  # serving pods as the scheduler sees them
    warm: int = 0
    warm_ready: int = 0


@dataclass(frozen=True, kw_only=True)
class Observation:
    """Everything one decision looks at."""

    now_s: float
    deployment: InferenceDeployment
    pools: Mapping[str, PoolView]  # every AcceleratorPool, by name
    replicas: Mapping[str, PoolReplicas] = field(default_factory=dict)
    warm_ready: tuple[WarmWorker, ...] = ()  # ready warm workers that could be promoted
    promoted: tuple[WarmWorker, ...] = ()  # serving workers promoted from warm (retired first on scale-down)
    load: LoadObservation | None = None  # measured load since the last decision (None: no measurement)
    mix: RequestMix | None = None  # measured request mix (None: not measured yet)
    usage: Mapping[str, PoolUsage] = field(default_factory=dict)  # per pool: measured tokens/s and watts
    waiting_for: str | None = None  # an input placement must wait for (e.g. a missing model claim): why


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """Operator-wide settings (``infleet run`` flags); the simulator passes the same ones."""

    period_s: float = 10.0
    fallback_after_s: float | None = None  # overrides every deployment's placement.fallbackAfterSeconds
    autoscale: bool = True
    promote: bool = True


@dataclass(frozen=True, kw_only=True)
class LoopState:
    """What the loop carries from one decision to the next (persisted by the operator)."""

    scaling: FleetScalingState = field(default_factory=FleetScalingState)
    rates: tuple[tuple[float, float], ...] = ()  # measured (time, arrival rps), oldest first, RATE_HISTORY_S long
    saturated: Mapping[str, Saturation] = field(default_factory=dict)
    target: Mapping[str, int] = field(default_factory=dict)  # the last decision's replicas per pool
    decided: bool = False  # a decision record exists
    mix: RequestMix | None = None  # the smoothed measured request mix


@dataclass(frozen=True, kw_only=True)
class Decision:
    kind: str  # Placement, Fallback, ScaleUp, ScaleDown
    reason: str
    message: str


@dataclass(frozen=True, kw_only=True)
class PoolRow:
    """One line of ``status.pools``."""

    pool: str
    family: str
    desired: int
    ready: int
    warm: int
    cost_per_hour: float
    saturated: bool
    replica_capacity_rps: float
    wh_per_million_tokens: float | None = None
    usd_per_million_tokens: float | None = None
    efficiency_source: str = "estimated"


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What to do now; the operator and the simulator execute it, each in its own world."""

    serving: Mapping[str, int]  # serving replicas per pool (promoted pods count here)
    warm: Mapping[str, int]
    promote: tuple[str, ...] = ()  # warm workers to promote, in order
    retire: tuple[str, ...] = ()  # promoted workers to remove
    conditions: tuple[Cond, ...] = ()
    decision: Decision | None = None  # None: nothing changed since the last record
    events: tuple[tuple[str, str, str], ...] = ()  # (type, reason, message)
    rows: tuple[PoolRow, ...] = ()
    cost_per_hour: float = 0.0
    placement: PlacementPlan | None = None
    devices_per_replica: Mapping[str, int] = field(default_factory=dict)  # per usable pool, for rendering pods
    touch_workloads: bool = True  # False: leave worker Deployments as they are (invalid input, waiting)
    slo_targets: Mapping[str, float] = field(default_factory=dict)  # seconds, for metrics
    efficiency: Efficiency | None = None  # the deployment's Wh and $ per million generated tokens


def decide(obs: Observation, state: LoopState, settings: LoopSettings = LoopSettings()) -> tuple[Plan, LoopState]:
    """One decision. Pure: the same observation and state always give the same plan and next state."""
    if obs.waiting_for is not None:
        return _waiting(obs, state), state
    infd = obs.deployment
    missing_now = candidate_pools(infd, {n: v.pool for n, v in obs.pools.items()})[1]
    if missing_now:
        # Named pools that do not exist: say so and change nothing (a pool deleted by mistake, or one not yet
        # created, must not cost the replicas that serve).
        why = f"placement names AcceleratorPool(s) that do not exist: {', '.join(missing_now)}"
        return _waiting(dataclasses.replace(obs, waiting_for=why), state, reason="PoolNotFound"), state
    smoothed = smooth_mix(state.mix, obs.mix)
    mix = smoothed or DEFAULT_MIX
    api_pools = {name: view.pool for name, view in obs.pools.items()}
    chosen, _ = candidate_pools(infd, api_pools)
    choices = [choose(p, infd, mix, mix_measured=smoothed is not None) for p in chosen]
    usable = [c for c in choices if c.capacity_rps > 0]
    serving_pods = {p: r.pods for p, r in obs.replicas.items() if r.pods.total}
    fallback_after = settings.fallback_after_s
    if fallback_after is None:
        fallback_after = float(infd.spec.placement.fallback_after_seconds)
    room = {c.pool.metadata.name or "": obs.pools[c.pool.metadata.name or ""].room_replicas for c in usable}
    saturated = update_saturation(state.saturated, serving_pods, room, obs.now_s, fallback_after)
    current = {p: r.serving for p, r in obs.replicas.items() if r.serving > 0}
    free = {name: view.free_devices for name, view in obs.pools.items()}
    external = infd.spec.scaling.replicas if infd.spec.scaling.mode == "External" else None
    request = build_request(infd, usable, free, current, external, mix)
    request = dataclasses.replace(request, offers=cap_saturated(request.offers, saturated, serving_pods))
    plan = place(request, previous=current) if usable else None
    if plan is None and current:
        plan = _keep_running(request, chosen, current)  # nothing meets the SLO: what runs stays, as a best effort
    rates = _rates(state.rates, obs.load)
    step, scaling = None, state.scaling
    if settings.autoscale and infd.spec.scaling.mode == "Auto" and plan is not None and usable:
        ready_now = {p: pp.ready for p, pp in serving_pods.items() if pp.ready}
        if obs.load is not None:
            step = scale_step(
                scaling_config(infd, request, settings.period_s), state.scaling, obs.load, request, ready_now
            )
            scaling = step.state
            plan = plan_of_step(request, step)
        elif state.scaling.autoscaler.history:
            plan = _hold_plan(request, current, plan)  # a missed scrape holds; it never snaps back to the declared load
    target = dict(plan.replicas) if plan is not None else {}
    ready = {p: pp.ready for p, pp in serving_pods.items()}
    price = {o.pool: o.replica_price_per_hour for o in request.offers}
    desired = hold_serving(target, current, ready, price, max_total=request.max_replicas)
    warm = warm_replicas(infd, plan, request, desired, warm_history(rates, request.demand_rps, obs.now_s))
    promote, retire = plan_promotion(obs, desired, request.offers) if settings.promote else ((), ())
    if not settings.promote:
        retire = plan_promotion(obs, desired, request.offers)[1]
    conds, budget_note = _conditions(obs, choices, request, plan, desired, ready)
    decision, events = _decision_record(obs, state, saturated, target, plan, step, conds)
    load_rps = obs.load.arrival_rate_rps if obs.load is not None else request.demand_rps
    rows, efficiency = _with_efficiency(
        _rows(obs, api_pools, request, desired, ready, warm, saturated), obs, request, desired, load_rps, mix
    )
    cost = sum(price.get(p, 0.0) * n for p, n in desired.items()) + sum(price.get(p, 0.0) * n for p, n in warm.items())
    next_state = LoopState(
        scaling=scaling,
        rates=rates,
        saturated=saturated,
        target=target,
        decided=state.decided or decision is not None,
        mix=smoothed,
    )
    plan_out = Plan(
        serving=desired,
        warm=warm,
        promote=promote,
        retire=retire,
        conditions=conds,
        decision=decision,
        events=(*events, *budget_note),
        rows=rows,
        cost_per_hour=cost,
        placement=plan,
        efficiency=efficiency,
        devices_per_replica={c.pool.metadata.name or "": c.devices_per_replica for c in usable},
        slo_targets=_slo_targets(infd),
    )
    return plan_out, next_state


# -- autoscaling ---------------------------------------------------------------------------------------------


def scaling_config(infd: InferenceDeployment, request: PlacementRequest, period_s: float) -> FleetScalingConfig:
    """The deployment's scaling spec as the policy's knobs: one rule for the operator and the simulator.

    The latency signal is the tail the SLO binds first: TTFT when declared (text generation), else end-to-end;
    ``scaling.targetP99LatencyMs`` sets the end-to-end target explicitly. New capacity arrives after the fastest
    usable pool's cold start (placement adds the missing capacity there first when it is also cheap enough).
    """
    scaling = infd.spec.scaling
    ttft, _, e2e = slo_seconds(infd)
    if scaling.target_p99_latency_ms is not None:
        target = scaling.target_p99_latency_ms / 1000
    else:
        target = LATENCY_TARGET_SHARE * (ttft if ttft is not None else e2e)
    usable = request.usable_offers()
    cold = min((o.cold_start_s for o in usable), default=60.0)
    auto = AutoscalerConfig(
        latency_target_s=target,
        target_utilization=TARGET_UTILIZATION,
        decision_period_s=period_s,
        provision_delay_s=cold,
        scale_down_window_s=float(scaling.scale_down_stabilization_seconds),
        scale_to_zero_after_s=float(scaling.scale_to_zero_after_seconds) if scaling.min_replicas == 0 else None,
    )
    return FleetScalingConfig(
        autoscaler=auto,
        scale_up_window_s=float(scaling.scale_up_stabilization_seconds),
        target_queue_per_replica=scaling.target_queue_depth_per_replica,
    )


def latency_signal(infd: InferenceDeployment, ttft_p99_s: float | None, e2e_p99_s: float | None) -> float | None:
    """The measured tail the autoscaler compares with its target (see :func:`scaling_config`)."""
    ttft, _, _ = slo_seconds(infd)
    if infd.spec.scaling.target_p99_latency_ms is None and ttft is not None:
        return ttft_p99_s
    return e2e_p99_s


def plan_of_step(request: PlacementRequest, step: FleetScalingStep) -> PlacementPlan:
    """The autoscaler's replicas in the plan shape (capacity vs. the desired capacity)."""
    offers = {o.pool: o for o in request.offers}
    replicas = {p: n for p, n in sorted(step.replicas.items()) if n > 0 and p in offers}
    capacity = sum(offers[p].replica_capacity_rps * step.calibration * n for p, n in replicas.items())
    cost = sum(offers[p].replica_price_per_hour * n for p, n in replicas.items())
    short = max(0.0, step.decision.desired_capacity_rps - capacity)
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


def _hold_plan(request: PlacementRequest, current: Mapping[str, int], fallback: PlacementPlan) -> PlacementPlan:
    """No new measurement: keep what runs (within the bounds and the pools still offered)."""
    offers = {o.pool: o for o in request.offers}
    held = {p: min(n, offers[p].replica_limit) for p, n in sorted(current.items()) if p in offers}
    held = {p: n for p, n in held.items() if n > 0}
    total = sum(held.values())
    if total < request.min_replicas or (request.max_replicas is not None and total > request.max_replicas):
        return fallback
    capacity = sum(offers[p].replica_capacity_rps * n for p, n in held.items())
    cost = sum(offers[p].replica_price_per_hour * n for p, n in held.items())
    return dataclasses.replace(
        fallback,
        replicas=held,
        cost_per_hour=cost,
        capacity_rps=capacity,
        status="ok",
        shortfall_rps=0.0,
        reason="no load measurement this period: holding",
        solver="hold",
    )


def smooth_mix(previous: RequestMix | None, measured: RequestMix | None) -> RequestMix | None:
    """Exponentially smoothed request mix (see :data:`MIX_WEIGHT`); the first measurement is taken as it is."""
    if measured is None or previous is None:
        return measured or previous

    def blend(old: float, new: float) -> float:
        return old + MIX_WEIGHT * (new - old)

    sq = None
    if previous.prompt_sq_mean is not None and measured.prompt_sq_mean is not None:
        sq = blend(previous.prompt_sq_mean, measured.prompt_sq_mean)
    return RequestMix(
        mean_prompt=blend(previous.mean_prompt, measured.mean_prompt),
        mean_gen=blend(previous.mean_gen, measured.mean_gen),
        tail_prompt=blend(previous.tail_prompt, measured.tail_prompt),
        prompt_sq_mean=sq,
    )


def _keep_running(
    request: PlacementRequest, chosen: list[AcceleratorPool], current: Mapping[str, int]
) -> PlacementPlan | None:
    """No pool meets the SLO now: keep the replicas on pools that still exist and are allowed (never tear down)."""
    allowed = {p.metadata.name or "" for p in chosen}
    kept = {p: n for p, n in sorted(current.items()) if p in allowed and n > 0}
    if request.max_replicas is not None:
        kept = _clip_total(kept, request.max_replicas)
    if not kept:
        return None
    return PlacementPlan(
        deployment=request.deployment,
        replicas=kept,
        cost_per_hour=0.0,
        capacity_rps=0.0,
        status="no_fitting_pool",
        shortfall_rps=request.demand_rps,
        reason="no allowed pool can meet the SLO; keeping the running replicas as a best effort",
        solver="none",
    )


def _clip_total(replicas: Mapping[str, int], bound: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for pool, n in replicas.items():
        take = min(n, bound - sum(out.values()))
        if take > 0:
            out[pool] = take
    return out


def _rates(previous: tuple[tuple[float, float], ...], load: LoadObservation | None) -> tuple[tuple[float, float], ...]:
    if load is None:
        return previous
    kept = tuple((t, r) for t, r in previous if load.time_s - t <= RATE_HISTORY_S and t < load.time_s)
    return (*kept, (load.time_s, load.arrival_rate_rps))


# -- warm pool -----------------------------------------------------------------------------------------------


def warm_history(
    measured: tuple[tuple[float, float], ...], declared_rps: float, now_s: float
) -> list[tuple[float, float]]:
    """The (time, rps) history the warm pool is sized from: measurements, else the declared load."""
    if measured:
        return list(measured)
    return [(now_s, declared_rps)] if declared_rps > 0 else []


def warm_replicas(
    infd: InferenceDeployment,
    plan: PlacementPlan | None,
    request: PlacementRequest,
    desired: Mapping[str, int],
    history: list[tuple[float, float]],
) -> dict[str, int]:
    """Warm workers per pool; nothing when the deployment is not placed (a warm pool backs serving replicas).

    ``Fixed`` keeps ``size`` on the placed pool cheapest per unit of SLO capacity (where the next replica would go),
    within ``maxHourlyCostUSD``. ``Auto`` sizes from the history's bursts over each pool's cold start, within a
    quarter of the serving cost, ``maxHourlyCostUSD`` and ``size`` as a cap (:func:`plan_warm_pool`).
    """
    wp = infd.spec.warm_pool
    if wp.mode == "Off" or plan is None or not plan.replicas:
        return {}
    offers = {o.pool: o for o in request.offers}
    price = {p: o.replica_price_per_hour for p, o in offers.items()}
    if wp.mode == "Fixed":
        placed = [p for p in plan.replicas if p in offers and offers[p].replica_capacity_rps > 0]
        if not wp.size or not placed:
            return {}
        pool = min(placed, key=lambda p: (price[p] / offers[p].replica_capacity_rps, p))
        size = wp.size
        if wp.max_hourly_cost_usd is not None and price[pool] > 0:
            size = min(size, int(wp.max_hourly_cost_usd // price[pool]))
        return {pool: size} if size > 0 else {}
    serving_cost = sum(price.get(p, 0.0) * n for p, n in desired.items())
    config = WarmPoolConfig(
        max_cost_per_hour=wp.max_hourly_cost_usd,
        max_warm_replicas=wp.size if wp.size is not None else WarmPoolConfig.max_warm_replicas,
    )
    warm = plan_warm_pool(
        request.offers,
        serving_cost,
        history,
        config,
        model_memory_gib=request.model_memory_gib,
        devices_in_use={p: n * offers[p].devices_per_replica for p, n in desired.items() if p in offers},
    )
    return {p: n for p, n in sorted(warm.replicas.items()) if n > 0}


def plan_promotion(
    obs: Observation, desired: Mapping[str, int], offers: tuple[PoolOffer, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(warm workers to promote, promoted workers to retire).

    A pool short of serving replicas promotes its ready warm workers first (most capacity per dollar, then ready
    longest), at most the shortfall; a pool with too many retires promoted workers first (ready shortest first),
    so the serving Deployment keeps its pods as long as it can.
    """
    have = {p: r.serving for p, r in obs.replicas.items()}
    promoted_by_pool: dict[str, list[WarmWorker]] = {}
    for w in obs.promoted:
        promoted_by_pool.setdefault(w.pool, []).append(w)
    short = {p: n - have.get(p, 0) for p, n in desired.items() if n > have.get(p, 0)}
    promote: list[str] = []
    for worker in promotion_order(list(obs.warm_ready), offers):
        if short.get(worker.pool, 0) > 0:
            promote.append(worker.name)
            short[worker.pool] -= 1
    retire: list[str] = []
    for pool, workers in sorted(promoted_by_pool.items()):
        excess = have.get(pool, 0) - desired.get(pool, 0)
        if excess > 0:
            youngest = sorted(workers, key=lambda w: (-w.ready_since_s, w.name))
            retire += [w.name for w in youngest[:excess]]
    return tuple(promote), tuple(retire)


# -- conditions and the decision record ------------------------------------------------------------------------


def _waiting(obs: Observation, state: LoopState, reason: str = "ModelClaimNotFound") -> Plan:
    message = obs.waiting_for or ""
    total = sum(r.pods.total for r in obs.replicas.values())
    ready = sum(r.pods.ready for r in obs.replicas.values())
    conds = (
        Cond(
            "Placed",
            "False",
            reason,
            message + ("; nothing is changed until then" if reason != "ModelClaimNotFound" else ""),
        ),
        ready_condition(total, ready, placed=False) if total else _cond("Ready", "False", "NotPlaced", message),
    )
    return Plan(
        serving=dict(state.target),
        warm={},
        conditions=conds,
        touch_workloads=False,
        slo_targets=_slo_targets(obs.deployment),
    )


def _cond(type_: str, status: ConditionStatus, reason: str, message: str) -> Cond:
    return Cond(type_, status, reason, message)


def _conditions(
    obs: Observation,
    choices: list[PoolChoice],
    request: PlacementRequest,
    plan: PlacementPlan | None,
    desired: Mapping[str, int],
    ready: Mapping[str, int],
) -> tuple[tuple[Cond, ...], tuple[tuple[str, str, str], ...]]:
    budget = request.budget_per_hour
    unmet = plan is not None and plan.status not in ("ok", "idle")
    # When the plan falls short, would it meet the SLO without the budget? Then the budget is what binds.
    cheapest = _cheapest_meeting_slo(request) if unmet and budget is not None else None
    budget_bound = cheapest is not None and budget is not None and cheapest > budget + 1e-9
    placed_ok = plan is not None and plan.status in ("ok", "idle")
    if plan is None or plan.status == "no_fitting_pool":
        detail = (
            "; ".join(f"{c.pool.metadata.name}: {c.why_not}" for c in choices)
            or "no AcceleratorPool of an allowed family exists"
        )
        kept = f"; keeping {describe(plan)} as a best effort" if plan is not None else ""
        placed = _cond(
            "Placed", "False", "NoFittingPool", f"no allowed pool can serve the model within the SLO ({detail}){kept}"
        )
    elif placed_ok:
        placed = _cond("Placed", "True", "Placed", describe(plan))
    elif budget_bound:
        placed = _cond(
            "Placed",
            "True" if plan.total_replicas else "False",
            "OverBudget",
            f"the budget allows only a best effort: {describe(plan)}; see WithinBudget",
        )
    else:
        placed = _cond("Placed", "False", "InsufficientCapacity", f"{plan.reason}; placed {describe(plan)}")
    price = {o.pool: o.replica_price_per_hour for o in request.offers}
    serving_cost = sum(price.get(p, 0.0) * n for p, n in desired.items())
    conds = (
        ready_condition(sum(desired.values()), sum(ready.values()), placed_ok),
        placed,
        _slo_condition(plan, sum(ready.values()), plan.total_replicas if plan is not None else 0),
        budget_condition(serving_cost, budget, cheapest if budget_bound else serving_cost),
    )
    notes: tuple[tuple[str, str, str], ...] = ()
    cost = obs.deployment.spec.cost
    if cost.max_cost_per_million_tokens_usd is not None and request.demand_rps <= 0:
        notes = (
            (
                "Warning",
                "PerTokenBudgetUnbound",
                "cost.maxCostPerMillionTokensUSD needs slo.throughput to become an hourly cap; it does not bind",
            ),
        )
    return conds, notes


def _decision_record(
    obs: Observation,
    state: LoopState,
    saturated: Mapping[str, Saturation],
    target: Mapping[str, int],
    plan: PlacementPlan | None,
    step: FleetScalingStep | None,
    conds: tuple[Cond, ...],
) -> tuple[Decision | None, tuple[tuple[str, str, str], ...]]:
    newly = sorted(set(saturated) - set(state.saturated))
    if not newly and dict(target) == dict(state.target) and state.decided:
        return None, ()
    kind, reason = ("Fallback", "PoolSaturated") if newly else ("Placement", "Replan")
    prefix = ""
    if step is not None and not newly and step.decision.direction != "hold":
        kind, reason = ("ScaleUp", "Load") if step.decision.direction == "up" else ("ScaleDown", "Load")
        prefix = f"{step.decision.reason}; "
    placed = next(c for c in conds if c.type == "Placed")
    message = describe(plan) if plan is not None else placed.message
    events: tuple[tuple[str, str, str], ...] = ()
    if newly:
        why = "; ".join(saturated[p].message for p in newly)
        message = f"pool(s) {', '.join(newly)} out of capacity ({why}); now {message}"
        events = (("Warning", "PoolSaturated", message),)
    return Decision(kind=kind, reason=reason, message=(prefix + message)[:32000]), events


def _rows(
    obs: Observation,
    api_pools: Mapping[str, AcceleratorPool],
    request: PlacementRequest,
    desired: Mapping[str, int],
    ready: Mapping[str, int],
    warm: Mapping[str, int],
    saturated: Mapping[str, Saturation],
) -> tuple[PoolRow, ...]:
    offers = {o.pool: o for o in request.offers}
    warm_now = {p: r.warm for p, r in obs.replicas.items()}
    serving_now = {p for p, r in obs.replicas.items() if r.pods.total}
    names = sorted(set(desired) | serving_now | set(warm) | {p for p, n in warm_now.items() if n} | set(saturated))
    rows = []
    for name in names:
        pool = api_pools.get(name)
        price = offers[name].replica_price_per_hour if name in offers else 0.0
        rows.append(
            PoolRow(
                pool=name,
                family=pool.spec.accelerator.family if pool is not None else "cpu",
                desired=desired.get(name, 0),
                ready=ready.get(name, 0),
                warm=warm_now.get(name, 0),
                cost_per_hour=round(price * (desired.get(name, 0) + warm.get(name, 0)), 6),
                saturated=name in saturated,
                replica_capacity_rps=offers[name].replica_capacity_rps if name in offers else 0.0,
            )
        )
    return tuple(rows)


def _with_efficiency(
    rows: tuple[PoolRow, ...],
    obs: Observation,
    request: PlacementRequest,
    desired: Mapping[str, int],
    load_rps: float,
    mix: RequestMix,
) -> tuple[tuple[PoolRow, ...], Efficiency | None]:
    """Each row's Wh and $ per million generated tokens, and the deployment's (see :mod:`infleet.policy.efficiency`)."""
    offers = {o.pool: o for o in request.offers}
    capacity = {p: n * offers[p].replica_capacity_rps for p, n in desired.items() if p in offers}
    total_capacity = sum(capacity.values())
    out = []
    parts: dict[str, tuple[Efficiency, float, float | None, float]] = {}
    for row in rows:
        view = obs.pools.get(row.pool)
        replicas = row.desired + row.warm
        if view is None or row.pool not in offers or replicas == 0:
            out.append(row)
            continue
        share = capacity.get(row.pool, 0.0) / total_capacity if total_capacity > 0 else 0.0
        estimated_tps = load_rps * mix.mean_gen * share
        power = view.pool.spec.power
        devices = replicas * offers[row.pool].devices_per_replica
        estimated_watts = None if power is None else devices * power.typical_watts_per_device
        measured = obs.usage.get(row.pool)
        eff = pool_efficiency(
            measured=measured,
            estimated_tokens_per_s=estimated_tps,
            estimated_watts=estimated_watts,
            usd_per_hour=row.cost_per_hour,
        )
        tokens = measured.tokens_per_s if measured is not None and measured.tokens_per_s > 0 else estimated_tps
        watts = measured.watts if eff.source == "measured" and measured is not None else estimated_watts
        parts[row.pool] = (eff, tokens, watts, row.cost_per_hour)
        out.append(
            dataclasses.replace(
                row,
                wh_per_million_tokens=eff.wh_per_million_tokens,
                usd_per_million_tokens=eff.usd_per_million_tokens,
                efficiency_source=eff.source,
            )
        )
    return tuple(out), (total_efficiency(parts) if parts else None)


def describe(plan: PlacementPlan) -> str:
    if not plan.replicas:
        return "0 replicas"
    pools = ", ".join(f"{p}={n}" for p, n in plan.replicas.items())
    return f"{plan.total_replicas} replica(s) on {pools} at ${plan.cost_per_hour:.2f}/h"


def _cheapest_meeting_slo(request: PlacementRequest) -> float | None:
    """What the cheapest SLO-meeting placement would cost without the budget (None: none exists)."""
    unbounded = place(dataclasses.replace(request, budget_per_hour=None))
    return unbounded.cost_per_hour if unbounded.status in ("ok", "idle") else None


def _slo_condition(plan: PlacementPlan | None, ready: int, target: int) -> Cond:
    if plan is None or plan.status not in ("ok", "idle"):
        short = f"{plan.shortfall_rps:.3g}" if plan is not None else "all"
        return _cond(
            "SLOMet",
            "False",
            "InsufficientCapacity",
            f"placed capacity leaves {short} requests/s of the expected load uncovered",
        )
    if ready < target:
        return _cond(
            "SLOMet",
            "Unknown",
            "ReplicasStarting",
            f"{ready}/{target} replicas ready; capacity is planned to meet the SLO",
        )
    return _cond(
        "SLOMet",
        "True",
        "CapacityCoversLoad",
        f"ready capacity {plan.capacity_rps:.3g} requests/s covers the expected load within the SLO",
    )


def _slo_targets(infd: InferenceDeployment) -> dict[str, float]:
    ttft, tpot, e2e = slo_seconds(infd)
    out = {"p99": e2e}
    if infd.spec.slo.ttft_p99_ms is not None:
        out["ttft"] = infd.spec.slo.ttft_p99_ms / 1000
    if infd.spec.slo.tpot_p99_ms is not None:
        out["tpot"] = infd.spec.slo.tpot_p99_ms / 1000
    del ttft, tpot
    return out
