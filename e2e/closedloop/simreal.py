"""Sim-to-real: replay what a live scenario sent through `infleet simulate` (policy infleet) with the service
model measured on the tiny worker (``steady/service.json``), and set the two side by side.

Inputs per scenario (its ``replay.json``): each request's send time and the tokens the worker counted, and the
pool and deployment manifests it ran with. The pool's ``coldStartSeconds`` becomes what the pod runner emulated
(declared x the cold-start scale). Output: ``sim-to-real.json`` (attainment and replica-seconds, real and
simulated, and their gaps) and ``sim-to-real.png`` (serving replicas over time, real and simulated).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

TRACE_EPOCH = datetime(2023, 11, 16, 0, 0, 0)
BYTES_PER_PROMPT_WORD = 6  # "fleet " under the tiny model's byte tokenizer: a request never served has no count


def write_sim_inputs(doc: dict[str, Any], service: dict[str, float], cold_start_scale: float,
                     out: Path) -> dict[str, Path]:
    """trace.csv, pools.yaml, deployment.yaml and service.json for `infleet simulate`, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    trace = out / "trace.csv"
    with trace.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        for r in doc["requests"]:
            ts = TRACE_EPOCH + timedelta(seconds=r["at_s"])
            prompt = r["prompt_tokens"] or 48 * BYTES_PER_PROMPT_WORD
            w.writerow([ts.strftime("%Y-%m-%d %H:%M:%S.%f"), prompt, max(1, r["completion_tokens"])])
    pools = [m for m in doc["manifests"] if m["kind"] == "AcceleratorPool"]
    deployment = [m for m in doc["manifests"] if m["kind"] == "InferenceDeployment"]
    for p in pools:
        declared = float(p["spec"].get("coldStartSeconds", 90))
        p["spec"]["coldStartSeconds"] = max(1, math.ceil(declared * cold_start_scale))
    paths = {"trace": trace, "pools": out / "pools.yaml", "deployment": out / "deployment.yaml",
             "service": out / "service.json"}
    paths["pools"].write_text(yaml.safe_dump_all(pools), encoding="utf-8")
    paths["deployment"].write_text(yaml.safe_dump_all(deployment), encoding="utf-8")
    paths["service"].write_text(json.dumps({p["metadata"]["name"]: service for p in pools}), encoding="utf-8")
    return paths


def simulate_command(paths: dict[str, Path], out: Path) -> list[str]:
    return [str(Path(sys.executable).parent / "infleet"), "simulate", "--trace", str(paths["trace"]),
            "--pools", str(paths["pools"]), "--deployment", str(paths["deployment"]), "--policy", "infleet",
            "--service", str(paths["service"]), "--out", str(out), "--no-yardsticks", "--no-plots", "--quiet"]


def simulated_timeline(paths: dict[str, Path]) -> list[tuple[float, int]]:
    """(second, serving replicas) of the same replay, from the simulator's library (the CLI keeps no timeline)."""
    from infleet.sim.fleet import load_fleet, with_service_overrides
    from infleet.sim.policies import make
    from infleet.sim.trace import load_trace
    from infleet.sim.yardsticks import replay

    fleet = with_service_overrides(load_fleet([paths["pools"]], paths["deployment"], None),
                                   json.loads(paths["service"].read_text(encoding="utf-8")))
    result = replay(fleet, load_trace(paths["trace"]), make("infleet")).result
    return [(float(p["t"]), sum(dict(p["serving"]).values())) for p in result.timeline]  # type: ignore[arg-type, call-overload]


def _replica_s(row: dict[str, Any]) -> float:
    return 3600 * float(sum(row["replica_hours"].values()))


def compare_one(name: str, scenario_dir: Path, service: dict[str, float], cold_start_scale: float) -> dict[str, Any]:
    doc = json.loads((scenario_dir / "replay.json").read_text(encoding="utf-8"))
    real = json.loads((scenario_dir / "report.json").read_text(encoding="utf-8"))["policies"][0]
    sim_dir = scenario_dir / "sim"
    paths = write_sim_inputs(doc, service, cold_start_scale, sim_dir)
    cmd = simulate_command(paths, sim_dir)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"infleet simulate failed for {name}: {done.stderr.strip()[-500:]}")
    sim = json.loads((sim_dir / "report.json").read_text(encoding="utf-8"))["policies"][0]
    real_s, sim_s = _replica_s(real), _replica_s(sim)
    return {
        "scenario": name, "requests": real["requests"],
        "real_slo_attainment": real["slo_attainment"], "sim_slo_attainment": sim["slo_attainment"],
        "attainment_gap_points": round(100 * (sim["slo_attainment"] - real["slo_attainment"]), 2),
        "real_replica_s": round(real_s, 1), "sim_replica_s": round(sim_s, 1),
        "replica_s_gap": round(sim_s / real_s - 1, 3) if real_s else None,
        "real_p99_latency_s": real["p99_latency_s"], "sim_p99_latency_s": sim["p99_latency_s"],
        "command": " ".join(cmd),
        "real_timeline": doc["serving_over_time"], "sim_timeline": simulated_timeline(paths),
    }


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 2.6 * len(rows)), squeeze=False)
    for ax, row in zip(axes[:, 0], rows, strict=True):
        for key, label in (("real_timeline", "real (e2e cluster)"), ("sim_timeline", "infleet simulate")):
            pts = row[key]
            ax.step([t for t, _ in pts], [n for _, n in pts], where="post", label=label)
        ax.set_title(f"{row['scenario']}: SLO attainment real {row['real_slo_attainment']:.3f} / sim "
                     f"{row['sim_slo_attainment']:.3f}; replica-s real {row['real_replica_s']:.0f} / sim "
                     f"{row['sim_replica_s']:.0f}", fontsize=9)
        ax.set_ylabel("serving replicas")
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("seconds since the load started")
    fig.text(0.01, 0.005, "Load: Azure LLM inference trace 2023 (Azure Public Dataset, CC-BY 4.0), compressed "
             "and thinned", fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(out: Path, names: Sequence[str], cold_start_scale: float) -> list[dict[str, Any]]:
    """Sim-to-real for each named scenario that ran (its replay.json exists); needs ``steady/service.json``."""
    service_file = out / "steady" / "service.json"
    if not service_file.exists():
        raise RuntimeError(f"{service_file} missing: the steady scenario measures the service model")
    service = next(iter(json.loads(service_file.read_text(encoding="utf-8")).values()))
    rows = [compare_one(n, out / n, service, cold_start_scale) for n in names if (out / n / "replay.json").exists()]
    table = [{k: v for k, v in r.items() if not k.endswith("_timeline")} for r in rows]
    (out / "sim-to-real.json").write_text(json.dumps({"service_model": service, "rows": table}, indent=2) + "\n",
                                          encoding="utf-8")
    if rows:
        plot(rows, out / "sim-to-real.png")
    return table
