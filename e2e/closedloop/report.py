"""report.json of one scenario: the simulator's keys (infleet.sim.report.summarize), measured instead of
simulated, plus the requests lost and duplicated."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from closedloop.requests import RequestLog
from closedloop.timeline import Timeline


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What a scenario hands back: which deployment it drove, against which SLO, and what it recorded."""

    deployment: str
    trace: str
    p99_latency_slo_s: float
    ttft_slo_s: float | None
    price_per_replica_hour: Mapping[str, float]  # pool -> USD per replica-hour
    requests: RequestLog
    timeline: Timeline
    wall_s: float
    t0: float | None = None  # unix time the load started (timeline seconds count from it); None: first sample
    extra: Mapping[str, Any] = field(default_factory=dict)  # scenario-specific measurements, e.g. promotion_s


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(o: Outcome) -> dict[str, Any]:
    served = o.requests.served()
    n = len(o.requests.keys)
    t0 = o.t0 if o.t0 is not None else (o.timeline.samples[0][0] if o.timeline.samples else 0.0)

    def met(latency: float | None, ttft: float | None) -> bool:
        if latency is None or latency > o.p99_latency_slo_s:
            return False
        return o.ttft_slo_s is None or (ttft is not None and ttft <= o.ttft_slo_s)

    slo_met = sum(1 for a in served if met(a.latency_s, a.ttft_s))
    replica_s = o.timeline.replica_seconds()
    cost_by_pool = {p: s / 3600 * o.price_per_replica_hour.get(p, 0.0) for p, s in replica_s.items()}
    cost = sum(cost_by_pool.values())
    tokens = sum(a.completion_tokens for a in served)
    return {
        "policy": "infleet-operator",
        "trace": o.trace,
        "deployment": o.deployment,
        "requests": n,
        "served": len({a.key for a in served}),
        "rejected": o.requests.rejected(),  # 429 from the gateway: queue full or waited too long
        "slo_met": slo_met,
        "slo_attainment": slo_met / n if n else 1.0,
        "p50_latency_s": _pct([a.latency_s for a in served if a.latency_s is not None], 50),
        "p99_latency_s": _pct([a.latency_s for a in served if a.latency_s is not None], 99),
        "p99_ttft_s": _pct([a.ttft_s for a in served if a.ttft_s is not None], 99),
        "cost_usd": cost,
        "cost_per_million_tokens_usd": cost / tokens * 1e6 if tokens else None,
        "replica_hours": {p: s / 3600 for p, s in replica_s.items()},
        "cost_by_pool_usd": cost_by_pool,
        "scale_events": o.timeline.scale_events(),
        "oracle_cost_usd": None,  # no oracle for a live run
        "cost_vs_oracle": None,
        "simulated_s": o.wall_s,  # wall-clock seconds of the live run, under the simulator's key
        "lost": o.requests.lost(),
        "duplicated": o.requests.duplicated(),
        "cut_mid_stream": o.requests.cut_mid_stream(),
        "errors": o.requests.errors(),
        **o.extra,
        "replicas_over_time": o.timeline.series(t0),
    }


def write(path: Path, row: dict[str, Any], meta: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "policies": [row]}, indent=2) + "\n", encoding="utf-8")
