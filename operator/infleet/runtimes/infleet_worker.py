"""infleet-worker (this repository's `workers/`): the default on every family.

Warm standby is the worker's own `--state warm` (weights loaded, admission closed) and promotion its admin API
`POST /admin/state {"state": "serving"}` with the namespace's bearer token; drain is `POST /admin/state
{"state": "draining"}` (also what SIGTERM does). Metric names are docs/metrics.md's Worker section.
"""

from __future__ import annotations

from infleet import __version__
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

METRICS = MetricNames(
    marker="infleet_worker_",
    waiting="infleet_worker_num_requests_waiting",
    running="infleet_worker_num_requests_running",
    kv_usage="infleet_worker_kv_cache_usage_perc",
    requests_total="infleet_worker_requests_total",
    e2e_bucket="infleet_worker_request_latency_seconds_bucket",
    ttft_bucket="infleet_worker_time_to_first_token_seconds_bucket",
    prompt_tokens="infleet_worker_prompt_tokens_total",
    generation_tokens="infleet_worker_generation_tokens_total",
    energy_joules="infleet_worker_energy_joules_total",
    energy_measurable="infleet_worker_energy_measurable",
    lifecycle_state="infleet_worker_lifecycle_state",
)


QUANTIZED = ("int8", "int4")  # spec.model.dtype values the worker reaches with --quantize


def launch(ctx: ServingContext) -> Launch:
    return Launch(
        command=["infleet-worker"],
        args=[
            "serve",
            "--model",
            ctx.model_path,
            "--served-model-name",
            ctx.served_name,
            "--device",
            ctx.device,
            "--port",
            str(SERVING_PORT),
            "--state",
            ctx.role,
            # int8/int4: weight-only quantisation at load time, so the replica holds what placement sized
            *(["--quantize", ctx.weights_dtype] if ctx.weights_dtype in QUANTIZED else []),
        ],
        readiness_path="/readyz",
        liveness_path="/healthz",
    )


RUNTIME = Runtime(
    engine="infleet-worker",
    families=("nvidia-gpu", "aws-neuron", "google-tpu", "cpu"),
    images={},
    launch=launch,
    metrics=METRICS,
    warm=WarmStandby(
        mechanism="`--state warm`: weights loaded, admission closed; promoted by POST /admin/state",
        promote=HttpCall(method="POST", path="/admin/state", json={"state": "serving"}, needs_admin_token=True),
    ),
    drain=Drain(
        mechanism="POST /admin/state {state: draining}, also on SIGTERM: finishes in-flight requests, admits none",
        call=HttpCall(method="POST", path="/admin/state", json={"state": "draining"}, needs_admin_token=True),
    ),
    sim=ServiceDefaults(promote_s=2.0),  # readiness flip plus endpoint propagation
    quantisation="weights in the checkpoint's dtype (bf16/fp16/fp32); `dtype: int8`/`int4` quantise them at load",
    version=__version__,
    health_path="/readyz",
    container_name="worker",
    admin_token=True,
)
