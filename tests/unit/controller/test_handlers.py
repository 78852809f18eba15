from __future__ import annotations

import kopf

from infleet.controller.handlers import Context, register_handlers
from infleet.controller.metrics import OperatorMetrics
from infleet.controller.reconcile import Settings


class NoKube:
    """Registration never talks to the cluster."""


def test_timers_put_no_finalizers_on_objects() -> None:
    registry = kopf.OperatorRegistry()
    ctx = Context(kube=NoKube(), settings=Settings(), metrics=OperatorMetrics())  # type: ignore[arg-type]
    register_handlers(registry, ctx)
    timers = registry._spawning.get_all_handlers()
    assert {str(h.id) for h in timers} == {"converge", "observe"}
    assert all(h.requires_finalizer is False for h in timers)
    # The only delete handler is optional, so nothing blocks deletion while the operator is away.
    assert all(not h.requires_finalizer for h in registry._changing.get_all_handlers())
