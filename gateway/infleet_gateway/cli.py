"""`infleet-gateway`: serve the OpenAI API in front of infleet's workers.

Discovery: `--kube` watches the API (serving pods and InferenceDeployments); `--endpoints FILE` and/or
`--endpoint MODEL=URL[,pool=NAME][,capacity=RPS][,engine=NAME]` list replicas statically (tests, development).
Every flag has an INFLEET_GATEWAY_* environment twin; a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from infleet.policy.routing import RoutingConfig
from infleet_gateway.admission import AdmissionConfig
from infleet_gateway.probe import Prober
from infleet_gateway.replicas import EndpointTable
from infleet_gateway.server import Gateway, ProxyConfig
from infleet_gateway.static import ConfigError, fill, load_file, merge

log = logging.getLogger("infleet_gateway")


def _env(name: str, default: str) -> str:
    return os.environ.get("INFLEET_GATEWAY_" + name, default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infleet-gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=_env("HOST", "0.0.0.0"))
    p.add_argument("--port", type=int, default=int(_env("PORT", "8080")))
    d = p.add_argument_group("discovery")
    d.add_argument("--kube", action="store_true", default=_env("KUBE", "") == "1",
                   help="watch serving pods and InferenceDeployments through the Kubernetes API")
    d.add_argument("--kubeconfig", type=Path, default=os.environ.get("INFLEET_GATEWAY_KUBECONFIG"),
                   help="kubeconfig for --kube (default: in-cluster, then ~/.kube/config)")
    d.add_argument("--namespace", default=os.environ.get("INFLEET_GATEWAY_NAMESPACE"),
                   help="only this namespace (default: all)")
    d.add_argument("--endpoints", type=Path, default=os.environ.get("INFLEET_GATEWAY_ENDPOINTS"),
                   help="static endpoints file (YAML/JSON), see docs/gateway.md")
    d.add_argument("--endpoint", action="append", default=[],
                   metavar="MODEL=URL[,pool=NAME][,capacity=RPS][,engine=NAME]",
                   help="one static replica (repeatable)")
    d.add_argument("--probe-interval", type=float, default=float(_env("PROBE_INTERVAL", "0.5")),
                   help="seconds between replica probes (/metrics, or the health path of a runtime without "
                        "one; 0: no probes, static replicas are then routable at once)")
    q = p.add_argument_group("queue and admission")
    q.add_argument("--max-queue", type=int, default=int(_env("MAX_QUEUE", "256")),
                   help="requests that may wait per deployment; beyond: 429")
    q.add_argument("--queue-timeout-slo-multiple", type=float, default=float(_env("QUEUE_TIMEOUT_SLO_MULTIPLE", "2")),
                   help="a queued request waits at most this many times the TTFT (else p99 latency) SLO")
    q.add_argument("--min-queue-timeout", type=float, default=float(_env("MIN_QUEUE_TIMEOUT", "1")))
    q.add_argument("--default-queue-timeout", type=float, default=float(_env("DEFAULT_QUEUE_TIMEOUT", "10")),
                   help="queue timeout of a deployment without an SLO")
    q.add_argument("--cold-start-timeout", type=float, default=float(_env("COLD_START_TIMEOUT", "300")),
                   help="how long requests are held while a deployment has no serving replica (scale from zero)")
    q.add_argument("--max-in-flight-per-replica", type=int, default=int(_env("MAX_IN_FLIGHT_PER_REPLICA", "16")),
                   help="outstanding requests per replica when its capacity or the latency SLO is unknown")
    r = p.add_argument_group("routing and retries")
    r.add_argument("--prefix-affinity-chars", type=int, default=int(_env("PREFIX_AFFINITY_CHARS", "0")),
                   help="> 0: consistent hashing with bounded load on this many leading prompt characters")
    r.add_argument("--load-bound", type=float, default=float(_env("LOAD_BOUND", "1.25")),
                   help="bounded-load factor for prefix affinity (>= 1)")
    r.add_argument("--metrics-max-age", type=float, default=float(_env("METRICS_MAX_AGE", "2")),
                   help="seconds a worker's probed queue/KV reading counts as fresh")
    r.add_argument("--max-attempts", type=int, default=int(_env("MAX_ATTEMPTS", "3")),
                   help="replicas tried per request when one fails before the first byte")
    r.add_argument("--connect-timeout", type=float, default=float(_env("CONNECT_TIMEOUT", "2")))
    r.add_argument("--idle-timeout", type=float, default=float(_env("IDLE_TIMEOUT", "120")),
                   help="the longest silence from a replica mid-answer")
    p.add_argument("--shutdown-grace", type=float, default=float(_env("SHUTDOWN_GRACE", "30")),
                   help="on SIGTERM: queued requests get 503 at once (clients retry elsewhere); in-flight ones "
                        "get this many seconds to finish")
    p.add_argument("--event-loop", choices=["auto", "asyncio", "uvloop"], default=_env("EVENT_LOOP", "auto"),
                   help="auto: uvloop when installed (about half the per-request overhead), else asyncio's")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    return p


def configure(args: argparse.Namespace) -> tuple[Gateway, bool]:
    """The gateway the flags describe, and whether it discovers through the API. ConfigError/ValueError on bad
    flags."""
    static = bool(args.endpoints or args.endpoint)
    if args.kube == static:
        raise ConfigError("choose one discovery: --kube, or --endpoints FILE / --endpoint MODEL=URL")
    admission = AdmissionConfig(
        max_queue=args.max_queue, queue_timeout_slo_multiple=args.queue_timeout_slo_multiple,
        min_queue_timeout_s=args.min_queue_timeout, default_queue_timeout_s=args.default_queue_timeout,
        cold_start_timeout_s=args.cold_start_timeout, default_max_in_flight=args.max_in_flight_per_replica,
        probe_gates_ready=static and args.probe_interval > 0)
    routing = RoutingConfig(prefix_affinity=args.prefix_affinity_chars > 0, load_bound=args.load_bound,
                            metrics_max_age_s=args.metrics_max_age)
    proxy = ProxyConfig(max_attempts=args.max_attempts, connect_timeout_s=args.connect_timeout,
                        idle_timeout_s=args.idle_timeout, prefix_chars=args.prefix_affinity_chars)
    table = EndpointTable()
    gateway = Gateway(table, admission=admission, routing=routing, proxy=proxy)
    if static:
        fill(table, merge(load_file(args.endpoints) if args.endpoints else None, args.endpoint))
        gateway.synced = True
    return gateway, args.kube


async def serve(args: argparse.Namespace, gateway: Gateway, kube: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(gateway.app(), handle_signals=False, handler_cancellation=True, access_log=None,
                           shutdown_timeout=args.shutdown_grace)
    await runner.setup()
    tasks: list[asyncio.Task[None]] = []
    try:
        await web.TCPSite(runner, args.host, args.port).start()
        assert gateway.session is not None
        if args.probe_interval > 0:
            tasks.append(loop.create_task(Prober(gateway.table, gateway.session, args.probe_interval).run()))
        if kube:
            from infleet_gateway.kube import KubeDiscovery

            discovery = KubeDiscovery(gateway.table, loop, kubeconfig=args.kubeconfig, namespace=args.namespace,
                                      on_synced=lambda: setattr(gateway, "synced", True))
            tasks.append(loop.create_task(discovery.run()))
        # Everything loaded so far (aiohttp, prometheus-client, numpy and scipy via infleet.policy) lives for the
        # whole process: keep it out of the cyclic GC, whose full collections otherwise scan it all and stall the
        # event loop for tens of milliseconds (seen as p99 spikes in bench/gateway_latency.py).
        gc.collect()
        gc.freeze()
        log.info("listening on %s:%d (%s discovery); models: %s", args.host, args.port,
                 "kube" if kube else "static", ", ".join(gateway.table.models()) or "none yet")
        await stop.wait()
        log.info("stopping: queued requests get 503, in-flight ones up to %.0fs", args.shutdown_grace)
        gateway.admission.close()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        gateway, kube = configure(args)
    except (ConfigError, ValueError) as exc:
        print(f"infleet-gateway: {exc}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=_loop_factory(args.event_loop)) as runner:
        return runner.run(serve(args, gateway, kube))


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            print("infleet-gateway: --event-loop uvloop, but uvloop is not installed", file=sys.stderr)
            raise SystemExit(2) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


if __name__ == "__main__":
    sys.exit(main())
