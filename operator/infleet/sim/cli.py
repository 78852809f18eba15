"""`infleet simulate`: replay a request trace on a fleet under one policy or all of them, and report."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from infleet.sim import tracegen
from infleet.sim.baselines import WINDOWS as TUNABLE
from infleet.sim.capacity import Mix, infeasible_message
from infleet.sim.engine import Faults
from infleet.sim.fleet import load_fleet, with_service_overrides
from infleet.sim.oracle import work_bound
from infleet.sim.policies import POLICIES, make
from infleet.sim.report import plot, summarize, table, write_report
from infleet.sim.trace import ATTRIBUTION, load_trace
from infleet.sim.yardsticks import GOAL, Outcome, foresight_schedule, hindsight_fixed, replay, tune

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parents[2]
DEFAULT_POOLS = _REPO / "examples" / "pools.yaml"


def _shared_traces() -> Path:
    """``shared/traces`` beside the checkout (or beside a folder above it, for worktrees one level deeper)."""
    for parent in _REPO.parents:
        if (parent / "shared" / "traces").is_dir():
            return parent / "shared" / "traces"
    return _REPO.parent / "shared" / "traces"


TRACES = _shared_traces()
DEFAULT_TRACE = TRACES / "azure-llm-2023-conv.csv"


def default_deployment(trace: Path) -> Path:
    """The bundled deployment that suits the trace: ``code.yaml`` for code traces, ``longctx.yaml`` for generated
    long-context ones, ``rag.yaml`` for other generated ones (``infleet tracegen``), ``chat.yaml`` otherwise."""
    name = trace.name
    if "long-context" in name:
        chosen = "longctx.yaml"
    elif name.startswith("gen-"):
        chosen = "rag.yaml"
    else:
        chosen = "code.yaml" if "code" in name else "chat.yaml"
    return _HERE / "examples" / chosen


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="replay a request trace on a fleet and compare scaling policies (cost, SLO attainment)",
        description="Discrete-event replay of a request trace on AcceleratorPools and an InferenceDeployment.",
    )
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="CSV: TIMESTAMP,ContextTokens,GeneratedTokens")
    p.add_argument("--pools", type=Path, nargs="+", default=[DEFAULT_POOLS], help="YAML with AcceleratorPools")
    p.add_argument("--deployment", type=Path, help="YAML with the InferenceDeployment (default: bundled, per trace)")
    p.add_argument("--name", help="which InferenceDeployment in --deployment, when it holds several")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--policy", choices=sorted(POLICIES), default="infleet")
    which.add_argument("--compare", action="store_true", help="run every policy on the same input")
    p.add_argument(
        "--service",
        type=Path,
        help="YAML/JSON mapping pool name -> service-model fields (prefill_tokens_per_s, tpot_base_s, "
        "tpot_per_seq_s, kv_tokens, max_batch), e.g. measured by the worker benchmark",
    )
    p.add_argument("--start", type=float, default=0.0, help="skip this many seconds of the trace")
    p.add_argument("--duration", type=float, help="replay only this many seconds")
    p.add_argument("--out", type=Path, default=Path("sim-out"), help="directory for report.json and plots")
    p.add_argument("--tuned", action="store_true", help="also run each baseline tuned with hindsight (a grid search)")
    p.add_argument("--no-yardsticks", action="store_true", help="skip the hindsight fixed fleet and foresight replays")
    f = p.add_argument_group("faults and delays (none by default; seeded)")
    f.add_argument("--spot-reclaims-per-hour", type=float, default=0.0, help="per spot replica")
    f.add_argument("--spot-notice", type=float, default=120.0, help="seconds between notice and reclaim")
    f.add_argument(
        "--reclaims",
        action="append",
        default=[],
        metavar="POOL=RATE[:NOTICE]",
        help="per pool: reclaims per replica-hour and notice seconds (overrides the spot figures; repeatable)",
    )
    f.add_argument("--cold-start-cv", type=float, default=0.0, help="spread of cold starts (coefficient of variation)")
    f.add_argument("--metrics-delay", type=float, default=0.0, help="age of the metrics a decision sees (s)")
    f.add_argument("--decision-delay", type=float, default=0.0, help="from a decision to its effect (s)")
    f.add_argument("--seed", type=int, default=0, help="seed of the faults")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    tracegen.register(subparsers)


def run(args: argparse.Namespace) -> int:
    try:
        trace = load_trace(args.trace).window(args.start, args.duration)
        deployment = args.deployment or default_deployment(args.trace)
        fleet = load_fleet(list(args.pools), deployment, args.name)
        if args.service is not None:
            overrides = yaml.safe_load(args.service.read_text(encoding="utf-8")) or {}
            if not isinstance(overrides, dict):
                raise ValueError(f"{args.service}: expected a mapping of pool name to fields")
            fleet = with_service_overrides(fleet, overrides)
        faults = Faults(
            spot_reclaims_per_hour=args.spot_reclaims_per_hour,
            spot_notice_s=args.spot_notice,
            cold_start_cv=args.cold_start_cv,
            metrics_delay_s=args.metrics_delay,
            decision_delay_s=args.decision_delay,
            seed=args.seed,
            pool_reclaims=_pool_reclaims(args.reclaims, args.spot_notice),
        )
        unknown = set(faults.pool_reclaims) - {p.name for p in fleet.pools}
        if unknown:
            raise ValueError(f"--reclaims names pools not in the fleet: {sorted(unknown)}")
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"infleet simulate: {exc}", file=sys.stderr)
        return 2
    if not len(trace):
        print("infleet simulate: no requests in the chosen window", file=sys.stderr)
        return 2
    problem = infeasible_message(fleet, Mix.of(trace))
    if problem is not None:
        print(f"infleet simulate: {problem}", file=sys.stderr)
        return 2
    names = list(POLICIES) if args.compare else [args.policy]
    started = time.perf_counter()
    try:
        outcomes = [replay(fleet, trace, make(name), faults=faults, progress=not args.quiet) for name in names]
        if args.tuned:
            outcomes += [tune(fleet, trace, name, faults=faults) for name in names if name in TUNABLE]
        sticks: list[Outcome] = []
        if not args.no_yardsticks:
            fixed = hindsight_fixed(fleet, trace, faults=faults)
            if fixed is not None:
                sticks.append(dataclasses.replace(fixed, label=f"hindsight {fixed.label}"))
            sticks.append(foresight_schedule(fleet, trace, faults=faults))
    except ValueError as exc:
        print(f"infleet simulate: {exc}", file=sys.stderr)
        return 2
    strict = work_bound(fleet, trace)
    reference = sticks[0].cost_usd if sticks and sticks[0].label.startswith("hindsight") else None
    rows = [summarize(o.result, trace, reference, o.label) | {"settings": o.settings} for o in outcomes + sticks]
    elapsed = time.perf_counter() - started
    print(f"\n{fleet.deployment.name} on {trace.name}: {len(trace)} requests over {trace.duration_s / 60:.1f} min")
    print(table(rows, strict))
    print(f"({elapsed:.1f} s wall; {ATTRIBUTION})")
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(
        args.out / "report.json",
        rows[: len(outcomes)],
        {
            "trace": str(args.trace),
            "deployment": str(deployment),
            "pools": [str(p) for p in args.pools],
            "window_s": [args.start, trace.duration_s],
            "faults": dataclasses.asdict(faults),
            "goal": GOAL,
            "yardsticks": rows[len(outcomes) :],
            "work_bound_usd": strict,
        },
    )
    if not args.no_plots:
        results = [o.result for o in outcomes]
        plot(args.out / "simulation.png", results, fleet.deployment.ttft_s, f"{fleet.deployment.name} on {trace.name}")
    print(f"wrote {args.out / 'report.json'}" + ("" if args.no_plots else f" and {args.out / 'simulation.png'}"))
    return 0


def _pool_reclaims(specs: list[str], notice: float) -> dict[str, tuple[float, float]]:
    """``POOL=RATE[:NOTICE]`` flags as a mapping; a malformed one is a ValueError naming it."""
    out: dict[str, tuple[float, float]] = {}
    for spec in specs:
        pool, sep, rest = spec.partition("=")
        rate, _, given = rest.partition(":")
        try:
            if not sep or not pool:
                raise ValueError
            out[pool] = (float(rate), float(given) if given else notice)
        except ValueError:
            raise ValueError(f"--reclaims {spec!r}: expected POOL=RATE or POOL=RATE:NOTICE") from None
    return out
