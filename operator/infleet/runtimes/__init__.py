"""Runtime adapters: one module per serving stack, pure data and functions (no Kubernetes client, no I/O).

`runtime(engine)` is the adapter for a `runtimes.<family>.engine` value; docs/runtimes.md has the feature table.
"""

from __future__ import annotations

from collections.abc import Mapping

from infleet.runtimes import infleet_worker, llamacpp, neuron_vllm, vllm, vllm_tpu
from infleet.runtimes.base import (
    SERVING_PORT,
    Drain,
    HttpCall,
    Launch,
    MetricNames,
    Runtime,
    ServiceDefaults,
    ServingContext,
    WarmStandby,
)

DEFAULT_ENGINE = "infleet-worker"
RUNTIMES: Mapping[str, Runtime] = {
    r.engine: r
    for r in (infleet_worker.RUNTIME, vllm.RUNTIME, llamacpp.RUNTIME, neuron_vllm.RUNTIME, vllm_tpu.RUNTIME)
}


def runtime(engine: str | None) -> Runtime:
    """The adapter for `engine` (None: the default). Unknown names are refused by the API before they get here."""
    name = engine or DEFAULT_ENGINE
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime engine {name!r}; known: {', '.join(RUNTIMES)}") from None


__all__ = [
    "DEFAULT_ENGINE",
    "RUNTIMES",
    "SERVING_PORT",
    "Drain",
    "HttpCall",
    "Launch",
    "MetricNames",
    "Runtime",
    "ServiceDefaults",
    "ServingContext",
    "WarmStandby",
    "runtime",
]
