"""`make e2e` = `python -m closedloop [SCENARIO ...]` (with e2e/ on PYTHONPATH): run closed-loop scenarios on the
e2e cluster and write ``<out>/<scenario>/report.json``; exit 1 if any request was lost or duplicated, or none served.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from closedloop import scenarios as scenario_module
from closedloop.harness import REPO, Settings, local_cluster, scenario_run
from closedloop.report import summarize, write
from closedloop.scenarios import EXTRA_SCENARIOS, FAULT_SCENARIOS, SCENARIOS
from closedloop.simreal import compare

KILL_WORKERS = {"worker-kill", "spot-reclaim"}  # faults that may cut a stream already under way


def main() -> int:
    parser = argparse.ArgumentParser(prog="closedloop", description=__doc__)
    known = {**SCENARIOS, **EXTRA_SCENARIOS}
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS),
                        help=f"any of: {', '.join(known)} (default: {', '.join(SCENARIOS)})")
    parser.add_argument("--out", type=Path, default=REPO / ".cache" / "e2e", help="where report.json files go")
    parser.add_argument("--cold-start-scale", type=float, default=0.02,
                        help="each pool's coldStartSeconds is emulated times this (default 0.02: 90 s -> 1.8 s)")
    parser.add_argument("--length-scale", type=float, default=1.0,
                        help="stretch every trace scenario's load this many times (benchmarks: e.g. 5)")
    parser.add_argument("--no-sim", action="store_true", help="skip the sim-to-real comparison")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the e2e cluster running afterwards")
    args = parser.parse_args()
    unknown = [s for s in args.scenarios if s not in known]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {sorted(known)}")
    scenario_module.LENGTH["scale"] = args.length_scale
    settings = Settings(out_dir=args.out, cold_start_scale=args.cold_start_scale, keep_cluster=args.keep_cluster)
    failed = []
    with local_cluster(settings) as cluster:
        for name in args.scenarios:
            out_dir = args.out / name
            try:
                with scenario_run(cluster, name, out_dir) as run:
                    row = summarize(known[name](run))
            except (AssertionError, TimeoutError, RuntimeError) as exc:
                print(f"e2e: {name} failed: {exc} (operator log: {out_dir / 'operator.log'})", file=sys.stderr)
                failed.append(name)
                continue
            write(out_dir / "report.json", row, {"scenario": name, "cold_start_scale": args.cold_start_scale})
            print(json.dumps({k: row[k] for k in ("deployment", "requests", "served", "slo_attainment",
                                                  "p50_latency_s", "p99_latency_s", "p99_ttft_s", "lost",
                                                  "duplicated", "rejected", "cut_mid_stream", "scale_events")}))
            if row["lost"] or row["duplicated"] or not row["served"]:
                print(f"e2e: {name}: {row['lost']} lost, {row['duplicated']} duplicated, {row['served']} served",
                      file=sys.stderr)
                failed.append(name)
            if name in FAULT_SCENARIOS and row["rejected"]:  # explicit 429s: reported, not counted as lost
                print(f"e2e: {name}: warning: {row['rejected']} of {row['requests']} requests rejected with 429 "
                      f"({row['errors'][:1]})", file=sys.stderr)
            if name not in KILL_WORKERS and row["cut_mid_stream"]:  # scale-downs drain: streams must finish
                print(f"e2e: {name}: {row['cut_mid_stream']} requests cut mid-stream in a scenario that kills no "
                      "worker", file=sys.stderr)
                failed.append(name)
    if not args.no_sim and (args.out / "steady" / "service.json").exists():
        try:
            for r in compare(args.out, ["steady", "burst-cold", "burst-warm"], args.cold_start_scale):
                print(json.dumps({k: r[k] for k in ("scenario", "real_slo_attainment", "sim_slo_attainment",
                                                    "attainment_gap_points", "real_replica_s", "sim_replica_s",
                                                    "replica_s_gap")}))
            print(f"e2e: sim-to-real in {args.out / 'sim-to-real.json'} and {args.out / 'sim-to-real.png'}")
        except RuntimeError as exc:
            print(f"e2e: sim-to-real failed: {exc}", file=sys.stderr)
            failed.append("sim-to-real")
    if failed:
        print(f"e2e: failed: {', '.join(failed)} (reports in {args.out})", file=sys.stderr)
        return 1
    print(f"e2e: all passed; reports in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
