"""Summaries of simulation runs: the report.json rows, the terminal table and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from infleet.policy.cost import account, cost_per_million_tokens
from infleet.sim.engine import LOST, REFUSED, SERVED, SimResult
from infleet.sim.trace import ATTRIBUTION, Trace


def summarize(
    result: SimResult, trace: Trace, reference_cost: float | None = None, label: str | None = None
) -> dict[str, Any]:
    """One report row; ``reference_cost`` is the hindsight fixed fleet's cost (``cost_vs_fixed``)."""
    costs = account(result.intervals, result.prices)
    served = result.status == SERVED
    n = int(result.status.size)
    lat = result.e2e[served]
    ttft = result.ttft[served]
    tpot = result.tpot[served]
    tokens = int(trace.prompt_tokens[served].sum() + trace.gen_tokens[served].sum())
    energy_kwh = sum(result.energy_j_by_pool.values()) / 3.6e6
    return {
        "policy": label or result.policy,
        "trace": result.trace,
        "deployment": result.deployment,
        "requests": n,
        "served": int(served.sum()),
        "rejected": int(n - served.sum()),
        "refused_too_long": int((result.status == REFUSED).sum()),
        "lost_to_reclaims": int((result.status == LOST).sum()),
        "slo_met": int(result.met.sum()),
        "slo_attainment": float(result.met.mean()) if n else 1.0,
        "p50_latency_s": float(np.percentile(lat, 50)) if lat.size else None,
        "p99_latency_s": float(np.percentile(lat, 99)) if lat.size else None,
        "p99_ttft_s": float(np.percentile(ttft, 99)) if ttft.size else None,
        "p99_tpot_s": float(np.percentile(tpot, 99)) if tpot.size else None,
        "cost_usd": costs.cost_usd,
        "cost_per_million_tokens_usd": cost_per_million_tokens(costs.cost_usd, tokens) if tokens else None,
        "energy_kwh": energy_kwh,
        "wh_per_million_tokens": energy_kwh * 1e3 / tokens * 1e6 if tokens else None,
        "replica_hours": dict(costs.replica_hours),
        "cost_by_pool_usd": dict(costs.cost_by_pool),
        "scale_events": result.scale_events,
        "spot_reclaims": result.reclaims,
        "cost_vs_fixed": costs.cost_usd / reference_cost if reference_cost else None,
        "simulated_s": result.end_s,
    }


def table(rows: list[dict[str, Any]], work_bound: float | None = None) -> str:
    head = (
        f"{'policy':<30} {'SLO met':>8} {'p99 TTFT':>8} {'p99 TPOT':>8} {'cost $':>8} {'x fixed':>7}"
        f" {'kWh':>7} {'Wh/Mtok':>8} {'events':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['policy']:<30} {r['slo_attainment']:>8.2%} {_f(r['p99_ttft_s'], 8)} {_f(r['p99_tpot_s'], 8, 3)} "
            f"{r['cost_usd']:>8.2f} {_f(r['cost_vs_fixed'], 7)} {r['energy_kwh']:>7.2f} "
            f"{_f(r['wh_per_million_tokens'], 8, 0)} {r['scale_events']:>6}"
        )
    if work_bound is not None:
        ref = next((r["cost_usd"] for r in rows if r["policy"].startswith("hindsight fixed")), None)
        ratio = f"{work_bound / ref:>7.2f}" if ref else f"{'-':>7}"
        lines.append(f"{'work bound (strict)':<30} {'':>8} {'':>8} {'':>8} {work_bound:>8.2f} {ratio}")
    return "\n".join(lines)


def _f(v: float | None, width: int = 7, digits: int = 2) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.{digits}f}"


def write_report(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    doc = {"attribution": ATTRIBUTION, **meta, "policies": rows}
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def plot(path: Path, results: list[SimResult], slo_ttft_s: float | None, title: str) -> None:
    """One PNG: load, serving replicas by pool (per policy), windowed p99 TTFT vs the SLO, cost per hour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(5, 1, figsize=(11, 14), sharex=True)
    if results:
        base = results[0].timeline
        axes[0].plot([p["t"] for p in base], [p["rps"] for p in base], color="black", lw=0.8)
        # Replicas by pool (serving and warm) for the first policy: where the heterogeneous placement put them.
        pools = sorted({k for p in base for k in (*dict(p["serving"]), *dict(p["warm"]))})  # type: ignore[call-overload]
        t0 = [p["t"] for p in base]
        stacks = [[dict(p["serving"]).get(name, 0) for p in base] for name in pools]  # type: ignore[call-overload]
        warm = [[dict(p["warm"]).get(name, 0) for p in base] for name in pools]  # type: ignore[call-overload]
        labels = [f"{n} serving" for n in pools] + [f"{n} warm" for n in pools]
        if pools:
            axes[4].stackplot(t0, *stacks, *warm, labels=labels, step="post")
        axes[4].set_ylabel(f"{results[0].policy}: replicas by pool")
    axes[0].set_ylabel("arrivals (req/s)")
    for res in results:
        t = [p["t"] for p in res.timeline]
        replicas = [sum(dict(p["serving"]).values()) for p in res.timeline]  # type: ignore[call-overload]
        axes[1].step(t, replicas, where="post", label=res.policy, lw=0.9)
        p99 = [np.nan if p["p99_ttft_s"] is None else p["p99_ttft_s"] for p in res.timeline]
        axes[2].plot(t, p99, lw=0.8, label=res.policy)
        axes[3].step(t, [p["cost_per_hour"] for p in res.timeline], where="post", lw=0.9, label=res.policy)
    axes[1].set_ylabel("serving replicas")
    axes[2].set_ylabel("p99 TTFT, last 60 s (s)")
    axes[2].set_yscale("log")
    if slo_ttft_s is not None:
        axes[2].axhline(slo_ttft_s, color="red", ls="--", lw=1, label="SLO")
    axes[3].set_ylabel("cost ($/h)")
    axes[4].set_xlabel("time (s)")
    for ax in axes[1:]:
        ax.legend(fontsize=7, ncol=4)
    fig.suptitle(title, fontsize=10)
    fig.text(0.01, 0.005, ATTRIBUTION, fontsize=6)
    fig.tight_layout(rect=(0, 0.015, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
