"""Seeded synthetic request traces for stress shapes the two Azure traces lack (`infleet tracegen`).

Same CSV as the Azure LLM inference traces (``TIMESTAMP,ContextTokens,GeneratedTokens``), so `infleet simulate
--trace` reads them unchanged. Arrivals are a non-homogeneous Poisson process (per-second counts drawn from the
shape's rate, uniform within the second); lengths are log-normal around chat-like medians unless the shape says
otherwise. Same shape, parameters and seed: the same file, byte for byte.

Shapes:

* ``bursts``: a base rate with bursts of ``burst_factor`` x the rate lasting 5-30 s, on average every 5 minutes;
* ``diurnal``: a day's rise and fall compressed into the trace (rate from 0.2x to 1.8x the mean, one period);
* ``long-context``: flat rate; the share of long-context requests (prompts log-uniform over
  ``long_prompt_min``-``long_prompt_max``, 10k-100k by default) rises from 0 to ``long_share`` over the trace;
* ``prompt-shift``: flat rate; the median prompt steps from 1x to ``shift_factor`` x and back in thirds, so the
  prefill load changes while the request rate does not.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from infleet.sim.trace import Trace

SHAPES = ("bursts", "diurnal", "long-context", "prompt-shift")
EPOCH = datetime(2026, 1, 1)


@dataclass(frozen=True, kw_only=True)
class TraceShape:
    shape: str
    duration_s: float = 3600.0
    rate_rps: float = 4.0
    seed: int = 0
    prompt_median: float = 1000.0
    prompt_sigma: float = 1.0
    gen_median: float = 200.0
    gen_sigma: float = 0.8
    burst_factor: float = 8.0
    long_share: float = 0.5
    long_prompt_min: float = 10_000.0
    long_prompt_max: float = 100_000.0
    shift_factor: float = 4.0
    max_tokens: int = 200_000

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown trace shape {self.shape!r}; choose from {', '.join(SHAPES)}")
        if self.duration_s <= 0 or self.rate_rps <= 0:
            raise ValueError("duration and rate must be > 0")
        if not 0 <= self.long_share <= 1:
            raise ValueError("long_share must be within [0, 1]")
        if not 0 < self.long_prompt_min <= self.long_prompt_max:
            raise ValueError("need 0 < long_prompt_min <= long_prompt_max")


def _rate(spec: TraceShape, rng: np.random.Generator) -> np.ndarray:
    """Arrival rate per second of the trace."""
    seconds = int(np.ceil(spec.duration_s))
    t = np.arange(seconds, dtype=float)
    rate = np.full(seconds, float(spec.rate_rps))
    if spec.shape == "diurnal":
        rate = spec.rate_rps * (1.0 - 0.8 * np.cos(2 * np.pi * t / spec.duration_s))
    elif spec.shape == "bursts":
        start = 0.0
        while True:
            start += rng.exponential(300.0)
            if start >= seconds:
                break
            length = rng.uniform(5.0, 30.0)
            rate[int(start) : int(start + length)] = spec.rate_rps * spec.burst_factor  # overlaps do not compound
    return rate


def generate(spec: TraceShape) -> Trace:
    rng = np.random.default_rng(spec.seed)
    rate = _rate(spec, rng)
    counts = rng.poisson(rate)
    second = np.repeat(np.arange(rate.size, dtype=float), counts)
    arrival = np.sort(second + rng.uniform(0.0, 1.0, second.size))
    arrival = arrival[arrival < spec.duration_s]
    n = arrival.size
    frac = arrival / spec.duration_s  # position in the trace, 0..1
    median = np.full(n, spec.prompt_median)
    if spec.shape == "prompt-shift":
        median = np.where((frac >= 1 / 3) & (frac < 2 / 3), spec.prompt_median * spec.shift_factor, median)
    prompts = median * rng.lognormal(0.0, spec.prompt_sigma, n)
    if spec.shape == "long-context":
        long = rng.uniform(0.0, 1.0, n) < spec.long_share * frac
        lo, hi = np.log(spec.long_prompt_min), np.log(spec.long_prompt_max)
        prompts = np.where(long, np.exp(rng.uniform(lo, hi, n)), prompts)
    gens = spec.gen_median * rng.lognormal(0.0, spec.gen_sigma, n)
    prompts = np.clip(np.rint(prompts), 1, spec.max_tokens).astype(np.int64)
    gens = np.clip(np.rint(gens), 1, spec.max_tokens).astype(np.int64)
    name = f"gen-{spec.shape}-s{spec.seed}"
    return Trace(name, arrival - (arrival[0] if n else 0.0), prompts, gens)


def write_csv(trace: Trace, path: Path) -> None:
    """The Azure trace format: ``TIMESTAMP`` with seven fractional digits, then the two token counts."""
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for t, p, g in zip(trace.arrival_s.tolist(), trace.prompt_tokens.tolist(), trace.gen_tokens.tolist(), strict=True):
        whole = int(t)
        stamp = (EPOCH + timedelta(seconds=whole)).strftime("%Y-%m-%d %H:%M:%S")
        frac = f"{t - whole:.7f}"[1:]  # ".1234567"
        lines.append(f"{stamp}{frac},{p},{g}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "tracegen",
        help="write a seeded synthetic request trace (bursts, diurnal, long-context, prompt-shift)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("shape", choices=SHAPES)
    p.add_argument(
        "--out",
        type=Path,
        help="CSV to write (default gen-SHAPE-sSEED.csv; `infleet simulate` picks its bundled deployment by the name)",
    )
    p.add_argument("--duration", type=float, default=3600.0, help="seconds (default 3600)")
    p.add_argument("--rate", type=float, default=4.0, help="mean requests/s (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-median", type=float, default=1000.0)
    p.add_argument("--gen-median", type=float, default=200.0)
    p.add_argument("--burst-factor", type=float, default=8.0, help="bursts: rate multiplier during a burst")
    p.add_argument("--long-share", type=float, default=0.5, help="long-context: share of long prompts at the end")
    p.add_argument("--long-min", type=float, default=10_000.0, help="long-context: shortest long prompt")
    p.add_argument("--long-max", type=float, default=100_000.0, help="long-context: longest long prompt")
    p.add_argument("--shift-factor", type=float, default=4.0, help="prompt-shift: median prompt multiplier")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        spec = TraceShape(
            shape=args.shape,
            duration_s=args.duration,
            rate_rps=args.rate,
            seed=args.seed,
            prompt_median=args.prompt_median,
            gen_median=args.gen_median,
            burst_factor=args.burst_factor,
            long_share=args.long_share,
            long_prompt_min=args.long_min,
            long_prompt_max=args.long_max,
            shift_factor=args.shift_factor,
        )
        trace = generate(spec)
        args.out = args.out or Path(f"{trace.name}.csv")
        write_csv(trace, args.out)
    except (ValueError, OSError) as exc:
        print(f"infleet tracegen: {exc}", file=sys.stderr)
        return 2
    minutes = trace.duration_s / 60
    print(f"wrote {args.out}: {len(trace)} requests over {minutes:.1f} min ({spec.shape}, seed {spec.seed})")
    return 0
