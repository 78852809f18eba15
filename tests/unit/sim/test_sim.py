"""Simulator invariants on short synthetic traces: every request served or rejected, cost = time x price."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from infleet.policy import account
from infleet.sim.cli import _HERE
from infleet.sim.engine import Simulation
from infleet.sim.fleet import load_fleet
from infleet.sim.oracle import work_bound
from infleet.sim.policies import POLICIES, make
from infleet.sim.report import summarize
from infleet.sim.trace import load_trace, synthetic_trace

REPO = Path(__file__).resolve().parents[3]
POOLS = REPO / "examples" / "pools.yaml"


@pytest.fixture(scope="module")
def fleet():  # type: ignore[no-untyped-def]
    return load_fleet([POOLS], _HERE / "examples" / "chat.yaml")


TRACE = synthetic_trace([(300, 2.0), (120, 12.0), (400, 0.0), (200, 3.0)], seed=3, prompt=800, gen=120)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_request_is_served_or_rejected_and_cost_is_time_times_price(fleet, policy: str) -> None:  # type: ignore[no-untyped-def]
    res = Simulation(fleet, TRACE, make(policy)).run()
    n = len(TRACE)
    assert res.status.size == n
    served = res.status == 1
    assert set(np.unique(res.status)) <= {0, 1}  # nothing too long, no reclaims here
    assert np.all(np.isfinite(res.e2e[served])) and np.all(np.isnan(res.e2e[~served]))
    assert np.all(res.ttft[served] >= 0) and np.all(res.e2e[served] >= res.ttft[served])
    row = summarize(res, TRACE, 1.0)
    expected = sum((iv.end_s - iv.start_s) / 3600 * res.prices[iv.pool] for iv in res.intervals)
    assert row["cost_usd"] == pytest.approx(expected)
    assert row["cost_usd"] == pytest.approx(account(res.intervals, res.prices).cost_usd)
    assert row["requests"] == n == row["served"] + row["rejected"]
    for key in ("policy", "slo_attainment", "p99_tpot_s", "energy_kwh", "wh_per_million_tokens", "scale_events"):
        assert key in row
    # replicas never outlive the simulation, and never start before it
    assert all(0 <= iv.start_s <= iv.end_s <= res.end_s + 1e-9 for iv in res.intervals)


def test_no_capacity_means_explicit_rejection(fleet) -> None:  # type: ignore[no-untyped-def]
    class Nothing:
        name = "nothing"
        period_s = 15.0

        def start(self, fleet, trace):  # type: ignore[no-untyped-def]
            from infleet.sim.engine import Target

            return Target(serving={})

        def step(self, obs):  # type: ignore[no-untyped-def]
            from infleet.sim.engine import Target

            return Target(serving={})

    res = Simulation(fleet, TRACE.window(0, 60), Nothing(), queue_timeout_s=5.0).run()
    assert res.status.sum() == 0 and res.intervals == []


def test_trace_loader_reads_azure_format_and_rejects_bad_rows(tmp_path: Path) -> None:
    good = tmp_path / "t.csv"
    good.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
    )
    tr = load_trace(good)
    assert len(tr) == 2 and tr.arrival_s[0] == 0 and tr.arrival_s[1] == pytest.approx(4.314579, abs=1e-6)
    bad = tmp_path / "b.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,x,1\n")
    with pytest.raises(ValueError, match=r"b.csv:2"):
        load_trace(bad)
    cols = tmp_path / "c.csv"
    cols.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected columns"):
        load_trace(cols)


def test_cli_compare_writes_report(tmp_path: Path) -> None:
    from infleet.cli import main

    trace = tmp_path / "trace.csv"
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.exponential(0.5, 400))
    rows = [
        f"2023-11-16 18:{int(s // 60):02d}:{s % 60:09.6f},{rng.integers(50, 2000)},{rng.integers(5, 300)}" for s in t
    ]
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    rc = main(["simulate", "--trace", str(trace), "--pools", str(POOLS), "--compare", "--out", str(out), "--quiet"])
    assert rc == 0
    doc = json.loads((out / "report.json").read_text())
    assert {r["policy"] for r in doc["policies"]} == set(POLICIES)
    assert "CC-BY 4.0" in doc["attribution"]
    sticks = {r["policy"].split(" ")[0] for r in doc["yardsticks"]}
    assert sticks == {"hindsight", "foresight"}
    fixed = doc["yardsticks"][0]
    assert fixed["slo_attainment"] >= 0.99 and fixed["cost_vs_fixed"] == pytest.approx(1.0)
    assert all(r["energy_kwh"] > 0 and r["wh_per_million_tokens"] > 0 for r in doc["policies"])
    assert 0 < doc["work_bound_usd"] <= fixed["cost_usd"]
    assert (out / "simulation.png").stat().st_size > 0
    assert main(["simulate", "--trace", str(tmp_path / "missing.csv"), "--quiet"]) == 2


def test_service_overrides_apply_and_reject_unknown_fields(fleet) -> None:  # type: ignore[no-untyped-def]
    from infleet.sim.fleet import with_service_overrides

    slower = with_service_overrides(fleet, {"h100-spot": {"prefill_tokens_per_s": 1000.0, "max_batch": 8}})
    assert slower.pool("h100-spot").service.prefill_tokens_per_s == 1000.0
    assert slower.pool("h100-spot").service.max_batch == 8
    assert slower.pool("h100-on-demand").service == fleet.pool("h100-on-demand").service
    with pytest.raises(ValueError, match="unknown fields"):
        with_service_overrides(fleet, {"h100-spot": {"speed": 1.0}})
    with pytest.raises(ValueError, match="not in the fleet"):
        with_service_overrides(fleet, {"nope": {"kv_tokens": 1.0}})


def test_warm_workers_are_promoted_before_cold_starts(fleet) -> None:  # type: ignore[no-untyped-def]
    from infleet.sim.engine import Target

    class WarmThenScale:
        name = "warm-then-scale"
        period_s = 15.0

        def start(self, fleet, trace):  # type: ignore[no-untyped-def]
            return Target(serving={"h100-spot": 1}, warm={"h100-spot": 1})

        def step(self, obs):  # type: ignore[no-untyped-def]
            return Target(serving={"h100-spot": 2}, warm={})

    sim = Simulation(fleet, TRACE.window(0, 40), WarmThenScale())
    sim.run()
    # two replicas in all: the warm one became the second serving replica, no third was cold-started
    assert len(sim.replicas) == 2


@pytest.mark.parametrize("policy", ["infleet", "hpa", "kpa", "static-peak"])
@pytest.mark.parametrize("seed", [1, 2])
def test_no_policy_costs_less_than_the_work_bound_of_what_it_served(fleet, policy: str, seed: int) -> None:  # type: ignore[no-untyped-def]
    trace = synthetic_trace([(120, 1.0), (60, 8.0), (120, 3.0)], seed=seed, prompt=1200, gen=200)
    res = Simulation(fleet, trace, make(policy)).run()
    served = res.status == 1
    assert served.mean() > 0.5
    # The bound is for serving a set of requests: here, the ones this policy served (a rejected request is free).
    subset = dataclasses.replace(
        trace,
        arrival_s=trace.arrival_s[served],
        prompt_tokens=trace.prompt_tokens[served],
        gen_tokens=trace.gen_tokens[served],
    )
    assert account(res.intervals, res.prices).cost_usd >= work_bound(fleet, subset) > 0


def test_work_bound_scales_with_the_work_and_honours_min_replicas(fleet) -> None:  # type: ignore[no-untyped-def]
    short = synthetic_trace([(600, 5.0)], seed=4, prompt=500, gen=50)
    long = synthetic_trace([(600, 5.0)], seed=4, prompt=5000, gen=50)
    assert work_bound(fleet, long) > work_bound(fleet, short)
    floor = min(p.replica_price_per_hour for p in fleet.pools) * short.duration_s / 3600
    assert work_bound(fleet, short) >= fleet.deployment.min_replicas * floor - 1e-12


# (KPA and KubeAI at their default targets, 70 and 100 concurrent requests per replica, size one H100 for it.)
@pytest.mark.parametrize("policy", ["infleet", "hpa", "keda", "ray-serve"])
def test_a_declared_throughput_sizes_every_policys_starting_fleet(tmp_path: Path, policy: str) -> None:
    doc = (_HERE / "examples" / "chat.yaml").read_text(encoding="utf-8")
    declared = tmp_path / "chat.yaml"
    throughput = "    tpotP99Ms: 40\n    throughput: {requestsPerSecond: 40}\n"
    declared.write_text(doc.replace("    tpotP99Ms: 40\n", throughput))
    quiet = synthetic_trace([(300, 0.5)], seed=5, prompt=800, gen=120)
    plain_fleet = load_fleet([POOLS], _HERE / "examples" / "chat.yaml")
    busy_fleet = load_fleet([POOLS], declared)
    assert busy_fleet.deployment.expected_rps == 40 and plain_fleet.deployment.expected_rps is None
    plain = sum(make(policy).start(plain_fleet, quiet).serving.values())
    busy = sum(make(policy).start(busy_fleet, quiet).serving.values())
    assert plain == 1  # the first minute's 0.5 req/s, within minReplicas 1
    assert busy > plain  # 40 req/s declared: more than one H100's 7.8


def test_an_slo_no_pool_can_meet_is_a_clear_error_naming_slo_pools_and_why(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from infleet.cli import main
    from infleet.sim.tracegen import TraceShape, generate, write_csv

    trace = tmp_path / "long.csv"
    write_csv(generate(TraceShape(shape="long-context", duration_s=600, rate_rps=2, long_share=1.0)), trace)
    for policy in ("infleet", "hpa"):
        rc = main(["simulate", "--trace", str(trace), "--policy", policy, "--out", str(tmp_path), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2
        assert "TTFT 300 ms" in err and "h100-spot" in err and "cpu-spot" in err
        assert "prefill of the 99th-percentile prompt" in err and "Traceback" not in err


def test_cli_tuned_baselines_and_faults(tmp_path: Path) -> None:
    from infleet.cli import main

    trace = tmp_path / "trace.csv"
    t = np.cumsum(np.random.default_rng(1).exponential(0.5, 300))
    rows = [f"2023-11-16 18:{int(s // 60):02d}:{s % 60:09.6f},800,100" for s in t]
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    args = ["simulate", "--trace", str(trace), "--pools", str(POOLS), "--out", str(out), "--quiet", "--no-plots"]
    assert main([*args, "--policy", "kpa", "--tuned", "--spot-reclaims-per-hour", "2", "--cold-start-cv", "0.3"]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert [r["policy"] for r in doc["policies"]] == ["kpa", "kpa tuned"]
    assert doc["faults"]["spot_reclaims_per_hour"] == 2.0
    assert set(doc["policies"][1]["settings"]) <= {"target_factor", "stable_s"}  # the defaults ({}) may win
    assert main([*args, "--spot-reclaims-per-hour", "-1"]) == 2
    assert main([*args, "--reclaims", "h100-spot"]) == 2
    assert main([*args, "--reclaims", "nope=1"]) == 2
    assert main([*args, "--policy", "hpa", "--no-yardsticks", "--reclaims", "h100-spot=3:30"]) == 0
    assert json.loads((out / "report.json").read_text())["faults"]["pool_reclaims"] == {"h100-spot": [3.0, 30.0]}
