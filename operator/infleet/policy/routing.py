"""Request routing across heterogeneous replicas: which replica gets the next request (pure; the gateway and the
simulator call the same rule).

Load-aware: a replica's score is its outstanding work, plus the new request, divided by its capacity (requests/s
one replica of its pool sustains within the SLO), i.e. roughly when it would finish the new request if it worked
through its backlog at its rated speed. Outstanding work is the gateway's own in-flight count, or the worker's
queue + running batch when that reading is fresh and larger (other gateway replicas send work there too).
Unknown capacities count as equal (1.0), so a fleet without profiles degenerates to least-outstanding.

Prefix affinity (optional): requests that share a prompt prefix go to the same replica, so a runtime with a prefix
cache reuses it; consistent hashing with bounded load (Mirrokni et al., as KubeAI does) walks the hash ring from
the key's point and takes the first replica whose normalised load stays within `load_bound` times the mean, so a
hot prefix spills over instead of overloading one replica.

Only `serving` replicas are ever chosen; warm, draining and unready ones are skipped whatever their load. A replica
has room while its outstanding work is below its in-flight limit; with none having room the caller queues.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

ReplicaState = Literal["serving", "warm", "draining", "unready"]


@dataclass(frozen=True, kw_only=True)
class WorkerReading:
    """The worker's own gauges (docs/metrics.md) as scraped at `at_s`."""

    at_s: float
    waiting: float
    running: float
    kv_usage: float | None = None


@dataclass(frozen=True, kw_only=True)
class ReplicaLoad:
    """One replica as the router sees it."""

    replica_id: str
    pool: str
    state: ReplicaState
    in_flight: int  # requests this gateway sent and that have not finished
    max_in_flight: int  # the most outstanding requests before it counts as full
    capacity_rps: float | None = None  # None: unknown, counted as 1.0 (replicas equal)
    worker: WorkerReading | None = None


@dataclass(frozen=True, kw_only=True)
class RoutingConfig:
    prefix_affinity: bool = False
    load_bound: float = 1.25  # bounded-load factor c >= 1 of consistent hashing
    metrics_max_age_s: float = 2.0  # a worker reading older than this is ignored
    kv_full: float = 0.98  # a worker whose KV cache is at least this full has no room
    virtual_nodes: int = 64  # points per replica on the hash ring

    def __post_init__(self) -> None:
        if self.load_bound < 1.0:
            raise ValueError(f"load_bound must be >= 1, got {self.load_bound}")
        if self.metrics_max_age_s < 0:
            raise ValueError("metrics_max_age_s must be >= 0")
        if self.virtual_nodes < 1:
            raise ValueError("virtual_nodes must be >= 1")


@dataclass(frozen=True, kw_only=True)
class RouteDecision:
    replica_id: str
    reason: Literal["least_load", "affinity", "affinity_spill"]
    score: float


def capacity_of(replica: ReplicaLoad) -> float:
    cap = replica.capacity_rps
    return cap if cap is not None and cap > 0 and math.isfinite(cap) else 1.0


def outstanding(replica: ReplicaLoad, now_s: float, config: RoutingConfig) -> float:
    """The replica's outstanding requests: our own count, or the worker's when fresh and larger."""
    own = float(replica.in_flight)
    w = replica.worker
    if w is not None and now_s - w.at_s <= config.metrics_max_age_s:
        return max(own, w.waiting + w.running)
    return own


def has_room(replica: ReplicaLoad, now_s: float, config: RoutingConfig) -> bool:
    if replica.state != "serving":
        return False
    w = replica.worker
    kv_full = (w is not None and w.kv_usage is not None and now_s - w.at_s <= config.metrics_max_age_s
               and w.kv_usage >= config.kv_full and replica.in_flight > 0)
    return not kv_full and outstanding(replica, now_s, config) < replica.max_in_flight


def score(replica: ReplicaLoad, now_s: float, config: RoutingConfig) -> float:
    """Normalised load after adding one request: lower is better."""
    return (outstanding(replica, now_s, config) + 1.0) / capacity_of(replica)


def route(replicas: Sequence[ReplicaLoad], *, now_s: float, config: RoutingConfig,
          prefix_key: str | None = None, exclude: Collection[str] = ()) -> RouteDecision | None:
    """The replica for the next request, or None when no serving replica (outside `exclude`) has room."""
    candidates = [r for r in replicas if r.replica_id not in exclude and has_room(r, now_s, config)]
    if not candidates:
        return None
    if config.prefix_affinity and prefix_key is not None:
        picked = _bounded_affinity(replicas, candidates, prefix_key, now_s, config)
        if picked is not None:
            return picked
    best = min(candidates, key=lambda r: (score(r, now_s, config), _kv(r), r.replica_id))
    return RouteDecision(replica_id=best.replica_id, reason="least_load", score=score(best, now_s, config))


def _kv(replica: ReplicaLoad) -> float:
    return replica.worker.kv_usage if replica.worker is not None and replica.worker.kv_usage is not None else 0.0


def _bounded_affinity(replicas: Sequence[ReplicaLoad], candidates: Sequence[ReplicaLoad], key: str, now_s: float,
                      config: RoutingConfig) -> RouteDecision | None:
    """Consistent hashing with bounded load over the serving replicas (the ring does not move when a replica
    is merely full, only when one joins or leaves serving)."""
    serving = [r for r in replicas if r.state == "serving"]
    total_load = sum(outstanding(r, now_s, config) for r in serving) + 1.0
    total_capacity = sum(capacity_of(r) for r in serving)
    by_id = {r.replica_id: r for r in candidates}
    ring_points, ring_ids = _ring(tuple(sorted(r.replica_id for r in serving)), config.virtual_nodes)
    start = bisect.bisect_left(ring_points, _hash(key))
    home: str | None = None
    seen: set[str] = set()
    for i in range(len(ring_ids)):
        rid = ring_ids[(start + i) % len(ring_ids)]
        if rid in seen:
            continue
        seen.add(rid)
        home = home or rid
        r = by_id.get(rid)
        if r is None:
            continue
        bound = config.load_bound * capacity_of(r) * total_load / total_capacity
        if outstanding(r, now_s, config) + 1.0 <= math.ceil(bound):
            reason: Literal["affinity", "affinity_spill"] = "affinity" if rid == home else "affinity_spill"
            return RouteDecision(replica_id=rid, reason=reason, score=score(r, now_s, config))
    return None


def _hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


@lru_cache(maxsize=256)
def _ring(replica_ids: tuple[str, ...], virtual_nodes: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    points = sorted((_hash(f"{rid}#{v}"), rid) for rid in replica_ids for v in range(virtual_nodes))
    return tuple(p for p, _ in points), tuple(rid for _, rid in points)
