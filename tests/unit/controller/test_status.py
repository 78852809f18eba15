from __future__ import annotations

from datetime import UTC, datetime

from infleet.controller.status import merge_conditions, newly_false
from infleet.policy.conditions import Cond, budget_condition, ready_condition

T0 = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)


def test_transition_time_moves_only_when_status_flips() -> None:
    first = merge_conditions([], [Cond("Placed", "True", "Placed", "a")], T0, 1)
    assert first[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    same = merge_conditions(first, [Cond("Placed", "True", "Placed", "b")], T1, 2)
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert same[0]["message"] == "b"
    assert same[0]["observedGeneration"] == 2
    flipped = merge_conditions(same, [Cond("Placed", "False", "PoolNotFound", "c")], T1, 2)
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:05:00Z"


def test_events_only_for_new_false_conditions_or_new_reasons() -> None:
    prev = merge_conditions([], [Cond("Placed", "False", "PoolNotFound", "x"), Cond("Ready", "True", "R", "")], T0, 1)
    again = [Cond("Placed", "False", "PoolNotFound", "x"), Cond("Ready", "False", "ReplicasNotReady", "0/1")]
    assert [c.type for c in newly_false(prev, again)] == ["Ready"]
    other_reason = [Cond("Placed", "False", "NoFittingPool", "y")]
    assert [c.reason for c in newly_false(prev, other_reason)] == ["NoFittingPool"]


def test_budget_condition_explains_the_cheapest_slo_meeting_cost() -> None:
    c = budget_condition(cost=1.0, budget=1.0, cheapest_meeting_slo=3.45)
    assert (c.status, c.reason) == ("False", "BudgetTooLow")
    assert "$3.45/h" in c.message and "$1.00/h" in c.message
    ok = budget_condition(cost=0.5, budget=1.0, cheapest_meeting_slo=0.5)
    assert (ok.status, ok.reason) == ("True", "WithinBudget")
    assert budget_condition(cost=0.5, budget=None, cheapest_meeting_slo=0.5).reason == "NoBudget"
    none = budget_condition(cost=1.0, budget=1.0, cheapest_meeting_slo=None)
    assert none.status == "False"


def test_ready_condition() -> None:
    assert ready_condition(3, 3, True).status == "True"
    assert ready_condition(3, 1, True).reason == "ReplicasNotReady"
    assert ready_condition(0, 0, False).reason == "NotPlaced"


def test_pools_summary_lists_serving_replicas_by_pool_name() -> None:
    from infleet.controller.execute import pools_summary

    assert pools_summary({"l4-on-demand": 1, "h100-spot": 2, "cpu-spot": 0}) == "h100-spot=2,l4-on-demand=1"
    assert pools_summary({}) == ""
