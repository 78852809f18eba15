"""Status conditions as decided by the loop: what the operator found, said so a user can act on it.

The operator stamps transition times and posts an Event for each condition that turns False
(:mod:`infleet.controller.status`); the decisions themselves are pure and live here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Cond:
    """One condition (metav1.Condition without the timestamps)."""

    type: str
    status: ConditionStatus
    reason: str
    message: str


def ready_condition(desired: int, ready: int, placed: bool) -> Cond:
    if not placed and desired == 0:
        return Cond("Ready", "False", "NotPlaced", "no replica could be placed; see the Placed condition")
    if ready >= desired:
        word = "replica" if desired == 1 else "replicas"
        return Cond("Ready", "True", "ReplicasReady", f"{ready}/{desired} serving {word} ready")
    return Cond("Ready", "False", "ReplicasNotReady", f"{ready}/{desired} serving replicas ready")


def budget_condition(cost: float, budget: float | None, cheapest_meeting_slo: float | None) -> Cond:
    """WithinBudget; ``cheapest_meeting_slo`` is the least any SLO-meeting placement would cost (None: none)."""
    if budget is None:
        return Cond("WithinBudget", "True", "NoBudget", f"no cost limit set; placement costs ${cost:.2f}/h")
    if cheapest_meeting_slo is not None and cheapest_meeting_slo > budget + 1e-9:
        return Cond(
            "WithinBudget",
            "False",
            "BudgetTooLow",
            f"the cheapest placement that meets the SLO costs ${cheapest_meeting_slo:.2f}/h, above the budget of "
            f"${budget:.2f}/h (cost.maxHourlyCostUSD, or maxCostPerMillionTokensUSD at the declared throughput); "
            f"raise the budget or relax the SLO. Running a best effort within budget at ${cost:.2f}/h",
        )
    if cheapest_meeting_slo is None and cost >= budget - 1e-9:
        return Cond(
            "WithinBudget",
            "False",
            "BudgetTooLow",
            f"no placement meets the SLO within ${budget:.2f}/h; best effort costs ${cost:.2f}/h",
        )
    return Cond("WithinBudget", "True", "WithinBudget", f"placement costs ${cost:.2f}/h of ${budget:.2f}/h")
