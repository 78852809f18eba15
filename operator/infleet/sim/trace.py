"""Request traces: the Azure LLM inference CSVs (TIMESTAMP, ContextTokens, GeneratedTokens) or synthetic ones.

Trace data: Azure Public Dataset, AzureLLMInferenceDataset2023, CC-BY 4.0 (Patel et al., "Splitwise", ISCA 2024).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

ATTRIBUTION = (
    "Trace: Azure Public Dataset, AzureLLMInferenceDataset2023, CC-BY 4.0 "
    '(Patel et al., "Splitwise: Efficient Generative LLM Inference Using Phase Splitting", ISCA 2024)'
)


@dataclass(frozen=True)
class Trace:
    """Requests sorted by arrival; ``arrival_s`` starts at 0."""

    name: str
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    gen_tokens: np.ndarray

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    def window(self, start_s: float, duration_s: float | None) -> Trace:
        """The requests arriving in ``[start_s, start_s + duration_s)``, re-based to start at 0."""
        end = np.inf if duration_s is None else start_s + duration_s
        keep = (self.arrival_s >= start_s) & (self.arrival_s < end)
        return Trace(self.name, self.arrival_s[keep] - start_s, self.prompt_tokens[keep], self.gen_tokens[keep])


def _parse_time(text: str) -> float:
    # Azure stamps carry 7 fractional digits; datetime takes at most 6.
    head, _, frac = text.strip().partition(".")
    stamp = datetime.fromisoformat(head)
    return stamp.timestamp() + (float("0." + frac) if frac else 0.0)


def load_trace(path: str | Path) -> Trace:
    """Read an Azure LLM inference trace CSV; a malformed row is an error naming its line."""
    path = Path(path)
    times: list[float] = []
    prompts: list[int] = []
    gens: list[int] = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns {sorted(need)}, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                times.append(_parse_time(row["TIMESTAMP"]))
                prompts.append(int(row["ContextTokens"]))
                gens.append(int(row["GeneratedTokens"]))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: bad row {row!r}: {exc}") from exc
    if not times:
        raise ValueError(f"{path}: no requests")
    t = np.asarray(times)
    order = np.argsort(t, kind="stable")
    t = t[order] - t[order][0]
    return Trace(
        path.stem,
        t,
        np.maximum(1, np.asarray(prompts)[order]),
        np.maximum(1, np.asarray(gens)[order]),
    )


def synthetic_trace(
    rates: list[tuple[float, float]], *, seed: int = 0, prompt: int = 1000, gen: int = 200, name: str = "synthetic"
) -> Trace:
    """Poisson arrivals at piecewise-constant ``rates`` ((duration_s, rps) segments), with exponential lengths."""
    rng = np.random.default_rng(seed)
    times: list[float] = []
    start = 0.0
    for duration, rps in rates:
        if rps > 0:
            n = rng.poisson(rps * duration)
            times.extend(start + np.sort(rng.uniform(0, duration, n)))
        start += duration
    t = np.asarray(times, dtype=float)
    n = t.size
    prompts = np.maximum(1, rng.exponential(prompt, n).astype(int))
    gens = np.maximum(1, rng.exponential(gen, n).astype(int))
    return Trace(name, t, prompts, gens)
