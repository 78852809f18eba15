"""CPU benchmark: int8 and int4 weight-only quantisation vs the unquantised model, side by side in one run.

A Llama shape with 1B-like layer widths but 2 layers (hidden 2048, intermediate 8192, GQA 32/8, vocab 32,000),
random weights (std 0.02), float32 on CPU. Reported: linear-layer weight memory, decode step time at batch 1
and 8 (median of interleaved repetitions), and the deviation from the unquantised model on the same inputs:
max and RMS logit error relative to the logits' scale, top-1 agreement per position over a 128-token sequence,
and how many of 64 greedily generated tokens are identical.

Random weights are not a trained model: they show the numerical deviation int8/int4 rounding causes in this
architecture, not an accuracy figure for a real checkpoint (Gaussian weights without outliers are int4's worst
case per level but also lack the outlier channels that hurt real models).

    python bench/worker_cpu_quant.py [--reps 20] [--group-size 128]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers"))

from infleet_worker.checkpoint import random_model
from infleet_worker.config import ModelConfig
from infleet_worker.model import LlamaModel
from infleet_worker.quant import DEFAULT_INT4_GROUP_SIZE, QuantReport, quantize_int4, quantize_int8
from infleet_worker.runner import ModelRunner

SHAPE = ModelConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=2,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=1024)


@torch.inference_mode()
def decode_step_s(runner: ModelRunner, batch: int, reps: int) -> float:
    tokens, positions = [1] * batch, [64] * batch
    tables = [runner.dense_table(i) for i in range(batch)]
    runner.decode(tokens, positions, tables)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        runner.sample(runner.decode(tokens, positions, tables), [0.0] * batch, [1.0] * batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def full_logits(model: LlamaModel, ids: list[int]) -> torch.Tensor:
    runner = ModelRunner(model, 1, len(ids) + 1)
    out = []
    for i, t in enumerate(ids):  # every position's logits: chunked prefill, one token per chunk
        out.append(runner.prefill([t], i, runner.dense_table(0)))
    return torch.stack(out)


@torch.inference_mode()
def greedy(model: LlamaModel, prompt: list[int], n: int) -> list[int]:
    runner = ModelRunner(model, 1, len(prompt) + n + 1)
    logits = runner.prefill(prompt, 0, runner.dense_table(0))
    out = []
    for i in range(n):
        t = int(logits.argmax())
        out.append(t)
        logits = runner.decode([t], [len(prompt) + i], [runner.dense_table(0)])[0]
    return out


def deviation(a: torch.Tensor, b: torch.Tensor) -> str:
    rel_max = float((a - b).abs().max() / a.abs().max())
    rel_rms = float((a - b).pow(2).mean().sqrt() / a.std())
    agree = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    return (f"max {rel_max:.2%} of the largest logit, RMS {rel_rms:.2%} of the logits' std; "
            f"top-1 agreement {agree:.1%} of {a.shape[0]} positions")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--group-size", type=int, default=DEFAULT_INT4_GROUP_SIZE, help="int4 group size")
    args = ap.parse_args()
    ref = random_model(SHAPE, torch.device("cpu"), torch.float32, seed=0)
    models: dict[str, LlamaModel] = {"fp32": ref, "int8": copy.deepcopy(ref), "int4": copy.deepcopy(ref)}
    reports: dict[str, QuantReport] = {"int8": quantize_int8(models["int8"]),
                                       "int4": quantize_int4(models["int4"], args.group_size)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {SHAPE.num_parameters() / 1e6:.0f}M params; "
          f"int4 group size {args.group_size}")
    before = reports["int8"].bytes_before
    print(f"linear weights: fp32 {before / 2**20:.0f} MiB (a bf16 model's would be {before / 2 / 2**20:.0f} MiB)")
    for name, report in reports.items():
        print(f"  {name}: {report.bytes_after / 2**20:.0f} MiB ({report.bytes_after / before:.1%})"
              + (f", left unquantised: {', '.join(report.skipped)}" if report.skipped else ""))
    runners = {name: ModelRunner(m, 8, 128) for name, m in models.items()}
    for batch in (1, 8):
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(3):  # interleaved
            for name, runner in runners.items():
                times[name].append(decode_step_s(runner, batch, args.reps))
        med = {name: statistics.median(t) for name, t in times.items()}
        print(f"decode step, batch {batch}: " + ", ".join(
            f"{name} {t * 1e3:.1f} ms" + ("" if name == "fp32" else f" ({t / med['fp32']:.2f}x fp32)")
            for name, t in med.items()))
    ids = [(37 * j + 11) % SHAPE.vocab_size for j in range(128)]
    a = full_logits(ref, ids)
    g_ref = greedy(ref, ids[:16], 64)
    for name in ("int8", "int4"):
        print(f"{name} logit deviation: {deviation(a, full_logits(models[name], ids))}")
        g_q = greedy(models[name], ids[:16], 64)
        same = sum(x == y for x, y in zip(g_ref, g_q, strict=True))
        first_diff = next((k for k, (x, y) in enumerate(zip(g_ref, g_q, strict=True)) if x != y), None)
        print(f"{name} greedy 64 tokens: {same}/64 identical; first difference at token {first_diff}")


if __name__ == "__main__":
    main()
