"""vLLM's TPU backend on Cloud TPU v5e, following vLLM v0.11.0's TPU image (`vllm/vllm-tpu`). Rendered from the
documentation only.

`--tensor-parallel-size` is the pool's chips per replica (`google.com/tpu`). XLA compiles for a bounded set of
shapes, so `--max-model-len` is rendered (default here, overridable through args). Sleep mode is CUDA/ROCm only:
no warm standby, a warm replica is a cold replica. Metrics are vLLM's `vllm:*` names.
"""

from __future__ import annotations

from infleet.runtimes.base import Drain, Launch, Runtime, ServiceDefaults, ServingContext, WarmStandby
from infleet.runtimes.vllm import METRICS, VERSION, server_args

DEFAULT_MAX_MODEL_LEN = "4096"


def launch(ctx: ServingContext) -> Launch:
    return Launch(
        command=["vllm"],
        args=[*server_args(ctx, ctx.devices_per_replica), "--max-model-len", DEFAULT_MAX_MODEL_LEN],
        readiness_path="/health",
        liveness_path="/health",
    )


RUNTIME = Runtime(
    engine="vllm-tpu",
    families=("google-tpu",),
    images={"xla": f"vllm/vllm-tpu:{VERSION}"},
    launch=launch,
    metrics=METRICS,
    warm=WarmStandby(mechanism="none (sleep mode is CUDA/ROCm only): a warm replica is a cold replica", promote=None),
    drain=Drain(mechanism="SIGTERM: stops admitting, finishes in-flight requests within the grace period"),
    sim=ServiceDefaults(promote_s=None),
    quantisation="bf16; int8 weights via --quantization where the TPU backend supports it",
    version=VERSION,
)
