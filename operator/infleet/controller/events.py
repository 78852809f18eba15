"""Events off the reconcile path: a bounded queue and one thread that posts them (client-go's event broadcaster
works the same way).

An Event is best effort: the status conditions carry the same facts. Posted inside a reconcile it was one more API
write between a new deployment and its `Placed` status, and under a burst of creations the API server's latency is
the operator's throughput. So a reconcile only queues its Events; when the queue is full (the API server cannot keep
up) the newest are dropped and counted (`infleet_events_dropped_total`), and a reconcile never waits for one.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from infleet.controller.kube import Kube, Obj
from infleet.controller.status import post_event

log = logging.getLogger("infleet.controller")

WARN_EVERY_S = 30.0  # at most one "could not post" warning per this long (an outage must not flood the log)


@dataclass(frozen=True, kw_only=True)
class PendingEvent:
    involved: Obj  # apiVersion, kind and metadata (name, namespace, uid) of the object the Event is about
    type_: str
    reason: str
    message: str
    at: datetime


def involved_object(body: Obj) -> Obj:
    """Only what an Event names of its object, so a queued Event does not hold the whole body."""
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid") if k in meta},
    }


@dataclass
class EventRecorder:
    kube: Kube
    capacity: int = 1000
    on_drop: Callable[[], None] = lambda: None
    _pending: queue.Queue[PendingEvent | None] = field(init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _last_warning: float = field(default=-1e9, init=False)
    _failed_since_warning: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._pending = queue.Queue(maxsize=self.capacity)

    def record(self, body: Obj, events: Sequence[tuple[str, str, str]], now: datetime) -> None:
        """Queue ``(type, reason, message)`` Events on ``body``; never blocks."""
        involved = involved_object(body) if events else {}
        for type_, reason, message in events:
            try:
                self._pending.put_nowait(
                    PendingEvent(involved=involved, type_=type_, reason=reason, message=message, at=now)
                )
            except queue.Full:
                self.on_drop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="event-recorder", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Post what is queued for up to ``timeout_s``, then stop (what is left is dropped with the process)."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout_s
        while not self._pending.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(queue.Full):  # full: the thread is a daemon and goes with the process
            self._pending.put_nowait(None)
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def depth(self) -> int:
        return self._pending.qsize()

    def _run(self) -> None:
        while True:
            item = self._pending.get()
            if item is None:
                return
            self._post(item)

    def _post(self, item: PendingEvent) -> None:
        try:
            post_event(
                self.kube, item.involved, type_=item.type_, reason=item.reason, message=item.message, now=item.at
            )
        except Exception as exc:  # best effort: the condition already says it
            self._failed_since_warning += 1
            now = time.monotonic()
            if now - self._last_warning >= WARN_EVERY_S:
                log.warning(
                    "could not post event %s (%d failed since the last warning): %s",
                    item.reason,
                    self._failed_since_warning,
                    exc,
                )
                self._last_warning, self._failed_since_warning = now, 0
