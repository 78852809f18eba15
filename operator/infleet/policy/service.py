"""Per-replica service model (decision side): engine step time, prefill rate, time per output token, KV room, power.

Every number comes from a roofline over public datasheet figures with stated efficiencies, until the worker
benchmarks measure them (override any field per pool with ``ServiceModel`` arguments or ``--service FILE``).

One engine step (continuous batching with chunked prefill, as ``infleet_worker.engine`` and vLLM run it) prefills a
chunk of prompt tokens and decodes one token for every running sequence. It takes the longer of its compute and
its memory traffic (:meth:`ServiceModel.step_s`):

* compute: ``2 * parameters`` FLOPs per token in the step (prefill chunk plus decode batch), plus attention,
  ``ATTENTION_FLOPS_PER_PAIR_PER_BILLION * parameters_billions`` FLOPs per (query token, context token) pair, at
  ``PREFILL_EFFICIENCY`` of the peak: a 100k-token prompt costs about 1.6x its linear FLOPs in attention;
* memory: the weights once, plus the KV cache of every context token the step attends to, at
  ``DECODE_EFFICIENCY`` of the peak bandwidth.

``tpot(b)`` and ``capacity_rps`` are the planning summaries of that (a batch of ``b`` sequences of
``MEAN_SEQUENCE_TOKENS``), kept for the operator, which sizes fleets from them where no profile exists.

Peak figures (dense bf16 FLOP/s, memory bandwidth, per device): NVIDIA H100 SXM datasheet 989 TFLOP/s and
3.35 TB/s; NVIDIA L4 datasheet 121 TFLOP/s and 300 GB/s; Google Cloud TPU v5e 197 TFLOP/s and 819 GB/s per chip;
AWS Inferentia2 190 TFLOP/s (bf16) and 820 GB/s per device; an 8-vCPU slice of a c7i (Sapphire Rapids, AMX)
taken as 2 TFLOP/s and 40 GB/s.

Calibration (tests/unit/sim/test_service.py checks it): on one H100 the project's worker measured an 8B decode
step of 7.39 ms at batch 1, 8.84 ms at batch 64 with 128-token contexts and 9.81 ms with 384-token contexts
(docs/benchmarks.md, "GPU"); this model gives 8.0, 8.5 and 9.6 ms, within 9%. Weight reads alone ran at 2.03 TB/s,
0.61 of the datasheet bandwidth: hence ``DECODE_EFFICIENCY`` 0.6. ``PREFILL_EFFICIENCY`` 0.4 is an assumption
typical of vLLM-class engines (no prefill-throughput measurement of an 8B model exists in this project yet). The
CPU engine's fixed per-step cost, 1.4 ms, is the worker's measured batch-1 step of its tiny model on CPU, whose
compute is negligible (docs/benchmarks.md, "CPU": 733 tokens/s one at a time); GPU steps run as CUDA graphs, where
that overhead is inside the measured efficiency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PREFILL_EFFICIENCY = 0.4
DECODE_EFFICIENCY = 0.6
RUNTIME_RESERVE = 0.1  # share of device memory kept for activations and the runtime
KV_BYTES_PER_TOKEN_PER_BILLION = 16384.0  # Llama-3-8B: 128 KiB per token for 8B parameters (GQA, bf16)
# Attention FLOPs per (query, key) token pair: 4 x layers x hidden (QK^T and AV, 2 FLOPs per multiply-add);
# Llama-3-8B: 4 x 32 x 4096 = 524,288 for 8B parameters, scaled linearly with size (an approximation).
ATTENTION_FLOPS_PER_PAIR_PER_BILLION = 65536.0
MEAN_SEQUENCE_TOKENS = 1400.0  # planning only: KV read per running sequence, the Azure conv trace's mean length
CONTEXT_WINDOW_TOKENS = 131072  # Llama 3.1's context window; a server rejects longer requests
# Step token budget (prefill chunk + decode tokens): 512, the worker's default (max_num_batched_tokens). Larger
# budgets prefill no faster once a step is compute-bound (an H100 step of an 8B model is from about 200 tokens) but
# stretch every decode step that shares it: with 2048, an H100's co-scheduled decode tokens take 83 ms, twice a
# 40 ms TPOT target (vLLM's tuning guide gives the same trade-off for its max_num_batched_tokens).
STEP_TOKENS = 512
CPU_STEP_OVERHEAD_S = 1.4e-3  # the worker's measured batch-1 CPU step on a model of negligible compute


@dataclass(frozen=True)
class DeviceFigures:
    name: str
    flops: float  # dense bf16 FLOP/s per device
    bandwidth: float  # bytes/s per device
    source: str
    busy_watts: float = 0.0  # board power at full load (datasheet TDP)
    idle_watts: float = 0.0  # board power with the model loaded and no work
    power_source: str = ""


DEVICES: dict[str, DeviceFigures] = {
    "h100": DeviceFigures(
        "h100",
        989e12,
        3.35e12,
        "NVIDIA H100 SXM datasheet",
        700.0,
        70.0,
        "NVIDIA H100 SXM datasheet: max TDP 700 W; idle 70 W assumed (10% of TDP)",
    ),
    "l4": DeviceFigures(
        "l4",
        121e12,
        300e9,
        "NVIDIA L4 datasheet",
        72.0,
        16.0,
        "NVIDIA L4 datasheet: max TDP 72 W; idle 16 W assumed (22% of TDP)",
    ),
    "tpu-v5e": DeviceFigures(
        "tpu-v5e",
        197e12,
        819e9,
        "Google Cloud TPU v5e documentation",
        200.0,
        40.0,
        "not published by Google: 200 W per chip busy and 40 W idle assumed",
    ),
    "inferentia2": DeviceFigures(
        "inferentia2",
        190e12,
        820e9,
        "AWS Inferentia2 documentation",
        150.0,
        30.0,
        "not published by AWS per chip: 150 W busy and 30 W idle assumed",
    ),
    "cpu": DeviceFigures(
        "cpu",
        2e12,
        40e9,
        "assumed: 8 vCPUs of a c7i with AMX",
        29.0,
        9.0,
        "Intel Xeon Platinum 8488C (c7i) 350 W TDP for 48 cores: 29 W for 4 cores (8 vCPUs); idle 9 W assumed",
    ),
}


def device_key(product: str, family: str) -> str:
    """Which row of :data:`DEVICES` an AcceleratorPool's product is."""
    p = product.lower()
    if family == "cpu":
        return "cpu"
    for key, needle in (("h100", "h100"), ("l4", "l4"), ("tpu-v5e", "v5"), ("inferentia2", "inferentia")):
        if needle in p:
            return key
    raise ValueError(f"no service figures for accelerator product {product!r} (family {family}); pass --service")


@dataclass(frozen=True)
class ServiceModel:
    """How one replica of one model serves on one pool.

    The fields after ``max_batch`` drive the iteration-level engine (:meth:`step_s`); their defaults (no attention
    cost, KV reads folded into ``tpot_per_seq_s``) keep a hand-written model of the first five fields meaningful.
    """

    prefill_tokens_per_s: float
    tpot_base_s: float  # weights read per step
    tpot_per_seq_s: float  # added per running sequence (of MEAN_SEQUENCE_TOKENS)
    kv_tokens: float
    max_batch: int = 64
    attention_pair_s: float = 0.0  # compute seconds per (query token, context token) pair
    kv_read_s_per_token: float = 0.0  # memory seconds per context token a step attends to (0: tpot_per_seq_s based)
    context_tokens: float = CONTEXT_WINDOW_TOKENS
    step_tokens: int = STEP_TOKENS
    step_overhead_s: float = 0.0
    busy_watts: float = 0.0  # per replica (all its devices)
    idle_watts: float = 0.0

    @property
    def kv_read_s(self) -> float:
        return self.kv_read_s_per_token or self.tpot_per_seq_s / MEAN_SEQUENCE_TOKENS

    def step_s(
        self,
        decode_batch: int,
        decode_context: float,
        chunk_tokens: float = 0.0,
        chunk_pairs: float = 0.0,
        chunk_context: float = 0.0,
    ) -> float:
        """One engine step: ``chunk_tokens`` of prefill whose attention spans ``chunk_pairs`` (query, key) pairs
        over ``chunk_context`` cached tokens, and one token for each of ``decode_batch`` sequences holding
        ``decode_context`` tokens in all."""
        compute = (chunk_tokens + decode_batch) / self.prefill_tokens_per_s + self.attention_pair_s * (
            chunk_pairs + decode_context
        )
        memory = self.tpot_base_s + self.kv_read_s * (decode_context + chunk_context)
        return max(compute, memory) + self.step_overhead_s

    def prefill_s(self, prompt_tokens: float) -> float:
        """Time to first token of one prompt on an idle replica: its chunks, one step each."""
        done, total = 0.0, 0.0
        budget = float(max(1, self.step_tokens))
        while done < prompt_tokens:
            c = min(budget, prompt_tokens - done)
            total += self.step_s(0, 0.0, c, c * done + c * c / 2, done + c)
            done += c
        return total

    def tpot(self, batch: int) -> float:
        """Planning TPOT: a decode-only step of ``batch`` sequences of MEAN_SEQUENCE_TOKENS (no prefill chunk)."""
        return self.tpot_base_s + self.tpot_per_seq_s * max(1, batch)

    def busy_step_s(self, batch: int, mean_seq_tokens: float) -> float:
        """A step that decodes ``batch`` sequences of ``mean_seq_tokens`` while also prefilling a full chunk: the
        time per output token a running sequence gets while prompts wait (chunked prefill's worst case)."""
        chunk = float(max(self.step_tokens - batch, 32))
        seq = max(mean_seq_tokens, 1.0)
        return self.step_s(batch, batch * seq, chunk, chunk * seq / 2 + chunk * chunk / 2, seq / 2 + chunk)

    def batch_limit(self, tpot_target_s: float | None, mean_seq_tokens: float) -> int:
        """Largest batch that fits the KV cache and keeps time per token within 90% of the target even in steps
        that also prefill a chunk (0: not even one sequence can)."""
        limit = self.max_batch
        if mean_seq_tokens > 0:
            limit = min(limit, max(1, int(self.kv_tokens // mean_seq_tokens)))
        if tpot_target_s is not None:
            lo, hi = 0, limit  # lo meets the target (0 trivially), find the largest that does
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.busy_step_s(mid, mean_seq_tokens) <= 0.9 * tpot_target_s:
                    lo = mid
                else:
                    hi = mid - 1
            limit = lo
        return max(0, limit)

    def why_not(
        self, *, ttft_target_s: float | None, tpot_target_s: float | None, tail_prompt: float, tail_sequence: float
    ) -> str | None:
        """Why one replica cannot meet the SLO for this mix even when idle, or None when it can."""
        if tail_sequence > min(self.context_tokens, self.kv_tokens):
            room = min(self.context_tokens, self.kv_tokens)
            what = "context window" if self.context_tokens <= self.kv_tokens else "KV-cache room"
            return f"99th-percentile request of {tail_sequence:,.0f} tokens exceeds its {what} ({room:,.0f} tokens)"
        if tpot_target_s is not None and self.tpot(1) > tpot_target_s:
            ms, target = self.tpot(1) * 1e3, tpot_target_s * 1e3
            return f"time per output token at batch 1 is {ms:.0f} ms > TPOT {target:.0f} ms"
        if tpot_target_s is not None and self.busy_step_s(1, tail_sequence / 2) > tpot_target_s:
            ms, target = self.busy_step_s(1, tail_sequence / 2) * 1e3, tpot_target_s * 1e3
            return (
                f"a decode step sharing a {self.step_tokens}-token prefill chunk takes {ms:.0f} ms > TPOT "
                f"{target:.0f} ms (lower step_tokens with --service)"
            )
        if ttft_target_s is not None:
            first = self.prefill_s(tail_prompt)
            if first > ttft_target_s:
                return (
                    f"prefill of the 99th-percentile prompt ({tail_prompt:,.0f} tokens) takes {first:.2f} s "
                    f"> TTFT {ttft_target_s:g} s"
                )
        return None

    def capacity_rps(
        self,
        mean_prompt: float,
        mean_gen: float,
        *,
        ttft_target_s: float | None,
        tpot_target_s: float | None,
        tail_prompt: float,
        prompt_sq_mean: float | None = None,
        utilization: float = 0.85,
    ) -> float:
        """Requests/s one replica sustains within the SLO for this request mix (0: it cannot meet the SLO).

        Prefill is a single server per replica, so its utilisation ``rho`` is capped where the 99th percentile of
        the M/G/1 queueing delay stays within the TTFT target minus the mean prompt's own prefill (a pool whose
        prefill of the 99th-percentile prompt alone exceeds the target cannot meet the SLO at all): with the usual
        exponential tail, ``P(W > x) = rho exp(-x rho / W)`` and the Pollaczek-Khinchine mean wait
        ``W = rho E[S^2] / (2 E[S] (1 - rho))``, so ``p99 = E[S^2] / (2 E[S] (1 - rho)) ln(100 rho)``.
        """
        batch = self.batch_limit(tpot_target_s, mean_prompt + mean_gen)
        if batch < 1:
            return 0.0
        if tail_prompt > min(self.context_tokens, self.kv_tokens):
            return 0.0
        tail_s = self.prefill_s(tail_prompt)
        if ttft_target_s is not None and tail_s > ttft_target_s:
            return 0.0
        prefill_s = self.prefill_s(mean_prompt)
        rho = utilization
        if ttft_target_s is not None and prefill_s > 0:
            # E[S^2] of the prefill time, scaled from the prompts' second moment (the mean's own time per token).
            per_token = prefill_s / max(mean_prompt, 1.0)
            second = (prompt_sq_mean if prompt_sq_mean else 2 * mean_prompt**2) * per_token**2
            slack = max(0.0, ttft_target_s - prefill_s)
            rho = min(rho, _max_utilization(second / (2 * prefill_s), slack))
        by_prefill = rho / prefill_s if prefill_s > 0 else math.inf
        seq = mean_prompt + mean_gen / 2  # mean context of a decoding sequence
        decode_step = self.step_s(batch, batch * seq)
        by_decode = batch / (prefill_s + mean_gen * decode_step)
        # All the work shares one device: each request's prefill plus its share of the decode steps.
        by_work = 1.0 / (prefill_s + mean_gen * decode_step / batch)
        return min(by_prefill, utilization * by_decode, utilization * by_work)


def roofline(device: DeviceFigures, devices: int, parameters_billions: float, device_memory_gib: float) -> ServiceModel:
    """The service model of a ``parameters_billions`` bf16 model on ``devices`` devices, from the roofline."""
    params = parameters_billions * 1e9
    weight_bytes = 2.0 * params
    kv_per_token = KV_BYTES_PER_TOKEN_PER_BILLION * parameters_billions
    bandwidth = device.bandwidth * devices * DECODE_EFFICIENCY
    flops = device.flops * devices * PREFILL_EFFICIENCY
    free = devices * device_memory_gib * 2**30 * (1 - RUNTIME_RESERVE) - weight_bytes
    cpu = device.name == "cpu"
    return ServiceModel(
        prefill_tokens_per_s=flops / (2 * params),
        tpot_base_s=weight_bytes / bandwidth,
        tpot_per_seq_s=kv_per_token * MEAN_SEQUENCE_TOKENS / bandwidth,
        kv_tokens=max(0.0, free / kv_per_token),
        attention_pair_s=ATTENTION_FLOPS_PER_PAIR_PER_BILLION * parameters_billions / flops,
        kv_read_s_per_token=kv_per_token / bandwidth,
        step_tokens=STEP_TOKENS,
        step_overhead_s=CPU_STEP_OVERHEAD_S if cpu else 0.0,
        busy_watts=device.busy_watts * devices,
        idle_watts=device.idle_watts * devices,
    )


def _max_utilization(scale_s: float, slack_s: float) -> float:
    """Largest rho with ``scale / (1 - rho) * ln(100 rho) <= slack`` (bisection; the left side grows with rho)."""

    def p99(rho: float) -> float:
        return 0.0 if rho <= 0.01 else scale_s / (1 - rho) * math.log(100 * rho)

    lo, hi = 0.0, 0.99
    if p99(hi) <= slack_s:
        return hi
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p99(mid) <= slack_s else (lo, mid)
    return lo
