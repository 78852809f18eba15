"""Replicas per pool and role over time, sampled from the pods while a scenario runs (a background thread)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from closedloop.harness import Run


@dataclass
class Timeline:
    # (unix time, {(pool, role): ready pods})
    samples: list[tuple[float, dict[tuple[str, str], int]]] = field(default_factory=list)

    def replica_seconds(self) -> dict[str, float]:
        """Ready serving + warm pod-seconds per pool, integrating the samples as steps."""
        out: dict[str, float] = {}
        for (t0, counts), (t1, _) in zip(self.samples, self.samples[1:], strict=False):
            for (pool, _role), n in counts.items():
                out[pool] = out.get(pool, 0.0) + n * (t1 - t0)
        return out

    def scale_events(self) -> int:
        """How many times the set of ready replicas per (pool, role) changed."""
        return sum(1 for (_, a), (_, b) in zip(self.samples, self.samples[1:], strict=False) if a != b)

    def series(self, t0: float) -> list[dict[str, Any]]:
        """The samples for report.json: seconds since ``t0`` and ready pods per ``pool/role``."""
        return [{"t_s": round(t - t0, 2), "replicas": {f"{p}/{r}": n for (p, r), n in sorted(c.items())}}
                for t, c in self.samples]

    def serving_at(self, t0: float) -> list[tuple[float, int]]:
        """(seconds since ``t0``, ready serving pods over all pools): what the sim-to-real plot draws."""
        return [(t - t0, sum(n for (_, r), n in c.items() if r == "serving")) for t, c in self.samples]


def sample(run: Run, deployment: str) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for p in run.pods(deployment):
        labels = p["metadata"].get("labels") or {}
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
        if ready:
            key = (labels.get("infleet.io/pool", ""), labels.get("infleet.io/role", ""))
            counts[key] = counts.get(key, 0) + 1
    return counts


@contextlib.contextmanager
def recording(run: Run, deployment: str, every_s: float = 1.0) -> Iterator[Timeline]:
    timeline = Timeline()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            timeline.samples.append((time.time(), sample(run, deployment)))
            stop.wait(every_s)

    thread = threading.Thread(target=loop, name="timeline", daemon=True)
    thread.start()
    try:
        yield timeline
    finally:
        stop.set()
        thread.join(timeout=10)
        timeline.samples.append((time.time(), sample(run, deployment)))
