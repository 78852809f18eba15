"""Per-replica SLO capacity of a pool for a deployment: measured profile first, else the service-model estimate.

One rule for the operator and the simulator. Capacity is always requests per second: a profile or a declared load
in generated tokens per second is divided by the request mix's mean output length, so tokens/s are never compared
with requests/s. Without a profile the estimate comes from :mod:`infleet.policy.service` (a roofline over the
device's datasheet figures) for the observed request mix, or :data:`DEFAULT_MIX` before any is observed.
"""

from __future__ import annotations

from dataclasses import dataclass

from infleet.api import AcceleratorPool, InferenceDeployment
from infleet.policy.service import DEVICES, device_key, roofline


@dataclass(frozen=True, kw_only=True)
class RequestMix:
    """Prompt and output lengths the capacity is computed for (tokens)."""

    mean_prompt: float
    mean_gen: float
    tail_prompt: float  # 99th-percentile prompt
    prompt_sq_mean: float | None = None  # E[prompt^2], for the prefill queue's tail; None: assume exponential

    def __post_init__(self) -> None:
        if self.mean_prompt < 0 or self.mean_gen <= 0 or self.tail_prompt < 0:
            raise ValueError("a request mix needs mean_prompt >= 0, mean_gen > 0 and tail_prompt >= 0")


# Before any traffic is measured: a chat-like mix (the Azure 2023 conversation trace's means are ~1,150 prompt and
# ~210 output tokens; its 99th-percentile prompt is ~4,200). Stated here as an assumption, replaced by measurements.
DEFAULT_MIX = RequestMix(mean_prompt=1150.0, mean_gen=210.0, tail_prompt=4200.0)


def slo_seconds(infd: InferenceDeployment) -> tuple[float | None, float | None, float]:
    """(TTFT, TPOT, end-to-end) p99 targets in seconds; TTFT and TPOT only for text generation."""
    slo = infd.spec.slo
    text = infd.spec.model.task == "text-generation"
    ttft = slo.ttft_p99_ms / 1000 if text and slo.ttft_p99_ms else None
    tpot = slo.tpot_p99_ms / 1000 if text and slo.tpot_p99_ms else None
    return ttft, tpot, slo.p99_latency_ms / 1000


def model_parameters_billions(infd: InferenceDeployment) -> float:
    """Declared parameters, else inferred from the footprint (bf16 weights plus 20% runtime overhead)."""
    model = infd.spec.model
    return model.parameters_billions or model.footprint_gib() / 2.4


def estimated_capacity_rps(
    pool: AcceleratorPool, infd: InferenceDeployment, devices_per_replica: int, mix: RequestMix
) -> tuple[float, str]:
    """Service-model capacity of one replica, and why it is 0 when it is (empty reason otherwise)."""
    acc = pool.spec.accelerator
    try:
        figures = DEVICES[device_key(acc.product, acc.family)]
    except ValueError:
        return 0.0, f"no performance profile for this model and no service figures for {acc.product}"
    service = roofline(figures, devices_per_replica, model_parameters_billions(infd), acc.memory_gib_per_device)
    ttft, tpot, _ = slo_seconds(infd)
    capacity = service.capacity_rps(
        mix.mean_prompt,
        mix.mean_gen,
        ttft_target_s=ttft,
        tpot_target_s=tpot,
        tail_prompt=mix.tail_prompt,
        prompt_sq_mean=mix.prompt_sq_mean,
    )
    if capacity <= 0:
        return 0.0, f"the service model says a replica cannot meet the SLO here for prompts of ~{mix.tail_prompt:.0f}"
    return capacity, ""


def batch_one_tpot_s(pool: AcceleratorPool, infd: InferenceDeployment, devices_per_replica: int) -> float | None:
    """The service model's time per output token with one sequence running (None: no figures for the device).

    It depends on the weights and the memory bandwidth only, not on the request mix, so it is a sound floor even
    where a pool's measured profile is trusted for everything else.
    """
    acc = pool.spec.accelerator
    try:
        figures = DEVICES[device_key(acc.product, acc.family)]
    except ValueError:
        return None
    service = roofline(figures, devices_per_replica, model_parameters_billions(infd), acc.memory_gib_per_device)
    return service.tpot(1)


def tokens_to_requests(tokens_per_second: float, mix: RequestMix) -> float:
    """Generated tokens per second as requests per second at the mix's mean output length."""
    return tokens_per_second / mix.mean_gen
