"""Open-loop load from a trace: which requests to send when (pure), and a dispatcher that sends them on time.

A window of an Azure LLM trace (Patel et al., "Splitwise", ISCA 2024; Azure Public Dataset, CC-BY 4.0) is
time-compressed (``speedup`` trace seconds per real second), thinned to the rate the tiny model sustains on this
machine, and its token counts divided by ``token_divisor`` (clamped), so its shape survives on a 2-core machine.
"""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

AZURE_ATTRIBUTION = ("Azure LLM inference trace 2023 (Azure Public Dataset, AzureLLMInferenceDataset2023, "
                     "CC-BY 4.0; Patel et al., \"Splitwise: Efficient Generative LLM Inference Using Phase "
                     "Splitting\", ISCA 2024)")


@dataclass(frozen=True, kw_only=True)
class TraceRow:
    t_s: float  # seconds since the trace's first request
    context_tokens: int
    generated_tokens: int


@dataclass(frozen=True, kw_only=True)
class Arrival:
    at_s: float  # seconds after the replay starts
    prompt_words: int
    max_tokens: int


@dataclass(frozen=True, kw_only=True)
class Shaping:
    """How a trace window becomes load for the tiny model."""

    start_s: float  # trace second the window begins at
    duration_s: float  # real seconds replayed
    speedup: float  # trace seconds per real second
    rps: float  # the replay's mean rate after thinning
    token_divisor: int = 4
    max_prompt_words: int = 48  # ~290 byte tokens: with max_tokens, within the worker's 512-token sequences
    max_tokens: int = 96


def read_trace(path: Path) -> list[TraceRow]:
    """TIMESTAMP,ContextTokens,GeneratedTokens rows, as seconds since the first one."""
    rows: list[TraceRow] = []
    with path.open(newline="", encoding="utf-8") as fh:
        t0: datetime | None = None
        for rec in csv.DictReader(fh):
            ts = datetime.fromisoformat(rec["TIMESTAMP"][:26])
            t0 = t0 or ts
            rows.append(TraceRow(t_s=(ts - t0).total_seconds(), context_tokens=int(rec["ContextTokens"]),
                                 generated_tokens=int(rec["GeneratedTokens"])))
    if not rows:
        raise ValueError(f"{path}: no requests")
    return rows


def thin(count: int, fraction: float) -> list[int]:
    """Evenly spread indices keeping ``fraction`` of ``count`` items (deterministic, no RNG)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"can only thin by a fraction in (0, 1], got {fraction:.3f}: pick a larger speedup")
    return [i for i in range(count) if int((i + 1) * fraction) > int(i * fraction)]


def window(rows: Sequence[TraceRow], shaping: Shaping) -> list[Arrival]:
    """The trace's ``[start, start + duration x speedup)`` seconds, compressed and thinned to ``shaping.rps``."""
    span = shaping.duration_s * shaping.speedup
    picked = [r for r in rows if shaping.start_s <= r.t_s < shaping.start_s + span]
    if not picked:
        raise ValueError(f"no trace requests in [{shaping.start_s}, {shaping.start_s + span}) s")
    natural_rps = len(picked) / shaping.duration_s
    keep = thin(len(picked), shaping.rps / natural_rps)
    d = shaping.token_divisor
    return [Arrival(at_s=(picked[i].t_s - shaping.start_s) / shaping.speedup,
                    prompt_words=max(4, min(shaping.max_prompt_words, picked[i].context_tokens // d)),
                    max_tokens=max(4, min(shaping.max_tokens, picked[i].generated_tokens // d)))
            for i in keep]


def step_burst(rows: Sequence[TraceRow], base: Shaping, factor: float, burst_from_s: float,
               burst_to_s: float) -> list[Arrival]:
    """``base`` plus, during ``[burst_from_s, burst_to_s)``, ``factor - 1`` times its rate more, drawn from the
    trace right after the base window: the total rate steps to ``factor`` x and back."""
    extra = Shaping(start_s=base.start_s + base.duration_s * base.speedup, duration_s=base.duration_s,
                    speedup=base.speedup, rps=base.rps * (factor - 1), token_divisor=base.token_divisor,
                    max_prompt_words=base.max_prompt_words, max_tokens=base.max_tokens)
    more = [a for a in window(rows, extra) if burst_from_s <= a.at_s < burst_to_s]
    return sorted(window(rows, base) + more, key=lambda a: a.at_s)


def prompt_text(arrival: Arrival, index: int) -> str:
    """Distinct text per request (no prefix-cache luck), ``prompt_words`` words long."""
    head = f"Request {index}:"
    return " ".join([head] + ["fleet"] * max(0, arrival.prompt_words - 2))


def replay(arrivals: Sequence[Arrival], send: Callable[[Arrival, int], object], max_in_flight: int = 64,
           stop: threading.Event | None = None) -> float:
    """Send each arrival at its time (open loop: a slow answer delays no later request); returns the wall
    seconds from the first send to the last answer."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="load") as pool:
        for i, a in enumerate(arrivals):
            if stop is not None and stop.is_set():
                break
            delay = t0 + a.at_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, a, i)
    return time.monotonic() - t0
