"""CPU benchmark: continuous batching vs the same engine limited to one request at a time.

Tiny built-in model, float32 on CPU. 32 requests arrive together (32 concurrent clients); each engine serves
them all through its background thread, exactly as the server does. Reported per mode: output tokens/s over the
whole burst and the p50/p99 of per-request latency (arrival to last token); then the ratios, measured side by
side in this one run (modes interleaved over several rounds, medians reported).

    python bench/worker_cpu_batching.py [--concurrency 32] [--max-tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers"))

from infleet_worker.checkpoint import random_model
from infleet_worker.config import builtin_config
from infleet_worker.engine import Engine, EngineConfig, RequestOutput, SamplingParams
from infleet_worker.model import LlamaModel
from infleet_worker.runner import ModelRunner
from infleet_worker.tokenizer import ByteTokenizer


def burst(model: LlamaModel, slots: int, concurrency: int, max_tokens: int) -> tuple[float, float, float]:
    """Serve `concurrency` simultaneous requests; return (tokens/s, p50 latency s, p99 latency s)."""
    cfg = EngineConfig(num_slots=slots, max_seq_len=256, max_waiting=concurrency)
    engine = Engine(ModelRunner(model, slots, 256), ByteTokenizer(), cfg)
    engine.start()
    done = threading.Event()
    finished: dict[str, float] = {}
    tokens = 0
    lock = threading.Lock()

    def sink(out: RequestOutput) -> None:
        nonlocal tokens
        with lock:
            tokens += len(out.token_ids)
            if out.finished:
                finished[out.request_id] = time.perf_counter()
                if len(finished) == concurrency:
                    done.set()

    prompts = [f"client {i}: tell me a story about request number {i}".encode() for i in range(concurrency)]
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    t0 = time.perf_counter()
    for p in prompts:
        engine.submit([256, *p], params, sink)
    assert done.wait(600)
    wall = time.perf_counter() - t0
    engine.shutdown()
    lat = sorted(t - t0 for t in finished.values())
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    return tokens / wall, statistics.median(lat), p99


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    model = random_model(builtin_config("tiny"), torch.device("cpu"), torch.float32, seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tiny model "
          f"({model.cfg.num_parameters() / 1e3:.0f}k params), {args.concurrency} concurrent requests x "
          f"{args.max_tokens} tokens")
    burst(model, args.concurrency, 4, 8)  # warm-up
    burst(model, 1, 4, 8)
    results: dict[str, list[tuple[float, float, float]]] = {"batched": [], "one_at_a_time": []}
    for _ in range(args.rounds):
        results["batched"].append(burst(model, args.concurrency, args.concurrency, args.max_tokens))
        results["one_at_a_time"].append(burst(model, 1, args.concurrency, args.max_tokens))
    med = {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in results.items()}
    for k, (tps, p50, p99) in med.items():
        print(f"{k:>14}: {tps:8.1f} tokens/s   p50 latency {p50 * 1e3:8.1f} ms   p99 latency {p99 * 1e3:8.1f} ms")
    b, s = med["batched"], med["one_at_a_time"]
    print(f"throughput ratio (batched / one-at-a-time): {b[0] / s[0]:.2f}x")
    print(f"p99 latency ratio (one-at-a-time / batched): {s[2] / b[2]:.2f}x")


if __name__ == "__main__":
    main()
