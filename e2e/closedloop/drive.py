"""Drive one scenario's load through the gateway while recording replicas, with faults injected on a schedule."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from closedloop.harness import Run
from closedloop.load import Arrival, prompt_text, replay
from closedloop.requests import RequestLog
from closedloop.timeline import Timeline, recording

MODEL = "tiny-chat"


@dataclass(frozen=True, kw_only=True)
class Fault:
    """``action`` runs ``at_s`` seconds into the load (in its own thread); what it returns lands in the report."""

    at_s: float
    name: str
    action: Callable[[], dict[str, Any]]


@dataclass(kw_only=True)
class Driven:
    log: RequestLog
    timeline: Timeline
    t0: float  # unix time the load started
    wall_s: float
    keys: dict[int, str] = field(default_factory=dict)  # arrival index -> request key
    faults: dict[str, Any] = field(default_factory=dict)

    def latency_points(self) -> list[tuple[float, float]]:
        """(send second since t0, end-to-end latency; inf when the key was never served) per key's last
        attempt: what the recovery time is computed on."""
        last: dict[str, tuple[float, float]] = {}
        for a in self.log.attempts:
            if a.key in last and last[a.key][1] != float("inf") and not a.ok:
                continue  # a served key stays served
            last[a.key] = (a.sent_at - self.t0, a.latency_s if a.ok and a.latency_s is not None else float("inf"))
        return list(last.values())


def drive(run: Run, deployment: str, arrivals: Sequence[Arrival], faults: Sequence[Fault] = (),
          timeout_s: float = 120, settle: Callable[[], object] | None = None) -> Driven:
    """Replay ``arrivals`` through the gateway with the OpenAI SDK, faults at their times; waits for every answer,
    then for ``settle`` (e.g. the scale back to zero), still recording replicas."""
    log = RequestLog()
    results: dict[str, Any] = {}
    keys: dict[int, str] = {}

    def send(a: Arrival, i: int) -> object:
        keys[i] = log.new_key()
        return log.complete_at(run.openai_base_url, MODEL, prompt_text(a, i), a.max_tokens, key=keys[i],
                               timeout_s=timeout_s)

    def inject(f: Fault, t0: float) -> None:
        time.sleep(max(0.0, t0 + f.at_s - time.monotonic()))
        try:
            results[f.name] = {"at_s": f.at_s, **f.action()}
        except Exception as exc:  # a failed injection is reported and fails the scenario
            results[f.name] = {"at_s": f.at_s, "error": f"{type(exc).__name__}: {exc}"}

    with recording(run, deployment) as timeline:
        t0_wall, t0 = time.time(), time.monotonic()
        threads = [threading.Thread(target=inject, args=(f, t0), name=f"fault-{f.name}", daemon=True)
                   for f in faults]
        for t in threads:
            t.start()
        replay(arrivals, send)
        for t in threads:
            t.join(timeout=120)
        wall = time.monotonic() - t0
        if settle is not None:
            settle()
    log.close()
    failed = {k: v["error"] for k, v in results.items() if "error" in v}
    if failed:
        raise RuntimeError(f"fault injection failed: {failed}")
    return Driven(log=log, timeline=timeline, t0=t0_wall, wall_s=wall, faults=results, keys=keys)
