"""The simulator knows each pool's runtime: warm replicas are promoted in the runtime's time, and never where the
runtime has no warm standby (as the operator never offers them), so a scale-up there waits for a cold start."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from infleet.sim.engine import Simulation, Target
from infleet.sim.fleet import PROMOTE_S, SimFleet, load_fleet
from infleet.sim.trace import synthetic_trace

REPO = Path(__file__).resolve().parents[3]
POOLS = REPO / "examples" / "pools.yaml"
CHAT = REPO / "operator" / "infleet" / "sim" / "examples" / "chat.yaml"
TRACE = synthetic_trace([(60, 2.0)], seed=3, prompt=200, gen=50)


def fleet_with(tmp_path: Path, runtimes: dict[str, dict[str, str]] | None) -> SimFleet:
    dep = yaml.safe_load(CHAT.read_text())
    if runtimes:
        dep["spec"]["model"]["runtimes"] = runtimes
    path = tmp_path / "chat.yaml"
    path.write_text(yaml.safe_dump(dep))
    return load_fleet([POOLS], path)


def promote_s(fleet: SimFleet) -> dict[str, float | None]:
    return {p.family: p.promote_s for p in fleet.pools}


def test_pools_take_their_runtimes_promotion_time(tmp_path: Path) -> None:
    assert set(promote_s(fleet_with(tmp_path, None)).values()) == {PROMOTE_S}  # infleet-worker everywhere
    got = promote_s(fleet_with(tmp_path, {"nvidia-gpu": {"engine": "vllm"}, "cpu": {"engine": "llama-cpp"},
                                          "aws-neuron": {"engine": "neuron-vllm"}}))
    assert got == {"nvidia-gpu": 5.0, "cpu": None, "aws-neuron": None, "google-tpu": PROMOTE_S}


class WarmThenScale:
    name = "warm-then-scale"
    period_s = 15.0

    def start(self, fleet: SimFleet, trace: object) -> Target:
        return Target(serving={"h100-spot": 1}, warm={"h100-spot": 1})

    def step(self, obs: object) -> Target:
        return Target(serving={"h100-spot": 2}, warm={"h100-spot": 1})


def run(fleet: SimFleet) -> Simulation:
    sim = Simulation(fleet, TRACE.window(0, 40), WarmThenScale())  # type: ignore[arg-type]
    sim.run()
    return sim


def test_a_runtime_without_warm_standby_never_promotes(tmp_path: Path) -> None:
    fleet = fleet_with(tmp_path, None)
    cold = dataclasses.replace(fleet, pools=tuple(dataclasses.replace(p, promote_s=None) for p in fleet.pools))
    # Replica 0 is the first serving one, replica 1 the warm one started beside it.
    with_standby, without = run(fleet), run(cold)
    assert with_standby.replicas[1].role == "serving"  # promoted on the scale-up
    assert without.replicas[1].role == "warm"  # stayed warm: the second serving replica was cold-started
    assert [r.role for r in without.replicas].count("serving") == 2
