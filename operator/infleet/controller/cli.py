"""`infleet run`: the operator, out of cluster with a kubeconfig or in cluster with its service account.

kopf and the Kubernetes client are imported only when `run` runs, so other `infleet` commands start fast.
"""

from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path
from typing import Any

DEFAULT_PEERING = "infleet"


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
    p.add_argument("--peering", default=DEFAULT_PEERING, help="kopf peering object shared by the operator's replicas")
    p.add_argument("--priority", type=int, default=None, help="peering priority; the highest live replica acts")
    p.add_argument("--standalone", action="store_true", help="no peering: act regardless of other replicas")
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off)")
    p.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="liveness endpoint URL ('' to disable)")
    p.add_argument(
        "--fallback-after-seconds",
        type=float,
        default=None,
        help="override every deployment's placement.fallbackAfterSeconds",
    )
    p.add_argument("--interval", type=float, default=10.0, help="seconds between periodic reconciles of each object")
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
    p.add_argument("--log-format", choices=("json", "text"), default="json", help="log format (default json)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import kopf

    from infleet.controller.autoscale import LoadMeter
    from infleet.controller.handlers import Context, register_handlers
    from infleet.controller.kube import Kube
    from infleet.controller.manifests import ImageConfig
    from infleet.controller.metrics import OperatorMetrics
    from infleet.controller.promotion import AssumeAccepted, HttpWorkerState, WorkerStateClient
    from infleet.controller.reconcile import Settings
    from infleet.controller.scrape import HttpMetricsSource
    from infleet.controller.slorules import SloRules
    from infleet.policy.loop import LoopSettings

    kopf.configure(
        verbose=args.verbose, log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL
    )
    if not args.verbose:
        # kopf logs every handler and timer success at INFO; our own reconcile line says more, once.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kube = Kube.connect(args.kubeconfig)
    images = ImageConfig()
    if args.image_repository or args.image_tag:
        images = ImageConfig(args.image_repository or images.repository, args.image_tag or images.tag)
    fallback = args.fallback_after_seconds
    metrics = OperatorMetrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    meter = None if args.no_autoscale else LoadMeter(HttpMetricsSource())
    promotion: WorkerStateClient | None = None
    if args.promotion_client == "http":
        promotion = HttpWorkerState()
    elif args.promotion_client == "assume-ok":  # simulated clusters only: no worker answers there
        promotion = AssumeAccepted()
    ctx = Context(
        kube=kube,
        settings=Settings(
            images=images,
            loop=LoopSettings(
                period_s=args.interval,
                fallback_after_s=fallback,
                autoscale=meter is not None,
                promote=promotion is not None,
            ),
            meter=meter,
            promotion=promotion,
        ),
        metrics=metrics,
        slo_rules=SloRules(kube),
    )
    ctx.interval_s = args.interval

    registry = kopf.OperatorRegistry()
    register_handlers(registry, ctx)
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="infleet.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="infleet.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # kopf's own per-handler Events would drown ours
    settings.execution.max_workers = 8

    namespaces: list[str] = list(args.namespace)
    clusterwide = not namespaces
    priority = args.priority if args.priority is not None else random.randint(1, 1_000_000)
    # Set on the settings, not as kopf.run() arguments: kopf makes peering mandatory whenever a peering name
    # is passed, which would pause a standalone operator forever.
    settings.peering.standalone = args.standalone
    settings.peering.priority = priority
    if not args.standalone:
        settings.peering.name = args.peering
        settings.peering.mandatory = True
        _ensure_peering(kube, args.peering, namespaces)
    logging.getLogger("infleet.controller").info(
        "starting infleet operator: %s, peering %s (priority %d), metrics :%s",
        "all namespaces" if clusterwide else ",".join(namespaces),
        "off" if args.standalone else args.peering,
        priority,
        args.metrics_port,
    )
    kopf.run(
        registry=registry,
        settings=settings,
        liveness_endpoint=args.liveness or None,
        clusterwide=clusterwide,
        namespaces=namespaces,
    )
    return 0


def _ensure_peering(kube: Any, name: str, namespaces: list[str]) -> None:
    """Create the peering object if missing (the CRDs come from crds/kopf-peering.yaml)."""
    targets = (
        [(f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings", "KopfPeering", ns) for ns in namespaces]
        if namespaces
        else [("/apis/kopf.dev/v1/clusterkopfpeerings", "ClusterKopfPeering", None)]
    )
    from kubernetes.client.exceptions import ApiException

    for path, kind, ns in targets:
        meta: dict[str, str] = {"name": name}
        if ns:
            meta["namespace"] = ns
        try:
            kube.create(path, {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": meta})
        except ApiException as exc:
            if exc.status == 404:
                raise SystemExit(
                    f"kopf peering CRDs are not installed: kubectl apply -f crds/kopf-peering.yaml "
                    f"(or run with --standalone): {exc.reason}"
                ) from exc
            if exc.status != 409:
                raise
