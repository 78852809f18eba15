"""Where the SLO/cost targets can be met at all: fixed fleets and infleet's own knobs on both Azure traces.

    .venv/bin/python bench/sim_frontier.py      # ~25 s on two cores

Prints, per trace, side by side in one run:
* the oracle (provisioning bound) and the strict work bound;
* a fixed fleet of N replicas on the pool every policy picks (h100-spot), N = 1..6: the cheapest fleet that reaches
  99% attainment with hindsight, against which no reactive policy can be cheaper without foresight;
* infleet with its defaults and with one knob changed at a time: the warm pool's share of the serving cost
  (0.25 default, 1.0 = only the deployment's absolute cap), the control period (15 s default, 2 s like Knative's
  KPA), how long a spare large replica is kept (3 cold starts default, 1 and 2), and calibration's hold band
  (0.8-0.9 of the TTFT target default, 0.6-0.9 before), also on four 15-minute windows of each trace.
Trace data: Azure Public Dataset, AzureLLMInferenceDataset2023, CC-BY 4.0 (Patel et al., Splitwise, ISCA 2024).
"""

from __future__ import annotations

import time
from pathlib import Path

from infleet.policy import account
from infleet.sim.cli import default_deployment
from infleet.sim.engine import Observation, Simulation, Target
from infleet.sim.fleet import SimFleet, load_fleet
from infleet.sim.oracle import oracle, work_bound
from infleet.sim.policies import Infleet
from infleet.sim.trace import ATTRIBUTION, Trace, load_trace

REPO = Path(__file__).resolve().parents[1]
POOL = "h100-spot"
OLD_BAND = (0.6, 0.9)  # calibrate_capacity's hold band before it narrowed to 0.8-0.9


class Fixed:
    """N replicas on one pool, ready from the start, never changed."""

    period_s = 60.0

    def __init__(self, pool: str, n: int) -> None:
        self.name = f"fixed {n} x {pool}"
        self.target = Target(serving={pool: n})

    def start(self, fleet: SimFleet, trace: Trace) -> Target:
        return self.target

    def step(self, obs: Observation) -> Target:
        return self.target


def main() -> None:
    for name in ("conv", "code"):
        path = REPO.parent / "shared" / "traces" / f"azure-llm-2023-{name}.csv"
        trace = load_trace(path)
        fleet = load_fleet([REPO / "examples" / "pools.yaml"], default_deployment(path))
        started = time.perf_counter()
        bound = oracle(fleet, trace).cost_usd
        strict = work_bound(fleet, trace)
        cold = fleet.pool(POOL).cold_start_s
        controllers: list[Fixed | Infleet] = [Fixed(POOL, n) for n in range(1, 7)]
        variants = {
            "infleet (defaults)": Infleet(),
            "warm share 1.0": Infleet(warm_cost_fraction=1.0),
            "period 2 s": Infleet(period_s=2.0),
            "shed after 1 cold start": Infleet(shed_after_s=cold),
            "shed after 2 cold starts": Infleet(shed_after_s=2 * cold),
            "calibration band 0.6-0.9": Infleet(calibration_band=OLD_BAND),
        }
        print(f"\n{fleet.deployment.name} on {trace.name}: oracle ${bound:.2f}, work bound ${strict:.2f}")
        print(f"{'fleet / policy':<26} {'SLO met':>8} {'cost $':>8} {'x oracle':>8}")
        for label, ctl in [(c.name, c) for c in controllers] + list(variants.items()):
            res = Simulation(fleet, trace, ctl).run()
            cost = account(res.intervals, res.prices).cost_usd
            print(f"{label:<26} {res.met.mean():>8.2%} {cost:>8.2f} {cost / bound:>8.2f}")
        print(f"({time.perf_counter() - started:.1f} s wall)")
        print(f"calibration band, four 15-minute windows of {trace.name} (SLO met, x that window's oracle):")
        for start in (0.0, 900.0, 1800.0, 2700.0):
            window = trace.window(start, 900.0)
            window_bound = oracle(fleet, window).cost_usd
            cells = []
            for label, band in (("0.6-0.9", OLD_BAND), ("0.8-0.9 (default)", None)):
                res = Simulation(fleet, window, Infleet(calibration_band=band)).run()
                cost = account(res.intervals, res.prices).cost_usd
                cells.append(f"{label}: {res.met.mean():.2%} {cost / window_bound:.2f}x")
            print(f"  from {start:>5.0f} s  " + "   ".join(cells))
    print(ATTRIBUTION)


if __name__ == "__main__":
    main()
