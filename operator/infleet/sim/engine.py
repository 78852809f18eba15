"""Discrete-event replay of a request trace on a simulated fleet, driven by a scaling controller.

Model (every simplification stated):

* Requests wait in one gateway queue (FIFO) and are admitted to the ready serving replica that would finish them
  first (earliest estimated completion), when it has a batch slot and KV-cache room: heterogeneous replicas get
  the load they are fast for. A request waiting longer than ``queue_timeout_s`` is rejected, explicitly.
* A replica prefills one request at a time (prefill is compute-bound), then decodes it in the running batch at
  ``tpot(batch size at admission)`` per token. Prefill does not stall running decodes (chunked prefill).
* The controller runs every ``period_s``; it sees the arrivals of the last period, the current queue and
  running counts, and the p99 time to first token of requests finished in the last minute (what a Prometheus
  scrape of the worker metrics gives). Its target applies at once; replicas then take the pool's cold start
  (warm workers: :data:`PROMOTE_S`) to become ready.
* A replica costs its pool's price from creation (devices claimed) until released: at once when removed before
  it is ready or while idle, after its running requests finish when removed while busy. Warm replicas cost the
  same. Spot reclaims are not modelled.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from infleet.policy.cost import ReplicaInterval
from infleet.sim.fleet import PROMOTE_S, SimFleet, SimPool
from infleet.sim.trace import Trace

_READY, _FINISH = 0, 1


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
    # p99 of the requests finished in the last controller period (what one scrape of the workers shows).
    p99_e2e_s: float | None = None
    p99_ttft_period_s: float | None = None
    warm_ready: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    serving: dict[str, int]
    warm: dict[str, int] = field(default_factory=dict)


class Controller(Protocol):
    name: str
    period_s: float

    def start(self, fleet: SimFleet, trace: Trace) -> Target: ...

    def step(self, obs: Observation) -> Target: ...


class _Replica:
    __slots__ = (
        "batch",
        "created",
        "id",
        "kv",
        "kv_cap",
        "pool",
        "prefill_free",
        "ready_at",
        "role",
        "running",
        "state",
    )

    def __init__(self, rid: int, pool: SimPool, role: str, now: float, ready_at: float, batch: int) -> None:
        self.id = rid
        self.pool = pool
        self.role = role  # serving | warm
        self.state = "starting" if ready_at > now else "ready"  # starting | ready | draining | gone
        self.created = now
        self.ready_at = ready_at
        self.running = 0
        self.kv = 0.0
        self.kv_cap = pool.service.kv_tokens
        self.prefill_free = 0.0
        self.batch = batch


@dataclass
class SimResult:
    policy: str
    trace: str
    deployment: str
    ttft: np.ndarray
    tpot: np.ndarray
    e2e: np.ndarray
    status: np.ndarray  # 1 served, 0 rejected
    met: np.ndarray
    intervals: list[ReplicaInterval]
    prices: dict[str, float]
    scale_events: int
    timeline: list[dict[str, object]]
    end_s: float


class Simulation:
    def __init__(self, fleet: SimFleet, trace: Trace, controller: Controller, *, queue_timeout_s: float = 60.0) -> None:
        self.fleet = fleet
        self.trace = trace
        self.ctl = controller
        self.timeout = queue_timeout_s
        dep = fleet.deployment
        mean_seq = float(np.mean(trace.prompt_tokens + trace.gen_tokens)) if len(trace) else 1.0
        self.batch = {p.name: max(1, p.service.batch_limit(dep.tpot_s, mean_seq)) for p in fleet.pools}
        self.replicas: list[_Replica] = []
        self.events: list[tuple[float, int, int, int, int]] = []
        self.seq = 0
        self.queue: deque[int] = deque()
        self.intervals: list[ReplicaInterval] = []
        self.scale_events = 0
        n = len(trace)
        self.ttft = np.full(n, np.nan)
        self.tpot = np.full(n, np.nan)
        self.e2e = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int8)
        self.finished: deque[tuple[float, float, float]] = deque()  # (finished at, ttft, e2e)
        self.in_flight = 0
        self.prompt_cum = np.concatenate([[0.0], np.cumsum(trace.prompt_tokens, dtype=float)])
        self.sq_cum = np.concatenate([[0.0], np.cumsum(trace.prompt_tokens.astype(float) ** 2)])
        self.gen_cum = np.concatenate([[0.0], np.cumsum(trace.gen_tokens, dtype=float)])
        self._ready_cache: list[_Replica] | None = None
        self.timeline: list[dict[str, object]] = []

    # -- replicas -------------------------------------------------------------------------------------------
    def _push(self, t: float, kind: int, a: int, b: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, a, b))

    def _new(self, pool: SimPool, role: str, now: float, instant: bool = False) -> bool:
        used = sum(r.pool.devices_per_replica for r in self.replicas if r.pool is pool and r.state != "gone")
        if used + pool.devices_per_replica > pool.devices:
            return False
        ready_at = now if instant else now + pool.cold_start_s
        r = _Replica(len(self.replicas), pool, role, now, ready_at, self.batch[pool.name])
        self.replicas.append(r)
        if not instant:
            self._push(ready_at, _READY, r.id, 0)
        self._ready_cache = None
        return True

    def _release(self, r: _Replica, now: float) -> None:
        r.state = "gone"
        self.intervals.append(ReplicaInterval(r.pool.name, r.created, max(now, r.created)))
        self._ready_cache = None

    def _ready_serving(self) -> list[_Replica]:
        if self._ready_cache is None:
            self._ready_cache = [r for r in self.replicas if r.state == "ready" and r.role == "serving"]
        return self._ready_cache

    def _count(self, role: str, states: tuple[str, ...]) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.replicas:
            if r.role == role and r.state in states:
                out[r.pool.name] = out.get(r.pool.name, 0) + 1
        return out

    def _apply(self, target: Target, now: float, *, instant: bool = False) -> None:
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
                    if missing == 0:
                        break
                    warm.remove(r)
                    r.role = "serving"
                    if r.state == "ready":
                        r.state = "starting"
                        r.ready_at = now + PROMOTE_S
                        self._push(r.ready_at, _READY, r.id, 0)
                    missing -= 1
                while missing > 0 and self._new(pool, "serving", now, instant):
                    missing -= 1
                self._ready_cache = None
            elif want < len(serving):
                self.scale_events += 1
                extra = len(serving) - want
                for r in sorted(serving, key=lambda s: (s.state == "ready", s.running, -s.created))[:extra]:
                    if r.state == "starting" or r.running == 0:
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

    # -- requests ------------------------------------------------------------------------------------------
    def _dispatch(self, now: float) -> None:
        arr = self.trace.arrival_s
        prompts = self.trace.prompt_tokens
        gens = self.trace.gen_tokens
        while self.queue:
            idx = self.queue[0]
            if now - arr[idx] > self.timeout:
                self.queue.popleft()
                continue  # status stays 0: rejected
            p = float(prompts[idx])
            g = float(gens[idx])
            best: _Replica | None = None
            best_t = math.inf
            for r in self._ready_serving():
                if r.running >= r.batch or r.kv + p + g > r.kv_cap:
                    continue
                svc = r.pool.service
                est = max(now, r.prefill_free) + p / svc.prefill_tokens_per_s + g * svc.tpot(r.running + 1)
                if est < best_t:
                    best, best_t = r, est
            if best is None:
                return
            self.queue.popleft()
            svc = best.pool.service
            first = max(now, best.prefill_free) + p / svc.prefill_tokens_per_s
            best.prefill_free = first
            tpot = svc.tpot(best.running + 1)
            finish = first + g * tpot
            best.running += 1
            best.kv += p + g
            self.in_flight += 1
            self.ttft[idx] = first - arr[idx]
            self.tpot[idx] = tpot
            self.e2e[idx] = finish - arr[idx]
            self.status[idx] = 1
            self._push(finish, _FINISH, best.id, idx)

    def _observe(self, now: float, last_tick: float, lo: int, hi: int) -> Observation:
        arr = self.trace.arrival_s
        period = max(1e-9, now - last_tick)
        window_lo = int(np.searchsorted(arr, now - 300.0))
        count = hi - window_lo
        mean_prompt = (self.prompt_cum[hi] - self.prompt_cum[window_lo]) / count if count else 0.0
        mean_gen = (self.gen_cum[hi] - self.gen_cum[window_lo]) / count if count else 0.0
        tail = float(np.percentile(self.trace.prompt_tokens[window_lo:hi], 99)) if count else 0.0
        while self.finished and self.finished[0][0] < now - 60.0:
            self.finished.popleft()
        p99 = float(np.percentile([f[1] for f in self.finished], 99)) if self.finished else None
        recent = [f for f in self.finished if f[0] >= now - period]
        p99_e2e = float(np.percentile([f[2] for f in recent], 99)) if recent else None
        p99_ttft_period = float(np.percentile([f[1] for f in recent], 99)) if recent else None
        return Observation(
            now=now,
            arrival_rate_rps=(hi - lo) / period,
            queue_depth=len(self.queue),
            in_flight=self.in_flight,
            p99_ttft_s=p99,
            mean_prompt=mean_prompt,
            mean_gen=mean_gen,
            tail_prompt=tail,
            prompt_sq_mean=(self.sq_cum[hi] - self.sq_cum[window_lo]) / count if count else 0.0,
            serving=self._count("serving", ("starting", "ready")),
            ready=self._count("serving", ("ready",)),
            warm=self._count("warm", ("starting", "ready")),
            p99_e2e_s=p99_e2e,
            p99_ttft_period_s=p99_ttft_period,
            warm_ready=self._count("warm", ("ready",)),
        )

    def run(self, progress: bool = False) -> SimResult:
        arr = self.trace.arrival_s
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
                self.queue.append(i)
                i += 1
                self._dispatch(now)
            elif now == t_evt:
                _, _, kind, rid, idx = heapq.heappop(self.events)
                r = self.replicas[rid]
                if kind == _FINISH:
                    r.running -= 1
                    r.kv -= float(self.trace.prompt_tokens[idx] + self.trace.gen_tokens[idx])
                    self.in_flight -= 1
                    self.finished.append((now, float(self.ttft[idx]), float(self.e2e[idx])))
                    if r.state == "draining" and r.running == 0:
                        self._release(r, now)
                    self._dispatch(now)
                elif kind == _READY and r.state == "starting" and r.ready_at <= now:
                    r.state = "ready"
                    self._ready_cache = None
                    self._dispatch(now)
            else:
                obs = self._observe(now, last_tick, tick_lo, i)
                self._dispatch(now)  # expire timed-out requests before the controller looks
                target = self.ctl.step(obs)
                self._apply(target, now)
                self._dispatch(now)
                cost_rate = sum(r.pool.replica_price_per_hour for r in self.replicas if r.state != "gone")
                self.timeline.append(
                    {
                        "t": now,
                        "rps": obs.arrival_rate_rps,
                        "queue": obs.queue_depth,
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
        served = self.status == 1
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
        )


def _progress(name: str, frac: float, done: bool = False) -> None:
    import sys

    width = 30
    filled = int(frac * width)
    sys.stderr.write(f"\r  {name:<12} [{'#' * filled}{'.' * (width - filled)}] {frac:4.0%}")
    if done:
        sys.stderr.write("\n")
    sys.stderr.flush()
