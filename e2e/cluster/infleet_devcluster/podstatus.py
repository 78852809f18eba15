"""Pure rendering of the status a kubelet would report for a pod the runner plays.

Condition transition times are carried over from the previous status while a condition keeps its value, as
the kubelet does: the operator reads how long a warm pod has been Ready from ``lastTransitionTime``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, kw_only=True)
class Exit:
    code: int
    started_at: float
    finished_at: float

    @property
    def reason(self) -> str:
        return "Completed" if self.code == 0 else "Error"


@dataclass(frozen=True, kw_only=True)
class ContainerView:
    """What the runner knows about the one container: waiting (and why), or running since when and ready or not."""

    name: str
    image: str
    state: Literal["waiting", "running"]
    reason: str = ""
    message: str = ""
    started_at: float = 0.0
    ready: bool = False
    restart_count: int = 0
    last_exit: Exit | None = None


def _conditions(previous: Sequence[Mapping[str, Any]], want: Mapping[str, bool], now: float,
                reason: str, message: str) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous}
    out: list[dict[str, Any]] = []
    for type_, ok in want.items():
        status = "True" if ok else "False"
        old = before.get(type_)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else None
        cond: dict[str, Any] = {"type": type_, "status": status, "lastTransitionTime": since or rfc3339(now)}
        if not ok and reason:
            cond["reason"], cond["message"] = reason, message
        out.append(cond)
    return out


def _container_status(c: ContainerView) -> dict[str, Any]:
    if c.state == "running":
        state: dict[str, Any] = {"running": {"startedAt": rfc3339(c.started_at)}}
    else:
        waiting = {"reason": c.reason or "ContainerCreating", **({"message": c.message} if c.message else {})}
        state = {"waiting": waiting}
    status: dict[str, Any] = {
        "name": c.name, "image": c.image, "imageID": "", "ready": c.ready, "started": c.state == "running",
        "restartCount": c.restart_count, "state": state,
    }
    if c.last_exit is not None:
        status["lastState"] = {"terminated": {
            "exitCode": c.last_exit.code, "reason": c.last_exit.reason,
            "startedAt": rfc3339(c.last_exit.started_at), "finishedAt": rfc3339(c.last_exit.finished_at)}}
    return status


def pod_status(*, previous: Mapping[str, Any], container: ContainerView, pod_ip: str, host_ip: str,
               start_time: float, now: float) -> dict[str, Any]:
    """The full ``status`` of a running pod (phase Running: the kubelet restarts its container forever)."""
    ready = container.state == "running" and container.ready
    if container.state == "waiting":
        reason, message = "ContainersNotReady", f"containers with unready status: [{container.name}]"
        if container.message:
            message = f"{message}: {container.reason}: {container.message}"
    else:
        reason, message = ("", "") if ready else ("ContainersNotReady", f"readiness probe of [{container.name}] "
                                                  "has not succeeded")
    conditions = _conditions(previous.get("conditions") or [], {
        "PodReadyToStartContainers": True, "Initialized": True, "ContainersReady": ready, "Ready": ready,
        "PodScheduled": True}, now, reason, message)
    return {
        "phase": "Running", "conditions": conditions, "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "startTime": rfc3339(start_time),
        "containerStatuses": [_container_status(container)], "qosClass": previous.get("qosClass", "BestEffort"),
    }
