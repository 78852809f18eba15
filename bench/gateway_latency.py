"""Added latency of infleet-gateway vs a direct connection to the worker, side by side with nginx as a plain
reverse proxy, at increasing rates of streaming requests.

One upstream (the stub worker of bench/gateway_stub.py: fixed prefill and per-token time, enough slots that
nothing queues; or `--upstream worker`, a real `infleet-worker` with the tiny model) is reached three ways:
directly, through nginx (one worker process, keep-alive upstream, proxy_buffering off) and through the gateway
(static endpoint, probes on). Poisson arrivals at each rate for `--duration` seconds per path, paths run one after
the other at each rate. Reported per path: TTFT (request sent to first token chunk received) and end-to-end p50/p99,
the completion rate achieved, failures, the latency each proxy adds over direct at the same percentile, and the
proxy's CPU time per request (from /proc, process tree: the one number that the machine's other load barely
moves). Each rate runs `--rounds` rounds with the paths interleaved; the medians over rounds are printed.

Pinning (with taskset where present): the proxy under test (nginx or the gateway) on CPU 1, the upstream and
the load generator on CPU 0, so "one core" is the proxy's budget.

    python bench/gateway_latency.py [--rates 50,100,200,400] [--duration 5] [--rounds 3] [--tokens 16]
                                    [--upstream stub|worker]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
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


@dataclass(frozen=True, kw_only=True)
class Run:
    achieved: float
    failed: float
    ttft_p50: float
    ttft_p99: float
    e2e_p50: float
    e2e_p99: float
    cpu_ms: float  # the proxy's CPU time per request (nan for direct)


def measure(url: str, proc: Proc | None, rate: float, duration: float, tokens: int, seed: int) -> Run:
    cpu_before = proc.cpu_s() if proc else 0.0
    samples, achieved = asyncio.run(open_loop(url, rate, duration, tokens, seed, warmup=WARMUP))
    cpu = (proc.cpu_s() - cpu_before) * 1000 / (len(samples) + WARMUP) if proc else float("nan")
    ok = [s for s in samples if s.ttft_s is not None and s.total_s is not None]
    ttft = [s.ttft_s * 1000 for s in ok if s.ttft_s is not None]
    total = [s.total_s * 1000 for s in ok if s.total_s is not None]
    return Run(achieved=achieved, failed=len(samples) - len(ok), ttft_p50=percentile(ttft, 0.5),
               ttft_p99=percentile(ttft, 0.99), e2e_p50=percentile(total, 0.5), e2e_p99=percentile(total, 0.99),
               cpu_ms=cpu)


def median_run(runs: list[Run]) -> Run:
    """Each field's median over the rounds."""
    return Run(**{f: statistics.median(getattr(r, f) for r in runs) for f in Run.__dataclass_fields__})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="50,100,200,400")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--prefill-ms", type=float, default=2.0)
    ap.add_argument("--tpot-ms", type=float, default=2.0)
    ap.add_argument("--upstream", choices=["stub", "worker"], default="stub")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per rate; medians are reported")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1 and not os.environ.get("GATEWAY_BENCH_NO_PIN"):
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
          f"duration={args.duration}s per path, rate and round, medians of {args.rounds} interleaved rounds;"
          f" proxy on CPU {PROXY_CPU}, client+upstream on CPU "
          f"{CLIENT_CPU}\n")
    print("| rate/s | path | achieved/s | failed | TTFT p50 ms | TTFT p99 ms | added p50 ms | added p99 ms |"
          " e2e p50 ms | e2e p99 ms | proxy CPU ms/request |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    try:
        for rate in (float(r) for r in args.rates.split(",")):
            rounds: dict[str, list[Run]] = {name: [] for name in paths}
            for r in range(args.rounds):  # paths interleaved, so a noisy minute hits all of them
                for name, (url, proc) in paths.items():
                    rounds[name].append(measure(url, proc, rate, args.duration, args.tokens, args.seed + r))
            base = median_run(rounds["direct"])
            for name, (_url, proc) in paths.items():
                m = median_run(rounds[name])
                added = "— | —" if name == "direct" else (f"{m.ttft_p50 - base.ttft_p50:+.2f} | "
                                                          f"{m.ttft_p99 - base.ttft_p99:+.2f}")
                print(f"| {rate:.0f} | {name} | {m.achieved:.0f} | {m.failed:.0f} | {m.ttft_p50:.2f} | "
                      f"{m.ttft_p99:.2f} | {added} | {m.e2e_p50:.2f} | {m.e2e_p99:.2f} | "
                      f"{'—' if proc is None else f'{m.cpu_ms:.2f}'} |", flush=True)
    finally:
        for p in (gw, nginx, up):
            p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
