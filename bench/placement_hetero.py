"""Heterogeneous placement vs the best single-accelerator-type fleet, on the examples' mixed workload.

The workload is every InferenceDeployment in examples/ (an 8B chat LLM, a batch embedder, a small LLM) at its
declared throughput, on the AcceleratorPools of examples/pools.yaml, with capacities from their performance
profiles. "Single type" allows only the pools of one accelerator product (its spot and on-demand pools) for every
deployment, as a fleet built on one kind of hardware would; "heterogeneous" allows every pool. Budgets are ignored
(they would rule single-type fleets out, which is not the comparison); placement restrictions in the manifests
(placement.pools/families) are ignored too, so each fleet may use all the hardware the model has a build for.

    python bench/placement_hetero.py
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from infleet.api import AcceleratorPool, InferenceDeployment, load_manifests
from infleet.policy import place_fleet
from infleet.policy.from_api import placement_request

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
manifests = [
    m for f in sorted(EXAMPLES.glob("*.yaml")) if "apiVersion: infleet.io/" in f.read_text() for m in load_manifests(f)
]
pools = [m for m in manifests if isinstance(m, AcceleratorPool)]
deployments = [m for m in manifests if isinstance(m, InferenceDeployment)]
shared = {p.metadata.name or "": 64 for p in pools}


def fleet(allowed: list[AcceleratorPool]) -> tuple[float, dict[str, dict[str, int]], bool, float]:
    reqs = [
        dataclasses.replace(placement_request(d, allowed, honour_pool_restrictions=False), budget_per_hour=None)
        for d in deployments
    ]
    started = time.perf_counter()
    result = place_fleet(reqs, shared_free_devices=shared)
    elapsed = time.perf_counter() - started
    ok = all(p.status in ("ok", "idle") for p in result.plans.values())
    return result.cost_per_hour, {n: dict(p.replicas) for n, p in result.plans.items()}, ok, elapsed


print(
    "workload:",
    ", ".join(
        f"{d.metadata.name} {d.spec.slo.throughput.requests_per_second if d.spec.slo.throughput else 0:g} rps"
        for d in deployments
    ),
)
products = sorted({p.spec.accelerator.product for p in pools})
singles = {}
for product in products:
    cost, plan, ok, _ = fleet([p for p in pools if p.spec.accelerator.product == product])
    singles[product] = (cost, ok)
    shown = f"${cost:.2f}/h  {plan}" if ok else "cannot meet the SLO for every model"
    print(f"  single type {product:<24} {shown}")
cost, plan, ok, elapsed = fleet(pools)
print(f"  heterogeneous                     ${cost:.2f}/h  {plan}  (solved in {elapsed * 1000:.0f} ms)")
feasible = {k: c for k, (c, good) in singles.items() if good}
best = min(feasible, key=feasible.__getitem__)
print(
    f"heterogeneous is {1 - cost / feasible[best]:.1%} cheaper than the best single-type fleet ({best}, "
    f"${feasible[best]:.2f}/h)"
)
