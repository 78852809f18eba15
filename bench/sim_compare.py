"""The simulator comparison: every policy against the yardsticks, on both Azure traces and generated stress shapes.

    .venv/bin/python bench/sim_compare.py            # ~4 min on two cores; --minutes 30 --out sim-out/compare
    .venv/bin/python bench/sim_compare.py --faults   # the same with FAULTS: spot reclaims, cold-start spread, delays

For each trace (a window of each Azure trace, and generated shapes from `infleet tracegen`, seeded), replayed on
examples/pools.yaml with the bundled deployment for it (docs/simulator.md):
* infleet, each baseline at its project's documented defaults, and each baseline tuned with hindsight (a grid over
  its main target and window, replayed on that very trace: the strongest version of each);
* the hindsight fixed fleet (cheapest N x pool meeting 99%, found by replay), the foresight schedule (replayed) and
  the strict work bound.
Columns: SLO attainment, requests within SLO, p99 TTFT, p99 TPOT, cost, cost relative to the hindsight fixed fleet,
energy (kWh) and Wh per million tokens. Prints markdown tables and writes OUT/compare.json.

Train/test: infleet's constants (policy/loop.py, policy/autoscaler.py, policy/scaling.py, policy/warm.py) were
chosen on the two Azure traces (the loop's with bench/tune_loop.py, which replays only those); the generated
shapes were never used to tune them. The baselines' tuned rows are tuned on the trace they are
judged on (hindsight), on purpose.
Trace data: Azure Public Dataset, AzureLLMInferenceDataset2023, CC-BY 4.0 (Patel et al., Splitwise, ISCA 2024).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from infleet.sim.baselines import BASELINES, WINDOWS
from infleet.sim.cli import DEFAULT_POOLS, TRACES, default_deployment
from infleet.sim.engine import Faults
from infleet.sim.fleet import load_fleet
from infleet.sim.oracle import work_bound
from infleet.sim.policies import make
from infleet.sim.report import summarize
from infleet.sim.trace import ATTRIBUTION, Trace, load_trace
from infleet.sim.tracegen import TraceShape, generate
from infleet.sim.yardsticks import Outcome, foresight_schedule, hindsight_fixed, replay, tune

SHAPES = (
    TraceShape(shape="bursts", rate_rps=3.0, seed=1),
    TraceShape(shape="diurnal", rate_rps=3.0, seed=2),
    TraceShape(shape="prompt-shift", rate_rps=3.0, shift_factor=3.0, seed=3),
    TraceShape(shape="long-context", rate_rps=1.0, long_share=0.5, seed=4),
)
# A plausible bad day: each spot replica reclaimed once an hour on average (two-minute notice), cold starts spread
# 30%, metrics 30 s old (a 15 s scrape plus the pipeline) and decisions acting 10 s later.
FAULTS = Faults(
    spot_reclaims_per_hour=1.0,
    spot_notice_s=120.0,
    cold_start_cv=0.3,
    metrics_delay_s=30.0,
    decision_delay_s=10.0,
    seed=1,
)
TRAINED_ON = {"azure-llm-2023-conv", "azure-llm-2023-code"}


def traces(minutes: float) -> list[tuple[Trace, Path]]:
    out = []
    for name in ("conv", "code"):
        path = TRACES / f"azure-llm-2023-{name}.csv"
        out.append((load_trace(path).window(0.0, minutes * 60), path))
    for spec in SHAPES:
        trace = generate(dataclasses.replace(spec, duration_s=minutes * 60))
        out.append((trace, Path(f"{trace.name}.csv")))  # the name picks the bundled deployment
    return out


def compare(trace: Trace, path: Path, faults: Faults | None = None) -> dict[str, Any]:
    deployment = default_deployment(path)
    fleet = load_fleet([DEFAULT_POOLS], deployment)
    started = time.perf_counter()
    outcomes: list[Outcome] = [replay(fleet, trace, make("infleet"), faults=faults)]
    outcomes += [replay(fleet, trace, make(name), faults=faults) for name in BASELINES]
    outcomes += [tune(fleet, trace, name, faults=faults) for name in WINDOWS]
    fixed = hindsight_fixed(fleet, trace, faults=faults)
    sticks = [] if fixed is None else [dataclasses.replace(fixed, label=f"hindsight {fixed.label}")]
    sticks.append(foresight_schedule(fleet, trace, faults=faults))
    reference = fixed.cost_usd if fixed is not None and fixed.meets else None
    rows = [summarize(o.result, trace, reference, o.label) | {"settings": o.settings} for o in outcomes + sticks]
    return {
        "trace": trace.name,
        "deployment": deployment.name,
        "requests": len(trace),
        "minutes": trace.duration_s / 60,
        "constants_tuned_on_it": trace.name in TRAINED_ON,
        "rows": rows,
        "work_bound_usd": work_bound(fleet, trace),
        "wall_s": time.perf_counter() - started,
    }


def markdown(doc: dict[str, Any]) -> str:
    split = "train (infleet's constants were tuned on it)" if doc["constants_tuned_on_it"] else "test"
    lines = [
        f"{doc['trace']} ({doc['requests']:,} requests, {doc['minutes']:.0f} min, deployment "
        f"`{doc['deployment']}`, {split}; {doc['wall_s']:.0f} s):",
        "",
        "| policy | SLO met | within SLO | p99 TTFT s | p99 TPOT ms | cost $ | x fixed | kWh | Wh/Mtok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        x = "-" if r["cost_vs_fixed"] is None else f"{r['cost_vs_fixed']:.2f}"
        ttft = "-" if r["p99_ttft_s"] is None else f"{r['p99_ttft_s']:.2f}"
        tpot = "-" if r["p99_tpot_s"] is None else f"{r['p99_tpot_s'] * 1e3:.0f}"
        wh = "-" if r["wh_per_million_tokens"] is None else f"{r['wh_per_million_tokens']:.0f}"
        lines.append(
            f"| {r['policy']} | {r['slo_attainment']:.2%} | {r['slo_met']:,} | {ttft} | {tpot} | "
            f"{r['cost_usd']:.2f} | {x} | {r['energy_kwh']:.2f} | {wh} |"
        )
    lines.append(f"| work bound (strict) | | | | | {doc['work_bound_usd']:.2f} | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0, help="window of each trace (default 30)")
    parser.add_argument("--out", type=Path, default=Path("sim-out/compare"))
    parser.add_argument("--faults", action="store_true", help="replay everything under FAULTS")
    args = parser.parse_args()
    faults = FAULTS if args.faults else None
    started = time.perf_counter()
    docs = []
    for trace, path in traces(args.minutes):
        doc = compare(trace, path, faults)
        docs.append(doc)
        print(markdown(doc) + "\n", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(
        json.dumps(
            {"attribution": ATTRIBUTION, "faults": args.faults and dataclasses.asdict(FAULTS), "traces": docs}, indent=1
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"({time.perf_counter() - started:.0f} s wall in all; {ATTRIBUTION})")


if __name__ == "__main__":
    main()
