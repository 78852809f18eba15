"""llama.cpp through `llama-cpp-python`'s OpenAI-compatible server (`python3 -m llama_cpp.server`), following
llama-cpp-python 0.3.36. Run for real in tests/integration/runtimes (a GGUF built offline, loopback only).

Arguments: `--model <file.gguf> --model_alias <served name> --host 0.0.0.0 --port 8000 --n_threads <vCPUs>
--n_ctx 2048 --interrupt_requests False`. The server answers one request at a time behind a model lock; by default
(`interrupt_requests`) any request that queues on that lock, `GET /v1/models` included, ends the stream in flight
early, so the adapter turns that off: concurrent requests wait their turn instead of cutting each other short.

The server has no health or metrics endpoint, and `/v1/models` waits behind the model lock (a probe of it times out
while a long request runs). It binds its port only after loading the model, so any answer means loaded: the
probes (kubelet's and the gateway's) `GET /docs`, FastAPI's page, which takes no lock. The operator, which finds no
`/metrics` page, scales this pool on the gateway's per-pool signals, and the gateway routes on its own in-flight
counts. No warm standby: a warm replica is a cold replica that never takes traffic until the serving Deployment
is scaled. Drain is SIGTERM (uvicorn's graceful shutdown finishes in-flight requests).
"""

from __future__ import annotations

from infleet.runtimes.base import SERVING_PORT, Drain, Launch, Runtime, ServiceDefaults, ServingContext, WarmStandby

VERSION = "0.3.36"
DEFAULT_CONTEXT = "2048"
# Lock-free and answered only once the model is loaded (see above); /v1/models queues behind generation.
HEALTH_PATH = "/docs"


def threads(ctx: ServingContext) -> int:
    """One thread per vCPU the replica is given (a CPU pool's device is a slice of `units_per_device` vCPUs)."""
    return max(1, ctx.devices_per_replica * ctx.units_per_device)


def launch(ctx: ServingContext) -> Launch:
    return Launch(
        command=["python3", "-m", "llama_cpp.server"],
        args=[
            "--model",
            ctx.model_path,
            "--model_alias",
            ctx.served_name,
            "--host",
            "0.0.0.0",
            "--port",
            str(SERVING_PORT),
            "--n_threads",
            str(threads(ctx)),
            "--n_ctx",
            DEFAULT_CONTEXT,
            "--interrupt_requests",
            "False",
        ],
        readiness_path=HEALTH_PATH,
        liveness_path=HEALTH_PATH,
    )


RUNTIME = Runtime(
    engine="llama-cpp",
    families=("cpu",),
    images={"cpu": f"ghcr.io/abetlen/llama-cpp-python:v{VERSION}"},
    launch=launch,
    metrics=None,
    warm=WarmStandby(mechanism="none: a warm replica is a cold replica", promote=None),
    drain=Drain(mechanism="SIGTERM: uvicorn stops accepting and finishes in-flight requests"),
    sim=ServiceDefaults(promote_s=None),
    quantisation="GGUF: F32/F16/BF16, Q8_0, Q4_K_M and the other llama.cpp types (verified here: F32 and Q8_0)",
    version=VERSION,
    health_path=HEALTH_PATH,
)
