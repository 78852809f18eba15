"""CPU benchmark: a multi-turn chat replay at 1/8/32/64 concurrent streams, with and without prefix caching.

Each stream is a conversation: a shared system prompt, then `--turns` user turns; every turn's prompt is the whole
conversation so far (system + earlier user turns and answers + the new user turn), as a chat client sends it.
A stream submits its next turn when the previous answer is complete. Reported per (streams, mode): output
tokens/s over the run, p50/p99 of per-turn latency (submit to last token), prompt tokens prefilled vs found in the
prefix cache, and the most KV blocks requests held at once (shared prefix blocks count once); then the ratios
measured side by side (modes interleaved per stream count).

The model is a small Llama shape (random weights, float32) so the run fits a 2-core machine in minutes; the KV
bytes per 1k tokens held are printed for it and for the built-in 8B shape.

    python bench/worker_cpu_prefix.py [--streams 1 8 32 64] [--turns 3] [--system 192] [--user 24] [--answer 24]
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
from infleet_worker.config import ModelConfig, builtin_config
from infleet_worker.engine import Engine, EngineConfig, RequestOutput, SamplingParams
from infleet_worker.model import LlamaModel
from infleet_worker.runner import ModelRunner
from infleet_worker.tokenizer import ByteTokenizer

SHAPE = ModelConfig(vocab_size=320, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048, bos_token_id=256,
                    eos_token_id=257)


def replay(model: LlamaModel, streams: int, turns: int, system: list[int], user: int, answer: int,
           prefix_blocks: int) -> dict[str, float]:
    max_len = 1 + len(system) + turns * (user + answer) + 8
    cfg = EngineConfig(num_slots=streams, max_seq_len=max_len, max_waiting=streams,
                       max_num_batched_tokens=512, prefix_cache_blocks=prefix_blocks)
    # The pool the CLI would size: streams x max_len tokens' worth, plus the prefix blocks when caching is on.
    runner = ModelRunner(model, streams, max_len, num_blocks=cfg.num_kv_blocks, block_size=cfg.block_size)
    engine = Engine(runner, ByteTokenizer(), cfg)
    peak = [0]  # most KV blocks requests referenced at once, read at every token event (sharing shows here)
    engine.start()
    lock = threading.Lock()
    latencies: list[float] = []
    produced = 0
    all_done = threading.Event()
    remaining = [streams]
    params = SamplingParams(max_tokens=answer, ignore_eos=True)

    def start_turn(stream: int, turn: int, history: list[int]) -> None:
        prompt = [*history, *[(31 * stream + 7 * turn + j) % 256 for j in range(user)]]
        out: list[int] = []
        t0 = time.perf_counter()

        def sink(ev: RequestOutput) -> None:
            nonlocal produced
            out.extend(ev.token_ids)
            peak[0] = max(peak[0], engine.pool.blocks_in_use)
            if not ev.finished:
                return
            with lock:
                latencies.append(time.perf_counter() - t0)
                produced += len(out)
            if turn + 1 < turns:
                # Called on the engine thread: submit the next turn from a helper thread.
                threading.Thread(target=start_turn, args=(stream, turn + 1, [*prompt, *out])).start()
            else:
                with lock:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        all_done.set()

        engine.submit(prompt, params, sink)

    t0 = time.perf_counter()
    for s in range(streams):
        start_turn(s, 0, [256, *system])
    assert all_done.wait(1800), "replay did not finish"
    wall = time.perf_counter() - t0
    engine.shutdown()
    lat = sorted(latencies)
    prefix = engine.prefix
    return {
        "tokens_per_s": produced / wall,
        "p50_s": statistics.median(lat),
        "p99_s": lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))],
        "hit_tokens": float(prefix.hit_tokens if prefix else 0),
        "query_tokens": float(prefix.query_tokens if prefix else 0),
        "wall_s": wall,
        "peak_blocks": float(peak[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--system", type=int, default=192)
    ap.add_argument("--user", type=int, default=24)
    ap.add_argument("--answer", type=int, default=24)
    ap.add_argument("--prefix-blocks", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved off/on rounds per stream count (medians)")
    args = ap.parse_args()
    model = random_model(SHAPE, torch.device("cpu"), torch.float32, seed=0)
    system = [(5 * i + 1) % 256 for i in range(args.system)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {SHAPE.num_parameters() / 1e6:.1f}M "
          f"params (float32); {args.turns} turns of system {args.system} + user {args.user} + answer "
          f"{args.answer} tokens")
    kv = SHAPE.kv_bytes_per_token(4)
    kv8b = builtin_config("llama-8b").kv_bytes_per_token(2)
    print(f"KV per 1k tokens held: this model {kv * 1000 / 2**20:.2f} MiB (fp32); llama-8b shape "
          f"{kv8b * 1000 / 2**20:.0f} MiB (bf16). The paged pool holds streams x max_seq_len of it (+ the prefix "
          f"blocks when on); requests reference blocks of 16 as they fill them, and share cached prefix blocks.")
    replay(model, 2, 1, system[:16], 4, 4, 0)  # warm-up
    print("| streams | prefix cache | output tokens/s | p50 turn latency | p99 turn latency "
          "| prompt tokens from cache | peak KV blocks held |")
    print("|---|---|---|---|---|---|---|")
    for n in args.streams:
        runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for label, blocks in (("off", 0), ("on", args.prefix_blocks)):
                runs[label].append(replay(model, n, args.turns, system, args.user, args.answer, blocks))
        rows = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in runs.items()}
        for label, r in rows.items():
            share = f"{r['hit_tokens'] / r['query_tokens']:.0%}" if r["query_tokens"] else "-"
            print(f"| {n} | {label} | {r['tokens_per_s']:,.0f} | {r['p50_s'] * 1e3:,.0f} ms | "
                  f"{r['p99_s'] * 1e3:,.0f} ms | {share} | {r['peak_blocks']:,.0f} |", flush=True)
        on, off = rows["on"], rows["off"]
        print(f"|   {n} | ratio on/off | {on['tokens_per_s'] / off['tokens_per_s']:.2f}x | | "
              f"{off['p99_s'] / on['p99_s']:.2f}x lower p99 | | |", flush=True)


if __name__ == "__main__":
    main()
