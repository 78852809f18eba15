"""Routing quality on a mixed fleet: infleet-gateway's load-aware rule vs round-robin, p99 TTFT at equal load.

Two fast stub replicas and two slow ones (bench/gateway_stub.py): a fast replica runs `--fast-slots` requests at
once at `--fast-tpot-ms` per token, a slow one `--slow-slots` at `--slow-tpot-ms`; requests beyond the slots wait
in the replica's own queue, as in a worker. The same Poisson arrivals (same seed) go through:

- round-robin: nginx's default upstream balancing (what a Service / kube-proxy does, connection by connection);
- gateway, equal: infleet-gateway without capacities (least outstanding requests);
- gateway, capacity: infleet-gateway told each replica's capacity (requests/s it sustains: slots / service time),
  so outstanding work is normalised by it (infleet.policy.routing).

Offered load is `--load` times the fleet's total capacity. Reported: TTFT p50/p90/p99, end-to-end p99, share of
requests the fast replicas served (from the stubs' own counts), failures.

    python bench/gateway_routing.py [--load 0.7] [--duration 10] [--tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_stub import Proc, open_loop, percentile, start_gateway, start_nginx, start_stub


def served_by(url: str) -> float:
    """Requests a stub has finished, read from its own counter."""
    with urllib.request.urlopen(url + "/stats", timeout=5) as r:
        return float(json.loads(r.read())["finished"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", type=float, default=0.7, help="offered load as a fraction of the fleet's capacity")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--fast-slots", type=int, default=8)
    ap.add_argument("--fast-tpot-ms", type=float, default=5.0)
    ap.add_argument("--slow-slots", type=int, default=4)
    ap.add_argument("--slow-tpot-ms", type=float, default=15.0)
    ap.add_argument("--prefill-ms", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})

    def capacity(slots: int, tpot_ms: float) -> float:
        return slots / ((args.prefill_ms + (args.tokens - 1) * tpot_ms) / 1000)

    fast_cap, slow_cap = capacity(args.fast_slots, args.fast_tpot_ms), capacity(args.slow_slots, args.slow_tpot_ms)
    procs: list[Proc] = []
    fast, slow = [], []
    try:
        for _ in range(2):
            url, p = start_stub(args.fast_slots, args.prefill_ms, args.fast_tpot_ms, cpu=0)
            fast.append(url)
            procs.append(p)
            url, p = start_stub(args.slow_slots, args.prefill_ms, args.slow_tpot_ms, cpu=0)
            slow.append(url)
            procs.append(p)
        rate = args.load * 2 * (fast_cap + slow_cap)
        print(f"fleet: 2 fast ({fast_cap:.1f} req/s each) + 2 slow ({slow_cap:.1f} req/s each); offered "
              f"{rate:.1f} req/s = {args.load:.0%} of capacity for {args.duration:.0f}s; {args.tokens} tokens\n")
        nginx_url, nginx = start_nginx(fast + slow, cpu=1)
        procs.append(nginx)
        plain = [f"m={u}" for u in fast + slow]
        equal_url, equal = start_gateway(plain, 1, "--max-in-flight-per-replica", "10000", "--max-queue", "100000")
        procs.append(equal)
        rated = [f"m={u},capacity={fast_cap:.2f}" for u in fast] + [f"m={u},capacity={slow_cap:.2f}" for u in slow]
        cap_url, cap = start_gateway(rated, 1, "--max-in-flight-per-replica", "10000", "--max-queue", "100000")
        procs.append(cap)
        print("| routing | achieved/s | failed | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | e2e p99 ms |"
              " served by fast replicas |")
        print("|---|---|---|---|---|---|---|---|")
        for name, url in (("round-robin (nginx)", nginx_url), ("gateway, equal replicas", equal_url),
                          ("gateway, capacity-aware", cap_url)):
            before = [served_by(u) for u in fast + slow]
            samples, achieved = asyncio.run(open_loop(url, rate, args.duration, args.tokens, args.seed, warmup=0))
            after = [served_by(u) for u in fast + slow]
            delta = [a - b for a, b in zip(after, before, strict=True)]
            share = sum(delta[:2]) / max(1.0, sum(delta))
            ok = [s for s in samples if s.ttft_s is not None and s.total_s is not None]
            ttft = [s.ttft_s * 1000 for s in ok if s.ttft_s is not None]
            total = [s.total_s * 1000 for s in ok if s.total_s is not None]
            print(f"| {name} | {achieved:.1f} | {len(samples) - len(ok)} | {percentile(ttft, 0.5):.1f} | "
                  f"{percentile(ttft, 0.9):.1f} | {percentile(ttft, 0.99):.1f} | {percentile(total, 0.99):.1f} | "
                  f"{share:.0%} |", flush=True)
    finally:
        for p in reversed(procs):
            p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
