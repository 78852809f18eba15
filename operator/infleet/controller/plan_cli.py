"""`infleet plan`: the Plan the operator would apply to a live cluster now, printed, nothing applied.

It observes exactly as a reconcile does (LISTs instead of the watch index), continues from the loop state the
running operator keeps in each deployment's status, and calls the same ``decide``. With ``--measure-seconds N`` it
scrapes the serving workers twice, N seconds apart, so the autoscaler's view of the load is part of the plan.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def register(subparsers: Any, common: Any) -> None:
    p = subparsers.add_parser(
        "plan",
        help="print the Plan the operator would apply now (dry run: nothing is changed)",
        description="Observe the cluster as the operator does and print each InferenceDeployment's Plan.",
    )
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig to use (default: in-cluster, then $KUBECONFIG)")
    p.add_argument("--namespace", "-n", default=None, help="only this namespace (default: all)")
    p.add_argument("name", nargs="?", help="only this InferenceDeployment")
    p.add_argument("--measure-seconds", type=float, default=0.0, help="scrape the workers twice, this far apart")
    common(p)
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from infleet.api import GROUP, VERSION
    from infleet.controller.cli import settings_from
    from infleet.controller.kube import Kube
    from infleet.controller.loopstate import LoopStates
    from infleet.controller.observe import parse_deployment
    from infleet.controller.reconcile import observe_deployment
    from infleet.policy.loop import decide

    kube = Kube.connect(args.kubeconfig)
    settings = dataclasses.replace(settings_from(args, kube), admin_secrets=None)  # a dry run creates nothing
    scope = f"/namespaces/{args.namespace}" if args.namespace else ""
    bodies = kube.list(f"/apis/{GROUP}/{VERSION}{scope}/inferencedeployments")
    if args.name:
        bodies = [b for b in bodies if b["metadata"]["name"] == args.name]
        if not bodies:
            print(f"no InferenceDeployment {args.name!r}{' in ' + args.namespace if args.namespace else ''}",
                  file=sys.stderr)  # fmt: skip
            return 1
    states = LoopStates()
    out: list[dict[str, Any]] = []
    for body in bodies:
        try:
            infd = parse_deployment(body)
        except ValueError as exc:
            out.append({"deployment": _name(body), "error": f"invalid spec: {exc}"})
            continue
        if args.measure_seconds > 0 and settings.meter is not None:
            observe_deployment(kube, body, infd, datetime.now(UTC), settings)  # first sample
            time.sleep(args.measure_seconds)
        seen = observe_deployment(kube, body, infd, datetime.now(UTC), settings)
        plan, _ = decide(seen.obs, states.load(body["metadata"]["uid"], body.get("status") or {}), settings.loop)
        out.append({"deployment": _name(body), "plan": _plan_doc(plan)})
    json.dump(out, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


def _name(body: dict[str, Any]) -> str:
    return f"{body['metadata'].get('namespace')}/{body['metadata']['name']}"


def _plan_doc(plan: Any) -> dict[str, Any]:
    doc = asdict(plan)
    doc.pop("placement", None)
    doc["conditions"] = [asdict(c) for c in plan.conditions]
    return doc
