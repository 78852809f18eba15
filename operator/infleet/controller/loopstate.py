"""Where the decision loop's carried state lives between reconciles: memory first, the deployment's status behind it.

Each reconcile writes the state it ends with into ``status.loopState`` (compact JSON, bounded), so a restarted
operator or a peer taking over continues with the same scaling history, calibration, saturation and warm-pool rate
history instead of starting from nothing. In the process a lock-guarded map keyed by the object's uid spares the
JSON decode; a state whose uid is gone is dropped by :meth:`LoopStates.forget` (flat memory).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from infleet.policy.autoscaler import AutoscalerState
from infleet.policy.capacity import RequestMix
from infleet.policy.fallback import Saturation
from infleet.policy.loop import LoopState
from infleet.policy.scaling import FleetScalingState

VERSION = 1
MAX_POINTS = 240  # per time series; older points are thinned out first
MAX_CHARS = 32768


def _series(points: Sequence[tuple[float, float]]) -> list[list[float]]:
    pts = list(points)
    if len(pts) > MAX_POINTS:
        step = len(pts) / MAX_POINTS
        pts = [pts[int(i * step)] for i in range(MAX_POINTS - 1)] + [pts[-1]]
    # Values exactly (JSON floats round-trip): a restarted operator must carry the very recommendations this one
    # compared against, or a decision at a threshold can differ; times to the millisecond.
    return [[round(t, 3), v] for t, v in pts]


def _points(raw: Any) -> tuple[tuple[float, float], ...]:
    return tuple((float(t), float(v)) for t, v in raw or [])


def _mix_doc(mix: RequestMix) -> dict[str, float | None]:
    return {"prompt": mix.mean_prompt, "gen": mix.mean_gen, "tail": mix.tail_prompt, "sq": mix.prompt_sq_mean}


def _mix_of(doc: Mapping[str, Any]) -> RequestMix:
    sq = doc.get("sq")
    return RequestMix(
        mean_prompt=float(doc["prompt"]),
        mean_gen=float(doc["gen"]),
        tail_prompt=float(doc["tail"]),
        prompt_sq_mean=None if sq is None else float(sq),
    )


def state_to_json(state: LoopState) -> str:
    auto = state.scaling.autoscaler
    doc = {
        "v": VERSION,
        "scaling": {
            "calibration": state.scaling.calibration,
            "spareSince": state.scaling.spare_since_s,
            "desired": auto.desired_capacity_rps,
            "history": _series(auto.history),
            "recommendations": _series(auto.recommendations),
            "lastActive": auto.last_active_s,
        },
        "rates": _series(state.rates),
        "saturated": {p: {"since": s.since_s, "message": s.message[:512]} for p, s in state.saturated.items()},
        "target": dict(state.target),
        "decided": state.decided,
        "mix": None if state.mix is None else _mix_doc(state.mix),
    }
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    if len(text) > MAX_CHARS:  # only pathological saturation messages get here; drop the rate history first
        doc["rates"] = doc["rates"][-MAX_POINTS // 4 :]  # type: ignore[index]
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    return text


def state_from_json(text: str | None) -> LoopState:
    """The state a previous reconcile wrote; a fresh state when there is none or it is unreadable."""
    if not text:
        return LoopState()
    try:
        doc = json.loads(text)
        if doc.get("v") != VERSION:
            return LoopState()
        sc = doc["scaling"]
        auto = AutoscalerState(
            desired_capacity_rps=float(sc["desired"]),
            history=_points(sc.get("history")),
            recommendations=_points(sc.get("recommendations")),
            last_active_s=None if sc.get("lastActive") is None else float(sc["lastActive"]),
        )
        scaling = FleetScalingState(
            autoscaler=auto,
            calibration=float(sc["calibration"]),
            spare_since_s=None if sc.get("spareSince") is None else float(sc["spareSince"]),
        )
        return LoopState(
            scaling=scaling,
            rates=_points(doc.get("rates")),
            saturated={
                p: Saturation(since_s=float(s["since"]), message=str(s["message"]))
                for p, s in (doc.get("saturated") or {}).items()
            },
            target={str(p): int(n) for p, n in (doc.get("target") or {}).items()},
            decided=bool(doc.get("decided")),
            mix=None if not doc.get("mix") else _mix_of(doc["mix"]),
        )
    except (ValueError, KeyError, TypeError):
        return LoopState()


@dataclass
class LoopStates:
    """Thread-safe per-deployment loop state (kopf runs handlers on several threads)."""

    states: dict[str, tuple[str, LoopState]] = field(default_factory=dict)  # uid -> (its JSON, state)
    written: dict[str, str] = field(default_factory=dict)  # uid -> the JSON last written to the status
    lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self, uid: str, status: Mapping[str, Any]) -> LoopState:
        """Our own last state while the status shows what we wrote (or nothing); else the status's (a peer's)."""
        text = status.get("loopState")
        with self.lock:
            cached = self.states.get(uid)
            ours = text is None or (cached is not None and text == cached[0]) or text == self.written.get(uid)
        if cached is not None and ours:
            return cached[1]
        return state_from_json(text)

    def mark_written(self, uid: str, text: str) -> None:
        with self.lock:
            self.written[uid] = text

    def store(self, uid: str, state: LoopState) -> str:
        """Remember ``state`` as it reads back from its JSON (so this replica and one that takes over from the
        status continue from exactly the same state) and return the JSON for the status."""
        text = state_to_json(state)
        with self.lock:
            self.states[uid] = (text, state_from_json(text))
        return text

    def forget(self, uid: str) -> None:
        with self.lock:
            self.states.pop(uid, None)
            self.written.pop(uid, None)

    def __len__(self) -> int:
        with self.lock:
            return len(self.states)
