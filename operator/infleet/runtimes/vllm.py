"""vLLM's OpenAI-compatible server on NVIDIA GPUs, following vLLM v0.11.0 (`vllm serve`, the V1 engine).

Rendered from vLLM's documentation only (no GPU here): `vllm serve MODEL --served-model-name NAME --port 8000
--tensor-parallel-size <the pool's GPUs per replica> --gpu-memory-utilization 0.90`, plus `--max-model-len` when
the user gives one in `runtimes.nvidia-gpu.args`. Health is `GET /health`, metrics `GET /metrics` (`vllm:*`).

Warm standby is vLLM's sleep mode (`--enable-sleep-mode`; `POST /sleep?level=1` offloads the weights to host
memory and drops the KV cache, `POST /wake_up` brings them back in seconds). The sleep endpoints exist only with
`VLLM_SERVER_DEV_MODE=1`, so the adapter sets it on warm replicas, whose postStart hook puts the engine to sleep
once it is healthy (the pod turns ready asleep). Promotion is `POST /wake_up`. Drain is SIGTERM: the server
stops accepting and finishes in-flight requests within the termination grace period.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infleet.runtimes.base import (
    SERVING_PORT,
    Drain,
    HttpCall,
    Launch,
    MetricNames,
    Runtime,
    ServiceDefaults,
    ServingContext,
    WarmStandby,
)

VERSION = "v0.11.0"
GPU_MEMORY_UTILIZATION = "0.90"  # vLLM's own default, made explicit so the rendered command says it

# vLLM V1's documented names (docs.vllm.ai, "Production Metrics"); every series carries `model_name`.
METRICS = MetricNames(
    marker="vllm:",
    waiting="vllm:num_requests_waiting",
    running="vllm:num_requests_running",
    kv_usage="vllm:kv_cache_usage_perc",
    requests_total="vllm:request_success_total",
    e2e_bucket="vllm:e2e_request_latency_seconds_bucket",
    ttft_bucket="vllm:time_to_first_token_seconds_bucket",
    prompt_tokens="vllm:prompt_tokens_total",
    generation_tokens="vllm:generation_tokens_total",
    kv_usage_fallback="vllm:gpu_cache_usage_perc",  # V0's name, deprecated in v0.10 (the gateway reads either)
)

# Waits for /health, then POST /sleep?level=1; python3 is in every vLLM image (curl is not guaranteed).
_SLEEP_WHEN_HEALTHY = (
    "import time, urllib.request as u\n"
    f"b = 'http://127.0.0.1:{SERVING_PORT}'\n"
    "while True:\n"
    "    try:\n"
    "        u.urlopen(b + '/health', timeout=2); break\n"
    "    except Exception:\n"
    "        time.sleep(2)\n"
    "u.urlopen(u.Request(b + '/sleep?level=1', method='POST'), timeout=600)\n"
)


def server_args(ctx: ServingContext, tensor_parallel: int) -> list[str]:
    """The arguments every vLLM-based adapter shares (`vllm serve` takes the model positionally)."""
    return [
        "serve",
        ctx.model_path,
        "--served-model-name",
        ctx.served_name,
        "--host",
        "0.0.0.0",
        "--port",
        str(SERVING_PORT),
        "--tensor-parallel-size",
        str(max(1, tensor_parallel)),
    ]


def sleep_on_start() -> Mapping[str, Any]:
    return {"lifecycle": {"postStart": {"exec": {"command": ["python3", "-c", _SLEEP_WHEN_HEALTHY]}}}}


def launch(ctx: ServingContext) -> Launch:
    args = [*server_args(ctx, ctx.devices_per_replica), "--gpu-memory-utilization", GPU_MEMORY_UTILIZATION,
            "--enable-sleep-mode"]
    warm = ctx.role == "warm"
    return Launch(
        command=["vllm"],
        args=args,
        # Dev mode only where it is needed: it also exposes other debugging endpoints.
        env=[{"name": "VLLM_SERVER_DEV_MODE", "value": "1"}] if warm else [],
        readiness_path="/health",
        liveness_path="/health",
        extra=sleep_on_start() if warm else {},
    )


RUNTIME = Runtime(
    engine="vllm",
    families=("nvidia-gpu",),
    images={"cuda": f"vllm/vllm-openai:{VERSION}"},
    launch=launch,
    metrics=METRICS,
    warm=WarmStandby(
        mechanism="sleep mode: weights offloaded to host memory (POST /sleep?level=1), promoted by POST /wake_up",
        promote=HttpCall(method="POST", path="/wake_up"),
    ),
    drain=Drain(mechanism="SIGTERM: stops admitting, finishes in-flight requests within the grace period"),
    sim=ServiceDefaults(promote_s=5.0),  # level-1 wake: weights back from host memory ("seconds", vLLM docs)
    quantisation="AWQ, GPTQ, FP8 and others via --quantization or the checkpoint's config",
    version=VERSION,
)
