"""Discrete-event replay of a request trace on a simulated fleet, driven by a scaling controller.

Model (every simplification stated; the replica engine is in :mod:`infleet.sim.replica`):

* Requests wait in one gateway queue (FIFO) and are admitted to the ready serving replica that would start their
  prefill first (fewest prompt tokens ahead of them), when it has a sequence slot and KV-cache room for the whole
  request. A request waiting longer than ``queue_timeout_s`` is rejected; one longer than the model's context
  window (or than any pool's KV cache) is refused on arrival, as a server would. Both count as misses.
* Each replica runs engine steps: a prefill chunk plus one token for every running sequence, timed by the
  service model's roofline over the step's actual contexts. TTFT and TPOT are what those steps give.
* The controller runs every ``period_s``. It sees what a Prometheus scrape of the worker and gateway metrics
  gives: arrivals over the last period, the gateway queue, requests held by replicas and those still waiting
  for prefill inside them, p99 TTFT, TPOT and end-to-end latency of requests finished in the last minute, and
  mean prompt and output lengths over five minutes; with :class:`Faults` the metrics are ``metrics_delay_s``
  old and targets apply ``decision_delay_s`` after the decision. Replicas then take the pool's cold start
  (warm workers: the pool's `promote_s`, from its runtime) to become ready, with optional seeded spread.
* Spot replicas (or any pool's, per pool) may be reclaimed (:class:`Faults`): after the notice the replica is
  gone; requests it held that had not produced a token go back to the front of the gateway queue, the others are
  lost (misses).
* A replica costs its pool's price from creation (devices claimed) until released: at once when removed before
  it is ready or while idle, after its requests finish when removed while busy. Warm replicas cost the same.
  Energy: the service model's idle power for the whole life (cold start included), busy power while it runs
  steps.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from infleet.policy.cost import ReplicaInterval
from infleet.sim.fleet import SimFleet, SimPool
from infleet.sim.replica import Replica
from infleet.sim.trace import Trace

_READY, _STEP, _RECLAIM, _GONE, _APPLY = 0, 1, 2, 3, 4
SERVED, REJECTED, REFUSED, LOST = 1, 0, 2, 3  # request status: served; queued too long; too long; reclaimed mid-way
WINDOW_S = 60.0  # latency windows the controller sees


@dataclass(frozen=True)
class Observation:
    now: float
    arrival_rate_rps: float
    queue_depth: int
    in_flight: int
    p99_ttft_s: float | None
    mean_prompt: float
    mean_gen: float
    tail_prompt: float
    prompt_sq_mean: float
    serving: dict[str, int]
    ready: dict[str, int]
    warm: dict[str, int]
    # Added for controllers that look inside replicas and at every latency target (defaults keep old callers).
    prefill_backlog: int = 0  # requests admitted by replicas, still waiting for (the rest of) their prefill
    prefill_backlog_tokens: float = 0.0  # their prompt tokens not yet prefilled
    p99_tpot_s: float | None = None  # of requests finished in the last minute
    p99_e2e_s: float | None = None
    slo_met_fraction: float | None = None  # share of requests finished in the last minute within every target
    reclaiming: dict[str, int] = field(default_factory=dict)  # spot replicas under a reclaim notice, per pool
    metrics_age_s: float = 0.0  # how old the load figures are (Faults.metrics_delay_s)
    # p99 of the requests finished since the last decision (what one scrape of the workers shows the operator).
    p99_ttft_period_s: float | None = None
    p99_e2e_period_s: float | None = None
    warm_ready: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    serving: dict[str, int]
    warm: dict[str, int] = field(default_factory=dict)
    max_ongoing: int | None = None  # requests a replica may hold at once (Ray Serve's max_ongoing_requests)


@dataclass(frozen=True, kw_only=True)
class Faults:
    """What goes wrong in a real fleet; the defaults model none of it. Seeded: same seed, same faults."""

    spot_reclaims_per_hour: float = 0.0  # per spot replica (Poisson)
    spot_notice_s: float = 120.0  # AWS's two-minute spot interruption notice (GCP gives 30 s)
    cold_start_cv: float = 0.0  # coefficient of variation of cold starts (log-normal around the pool's figure)
    metrics_delay_s: float = 0.0  # age of what a decision sees: scrape interval plus pipeline
    decision_delay_s: float = 0.0  # from a decision until the cluster acts on it
    seed: int = 0
    # Per pool (any capacity type): (reclaims per replica-hour, notice s), overriding the two spot figures above.
    pool_reclaims: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("spot_reclaims_per_hour", "spot_notice_s", "cold_start_cv", "metrics_delay_s", "decision_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for pool, (rate, notice) in self.pool_reclaims.items():
            if rate < 0 or notice < 0:
                raise ValueError(f"reclaims for pool {pool}: rate and notice must be >= 0")

    def reclaims(self, pool: str, capacity_type: str) -> tuple[float, float]:
        """(reclaims per replica-hour, notice s) for a replica of ``pool``."""
        if pool in self.pool_reclaims:
            return self.pool_reclaims[pool]
        return (self.spot_reclaims_per_hour, self.spot_notice_s) if capacity_type == "spot" else (0.0, 0.0)


class Controller(Protocol):
    name: str
    period_s: float

    def start(self, fleet: SimFleet, trace: Trace) -> Target: ...

    def step(self, obs: Observation) -> Target: ...


@dataclass
class SimResult:
    policy: str
    trace: str
    deployment: str
    ttft: np.ndarray
    tpot: np.ndarray
    e2e: np.ndarray
    status: np.ndarray  # SERVED, REJECTED (queued too long), REFUSED (longer than the context), LOST (reclaimed)
    met: np.ndarray
    intervals: list[ReplicaInterval]
    prices: dict[str, float]
    scale_events: int
    timeline: list[dict[str, object]]
    end_s: float
    energy_j_by_pool: dict[str, float] = field(default_factory=dict)
    busy_s_by_pool: dict[str, float] = field(default_factory=dict)
    reclaims: int = 0


class Simulation:
    def __init__(
        self,
        fleet: SimFleet,
        trace: Trace,
        controller: Controller,
        *,
        queue_timeout_s: float = 60.0,
        faults: Faults | None = None,
    ) -> None:
        self.fleet = fleet
        self.trace = trace
        self.ctl = controller
        self.timeout = queue_timeout_s
        self.faults = faults or Faults()
        self.rng = np.random.default_rng(self.faults.seed)
        self.replicas: list[Replica] = []
        self.events: list[tuple[float, int, int, int, int]] = []
        self.seq = 0
        self.queue: deque[int] = deque()
        self.intervals: list[ReplicaInterval] = []
        self.energy: dict[str, float] = {}
        self.busy: dict[str, float] = {}
        self.scale_events = 0
        self.reclaims = 0
        n = len(trace)
        self.prompts: list[int] = trace.prompt_tokens.tolist()
        self.gens: list[int] = trace.gen_tokens.tolist()
        self.arrivals: list[float] = trace.arrival_s.tolist()
        self.first_at = [math.nan] * n
        self.ttft = np.full(n, np.nan)
        self.tpot = np.full(n, np.nan)
        self.e2e = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int8)
        self.finished: deque[tuple[float, float, float, float, bool]] = deque()
        self.in_flight = 0
        self.prompt_cum = np.concatenate([[0.0], np.cumsum(trace.prompt_tokens, dtype=float)])
        self.sq_cum = np.concatenate([[0.0], np.cumsum(trace.prompt_tokens.astype(float) ** 2)])
        self.gen_cum = np.concatenate([[0.0], np.cumsum(trace.gen_tokens, dtype=float)])
        self._ready_cache: list[Replica] | None = None
        self.timeline: list[dict[str, object]] = []
        self.pending: dict[int, Target] = {}
        self.max_ongoing: float = math.inf
        self.snapshots: deque[Observation] = deque()
        # The longest request any pool can hold: longer ones are refused on arrival.
        self.max_tokens = max((min(p.service.context_tokens, p.service.kv_tokens) for p in fleet.pools), default=0.0)

    # -- replicas -------------------------------------------------------------------------------------------
    def _push(self, t: float, kind: int, a: int, b: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, a, b))

    def _cold_start(self, pool: SimPool) -> float:
        cv = self.faults.cold_start_cv
        if cv <= 0:
            return pool.cold_start_s
        sigma = math.sqrt(math.log(1 + cv * cv))
        return pool.cold_start_s * float(self.rng.lognormal(-sigma * sigma / 2, sigma))

    def _new(self, pool: SimPool, role: str, now: float, instant: bool = False) -> bool:
        used = sum(r.pool.devices_per_replica for r in self.replicas if r.pool is pool and r.state != "gone")
        if used + pool.devices_per_replica > pool.devices:
            return False
        ready_at = now if instant else now + self._cold_start(pool)
        r = Replica(len(self.replicas), pool, pool.service, role, now, ready_at)
        self.replicas.append(r)
        if not instant:
            self._push(ready_at, _READY, r.id, 0)
        rate, _ = self.faults.reclaims(pool.name, pool.capacity_type)
        if rate > 0:
            r.reclaim_at = now + float(self.rng.exponential(3600.0 / rate))
            self._push(r.reclaim_at, _RECLAIM, r.id, 0)
        self._ready_cache = None
        return True

    def _release(self, r: Replica, now: float) -> None:
        r.state = "gone"
        end = max(now, r.created)
        pool = r.pool
        self.intervals.append(ReplicaInterval(pool.name, r.created, end))
        svc = r.svc
        joules = svc.idle_watts * (end - r.created) + (svc.busy_watts - svc.idle_watts) * r.busy_s
        self.energy[pool.name] = self.energy.get(pool.name, 0.0) + joules
        self.busy[pool.name] = self.busy.get(pool.name, 0.0) + r.busy_s
        self._ready_cache = None

    def _ready_serving(self) -> list[Replica]:
        if self._ready_cache is None:
            self._ready_cache = [r for r in self.replicas if r.state == "ready" and r.role == "serving"]
        return self._ready_cache

    def _count(self, role: str, states: tuple[str, ...]) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.replicas:
            if r.role == role and r.state in states:
                name = r.pool.name
                out[name] = out.get(name, 0) + 1
        return out

    def _apply(self, target: Target, now: float, *, instant: bool = False) -> None:
        self.max_ongoing = math.inf if target.max_ongoing is None else target.max_ongoing
        for pool in self.fleet.pools:
            mine = [r for r in self.replicas if r.pool is pool and r.state in ("starting", "ready")]
            serving = [r for r in mine if r.role == "serving"]
            warm = [r for r in mine if r.role == "warm"]
            want = target.serving.get(pool.name, 0)
            if want > len(serving):
                self.scale_events += 1
                missing = want - len(serving)
                # Promote warm workers first: ready ones in seconds, starting ones when they are ready.
                for r in sorted(warm, key=lambda w: (w.state != "ready", w.ready_at)):
                    if missing == 0 or pool.promote_s is None:  # no warm standby: warm replicas stay warm
                        break
                    warm.remove(r)
                    r.role = "serving"
                    if r.state == "ready":
                        r.state = "starting"
                        r.ready_at = now + pool.promote_s
                        self._push(r.ready_at, _READY, r.id, 0)
                    missing -= 1
                while missing > 0 and self._new(pool, "serving", now, instant):
                    missing -= 1
                self._ready_cache = None
            elif want < len(serving):
                self.scale_events += 1
                extra = len(serving) - want
                for r in sorted(serving, key=lambda s: (s.state == "ready", s.held, -s.created))[:extra]:
                    if r.state == "starting" or r.held == 0:
                        self._release(r, now)
                    else:
                        r.state = "draining"
                self._ready_cache = None
            want_warm = target.warm.get(pool.name, 0)
            if want_warm > len(warm):
                for _ in range(want_warm - len(warm)):
                    if not self._new(pool, "warm", now, instant):
                        break
            elif want_warm < len(warm):
                for r in sorted(warm, key=lambda w: (w.state == "ready", -w.created))[: len(warm) - want_warm]:
                    self._release(r, now)

    def _reclaim(self, r: Replica, now: float) -> None:
        """The notice: the replica takes no new requests and is gone after ``spot_notice_s``."""
        if r.state == "gone" or r.reclaim_at != now:
            return
        self.reclaims += 1
        if r.state == "starting" or (r.held == 0 and r.role == "warm"):
            self._release(r, now)
            return
        r.state = "reclaiming"
        self._ready_cache = None
        pool = r.pool
        self._push(now + self.faults.reclaims(pool.name, pool.capacity_type)[1], _GONE, r.id, 0)

    def _gone(self, r: Replica, now: float) -> None:
        if r.state == "gone":
            return
        retry = []
        for idx in r.abandon(now):
            self.in_flight -= 1
            if math.isnan(self.first_at[idx]):
                retry.append(idx)
            else:
                self.status[idx] = LOST
        self._release(r, now)
        for idx in sorted(retry, reverse=True):
            self.queue.appendleft(idx)
        self._dispatch(now)

    # -- requests ------------------------------------------------------------------------------------------
    def _arrive(self, idx: int, now: float) -> None:
        if self.prompts[idx] + self.gens[idx] > self.max_tokens:
            self.status[idx] = REFUSED
            return
        self.queue.append(idx)
        self._dispatch(now)

    def _dispatch(self, now: float) -> None:
        arr = self.arrivals
        while self.queue:
            idx = self.queue[0]
            if now - arr[idx] > self.timeout:
                self.queue.popleft()
                self.status[idx] = REJECTED
                continue
            p = self.prompts[idx]
            need = p + self.gens[idx]
            best: Replica | None = None
            best_t = math.inf
            for r in self._ready_serving():
                if not r.fits(need) or r.held >= self.max_ongoing:
                    continue
                est = (r.waiting_tokens + p) / r.svc.prefill_tokens_per_s + 1e-6 * r.held
                if est < best_t:
                    best, best_t = r, est
            if best is None:
                return
            self.queue.popleft()
            best.waiting.append(idx)
            best.waiting_tokens += p
            best.held += 1
            best.kv += need
            self.in_flight += 1
            if best.idle:
                self._plan(best, now)
            else:
                end = best.cut(now)
                if end is not None:
                    self._push(end, _STEP, best.id, best.version)

    def _plan(self, r: Replica, now: float) -> None:
        end = r.plan(now, self.prompts)
        if end is not None:
            self._push(end, _STEP, r.id, r.version)

    def _step_done(self, r: Replica, now: float) -> None:
        first, finished = r.finish_segment(self.prompts, self.gens)
        arr = self.arrivals
        for idx in first:
            self.first_at[idx] = now
            self.ttft[idx] = now - arr[idx]
        dep = self.fleet.deployment
        for idx in finished:
            g = self.gens[idx]
            tpot = (now - self.first_at[idx]) / (g - 1) if g > 1 else 0.0
            self.tpot[idx] = tpot
            self.e2e[idx] = now - arr[idx]
            self.status[idx] = SERVED
            r.held -= 1
            r.kv -= self.prompts[idx] + g
            self.in_flight -= 1
            ttft = float(self.ttft[idx])
            self.finished.append((now, ttft, tpot, now - arr[idx], dep.meets(ttft, tpot, now - arr[idx])))
        if r.held == 0 and r.state in ("draining", "reclaiming"):
            if r.state == "draining":
                self._release(r, now)
            return
        self._plan(r, now)
        if finished:
            self._dispatch(now)

    def _observe(self, now: float, last_tick: float, lo: int, hi: int) -> Observation:
        arr = self.trace.arrival_s
        period = max(1e-9, now - last_tick)
        window_lo = int(np.searchsorted(arr, now - 300.0))
        count = hi - window_lo
        mean_prompt = (self.prompt_cum[hi] - self.prompt_cum[window_lo]) / count if count else 0.0
        mean_gen = (self.gen_cum[hi] - self.gen_cum[window_lo]) / count if count else 0.0
        tail = float(np.percentile(self.trace.prompt_tokens[window_lo:hi], 99)) if count else 0.0
        while self.finished and self.finished[0][0] < now - WINDOW_S:
            self.finished.popleft()
        recent = np.array([f[1:4] for f in self.finished]) if self.finished else None
        last_period = [f for f in self.finished if f[0] >= now - period]
        period_p99 = np.percentile([(f[1], f[3]) for f in last_period], 99, axis=0) if last_period else None
        p99 = None if recent is None else np.percentile(recent, 99, axis=0)
        live = [r for r in self.replicas if r.state in ("ready", "draining", "reclaiming")]
        return Observation(
            now=now,
            arrival_rate_rps=(hi - lo) / period,
            queue_depth=len(self.queue),
            in_flight=self.in_flight,
            p99_ttft_s=None if p99 is None else float(p99[0]),
            mean_prompt=mean_prompt,
            mean_gen=mean_gen,
            tail_prompt=tail,
            prompt_sq_mean=(self.sq_cum[hi] - self.sq_cum[window_lo]) / count if count else 0.0,
            serving=self._count("serving", ("starting", "ready")),
            ready=self._count("serving", ("ready",)),
            warm=self._count("warm", ("starting", "ready")),
            warm_ready=self._count("warm", ("ready",)),
            p99_ttft_period_s=None if period_p99 is None else float(period_p99[0]),
            p99_e2e_period_s=None if period_p99 is None else float(period_p99[1]),
            prefill_backlog=sum(len(r.waiting) for r in live),
            prefill_backlog_tokens=sum(r.waiting_tokens - r.prefilled for r in live),
            p99_tpot_s=None if p99 is None else float(p99[1]),
            p99_e2e_s=None if p99 is None else float(p99[2]),
            slo_met_fraction=sum(f[4] for f in self.finished) / len(self.finished) if self.finished else None,
            reclaiming=self._count("serving", ("reclaiming",)),
        )

    def _seen(self, obs: Observation) -> Observation:
        """What the decision sees: load figures from the newest snapshot at least ``metrics_delay_s`` old."""
        delay = self.faults.metrics_delay_s
        if delay <= 0:
            return obs
        self.snapshots.append(obs)
        while len(self.snapshots) > 1 and self.snapshots[1].now <= obs.now - delay:
            self.snapshots.popleft()
        old = self.snapshots[0]
        # Load figures come through the metrics pipeline; the fleet's own replicas come from the API, fresh.
        return dataclasses.replace(
            old,
            now=obs.now,
            metrics_age_s=obs.now - old.now,
            serving=obs.serving,
            ready=obs.ready,
            warm=obs.warm,
            reclaiming=obs.reclaiming,
        )

    def _decide(self, target: Target, now: float) -> None:
        delay = self.faults.decision_delay_s
        if delay <= 0:
            self._apply(target, now)
            return
        self.seq += 1
        self.pending[self.seq] = target
        heapq.heappush(self.events, (now + delay, self.seq, _APPLY, -1, self.seq))

    def run(self, progress: bool = False) -> SimResult:
        arr = self.arrivals
        n = len(self.trace)
        self._apply(self.ctl.start(self.fleet, self.trace), 0.0, instant=True)
        period = self.ctl.period_s
        next_tick = period
        last_tick = 0.0
        tick_lo = 0
        i = 0
        now = 0.0
        horizon = self.trace.duration_s
        next_report = 0.1
        while True:
            t_arr = arr[i] if i < n else math.inf
            t_evt = self.events[0][0] if self.events else math.inf
            done = i >= n and not self.queue and self.in_flight == 0
            if done and next_tick > horizon:
                break
            now = min(t_arr, t_evt, next_tick)
            if now == t_arr:
                i += 1
                self._arrive(i - 1, now)
            elif now == t_evt:
                _, _, kind, rid, tag = heapq.heappop(self.events)
                if kind == _APPLY:
                    self._apply(self.pending.pop(tag), now)
                    self._dispatch(now)
                    continue
                r = self.replicas[rid]
                if kind == _STEP:
                    if tag == r.version and r.state != "gone":
                        self._step_done(r, now)
                elif kind == _READY and r.state == "starting" and r.ready_at <= now:
                    r.state = "ready"
                    self._ready_cache = None
                    self._dispatch(now)
                elif kind == _RECLAIM:
                    self._reclaim(r, now)
                elif kind == _GONE:
                    self._gone(r, now)
            else:
                obs = self._observe(now, last_tick, tick_lo, i)
                self._dispatch(now)  # expire timed-out requests before the controller looks
                self._decide(self.ctl.step(self._seen(obs)), now)
                self._dispatch(now)
                cost_rate = sum(r.pool.replica_price_per_hour for r in self.replicas if r.state != "gone")
                self.timeline.append(
                    {
                        "t": now,
                        "rps": obs.arrival_rate_rps,
                        "queue": obs.queue_depth,
                        "prefill_backlog": obs.prefill_backlog,
                        "p99_ttft_s": obs.p99_ttft_s,
                        "serving": obs.serving,
                        "warm": obs.warm,
                        "cost_per_hour": cost_rate,
                    }
                )
                last_tick, tick_lo = now, i
                next_tick = now + period
                if progress and horizon > 0 and now / horizon >= next_report:
                    _progress(self.ctl.name, min(1.0, now / horizon))
                    next_report += 0.1
        end = max(now, horizon)
        for r in self.replicas:
            if r.state != "gone":
                self._release(r, end)
        if progress:
            _progress(self.ctl.name, 1.0, done=True)
        dep = self.fleet.deployment
        served = self.status == SERVED
        met = np.zeros(n, dtype=bool)
        if n:
            ok = np.ones(n, dtype=bool)
            if dep.ttft_s is not None:
                ok &= np.nan_to_num(self.ttft, nan=np.inf) <= dep.ttft_s
            if dep.tpot_s is not None:
                ok &= np.nan_to_num(self.tpot, nan=np.inf) <= dep.tpot_s
            if dep.e2e_s is not None:
                ok &= np.nan_to_num(self.e2e, nan=np.inf) <= dep.e2e_s
            met = ok & served
        return SimResult(
            policy=self.ctl.name,
            trace=self.trace.name,
            deployment=dep.name,
            ttft=self.ttft,
            tpot=self.tpot,
            e2e=self.e2e,
            status=self.status,
            met=met,
            intervals=self.intervals,
            prices={p.name: p.replica_price_per_hour for p in self.fleet.pools},
            scale_events=self.scale_events,
            timeline=self.timeline,
            end_s=end,
            energy_j_by_pool=dict(self.energy),
            busy_s_by_pool=dict(self.busy),
            reclaims=self.reclaims,
        )


def _progress(name: str, frac: float, done: bool = False) -> None:
    import sys

    width = 30
    filled = int(frac * width)
    sys.stderr.write(f"\r  {name:<12} [{'#' * filled}{'.' * (width - filled)}] {frac:4.0%}")
    if done:
        sys.stderr.write("\n")
    sys.stderr.flush()
