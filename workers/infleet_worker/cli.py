"""`infleet-worker serve ...`: the process the operator's pods run.

Every flag has an environment-variable twin (INFLEET_*), so the operator can configure pods either way; a flag
given on the command line wins. The HTTP server starts first (state `starting`: /healthz 200, /readyz 503), the
model loads in the background, then the worker enters its initial state (`serving` or `warm`). SIGTERM drains.
"""

from __future__ import annotations

import time

_T_MAIN = time.monotonic()  # before any heavy import: the start of the `import` phase when /proc is unavailable


def _process_age_s() -> float | None:
    """Seconds since the kernel started this process (Linux), so `total` covers interpreter start-up too."""
    try:
        import os

        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


_AGE = _process_age_s()
PROCESS_START = _T_MAIN - _AGE if _AGE is not None else _T_MAIN

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from infleet_worker.engine import EngineConfig

log = logging.getLogger("infleet_worker")

ADMIN_TOKEN_ENV = "INFLEET_WORKER_ADMIN_TOKEN"  # the operator sets it from the Secret infleet-worker-admin


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _int4_group_size(text: str) -> int:
    """argparse type (also applied to the env default): a bad value is a usage error, not a start-up traceback.
    The sizes are torch's int4 kernels' (quant.INT4_GROUP_SIZES; not imported: that would import torch here)."""
    if text.strip() not in ("32", "64", "128", "256"):
        raise argparse.ArgumentTypeError(f"int4 group size must be one of 32, 64, 128, 256, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infleet-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a model over the OpenAI-compatible HTTP API")
    s.add_argument("--model", default=_env("INFLEET_MODEL", "tiny"),
                   help="checkpoint directory (config.json + *.safetensors) or built-in: tiny, llama-1b, llama-8b")
    s.add_argument("--served-model-name", default=os.environ.get("INFLEET_SERVED_MODEL_NAME"),
                   help="name reported by the API and in the metrics' model label (default: from --model)")
    s.add_argument("--device", default=_env("INFLEET_DEVICE", "auto"),
                   choices=["auto", "cuda", "cpu", "neuron", "xla"])
    s.add_argument("--dtype", default=_env("INFLEET_DTYPE", "auto"), choices=["auto", "float32", "bfloat16", "float16"])
    s.add_argument("--quantize", default=_env("INFLEET_QUANTIZE", "none"), choices=["none", "int8", "int4"],
                   help="weight-only quantisation of the linear layers: int8 (a quarter of fp32's weight memory, "
                   "half of bf16's) or int4 (group-wise, ~1/8 of fp32's plus scales; see --quantize-group-size)")
    s.add_argument("--quantize-group-size", type=_int4_group_size,
                   default=_env("INFLEET_QUANTIZE_GROUP_SIZE", "128"),
                   help="int4: input weights per scale/zero point, one of 32, 64, 128, 256 (default 128); a layer "
                   "whose input width it does not divide stays unquantised, one that divides none is refused")
    s.add_argument("--host", default=_env("INFLEET_HOST", "0.0.0.0"))
    s.add_argument("--port", type=int, default=int(_env("INFLEET_PORT", "8000")))
    s.add_argument("--state", default=_env("INFLEET_INITIAL_STATE", "serving"), choices=["warm", "serving"],
                   help="lifecycle state once the model is loaded")
    s.add_argument("--drain-grace-seconds", type=float, default=float(_env("INFLEET_DRAIN_GRACE_SECONDS", "30")))
    s.add_argument("--num-slots", type=int, default=int(_env("INFLEET_NUM_SLOTS", "8")),
                   help="the largest running batch (sequences decoding at once); also sizes the default KV pool")
    s.add_argument("--max-seq-len", type=int, default=int(_env("INFLEET_MAX_SEQ_LEN", "512")),
                   help="prompt + generated tokens per request")
    s.add_argument("--max-waiting", type=int, default=int(_env("INFLEET_MAX_WAITING", "256")),
                   help="queued requests beyond which new ones get 429")
    s.add_argument("--max-batched-tokens", type=int, default=int(_env("INFLEET_MAX_BATCHED_TOKENS", "512")),
                   help="per-step token budget shared by decode and prefill")
    s.add_argument("--block-size", type=int, default=int(_env("INFLEET_BLOCK_SIZE", "16")),
                   help="tokens per KV-cache block (the unit of allocation and of prefix sharing)")
    s.add_argument("--kv-blocks", type=int, default=int(_env("INFLEET_KV_BLOCKS", "0")),
                   help="KV-cache pool size in blocks; 0 = num-slots x max-seq-len tokens' worth plus "
                        "--prefix-cache-blocks (the memory the unpaged cache reserved)")
    s.add_argument("--prefix-cache-blocks", type=int, default=int(_env("INFLEET_PREFIX_CACHE_BLOCKS", "0")),
                   help="> 0: prefix caching on (repeated system prompts, earlier chat turns share KV blocks) and, "
                        "with --kv-blocks 0, this many blocks added to the pool; 0 = off")
    s.add_argument("--no-cuda-graphs", action="store_true", help="run decode eagerly on CUDA")
    s.add_argument("--seed", type=int, default=int(_env("INFLEET_SEED", "0")), help="seed of built-in random weights")
    s.add_argument("--log-level", default=_env("INFLEET_LOG_LEVEL", "INFO"))
    return parser


def engine_config(args: argparse.Namespace) -> EngineConfig:
    from infleet_worker.engine import EngineConfig

    return EngineConfig(num_slots=args.num_slots, max_seq_len=args.max_seq_len, max_waiting=args.max_waiting,
                        max_num_batched_tokens=args.max_batched_tokens, block_size=args.block_size,
                        kv_blocks=args.kv_blocks, prefix_cache_blocks=args.prefix_cache_blocks)


async def _serve(args: argparse.Namespace) -> int:
    # Imported here so the `import` start-up phase (torch, aiohttp) is measured from process start.
    from infleet_worker.devices import cuda_identity, resolve_device
    from infleet_worker.energy import meter_for_device
    from infleet_worker.loader import build_engine, load_model
    from infleet_worker.metrics import WorkerMetrics
    from infleet_worker.server import ServedModel, WorkerServer, running_site

    phases = {"import": time.monotonic() - PROCESS_START}
    name = args.served_model_name or os.path.basename(os.path.normpath(args.model))
    metrics = WorkerMetrics(name)
    admin_token = os.environ.get(ADMIN_TOKEN_ENV) or None
    server = WorkerServer(name, metrics, initial_state=args.state, drain_grace_s=args.drain_grace_seconds,
                          admin_token=admin_token)
    log.info("admin API: %s", "bearer token from " + ADMIN_TOKEN_ENV if admin_token else
             f"loopback clients only ({ADMIN_TOKEN_ENV} is not set)")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.begin_drain)
    config = engine_config(args)
    async with running_site(server.app(), args.host, args.port):
        log.info("listening on %s:%d; loading %s", args.host, args.port, args.model)

        def load() -> ServedModel:
            spec = resolve_device(args.device, args.dtype)
            indices, uuids = cuda_identity(spec)
            meter = meter_for_device(spec.family, indices, uuids)
            meter.start()
            metrics.bind_energy(meter)
            loaded = load_model(args.model, spec, seed=args.seed, quantize=args.quantize,
                                group_size=args.quantize_group_size)
            engine = build_engine(loaded, spec, config, cuda_graphs=not args.no_cuda_graphs, observer=metrics)
            phases.update(loaded.timings)
            log.info("model %s on %s (%s): load %.2fs, warm-up %.2fs", name, spec.device, spec.dtype,
                     loaded.timings["load"], loaded.timings["warmup"])
            return ServedModel(name, engine, loaded.tokenizer, loaded.chat_template)

        try:
            served = await loop.run_in_executor(None, load)
        except Exception as exc:
            log.error("start-up failed: %s", exc)
            return 2
        served.engine.start()
        phases["total"] = time.monotonic() - PROCESS_START
        metrics.set_startup(phases)
        if server.state == "starting":
            server.attach(served)
        else:  # SIGTERM arrived while loading: nothing to serve, stop now
            served.engine.shutdown()
            return 0
        log.info("ready in %.2fs; state %s", phases["total"], server.state)
        await server.stopped.wait()
    log.info("drained; exiting")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return asyncio.run(_serve(args))
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
