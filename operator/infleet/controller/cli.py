"""`infleet run`: the operator, out of cluster with a kubeconfig or in cluster with its service account.

kopf and the Kubernetes client are imported only when `run` runs, so other `infleet` commands start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
from pathlib import Path
from typing import Any

DEFAULT_PEERING = "infleet"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="run the operator (places InferenceDeployment replicas across AcceleratorPools)",
        description="Run the infleet operator. Watches InferenceDeployments and AcceleratorPools, places replicas "
        "on the cheapest pools that meet each SLO, falls back when a pool is full.",
    )
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig to use (default: in-cluster, then $KUBECONFIG)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    p.add_argument(
        "--peering",
        default=DEFAULT_PEERING,
        help="name of the coordination.k8s.io Lease that elects the one active replica (others stay warm)",
    )
    p.add_argument(
        "--leader-election-namespace",
        default=None,
        help="namespace of that Lease (default: $POD_NAMESPACE, then the service account's namespace, then default)",
    )
    p.add_argument("--standalone", action="store_true", help="no leader election: this replica always acts")
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off)")
    p.add_argument(
        "--bind-address",
        default="0.0.0.0",
        help="address the /metrics and liveness endpoints listen on (e.g. 127.0.0.1 outside a pod)",
    )
    p.add_argument("--liveness-port", type=int, default=8081, help="liveness endpoint port, path /healthz (0: off)")
    p.add_argument(
        "--resync",
        type=float,
        default=60.0,
        help="every other deployment and pool is reconciled at least this often (changes trigger one at once)",
    )
    p.add_argument("--workers", type=int, default=4, help="reconciles running at once")
    p.add_argument(
        "--gateway-url",
        action="append",
        default=[],
        help="an infleet-gateway /metrics URL to scale on (repeatable; the gateways' queues and arrivals are summed)",
    )
    p.add_argument(
        "--gateway-selector",
        default=None,
        help="label selector of infleet-gateway pods (found through the watch index; e.g. "
        "app.kubernetes.io/component=gateway); their /metrics on --gateway-port are scraped",
    )
    p.add_argument("--gateway-namespace", default=None, help="namespace of those pods (default: the Lease's)")
    p.add_argument("--gateway-port", type=int, default=8080, help="the gateways' HTTP port (default 8080)")
    add_decision_flags(p)
    p.add_argument("--log-format", choices=("json", "text"), default="json", help="log format (default json)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.set_defaults(func=run)

    from infleet.controller import plan_cli

    plan_cli.register(subparsers, add_decision_flags)


def add_decision_flags(p: argparse.ArgumentParser) -> None:
    """Flags that change decisions, shared by `infleet run` and `infleet plan` (which must decide alike)."""
    p.add_argument(
        "--fallback-after-seconds",
        type=float,
        default=None,
        help="override every deployment's placement.fallbackAfterSeconds",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=10.0,
        help="the autoscaler's period: seconds between measurements and decisions of each Auto deployment",
    )
    p.add_argument(
        "--no-autoscale",
        action="store_true",
        help="do not scrape workers; replicas follow the declared throughput and scaling bounds only",
    )
    p.add_argument(
        "--promotion-client",
        choices=("http", "assume-ok", "off"),
        default="http",
        help="how warm workers are told to serve on a scale-up: http (POST /admin/state, the default), "
        "assume-ok (ONLY for simulated clusters such as kwok, where no worker answers: every promotion is taken "
        "as accepted), off (never promote; scale-ups start cold pods)",
    )
    p.add_argument("--image-repository", default=None, help="worker image repository (suffixed -cuda, -cpu, ...)")
    p.add_argument("--image-tag", default=None, help="worker image tag (default: the operator's version)")


def run(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    import kopf

    from infleet.controller.apply import fan_out_on
    from infleet.controller.handlers import Context, register_handlers
    from infleet.controller.inferencepool import InferencePools
    from infleet.controller.kube import Kube
    from infleet.controller.leader import LeaseElector
    from infleet.controller.metrics import OperatorMetrics
    from infleet.controller.slorules import SloRules

    kopf.configure(
        verbose=args.verbose, log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL
    )
    if not args.verbose:
        # kopf logs every handler success at INFO; our own reconcile line says more, once.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Watches (one per informer and namespace) hold a connection each; reconcile workers, the threads that send a
    # plan's applies at once (two per worker: a new deployment's Deployment and Service), the pool timer, promotion
    # and the Lease use the rest.
    watches = 3 + 2 * max(1, len(args.namespace))
    appliers = 2 * args.workers
    kube = Kube.connect(args.kubeconfig, connections=watches + args.workers + appliers + 4)
    metrics = OperatorMetrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port, addr=args.bind_address)
    namespaces: list[str] = list(args.namespace)
    elector = None
    if not args.standalone:
        identity = f"{socket.gethostname()}-{os.getpid()}-{random.randint(0, 1 << 30):x}"
        lease_ns = args.leader_election_namespace or _own_namespace()
        elector = LeaseElector(kube, lease_ns, args.peering, identity)
    ctx = Context(
        kube=kube,
        settings=replace(
            settings_from(args, kube),
            fan_out=fan_out_on(ThreadPoolExecutor(max_workers=appliers, thread_name_prefix="infleet-apply")),
        ),
        metrics=metrics,
        interval_s=args.interval,
        resync_s=args.resync,
        namespaces=tuple(namespaces),
        workers=args.workers,
        slo_rules=SloRules(kube),
        inference_pools=InferencePools(kube),
        elector=elector,
    )
    if ctx.settings.meter is not None and (args.gateway_url or args.gateway_selector):
        ctx.settings.meter.gateway = gateway_meter(ctx, args)
    registry = kopf.OperatorRegistry()
    register_handlers(registry, ctx)
    settings = kopf.OperatorSettings()
    settings.posting.level = logging.WARNING  # kopf's own per-handler Events would drown ours
    settings.peering.standalone = True  # the Lease elects the active replica (see infleet.controller.leader)
    settings.execution.max_workers = 4
    liveness = f"http://{args.bind_address}:{args.liveness_port}/healthz" if args.liveness_port else None
    logging.getLogger("infleet.controller").info(
        "starting infleet operator: %s, %s, metrics %s:%s",
        ",".join(namespaces) or "all namespaces",
        "standalone" if elector is None else f"lease {elector.namespace}/{elector.name} as {elector.identity}",
        args.bind_address,
        args.metrics_port,
    )
    kopf.run(
        registry=registry,
        settings=settings,
        liveness_endpoint=liveness,
        clusterwide=not namespaces,
        namespaces=namespaces,
    )
    return 0


def settings_from(args: argparse.Namespace, kube: Any) -> Any:
    """The reconcile settings the flags describe (shared by `infleet run` and `infleet plan`)."""
    from infleet.controller.admin_secret import AdminSecrets, CachedAdminTokens
    from infleet.controller.autoscale import LoadMeter
    from infleet.controller.manifests import ImageConfig
    from infleet.controller.promotion import AssumeAccepted, HttpWorkerState, WorkerStateClient
    from infleet.controller.reconcile import Settings
    from infleet.controller.scrape import HttpMetricsSource
    from infleet.policy.loop import LoopSettings

    images = ImageConfig()
    if args.image_repository or args.image_tag:
        images = ImageConfig(args.image_repository or images.repository, args.image_tag or images.tag)
    meter = None if args.no_autoscale else LoadMeter(HttpMetricsSource())
    promotion: WorkerStateClient | None = None
    if args.promotion_client == "http":
        promotion = HttpWorkerState(admin_token=CachedAdminTokens(kube))
    elif args.promotion_client == "assume-ok":  # simulated clusters only: no worker answers there
        promotion = AssumeAccepted()
    return Settings(
        images=images,
        loop=LoopSettings(
            period_s=args.interval,
            fallback_after_s=args.fallback_after_seconds,
            autoscale=meter is not None,
            promote=promotion is not None,
        ),
        meter=meter,
        promotion=promotion,
        admin_secrets=AdminSecrets(kube),
    )


def _own_namespace() -> str:
    env = os.environ.get("POD_NAMESPACE")
    if env:
        return env
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def gateway_meter(ctx: Any, args: argparse.Namespace) -> Any:
    """The gateways' metrics for the autoscaler: static URLs, and ready pods matching --gateway-selector."""
    from infleet.controller.autoscale import GatewayMeter
    from infleet.controller.gateway_signals import HttpGatewaySource
    from infleet.controller.snapshot import pod_ready, selects

    source = HttpGatewaySource(list(args.gateway_url))
    selector = dict(kv.split("=", 1) for kv in (args.gateway_selector or "").split(",") if "=" in kv)
    namespace = args.gateway_namespace or args.leader_election_namespace or _own_namespace()

    def urls() -> list[str]:
        found = list(args.gateway_url)
        if selector:
            with ctx.index.lock:
                pods = [p for (ns, _), p in ctx.index.pods.items() if ns == namespace]
            for pod in pods:
                ip = (pod.get("status") or {}).get("podIP")
                if ip and pod_ready(pod) and selects(selector, pod["metadata"].get("labels") or {}):
                    found.append(f"http://{ip}:{args.gateway_port}/metrics")
        return found

    def fetch() -> Any:
        source.urls = urls()
        return source.fetch()

    return GatewayMeter(fetch=fetch, max_age_s=min(1.0, args.interval / 2))
