"""vLLM with the AWS Neuron backend on Inferentia2/Trainium, following the Neuron SDK 2.26 Deep Learning Container
(`vllm serve` on vLLM 0.10 with `neuronx-distributed-inference`). Rendered from the documentation only.

Tensor parallelism runs across NeuronCores: a pool whose resource is `aws.amazon.com/neuron` (whole devices, two
NeuronCores each on Inferentia2) gets `--tensor-parallel-size` = devices x 2; one on `aws.amazon.com/neuroncore`
gets one per core. Neuron compiles the model for fixed shapes, so `--max-model-len` and `--max-num-seqs` are
rendered (defaults here, overridable through args). Sleep mode is CUDA/ROCm only: no warm standby, a warm replica
is a cold replica. Metrics are vLLM's `vllm:*` names.
"""

from __future__ import annotations

from infleet.runtimes.base import Drain, Launch, Runtime, ServiceDefaults, ServingContext, WarmStandby
from infleet.runtimes.vllm import METRICS, server_args

VERSION = "Neuron SDK 2.26 (vLLM 0.10)"
CORES_PER_INFERENTIA2 = 2
DEFAULT_MAX_MODEL_LEN = "4096"
IMAGE = "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.10.2-neuronx-py310-sdk2.26.0-ubuntu22.04"
DEFAULT_MAX_NUM_SEQS = "8"


def neuron_cores(ctx: ServingContext) -> int:
    if ctx.resource_name == "aws.amazon.com/neuroncore":
        return ctx.devices_per_replica
    return ctx.devices_per_replica * CORES_PER_INFERENTIA2


def launch(ctx: ServingContext) -> Launch:
    return Launch(
        command=["vllm"],
        args=[*server_args(ctx, neuron_cores(ctx)), "--device", "neuron", "--max-model-len", DEFAULT_MAX_MODEL_LEN,
              "--max-num-seqs", DEFAULT_MAX_NUM_SEQS],
        readiness_path="/health",
        liveness_path="/health",
    )


RUNTIME = Runtime(
    engine="neuron-vllm",
    families=("aws-neuron",),
    images={"neuron": IMAGE},
    launch=launch,
    metrics=METRICS,
    warm=WarmStandby(mechanism="none (sleep mode is CUDA/ROCm only): a warm replica is a cold replica", promote=None),
    drain=Drain(mechanism="SIGTERM: stops admitting, finishes in-flight requests within the grace period"),
    sim=ServiceDefaults(promote_s=None),
    quantisation="bf16/fp16; int8/fp8 weight quantisation through the Neuron config",
    version=VERSION,
)
