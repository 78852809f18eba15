"""The iteration-level engine: step times calibrated to measured ones, attention and prefill interference, KV and
context limits, energy, and faults (spot reclaims, cold-start spread, delayed metrics and decisions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infleet.policy.service import DEVICES, roofline
from infleet.sim.cli import _HERE
from infleet.sim.engine import LOST, REFUSED, SERVED, Faults, Observation, Simulation, Target
from infleet.sim.fleet import SimFleet, load_fleet
from infleet.sim.replica import decode_span
from infleet.sim.trace import Trace, synthetic_trace

REPO = Path(__file__).resolve().parents[3]
POOLS = REPO / "examples" / "pools.yaml"


@pytest.fixture(scope="module")
def fleet() -> SimFleet:
    return load_fleet([POOLS], _HERE / "examples" / "chat.yaml")


class Fixed:
    """N replicas on one pool from t = 0; records what it observed."""

    period_s = 5.0

    def __init__(self, serving: dict[str, int]) -> None:
        self.name = "fixed"
        self.target = Target(serving=serving)
        self.seen: list[Observation] = []

    def start(self, fleet: SimFleet, trace: Trace) -> Target:
        return self.target

    def step(self, obs: Observation) -> Target:
        self.seen.append(obs)
        return self.target


def _trace(arrivals: list[float], prompts: list[int], gens: list[int]) -> Trace:
    return Trace("t", np.asarray(arrivals, float), np.asarray(prompts), np.asarray(gens))


@pytest.mark.parametrize(
    ("batch", "context", "measured_ms"),
    [(1, 128, 7.39), (64, 128, 8.84), (64, 384, 9.81)],  # docs/benchmarks.md, GPU: the worker on one H100
)
def test_h100_decode_steps_are_within_ten_percent_of_the_workers_measured_ones(
    batch: int, context: int, measured_ms: float
) -> None:
    svc = roofline(DEVICES["h100"], 1, 8.03, 79.6)
    assert svc.step_s(batch, batch * context) * 1e3 == pytest.approx(measured_ms, rel=0.10)


def test_decode_span_is_the_sum_of_its_steps() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        c0, c1, m0, m1 = rng.uniform(0, 1, 4) * (1, 0.1, 1, 0.1)
        n = int(rng.integers(1, 40))
        exact = sum(max(c0 + c1 * j, m0 + m1 * j) for j in range(n))
        assert decode_span(c0, c1, m0, m1, n) == pytest.approx(exact)


def test_long_prompts_pay_attention_so_ttft_grows_faster_than_the_prompt(fleet: SimFleet) -> None:
    trace = _trace([0.0, 100.0], [10_000, 80_000], [2, 2])
    res = Simulation(fleet, trace, Fixed({"h100-spot": 1})).run()
    assert np.all(res.status == SERVED)
    assert res.ttft[1] > 10 * res.ttft[0]  # 8x the tokens, more than 8x the time


def test_prefill_interference_makes_tpot_missable(fleet: SimFleet) -> None:
    from infleet.sim.fleet import with_service_overrides

    fleet = with_service_overrides(fleet, {"h100-spot": {"step_tokens": 2048}})  # vLLM-like chunk budget
    alone = _trace([0.0], [100], [400])
    res_alone = Simulation(fleet, alone, Fixed({"h100-spot": 1})).run()
    # the same request while long prompts keep arriving: its decode steps share time with their chunks
    busy = _trace([0.0] + [1.0 + 0.5 * k for k in range(20)], [100] + [40_000] * 20, [400] + [2] * 20)
    res_busy = Simulation(fleet, busy, Fixed({"h100-spot": 1})).run()
    assert res_busy.tpot[0] > 2 * res_alone.tpot[0]
    assert res_busy.tpot[0] > fleet.deployment.tpot_s  # type: ignore[operator]
    assert not res_busy.met[0] and res_alone.met[0]


def test_requests_beyond_the_context_window_are_refused_and_kv_room_bounds_a_replica(fleet: SimFleet) -> None:
    trace = _trace([0.0, 1.0], [140_000, 1_000], [10, 10])
    res = Simulation(fleet, trace, Fixed({"h100-spot": 1})).run()
    assert res.status[0] == REFUSED and res.status[1] == SERVED
    # 40 requests of 30k tokens each: an H100's KV cache holds about 14 at once, so the rest wait in the queue
    many = _trace([0.0] * 40, [29_000] * 40, [1_000] * 40)
    ctl = Fixed({"h100-spot": 1})
    Simulation(fleet, many, ctl).run()
    kv = fleet.pool("h100-spot").service.kv_tokens
    assert ctl.seen[0].in_flight == int(kv // 30_000) and ctl.seen[0].queue_depth == 40 - int(kv // 30_000)
    assert ctl.seen[0].prefill_backlog > 0 and ctl.seen[0].prefill_backlog_tokens > 0


def test_energy_is_idle_power_for_the_life_plus_busy_power_for_the_steps(fleet: SimFleet) -> None:
    trace = synthetic_trace([(300, 2.0)], seed=1, prompt=800, gen=100)
    res = Simulation(fleet, trace, Fixed({"h100-spot": 1})).run()
    svc = fleet.pool("h100-spot").service
    life = sum(iv.end_s - iv.start_s for iv in res.intervals)
    busy = res.busy_s_by_pool["h100-spot"]
    assert 0 < busy < life
    expected = svc.idle_watts * life + (svc.busy_watts - svc.idle_watts) * busy
    assert res.energy_j_by_pool["h100-spot"] == pytest.approx(expected)
    idle = Simulation(fleet, _trace([0.0, 300.0], [10, 10], [2, 2]), Fixed({"h100-spot": 1})).run()
    assert idle.energy_j_by_pool["h100-spot"] < res.energy_j_by_pool["h100-spot"]


def test_spot_reclaims_requeue_unstarted_requests_and_are_seeded(fleet: SimFleet) -> None:
    trace = synthetic_trace([(1200, 3.0)], seed=2, prompt=800, gen=300)
    faults = Faults(spot_reclaims_per_hour=6.0, spot_notice_s=30.0, seed=5)
    a = Simulation(fleet, trace, Fixed({"h100-spot": 2}), faults=faults).run()
    b = Simulation(fleet, trace, Fixed({"h100-spot": 2}), faults=faults).run()
    calm = Simulation(fleet, trace, Fixed({"h100-spot": 2})).run()
    assert a.reclaims > 0 and a.reclaims == b.reclaims and np.array_equal(a.status, b.status)
    assert calm.reclaims == 0
    # replaced replicas pay another cold start: more replica intervals, and some requests are lost or late
    assert len(a.intervals) > len(calm.intervals)
    assert a.met.sum() < calm.met.sum()
    assert set(np.unique(a.status)) <= {SERVED, LOST, 0}
    on_demand = Simulation(fleet, trace, Fixed({"h100-on-demand": 2}), faults=faults).run()
    assert on_demand.reclaims == 0
    per_pool = Faults(pool_reclaims={"h100-on-demand": (6.0, 30.0)}, seed=5)
    assert Simulation(fleet, trace, Fixed({"h100-on-demand": 2}), faults=per_pool).run().reclaims > 0
    assert Simulation(fleet, trace, Fixed({"h100-spot": 2}), faults=per_pool).run().reclaims == 0


def test_cold_start_spread_and_delays_change_when_things_happen(fleet: SimFleet) -> None:
    class Grow(Fixed):
        def step(self, obs: Observation) -> Target:
            self.seen.append(obs)
            return Target(serving={"h100-spot": 1 + len(self.seen) // 4})

    trace = synthetic_trace([(600, 2.0)], seed=3, prompt=500, gen=50)
    plain = Simulation(fleet, trace, Grow({"h100-spot": 1})).run()
    spread = Simulation(fleet, trace, Grow({"h100-spot": 1}), faults=Faults(cold_start_cv=0.5, seed=1)).run()
    starts = lambda res: sorted(iv.start_s for iv in res.intervals)  # noqa: E731
    assert starts(plain) == starts(spread)  # the same decisions...
    sim = Simulation(fleet, trace, Grow({"h100-spot": 1}), faults=Faults(cold_start_cv=0.5, seed=1))
    sim.run()
    waits = {round(r.ready_at - r.created, 3) for r in sim.replicas if r.ready_at > r.created}
    assert len(waits) > 1 and waits != {300.0}  # ...but cold starts spread around the pool's 300 s
    late = Grow({"h100-spot": 1})
    delayed = Simulation(fleet, trace, late, faults=Faults(metrics_delay_s=30.0, decision_delay_s=10.0)).run()
    assert max(o.metrics_age_s for o in late.seen) >= 30.0
    first_new = min(iv.start_s for iv in delayed.intervals if iv.start_s > 0)
    assert first_new == pytest.approx(min(iv.start_s for iv in plain.intervals if iv.start_s > 0) + 10.0)


def test_one_request_on_an_idle_replica_takes_exactly_its_steps(fleet: SimFleet) -> None:
    svc = fleet.pool("h100-spot").service
    sim = Simulation(fleet, _trace([0.0], [1_000], [10]), Fixed({"h100-spot": 1}))
    res = sim.run()
    assert res.ttft[0] == pytest.approx(svc.prefill_s(1_000))  # two chunks, 512 + 488 tokens
    # nine decode steps over contexts of 1,001 to 1,009 tokens
    steps = [svc.step_s(1, 1_001 + j) for j in range(9)]
    assert res.tpot[0] == pytest.approx(sum(steps) / 9)
    assert res.e2e[0] == pytest.approx(res.ttft[0] + sum(steps))
    replica = sim.replicas[0]
    assert replica.held == 0 and replica.kv == 0 and sim.in_flight == 0
    assert replica.busy_s == pytest.approx(res.e2e[0])
