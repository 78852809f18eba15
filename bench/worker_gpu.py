"""GPU benchmark of the infleet worker engine (run on the H100 device machine).

Measures, side by side in one run:
  * HBM bandwidth with a large device-to-device copy (bytes read + written / time),
  * batch-1 decode tokens/s of an 8B-shaped Llama (bf16, random weights) vs the memory roofline
    (decode weight bytes per token / measured bandwidth),
  * the same request through Hugging Face transformers `generate()` on the same weights (naive baseline),
  * engine throughput at 1, 8, 32 and 64 concurrent streams,
and checks correctness first: a transformers-saved checkpoint loads into our model with matching logits and
greedy tokens, and CUDA-graph batched decoding matches eager unbatched decoding.

    python bench/worker_gpu.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers"))

from infleet_worker.checkpoint import empty_model, load_checkpoint, load_hf_state_dict
from infleet_worker.config import builtin_config
from infleet_worker.devices import resolve_device
from infleet_worker.engine import Engine, EngineConfig, RequestOutput, SamplingParams
from infleet_worker.model import LlamaModel
from infleet_worker.runner import ModelRunner
from infleet_worker.tokenizer import ByteTokenizer

RESULTS: dict[str, object] = {}


def note(key: str, value: object) -> None:
    RESULTS[key] = value
    print(f"{key}: {value}", flush=True)


def hbm_bandwidth(gib: float = 4.0, iters: int = 20) -> float:
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    start.record()
    for _ in range(iters):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = float(start.elapsed_time(end)) / 1000 / iters
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n * 2 / seconds  # bytes read + bytes written


def hf_config(cfg_dict: dict[str, object]):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig

    d = dict(cfg_dict)
    d.pop("architectures", None)
    d.pop("model_type", None)
    return LlamaConfig(**d, attn_implementation="sdpa")


def run_engine(engine: Engine, prompts: list[list[int]], params: SamplingParams) -> tuple[dict[str, list[int]], float]:
    outs: dict[str, list[int]] = {}

    def sink(o: RequestOutput) -> None:
        outs.setdefault(o.request_id, []).extend(o.token_ids)

    ids = [engine.submit(p, params, sink) for p in prompts]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    while not engine.is_idle():
        engine.step()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {i: outs[i] for i in ids}, wall


def check_hf_checkpoint(tmp: Path) -> None:
    """transformers saves a tiny Llama; we load it and compare logits and greedy tokens (float32)."""
    from transformers import LlamaForCausalLM

    cfg = builtin_config("tiny")
    torch.manual_seed(0)
    hf = LlamaForCausalLM(hf_config(cfg.to_hf_dict())).cuda().float().eval()
    hf.save_pretrained(tmp / "tiny-hf")
    ours = load_checkpoint(tmp / "tiny-hf", torch.device("cuda"), torch.float32)
    prompt = torch.randint(0, 256, (37,), device="cuda")
    with torch.no_grad():
        ref = hf(prompt[None]).logits[0, -1].float()
    runner = ModelRunner(ours, 2, 128, use_cuda_graphs=False)
    got = runner.prefill(prompt.tolist(), 0, runner.dense_table(0)).float()
    note("hf_tiny_fp32_last_logit_max_abs_diff", float((ref - got).abs().max()))
    with torch.no_grad():
        ref_gen = hf.generate(prompt[None], max_new_tokens=24, min_new_tokens=24, do_sample=False)[0, 37:].tolist()
    engine = Engine(runner, ByteTokenizer(), EngineConfig(num_slots=2, max_seq_len=128))
    outs, _ = run_engine(engine, [prompt.tolist()], SamplingParams(max_tokens=24, ignore_eos=True))
    note("hf_tiny_fp32_greedy_tokens_equal", next(iter(outs.values())) == ref_gen)


def check_graph_batching() -> None:
    spec = resolve_device("cuda", "bfloat16")
    from infleet_worker.checkpoint import random_model

    model = random_model(builtin_config("tiny"), spec.device, spec.dtype, seed=3)
    prompts = [[(7 * i + j) % 256 for j in range(5 + 9 * i)] for i in range(6)]
    params = SamplingParams(max_tokens=30, ignore_eos=True)
    eager = Engine(ModelRunner(model, 1, 256, use_cuda_graphs=False), ByteTokenizer(),
                   EngineConfig(num_slots=1, max_seq_len=256))
    single = [next(iter(run_engine(eager, [p], params)[0].values())) for p in prompts]
    graphed_runner = ModelRunner(model, 8, 256, use_cuda_graphs=True)
    note("tiny_graphs_captured", graphed_runner.capture_all())
    graphed = Engine(graphed_runner, ByteTokenizer(), EngineConfig(num_slots=8, max_seq_len=256))
    batched, _ = run_engine(graphed, prompts, params)
    same = sum(b == s for b, s in zip(batched.values(), single, strict=True))
    note("tiny_bf16_graph_batched_equals_eager_single", f"{same}/{len(prompts)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="worker_gpu_results.json")
    ap.add_argument("--model", default="llama-8b")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=256)
    ap.add_argument("--hf-gen-len", type=int, default=128)
    ap.add_argument("--profile", action="store_true", help="print kernel profiles of eager decode steps")
    args = ap.parse_args()
    note("device", torch.cuda.get_device_name())
    note("torch", torch.__version__)
    import transformers

    note("transformers", transformers.__version__)
    bw = hbm_bandwidth()
    note("hbm_copy_bandwidth_GBps", round(bw / 1e9, 1))

    with tempfile.TemporaryDirectory() as tmp:
        check_hf_checkpoint(Path(tmp))
    check_graph_batching()

    # ---- 8B: transformers model with random weights, the same weights copied into ours --------------------
    from transformers import LlamaForCausalLM

    cfg = builtin_config(args.model)
    t0 = time.perf_counter()
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        hf = LlamaForCausalLM(hf_config(cfg.to_hf_dict())).eval()
        torch.set_default_dtype(torch.float32)
    torch.cuda.synchronize()
    note("hf_model_init_s", round(time.perf_counter() - t0, 1))
    spec = resolve_device("cuda", "bfloat16")
    ours = empty_model(cfg, spec.device, spec.dtype)
    load_hf_state_dict(ours, dict(hf.state_dict()))
    note("params_billion", round(cfg.num_parameters() / 1e9, 3))
    weight_bytes = cfg.decode_weight_bytes(2)
    note("decode_weight_bytes_GB", round(weight_bytes / 1e9, 3))

    prompt = torch.randint(0, 256, (args.prompt_len,), device="cuda")
    with torch.no_grad():
        ref = hf(prompt[None]).logits[0, -1].float()
    max_len = args.prompt_len + args.gen_len + 8
    runner = ModelRunner(ours, 64, max(max_len, 512), use_cuda_graphs=True)
    got = runner.prefill(prompt.tolist(), 0, runner.dense_table(0)).float()
    note("hf_8b_bf16_last_logit_max_abs_diff", round(float((ref - got).abs().max()), 4))
    note("hf_8b_bf16_logit_scale_max_abs", round(float(ref.abs().max()), 4))
    note("hf_8b_bf16_argmax_equal", int(ref.argmax()) == int(got.argmax()))

    # naive baseline: transformers generate(), batch 1, greedy, fixed length
    def hf_generate(model: Any, n: int) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(prompt[None], max_new_tokens=n, min_new_tokens=n, do_sample=False)
        torch.cuda.synchronize()
        assert out.shape[1] == args.prompt_len + n
        return time.perf_counter() - t

    hf_generate(hf, 8)
    hf_wall = hf_generate(hf, args.hf_gen_len)
    hf_tps = args.hf_gen_len / hf_wall
    note("hf_generate_batch1_tokens_per_s", round(hf_tps, 1))
    del hf
    torch.cuda.empty_cache()

    t0 = time.perf_counter()
    note("graphs_captured", runner.capture_all())
    note("graph_capture_s", round(time.perf_counter() - t0, 1))
    engine = Engine(runner, ByteTokenizer(), EngineConfig(num_slots=64, max_seq_len=runner.max_seq_len,
                                                          max_num_batched_tokens=2048))
    params = SamplingParams(max_tokens=args.gen_len, ignore_eos=True)
    run_engine(engine, [prompt.tolist()], SamplingParams(max_tokens=16, ignore_eos=True))  # warm-up

    # pure decode step time at batch 1 (graph replay + sampling + host sync), context ~prompt_len
    tok, pos, table = [1], [args.prompt_len], [runner.dense_table(0)]
    for _ in range(5):
        runner.sample(runner.decode(tok, pos, table), [0.0], [1.0])
    torch.cuda.synchronize()
    n_steps = 200
    t = time.perf_counter()
    for i in range(n_steps):
        runner.sample(runner.decode(tok, [args.prompt_len + i], table), [0.0], [1.0])
    step_s = (time.perf_counter() - t) / n_steps
    kv_bytes = cfg.kv_bytes_per_token(2) * 256  # the context bucket attended to
    roofline_tps = bw / (weight_bytes + kv_bytes)
    note("decode_step_batch1_ms", round(step_s * 1e3, 3))
    note("decode_batch1_tokens_per_s", round(1 / step_s, 1))
    note("roofline_batch1_tokens_per_s", round(roofline_tps, 1))
    note("decode_batch1_fraction_of_roofline", round((1 / step_s) / roofline_tps, 3))

    for bsz, ctx in ((1, 128), (8, 128), (32, 128), (64, 128), (1, 384), (32, 384), (64, 384)):
        toks, poss, tables = [1] * bsz, [ctx] * bsz, [runner.dense_table(i) for i in range(bsz)]
        for _ in range(3):
            runner.sample(runner.decode(toks, poss, tables), [0.0] * bsz, [1.0] * bsz)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(50):
            runner.sample(runner.decode(toks, poss, tables), [0.0] * bsz, [1.0] * bsz)
        note(f"decode_step_b{bsz}_pos{ctx}_ms", round((time.perf_counter() - t) / 50 * 1e3, 3))

    # the same request as the baseline, end to end through the engine (prefill + decode)
    _, wall = run_engine(engine, [prompt.tolist()], SamplingParams(max_tokens=args.hf_gen_len, ignore_eos=True))
    ours_tps = args.hf_gen_len / wall
    note("engine_batch1_request_tokens_per_s", round(ours_tps, 1))
    note("engine_vs_hf_generate_speedup", round(ours_tps / hf_tps, 2))

    throughput = {}
    for streams in (1, 8, 32, 64):
        prompts = [torch.randint(0, 256, (args.prompt_len,)).tolist() for _ in range(streams)]
        steps0 = engine.steps
        engine.timers = dict.fromkeys(engine.timers, 0.0)
        outs, wall = run_engine(engine, prompts, params)
        n_steps = engine.steps - steps0
        note(f"engine_ms_per_step_{streams}_streams", round(wall / n_steps * 1e3, 3))
        for part, secs in engine.timers.items():
            note(f"engine_{part}_ms_per_step_{streams}_streams", round(secs / n_steps * 1e3, 3))
        total = sum(len(v) for v in outs.values())
        throughput[streams] = round(total / wall, 1)
        note(f"throughput_{streams}_streams_tokens_per_s", throughput[streams])
    if args.profile:
        profile_decode(ours, 1, 256)
        profile_decode(ours, 32, 384)
    Path(args.out).write_text(json.dumps(RESULTS, indent=2))


def profile_decode(model: LlamaModel, bsz: int, pos: int) -> None:
    """Kernel time of one eager decode step, to see what the step is made of."""
    from torch.profiler import ProfilerActivity, profile

    runner = ModelRunner(model, bsz, 512, use_cuda_graphs=False)
    tables = [runner.dense_table(i) for i in range(bsz)]
    for _ in range(3):
        runner.decode([1] * bsz, [pos] * bsz, tables)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        runner.decode([1] * bsz, [pos] * bsz, tables)
        torch.cuda.synchronize()
    events = prof.key_averages()
    total = sum(e.device_time_total for e in events) / 1e3
    count = sum(e.count for e in events if e.device_time_total > 0)
    note(f"profile_b{bsz}_pos{pos}_kernel_ms_total", round(total, 3))
    note(f"profile_b{bsz}_pos{pos}_kernels", count)
    print(events.table(sort_by="device_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
