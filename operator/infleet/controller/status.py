"""Conditions and Events: what the operator found, said so a user can act on it.

Conditions follow the metav1.Condition shape; ``lastTransitionTime`` changes only when the status flips, so a
reconcile that finds the same situation again leaves the object unchanged (no watch-event storm). A condition
turning False also produces one Warning Event with the same reason and message; repeats do not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from infleet.controller.kube import Kube, Obj
from infleet.policy.conditions import Cond

DEPLOYMENT_CONDITIONS = ("Ready", "Placed", "SLOMet", "WithinBudget")



def merge_conditions(
    previous: Iterable[Mapping[str, Any]], new: Iterable[Cond], now: datetime, generation: int | None
) -> list[dict[str, Any]]:
    """New conditions in metav1 shape, keeping the previous transition time where the status did not change."""
    before = {c.get("type"): c for c in previous}
    out = []
    for cond in new:
        old = before.get(cond.type)
        changed = old is None or old.get("status") != cond.status
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ") if changed or not old else old.get("lastTransitionTime")
        item: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": stamp,
        }
        if generation is not None:
            item["observedGeneration"] = generation
        out.append(item)
    return out


def newly_false(previous: Iterable[Mapping[str, Any]], new: Iterable[Cond]) -> list[Cond]:
    """Conditions that are False now and were not False (with the same reason) before: each gets an Event."""
    before = {c.get("type"): c for c in previous}
    return [
        c
        for c in new
        if c.status == "False"
        and (before.get(c.type, {}).get("status") != "False" or before.get(c.type, {}).get("reason") != c.reason)
    ]


def post_event(kube: Kube, involved: Obj, *, type_: str, reason: str, message: str, now: datetime) -> None:
    """A core/v1 Event on the object (kubectl describe shows it)."""
    meta = involved["metadata"]
    namespace = meta.get("namespace") or "default"
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "infleet-operator"},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    kube.create(f"/api/v1/namespaces/{namespace}/events", body)
