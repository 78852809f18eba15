"""Placement speed and optimality: the joint MILP (old path) and the decomposition, side by side in one run.

Deployments over 12 pools (6 accelerator types x on-demand/spot) sharing the pools' devices; random demands,
memory footprints, per-type capacities and spot policies (seed 7). Pool sizes scale with the fleet (x n/1000), so
the 1,000-deployment instance is the one in issue 9 and every size is as tight. Each fleet is solved by
``method="joint"`` (one HiGHS MILP, 5 s limit: the old path) and by ``method="decomposed"`` with 1, 2 and 5 s
budgets; every answer carries a certified lower bound, and the gap of each is taken against the best (highest)
bound any of them proved. Then ``place()`` for one deployment, both ways.

python bench/placement_speed.py [--sizes 200 1000 2000] [--long 0]

``--long S`` adds a joint MILP run with an S-second limit (a stronger bound, slowly).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from infleet.policy import FleetPlacement, PlacementRequest, PoolOffer, place, place_fleet

ACCELERATORS = [
    ("h100", 6.88, 80, 1),
    ("l4", 1.15, 24, 1),
    ("inf2", 1.08, 32, 2),
    ("tpu", 1.2, 16, 4),
    ("cpu", 0.36, 15, 2),
    ("a10g", 1.01, 24, 1),
]


def fleet(n: int) -> tuple[list[PlacementRequest], dict[str, int]]:
    rng = random.Random(7)
    pools = []
    for acc, price, mem, dev in ACCELERATORS:
        pools.append((f"{acc}-on-demand", acc, "on-demand", price, dev, mem, rng.randint(64, 400)))
        pools.append((f"{acc}-spot", acc, "spot", price * 0.4, dev, mem, rng.randint(16, 100)))
    requests = []
    for i in range(n):
        per_acc = {acc: rng.uniform(0.5, 20) for acc, *_ in ACCELERATORS}
        offers = tuple(
            PoolOffer(
                pool=p,
                accelerator=a,
                capacity_type=c,  # type: ignore[arg-type]
                price_per_device_hour=pr,
                devices_per_replica=d,
                device_memory_gib=m,
                free_devices=free,
                replica_capacity_rps=per_acc[a],
            )
            for p, a, c, pr, d, m, free in pools
        )
        requests.append(
            PlacementRequest(
                f"d{i}", rng.uniform(0, 60), rng.uniform(1, 30), offers, max_spot_fraction=rng.choice([0.0, 0.5, 1.0])
            )
        )
    return requests, {p[0]: int(p[6] * 3 * n / 1000) for p in pools}


def describe(name: str, result: FleetPlacement, wall: float, bound: float) -> str:
    solvers = sorted({p.solver for p in result.plans.values()})
    ok = sum(p.status == "ok" for p in result.plans.values())
    gap = (result.cost_per_hour - bound) / result.cost_per_hour if result.cost_per_hour else 0.0
    return (
        f"  {name:<22} {wall:6.2f} s  ${result.cost_per_hour:9.1f}/h  gap {gap:7.2%} (own {result.mip_gap:7.2%})  "
        f"ok {ok}/{len(result.plans)}  {','.join(solvers)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 2000])
    parser.add_argument("--long", type=float, default=0.0, help="seconds for an extra long joint MILP (0: none)")
    args = parser.parse_args()
    for n in args.sizes:
        requests, shared = fleet(n)
        runs: list[tuple[str, FleetPlacement, float]] = []
        settings = [("joint MILP, 5 s", "joint", 5.0)]
        settings += [(f"decomposed, {b:g} s", "decomposed", b) for b in (1.0, 2.0, 5.0)]
        if args.long:
            settings.append((f"joint MILP, {args.long:g} s", "joint", args.long))
        for name, method, limit in settings:
            started = time.perf_counter()
            result = place_fleet(requests, shared_free_devices=shared, time_limit_s=limit, method=method)  # type: ignore[arg-type]
            runs.append((name, result, time.perf_counter() - started))
        bound = max(r.lower_bound_per_hour for _, r, _ in runs)
        print(f"{n} deployments x 12 pools (best lower bound ${bound:.1f}/h):")
        for name, result, wall in runs:
            print(describe(name, result, wall, bound))

    requests, _ = fleet(200)
    for method in ("joint", "decomposed"):
        times = []
        for req in requests:
            started = time.perf_counter()
            place_fleet([req], method=method)  # type: ignore[arg-type]
            times.append(time.perf_counter() - started)
        print(
            f"place() one deployment, {method}: median {statistics.median(times) * 1e3:.2f} ms, "
            f"p99 {sorted(times)[int(0.99 * len(times))] * 1e3:.2f} ms over 200 deployments"
        )
    single = [place(r) for r in requests[:5]]
    assert all(p.solver in ("exact", "milp") for p in single)


if __name__ == "__main__":
    main()
