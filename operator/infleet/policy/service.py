"""Per-replica service model (decision side): prefill rate, time per output token by batch size, KV-cache room.

Every number comes from a roofline over public datasheet figures with stated efficiencies, until the worker
benchmarks measure them (override any field per pool with ``ServiceModel`` arguments or ``--service FILE``):

* prefill is compute-bound: ``tokens/s = peak_flops * PREFILL_EFFICIENCY / (2 * parameters)``;
* decode is memory-bound: one step reads the weights once plus each running sequence's KV cache,
  ``tpot(b) = (weight_bytes + b * kv_bytes_per_seq) / (bandwidth * DECODE_EFFICIENCY)``;
* KV room is the device memory left after the weights and a runtime reserve.

Peak figures (dense bf16 FLOP/s, memory bandwidth, per device): NVIDIA H100 SXM datasheet 989 TFLOP/s and
3.35 TB/s; NVIDIA L4 datasheet 121 TFLOP/s and 300 GB/s; Google Cloud TPU v5e 197 TFLOP/s and 819 GB/s per chip;
AWS Inferentia2 190 TFLOP/s (bf16) and 820 GB/s per device; an 8-vCPU slice of a c7i (Sapphire Rapids, AMX)
taken as 2 TFLOP/s and 40 GB/s. Efficiencies 0.4 (prefill) and 0.6 (decode) are typical of what vLLM-class
engines reach on these parts; they are assumptions, stated here so a reader can change them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PREFILL_EFFICIENCY = 0.4
DECODE_EFFICIENCY = 0.6
RUNTIME_RESERVE = 0.1  # share of device memory kept for activations and the runtime
KV_BYTES_PER_TOKEN_PER_BILLION = 16384.0  # Llama-3-8B: 128 KiB per token for 8B parameters (GQA, bf16)
MEAN_SEQUENCE_TOKENS = 1400.0  # KV read per running sequence per step, at the Azure conv trace's mean length


@dataclass(frozen=True)
class DeviceFigures:
    name: str
    flops: float  # dense bf16 FLOP/s per device
    bandwidth: float  # bytes/s per device
    source: str


DEVICES: dict[str, DeviceFigures] = {
    "h100": DeviceFigures("h100", 989e12, 3.35e12, "NVIDIA H100 SXM datasheet"),
    "l4": DeviceFigures("l4", 121e12, 300e9, "NVIDIA L4 datasheet"),
    "tpu-v5e": DeviceFigures("tpu-v5e", 197e12, 819e9, "Google Cloud TPU v5e documentation"),
    "inferentia2": DeviceFigures("inferentia2", 190e12, 820e9, "AWS Inferentia2 documentation"),
    "cpu": DeviceFigures("cpu", 2e12, 40e9, "assumed: 8 vCPUs of a c7i with AMX"),
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
    """How one replica of one model serves on one pool."""

    prefill_tokens_per_s: float
    tpot_base_s: float  # weights read per step
    tpot_per_seq_s: float  # added per running sequence
    kv_tokens: float
    max_batch: int = 64

    def tpot(self, batch: int) -> float:
        return self.tpot_base_s + self.tpot_per_seq_s * max(1, batch)

    def batch_limit(self, tpot_target_s: float | None, mean_seq_tokens: float) -> int:
        """Largest batch that keeps time per token within 90% of the target and fits the KV cache."""
        limit = self.max_batch
        if mean_seq_tokens > 0:
            limit = min(limit, max(1, int(self.kv_tokens // mean_seq_tokens)))
        if tpot_target_s is not None and self.tpot_per_seq_s > 0:
            by_slo = int((0.9 * tpot_target_s - self.tpot_base_s) // self.tpot_per_seq_s)
            limit = min(limit, by_slo)
        return max(0, limit)

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
        tail_s = tail_prompt / self.prefill_tokens_per_s
        if ttft_target_s is not None and tail_s > ttft_target_s:
            return 0.0
        prefill_s = mean_prompt / self.prefill_tokens_per_s
        rho = utilization
        if ttft_target_s is not None and prefill_s > 0:
            second = (prompt_sq_mean if prompt_sq_mean else 2 * mean_prompt**2) / self.prefill_tokens_per_s**2
            slack = max(0.0, ttft_target_s - prefill_s)
            rho = min(rho, _max_utilization(second / (2 * prefill_s), slack))
        by_prefill = rho / prefill_s if prefill_s > 0 else math.inf
        by_decode = batch / (prefill_s + mean_gen * self.tpot(batch))
        return min(by_prefill, utilization * by_decode)


def roofline(device: DeviceFigures, devices: int, parameters_billions: float, device_memory_gib: float) -> ServiceModel:
    """The service model of a ``parameters_billions`` bf16 model on ``devices`` devices, from the roofline."""
    params = parameters_billions * 1e9
    weight_bytes = 2.0 * params
    kv_per_token = KV_BYTES_PER_TOKEN_PER_BILLION * parameters_billions
    bandwidth = device.bandwidth * devices * DECODE_EFFICIENCY
    free = devices * device_memory_gib * 2**30 * (1 - RUNTIME_RESERVE) - weight_bytes
    return ServiceModel(
        prefill_tokens_per_s=device.flops * devices * PREFILL_EFFICIENCY / (2 * params),
        tpot_base_s=weight_bytes / bandwidth,
        tpot_per_seq_s=kv_per_token * MEAN_SEQUENCE_TOKENS / bandwidth,
        kv_tokens=max(0.0, free / kv_per_token),
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
