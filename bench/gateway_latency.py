"""Added latency of infleet-gateway vs a direct connection to the worker, side by side with nginx as a plain
reverse proxy, at increasing rates of streaming requests.

One upstream (the stub worker of bench/gateway_stub.py: fixed prefill and per-token time, enough slots that
nothing queues; or `--upstream worker`, a real `infleet-worker` with the tiny model) is reached three ways:
directly, through nginx (one worker process, keep-alive upstream, proxy_buffering off) and through the gateway
(static endpoint, probes on). Poisson arrivals at each rate for `--duration` seconds per path, paths run one after
the other at each rate. Reported per path: TTFT (request sent to first token chunk received) and end-to-end p50/p99,
the completion rate achieved, failures, and the latency each proxy adds over direct at the same percentile.

Pinning (with taskset where present): the proxy under test (nginx or the gateway) on CPU 1, the upstream and
the load generator on CPU 0, so "one core" is the proxy's budget.

    python bench/gateway_latency.py [--rates 50,100,200,400] [--duration 5] [--tokens 16] [--upstream stub|worker]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_stub import (
    Proc,
    env,
    free_port,
    open_loop,
    percentile,
    pinned,
    start_gateway,
    start_nginx,
    start_stub,
    wait_http,
)

PROXY_CPU, CLIENT_CPU = 1, 0
WARMUP = 20  # requests before the timed ones (their CPU time is counted, their latency is not)


def start_worker() -> tuple[str, Proc]:
    port = free_port()
    p = subprocess.Popen([*pinned(CLIENT_CPU), sys.executable, "-m", "infleet_worker.cli", "serve", "--model", "tiny",
                          "--device", "cpu", "--served-model-name", "m", "--host", "127.0.0.1", "--port", str(port),
                          "--num-slots", "16", "--log-level", "WARNING"], env=env())
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/readyz", timeout_s=120)
    return url, Proc(p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="50,100,200,400")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--prefill-ms", type=float, default=2.0)
    ap.add_argument("--tpot-ms", type=float, default=2.0)
    ap.add_argument("--upstream", choices=["stub", "worker"], default="stub")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {CLIENT_CPU})
    if args.upstream == "stub":
        upstream, up = start_stub(4096, args.prefill_ms, args.tpot_ms, cpu=CLIENT_CPU)
    else:
        upstream, up = start_worker()
    nginx_url, nginx = start_nginx([upstream], cpu=PROXY_CPU)
    gw_url, gw = start_gateway([f"m={upstream}"], PROXY_CPU, "--max-in-flight-per-replica", "4096",
                               "--max-queue", "100000")
    paths = {"direct": (upstream, None), "nginx": (nginx_url, nginx), "gateway": (gw_url, gw)}
    print(f"upstream={args.upstream} tokens={args.tokens} prefill={args.prefill_ms}ms tpot={args.tpot_ms}ms "
          f"duration={args.duration}s per path and rate; proxy on CPU {PROXY_CPU}, client+upstream on CPU "
          f"{CLIENT_CPU}\n")
    print("| rate/s | path | achieved/s | failed | TTFT p50 ms | TTFT p99 ms | added p50 ms | added p99 ms |"
          " e2e p50 ms | e2e p99 ms | proxy CPU ms/request |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    try:
        for rate in (float(r) for r in args.rates.split(",")):
            base: tuple[float, float] | None = None
            for name, (url, proc) in paths.items():
                cpu_before = proc.cpu_s() if proc else 0.0
                samples, achieved = asyncio.run(open_loop(url, rate, args.duration, args.tokens, args.seed,
                                                          warmup=WARMUP))
                cpu = (proc.cpu_s() - cpu_before) * 1000 / (len(samples) + WARMUP) if proc else float("nan")
                ok = [s for s in samples if s.ttft_s is not None and s.total_s is not None]
                ttft = [s.ttft_s * 1000 for s in ok if s.ttft_s is not None]
                total = [s.total_s * 1000 for s in ok if s.total_s is not None]
                p50, p99 = percentile(ttft, 0.5), percentile(ttft, 0.99)
                if name == "direct":
                    base = (p50, p99)
                assert base is not None
                added = "— | —" if name == "direct" else f"{p50 - base[0]:+.2f} | {p99 - base[1]:+.2f}"
                print(f"| {rate:.0f} | {name} | {achieved:.0f} | {len(samples) - len(ok)} | {p50:.2f} | {p99:.2f} |"
                      f" {added} | {percentile(total, 0.5):.2f} | {percentile(total, 0.99):.2f} | "
                      f"{'—' if proc is None else f'{cpu:.2f}'} |", flush=True)
    finally:
        for p in (gw, nginx, up):
            p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
