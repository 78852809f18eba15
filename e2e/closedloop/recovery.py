"""How long a burst keeps p99 latency out of its SLO (pure): windowed p99 over the requests by send time."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def windowed_p99(points: Sequence[tuple[float, float]], end_s: float, window_s: float) -> list[float | None]:
    """p99 of the latencies of the requests sent in each ``[k w, (k+1) w)`` window up to ``end_s``
    (``points``: (send second, latency; ``inf`` for a request never served)); None for an empty window."""
    n = max(1, math.ceil(end_s / window_s))
    buckets: list[list[float]] = [[] for _ in range(n)]
    for t, lat in points:
        k = int(t // window_s)
        if 0 <= k < n:
            buckets[k].append(lat)
    return [float(np.percentile(b, 99, method="higher")) if b else None for b in buckets]


def recovery_s(points: Sequence[tuple[float, float]], burst_at_s: float, end_s: float, slo_s: float,
               window_s: float = 2.0) -> float | None:
    """Seconds from the burst until the start of the first window from which every later non-empty window's p99
    is within the SLO: 0 when the burst never broke it, None when it had not recovered by ``end_s``."""
    p99 = windowed_p99(points, end_s, window_s)
    first = int(burst_at_s // window_s)
    last_bad = max((k for k in range(first, len(p99)) if (v := p99[k]) is not None and v > slo_s), default=None)
    if last_bad is None:
        return 0.0
    if last_bad == len(p99) - 1:
        return None
    return (last_bad + 1) * window_s - burst_at_s


def scale_up_s(serving: Sequence[tuple[float, int]], burst_at_s: float) -> float | None:
    """Seconds from the burst until more serving replicas are Ready than at its start (a warm pod promoted, or a
    cold one started); None if the fleet never grew. ``serving``: (second, ready serving replicas) samples."""
    before = [n for t, n in serving if t <= burst_at_s]
    start = before[-1] if before else 0
    return next((t - burst_at_s for t, n in serving if t > burst_at_s and n > start), None)
