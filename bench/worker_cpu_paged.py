"""CPU benchmark: KV memory reserved vs held, old slot cache vs the paged cache, and the decode step's cost.

1. A mixed workload (`--requests` requests of varied prompt and output lengths, all submitted at once) runs
   through the paged engine, stepped synchronously; after every step it records the tokens requests hold and
   the KV blocks they reference. The old slot cache reserved `num_slots x (max_seq_len + 1)` tokens for the whole
   run (that is the tensor `runner.KVCache` allocated; with a pool large enough never to make a request wait, the
   paged engine schedules exactly as the slot engine did, so the held-token trajectory is the same). Reported:
   KV bytes reserved or in use per 1k tokens held (time-averaged over steps), and peaks. The same workload is
   rerun with pools of 1/2 and 1/4 of the old budget: it completes (requests wait, or are preempted and
   recomputed), at what cost in wall time.
2. Decode step time, old contiguous slot read vs the paged gather, at a few batch sizes and contexts: the old
   `LlamaModel.decode` is loaded from git (`--baseline`, the commit before paging) and called on the same weights.

    python bench/worker_cpu_paged.py [--requests 32] [--max-seq-len 512] [--block-size 16] [--reps 30] [--threads N]
        [--parts memory steps]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers"))

from infleet_worker.checkpoint import random_model
from infleet_worker.config import ModelConfig, builtin_config
from infleet_worker.engine import Engine, EngineConfig, SamplingParams
from infleet_worker.model import LlamaModel
from infleet_worker.runner import ModelRunner
from infleet_worker.tokenizer import ByteTokenizer

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ModelConfig(vocab_size=320, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048, bos_token_id=256,
                    eos_token_id=257)
MIB = 2**20


def workload(n: int, max_seq_len: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """Prompts of 16..75% of max_seq_len tokens, outputs of 8..128 tokens, within max_seq_len."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = rng.randint(16, int(0.75 * max_seq_len))
        gen = min(rng.randint(8, 128), max_seq_len - prompt)
        out.append(([rng.randrange(256) for _ in range(prompt)], gen))
    return out


def run_mixed(model: LlamaModel, reqs: list[tuple[list[int], int]], slots: int, max_seq_len: int, bs: int,
              blocks: int) -> dict[str, float]:
    cfg = EngineConfig(num_slots=slots, max_seq_len=max_seq_len, max_waiting=len(reqs), block_size=bs,
                       kv_blocks=blocks)
    engine = Engine(ModelRunner(model, slots, max_seq_len, num_blocks=blocks, block_size=bs), ByteTokenizer(), cfg)
    for prompt, gen in reqs:
        engine.submit(prompt, SamplingParams(max_tokens=gen, ignore_eos=True), lambda o: None)
    held, in_use = [], []
    t0 = time.perf_counter()
    while not engine.is_idle():
        engine.step()
        held.append(engine.kv_tokens_held)
        in_use.append(engine.pool.blocks_in_use)
    wall = time.perf_counter() - t0
    assert engine.pool.blocks_in_use == 0
    return {"wall_s": wall, "steps": float(engine.steps), "preemptions": float(engine.preemptions),
            "mean_held": statistics.mean(held), "peak_held": float(max(held)),
            "mean_blocks": statistics.mean(in_use), "peak_blocks": float(max(in_use))}


def memory_table(model: LlamaModel, args: argparse.Namespace) -> None:
    reqs = workload(args.requests, args.max_seq_len)
    run_mixed(model, reqs[:2], 2, args.max_seq_len, args.block_size, 64)  # warm-up
    per_token = SHAPE.kv_bytes_per_token(4)
    slots, bs = args.requests, args.block_size
    old_reserved = slots * (args.max_seq_len + 1) * per_token
    budget = slots * -(-args.max_seq_len // bs)  # default pool: the old budget in blocks
    print(f"\nMixed workload: {len(reqs)} requests, prompts {min(len(p) for p, _ in reqs)}-"
          f"{max(len(p) for p, _ in reqs)} tokens, outputs {min(g for _, g in reqs)}-{max(g for _, g in reqs)}; "
          f"{slots} slots, max_seq_len {args.max_seq_len}, blocks of {bs}; KV {per_token * 1000 / MIB:.2f} MiB per "
          f"1k tokens (fp32)")
    runs = {f: run_mixed(model, reqs, slots, args.max_seq_len, bs, budget // f) for f in (1, 2, 4)}
    base = runs[1]
    print("| cache | KV memory | per 1k tokens held (mean over steps) | peak in use | peak held | "
          "preemptions | wall |")
    print("|---|---|---|---|---|---|---|")
    print(f"| slot cache (old): reserved | {old_reserved / MIB:.1f} MiB | "
          f"{old_reserved / base['mean_held'] * 1000 / MIB:.1f} MiB | {old_reserved / MIB:.1f} MiB | "
          f"{base['peak_held'] * per_token / MIB:.1f} MiB | - | - |")
    for f, r in runs.items():
        block_bytes = bs * per_token
        print(f"| paged, pool {budget // f} blocks (1/{f} of old) | {budget // f * block_bytes / MIB:.1f} MiB pool | "
              f"{r['mean_blocks'] * block_bytes / r['mean_held'] * 1000 / MIB:.2f} MiB | "
              f"{r['peak_blocks'] * block_bytes / MIB:.1f} MiB | {r['peak_held'] * per_token / MIB:.1f} MiB | "
              f"{r['preemptions']:.0f} | {r['wall_s']:.1f} s ({r['steps']:.0f} steps) |", flush=True)


def load_baseline_model(rev: str) -> ModuleType | None:
    """`infleet_worker/model.py` as it was at `rev` (the unpaged decode), or None when git cannot show it."""
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:workers/infleet_worker/model.py"],
                             check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "slot_model.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("slot_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.inference_mode()
def step_times(model: LlamaModel, old: ModuleType, batch: int, pos: int, args: argparse.Namespace) -> tuple[float,
                                                                                                           float]:
    runner = ModelRunner(model, batch, args.max_seq_len, block_size=args.block_size)
    runner.cache.k.normal_()
    runner.cache.v.normal_()
    cfg = model.cfg
    slots = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, args.max_seq_len + 1, cfg.dim_per_head)
    k_old, v_old = torch.randn(slots), torch.randn(slots)
    tokens, positions = [1] * batch, [pos] * batch
    tables = [runner.dense_table(i) for i in range(batch)]
    t, p = torch.tensor(tokens), torch.tensor(positions)

    def old_step() -> None:
        old.LlamaModel.decode(model, t, p, pos + 1, k_old, v_old)

    def new_step() -> None:
        runner.decode(tokens, positions, tables)

    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(3):
        old_step()
        new_step()
    for _ in range(args.reps):  # interleaved, so load from other jobs hits both alike
        for name, fn in (("old", old_step), ("new", new_step)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return statistics.median(times["old"]), statistics.median(times["new"])


def step_table(model: LlamaModel, args: argparse.Namespace) -> None:
    old = load_baseline_model(args.baseline)
    if old is None:
        print(f"\n(decode step comparison skipped: git cannot show {args.baseline})")
        return
    print(f"\nDecode step (eager CPU, model forward only), slot cache at {args.baseline} vs paged gather; medians "
          f"of {args.reps} interleaved steps:")
    print("| batch | context | slot cache | paged | paged / slot |")
    print("|---|---|---|---|---|")
    for batch, pos in ((1, 128), (8, 128), (32, 128), (8, 448), (32, 448)):
        o, n = step_times(model, old, batch, pos, args)
        print(f"| {batch} | {pos} | {o * 1e3:.2f} ms | {n * 1e3:.2f} ms | {n / o:.2f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--baseline", default="0ed9bf9", help="git revision with the unpaged slot cache")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--parts", nargs="+", choices=["memory", "steps"], default=["memory", "steps"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = random_model(SHAPE, torch.device("cpu"), torch.float32, seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {SHAPE.num_parameters() / 1e6:.1f}M "
          f"params (float32); llama-8b shape: {builtin_config('llama-8b').kv_bytes_per_token(2) * 1000 / MIB:.0f} "
          f"MiB per 1k tokens (bf16)")
    if "memory" in args.parts:
        memory_table(model, args)
    if "steps" in args.parts:
        step_table(model, args)


if __name__ == "__main__":
    main()
