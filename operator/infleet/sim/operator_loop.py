"""infleet's policy in the simulator: the operator's own decision loop (:func:`infleet.policy.loop.decide`).

The simulator observes its fleet the way the operator observes a cluster and hands the loop the same typed
Observation, built from the same manifests (the fleet's AcceleratorPools and InferenceDeployment); the Plan's serving
and warm replicas per pool become the engine's target. What the operator would see as pods the scheduler could not
place (asked for, not created for lack of devices) is reported to the loop as unschedulable, so fallback runs here
too. The load signal is what one scrape of the workers shows the operator: arrivals, queue, in flight and the tail
of the requests finished since the last decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from infleet.api import InferenceDeployment
from infleet.policy.autoscaler import LoadObservation
from infleet.policy.capacity import RequestMix
from infleet.policy.fallback import PoolPods
from infleet.policy.loop import (
    LoopSettings,
    LoopState,
    Observation,
    Plan,
    PoolReplicas,
    PoolView,
    decide,
    latency_signal,
)
from infleet.policy.warm import WarmWorker
from infleet.sim import engine
from infleet.sim.capacity import Mix, initial_rate
from infleet.sim.fleet import SimFleet
from infleet.sim.trace import Trace


@dataclass(frozen=True, kw_only=True)
class Step:
    """One recorded decision: what the loop saw, what it carried in, and what it planned."""

    obs: Observation
    state: LoopState
    plan: Plan


@dataclass
class Infleet:
    """The Controller the engine drives; ``record`` keeps every decision (the conformance test replays them)."""

    period_s: float = 10.0
    settings: LoopSettings | None = None
    record: bool = False
    name: str = "infleet"
    steps: list[Step] = field(default_factory=list)

    def start(self, fleet: SimFleet, trace: Trace) -> engine.Target:
        if fleet.api_deployment is None:
            raise ValueError("the fleet was not built from manifests (build_fleet); infleet's loop needs them")
        self.fleet = fleet
        self.infd: InferenceDeployment = fleet.api_deployment
        self.loop_settings = self.settings or LoopSettings(period_s=self.period_s)
        self.state = LoopState()
        self.asked: dict[str, int] = {}
        self.short_since: dict[str, float] = {}
        mix = Mix.of(trace.window(0, 600))
        self.mix = RequestMix(
            mean_prompt=mix.mean_prompt,
            mean_gen=max(1.0, mix.mean_gen),
            tail_prompt=mix.tail_prompt,
            prompt_sq_mean=mix.prompt_sq_mean,
        )
        # As if the operator had been running on this traffic: its first measurement is the starting rate.
        first = LoadObservation(time_s=0.0, arrival_rate_rps=initial_rate(fleet, trace))
        return self._decide(self._observe(0.0, {}, {}, {}, {}, first))

    def step(self, obs: engine.Observation) -> engine.Target:
        if obs.mean_prompt > 0:
            self.mix = RequestMix(
                mean_prompt=obs.mean_prompt,
                mean_gen=max(1.0, obs.mean_gen),
                tail_prompt=obs.tail_prompt,
                prompt_sq_mean=obs.prompt_sq_mean or None,
            )
        load = LoadObservation(
            time_s=obs.now,
            arrival_rate_rps=obs.arrival_rate_rps,
            # What the operator reads: the gateway's queue plus the requests queued inside the workers (their
            # num_requests_waiting), which here are the requests admitted but still waiting for prefill.
            queue_depth=obs.queue_depth + obs.prefill_backlog,
            in_flight=obs.in_flight,
            p99_latency_s=latency_signal(self.infd, obs.p99_ttft_period_s, obs.p99_e2e_period_s),
        )
        return self._decide(self._observe(obs.now, obs.serving, obs.ready, obs.warm, obs.warm_ready, load))

    def _decide(self, observation: Observation) -> engine.Target:
        plan, state = decide(observation, self.state, self.loop_settings)
        if self.record:
            self.steps.append(Step(obs=observation, state=self.state, plan=plan))
        self.state = state
        self.asked = dict(plan.serving)
        return engine.Target(serving=dict(plan.serving), warm=dict(plan.warm))

    def _observe(
        self,
        now: float,
        serving: dict[str, int],
        ready: dict[str, int],
        warm: dict[str, int],
        warm_ready: dict[str, int],
        load: LoadObservation,
    ) -> Observation:
        pools = {p.metadata.name or "": p for p in self.fleet.api_pools}
        views = {name: PoolView(pool=pool, free_devices=0, room_replicas=0) for name, pool in pools.items()}
        for sim in self.fleet.pools:
            used = (serving.get(sim.name, 0) + warm.get(sim.name, 0)) * sim.devices_per_replica
            views[sim.name] = PoolView(
                pool=pools[sim.name],
                free_devices=sim.devices,  # one deployment: every device is free to it or already its own
                room_replicas=max(0, sim.devices - used) // sim.devices_per_replica,
            )
        replicas = {}
        for name in sorted(set(serving) | set(self.asked) | set(warm)):
            have, asked = serving.get(name, 0), self.asked.get(name, 0)
            short = max(0, asked - have)
            if short:
                self.short_since.setdefault(name, now)
            else:
                self.short_since.pop(name, None)
            total = max(have, asked)
            replicas[name] = PoolReplicas(
                serving=asked,
                pods=PoolPods(
                    total=total,
                    bound=have,
                    ready=ready.get(name, 0),
                    unschedulable=short,
                    unschedulable_since_s=self.short_since.get(name),
                ),
                warm=warm.get(name, 0),
                warm_ready=warm_ready.get(name, 0),
            )
        workers = tuple(
            WarmWorker(f"{pool}/warm-{i}", pool, now) for pool, n in sorted(warm_ready.items()) for i in range(n)
        )
        return Observation(
            now_s=now,
            deployment=self.infd,
            pools=views,
            replicas=replicas,
            warm_ready=workers,
            load=load,
            mix=self.mix,
        )
