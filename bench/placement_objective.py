"""Cost vs energy of placement.objective Energy against Cost, on the examples' mixed workload.

The workload is every InferenceDeployment in examples/ at its declared throughput, on the AcceleratorPools of
examples/pools.yaml (capacities from their performance profiles, power from their ``spec.power``: datasheet TDPs
where published, assumed figures where not, typical draw assumed 70% of the maximum: see the file's header). The
fleet is placed twice, every deployment with ``objective: Cost`` and then with ``objective: Energy``, sharing
64 devices per pool; budgets and the manifests' pool restrictions are honoured both times. Energy is Wh per hour of
serving at the pools' typical power (devices x typicalWattsPerDevice); Wh per million requests divides it by the
requests the deployment is placed to serve in that hour.

    python bench/placement_objective.py
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from infleet.api import AcceleratorPool, InferenceDeployment, load_manifests
from infleet.policy import FleetPlacement, place_fleet
from infleet.policy.from_api import placement_request
from infleet.policy.types import PlacementObjective

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load() -> tuple[list[AcceleratorPool], list[InferenceDeployment]]:
    manifests = [
        m
        for f in sorted(EXAMPLES.glob("*.yaml"))
        if "apiVersion: infleet.io/" in f.read_text()
        for m in load_manifests(f)
    ]
    pools = [m for m in manifests if isinstance(m, AcceleratorPool)]
    return pools, [m for m in manifests if isinstance(m, InferenceDeployment)]


def solve(objective: PlacementObjective) -> FleetPlacement:
    pools, deployments = load()
    requests = [dataclasses.replace(placement_request(d, pools), objective=objective) for d in deployments]
    return place_fleet(requests, shared_free_devices={p.metadata.name or "": 64 for p in pools})


def main() -> None:
    _, deployments = load()
    demand = {
        d.metadata.name or "": d.spec.slo.throughput.requests_per_second or 0.0
        for d in deployments
        if d.spec.slo.throughput is not None
    }
    results = {objective: solve(objective) for objective in ("cost", "energy")}
    print("| objective | deployment | placement | $/h | Wh/h | Wh per million requests | status |")
    print("|---|---|---|---|---|---|---|")
    for objective, result in results.items():
        for name, plan in result.plans.items():
            energy = plan.energy_wh_per_hour or 0.0
            per_million = energy / (demand.get(name, 0.0) * 3600) * 1e6 if demand.get(name) else float("nan")
            shown = ", ".join(f"{n} {p}" for p, n in plan.replicas.items())
            print(
                f"| {objective} | {name} | {shown} | {plan.cost_per_hour:.2f} | {energy:.0f} | "
                f"{per_million:.1f} | {plan.status} |"
            )
    totals = {
        o: (r.cost_per_hour, sum(p.energy_wh_per_hour or 0.0 for p in r.plans.values())) for o, r in results.items()
    }
    for objective, (cost, energy) in totals.items():
        print(f"| **{objective}, fleet** | | | **{cost:.2f}** | **{energy:.0f}** | | |")
    (cost_c, energy_c), (cost_e, energy_e) = totals["cost"], totals["energy"]
    print(
        f"objective Energy vs Cost: energy {energy_e / energy_c - 1:+.1%}, cost {cost_e / cost_c - 1:+.1%} "
        f"({energy_c - energy_e:.0f} Wh/h saved for ${cost_e - cost_c:.2f}/h)"
    )


if __name__ == "__main__":
    main()
