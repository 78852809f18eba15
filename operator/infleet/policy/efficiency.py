"""Energy and cost per million generated tokens, per pool: measured where the workers report it, else estimated.

Measured: the workers' generated-token counters and energy counters over the last interval (``PoolUsage``).
Estimated: the tokens the pool's replicas are planned to generate (its share of the load, by capacity, at the mix's
mean output length) and the pool's declared power (``power.typicalWattsPerDevice`` x devices x replicas). Cost is
the replicas' price per hour either way. A pool with no tokens has no per-token figure (None, never invented).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Source = Literal["measured", "estimated"]


@dataclass(frozen=True, kw_only=True)
class PoolUsage:
    """What one pool's workers measured over the last interval."""

    tokens_per_s: float  # generated tokens
    watts: float | None  # None: some worker could not measure its energy


@dataclass(frozen=True, kw_only=True)
class Efficiency:
    wh_per_million_tokens: float | None
    usd_per_million_tokens: float | None
    source: Source


def per_million(per_hour: float | None, tokens_per_s: float) -> float | None:
    """A per-hour quantity (Wh or $) per million tokens at ``tokens_per_s``."""
    if per_hour is None or tokens_per_s <= 0:
        return None
    return per_hour / (tokens_per_s * 3600.0) * 1e6


def pool_efficiency(
    *,
    measured: PoolUsage | None,
    estimated_tokens_per_s: float,
    estimated_watts: float | None,
    usd_per_hour: float,
) -> Efficiency:
    """Measured when the workers reported tokens (and energy, for the Wh figure); estimated otherwise."""
    if measured is not None and measured.tokens_per_s > 0:
        return Efficiency(
            wh_per_million_tokens=per_million(measured.watts, measured.tokens_per_s),
            usd_per_million_tokens=per_million(usd_per_hour, measured.tokens_per_s),
            source="measured" if measured.watts is not None else "estimated",
        )
    return Efficiency(
        wh_per_million_tokens=per_million(estimated_watts, estimated_tokens_per_s),
        usd_per_million_tokens=per_million(usd_per_hour, estimated_tokens_per_s),
        source="estimated",
    )


def total_efficiency(rows: Mapping[str, tuple[Efficiency, float, float | None, float]]) -> Efficiency:
    """The deployment's figure from per-pool (efficiency, tokens/s, watts, $/h): sums, then per million tokens."""
    tokens = sum(t for _, t, _, _ in rows.values())
    watts = [w for _, _, w, _ in rows.values()]
    usd = sum(c for _, _, _, c in rows.values())
    all_measured = bool(rows) and all(e.source == "measured" for e, _, _, _ in rows.values())
    return Efficiency(
        wh_per_million_tokens=per_million(
            None if any(w is None for w in watts) else sum(w or 0.0 for w in watts), tokens
        ),
        usd_per_million_tokens=per_million(usd, tokens),
        source="measured" if all_measured else "estimated",
    )
