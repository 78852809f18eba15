"""Scaling controllers for the simulator: infleet's (the operator's own decision loop, :mod:`infleet.sim.operator_loop`)
and the baselines (:mod:`infleet.sim.baselines`, each at its project's documented defaults).
"""

from __future__ import annotations

from typing import Any

from infleet.sim.baselines import BASELINES, _Baseline
from infleet.sim.capacity import initial_rate
from infleet.sim.operator_loop import Infleet

__all__ = ["POLICIES", "Infleet", "initial_rate", "make"]

POLICIES: dict[str, type] = {"infleet": Infleet, **BASELINES}


def make(name: str, **settings: Any) -> Infleet | _Baseline:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}") from None
    controller: Infleet | _Baseline = cls(**settings)
    return controller
