"""A reconcile queue: keys in, one worker per key at a time, de-duplicated, delayed requeues, bounded back-off.

Watch events add keys; a reconcile returns when it wants to run again (the autoscaler's period, a slow resync), so
work follows changes instead of a fixed timer on every object. A key added while it is being reconciled runs once
more right after. Failures back off per key (``base_backoff_s`` doubling up to ``max_backoff_s``, short on purpose
so reconciles resume soon after an API-server outage) and are logged at most once per ``log_every_s`` in all.
Only a leader processes keys (``is_active``); a follower keeps its queue so a handover starts warm.

Keys added as ``urgent`` (an object whose spec the operator has not acted on yet: a new or edited deployment) run
before every other ready key. Without that lane a burst of creations queues behind the re-reconciles their own pods
cause (every pod event requeues its owner), and create -> Placed grows with the fleet rather than the burst.

Ordinary adds wait ``coalesce_s`` first, so the events of one change (four pods of a new deployment turning ready
one after another) cost one reconcile and one status write instead of four; the API server, not the operator, is
what limits a large fleet. A key is scheduled at most once: a later request for an earlier time replaces it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

log = logging.getLogger("infleet.controller")

Worker = Callable[[Hashable], float | None]  # returns seconds until the key should run again (None: only on events)


@dataclass
class WorkQueue:
    worker: Worker
    workers: int = 4
    is_active: Callable[[], bool] = lambda: True
    base_backoff_s: float = 0.5
    max_backoff_s: float = 2.0
    coalesce_s: float = 0.0  # how long an ordinary (not urgent) add waits for more events of the same key
    log_every_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    on_wait: Callable[[str, float], None] = lambda lane, waited_s: None  # lane ("urgent"/"normal"), seconds ready
    _due: list[tuple[float, int, Hashable]] = field(default_factory=list)
    _scheduled: dict[Hashable, float] = field(default_factory=dict)  # key -> its one live entry in _due
    # Ready keys (insertion-ordered) -> when they became ready; the urgent lane goes first.
    _ready: dict[Hashable, float] = field(default_factory=dict)
    _urgent: dict[Hashable, float] = field(default_factory=dict)
    _processing: set[Hashable] = field(default_factory=set)
    _again: dict[Hashable, bool] = field(default_factory=dict)  # key -> urgent: run once more after this pass
    _failures: dict[Hashable, int] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _stopping: bool = False
    _threads: list[threading.Thread] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _last_log: float = -1e9
    _suppressed: int = 0

    def add(self, key: Hashable, *, urgent: bool = False) -> None:
        with self._cond:
            if not urgent and self.coalesce_s > 0:
                if key not in self._ready and key not in self._urgent:
                    self._schedule(key, self.clock() + self.coalesce_s)
            elif key in self._processing:
                self._again[key] = urgent or self._again.get(key, False)
            else:
                self._make_ready(key, urgent)
            self._cond.notify()

    def add_after(self, key: Hashable, delay_s: float) -> None:
        if delay_s <= 0:
            self.add(key)
            return
        with self._cond:
            self._schedule(key, self.clock() + delay_s)
            self._cond.notify()

    def _schedule(self, key: Hashable, at: float) -> None:
        """Called with the lock held: run ``key`` at ``at`` unless it is already due sooner."""
        if self._scheduled.get(key, float("inf")) <= at:
            return
        self._scheduled[key] = at
        heapq.heappush(self._due, (at, next(self._seq), key))

    def _make_ready(self, key: Hashable, urgent: bool) -> None:
        """Called with the lock held; a key is in at most one lane, and urgency is never lost."""
        if urgent:
            self._urgent.setdefault(key, self._ready.pop(key, self.clock()))
        elif key not in self._urgent:
            self._ready.setdefault(key, self.clock())

    def pending(self, key: Hashable) -> bool:
        """Whether ``key`` waits to run (ready in a lane, or scheduled)."""
        with self._cond:
            return key in self._ready or key in self._urgent or key in self._scheduled

    def forget(self, key: Hashable) -> None:
        """Drop a key's back-off memory (its object is gone)."""
        with self._cond:
            self._failures.pop(key, None)
            self._ready.pop(key, None)
            self._urgent.pop(key, None)
            self._scheduled.pop(key, None)

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._loop, name=f"reconcile-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish in-flight reconciles (up to ``timeout_s`` in all), start no new one."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def depth(self) -> int:
        with self._cond:
            return len(self._urgent) + len(self._ready) + len(self._scheduled)

    def _pop_due(self, now: float) -> None:
        """Called with the lock held: move keys whose time has come to the ready lane (stale entries are dropped)."""
        while self._due and self._due[0][0] <= now:
            at, _, key = heapq.heappop(self._due)
            if self._scheduled.get(key) != at:
                continue  # replaced by an earlier entry, or forgotten
            del self._scheduled[key]
            if key in self._processing:
                self._again.setdefault(key, False)
            else:
                self._make_ready(key, False)

    def _next(self) -> Hashable | None:
        with self._cond:
            while not self._stopping:
                now = self.clock()
                self._pop_due(now)
                if self.is_active():
                    for name, lane in (("urgent", self._urgent), ("normal", self._ready)):
                        for key in lane:
                            if key not in self._processing:
                                self.on_wait(name, now - lane.pop(key))
                                self._processing.add(key)
                                return key
                wait = 0.5 if not self._due else min(0.5, max(0.0, self._due[0][0] - now))
                self._cond.wait(wait)
            return None

    def _loop(self) -> None:
        while True:
            key = self._next()
            if key is None:
                return
            again: float | None = None
            failed = False
            try:
                again = self.worker(key)
            except Exception as exc:
                failed = True
                self._log_failure(key, exc)
            with self._cond:
                self._processing.discard(key)
                if failed:
                    n = self._failures.get(key, 0) + 1
                    self._failures[key] = n
                    self._schedule(key, self.clock() + min(self.max_backoff_s, self.base_backoff_s * 2 ** (n - 1)))
                else:
                    self._failures.pop(key, None)
                    if again is not None:
                        self._schedule(key, self.clock() + again)
                if key in self._again:
                    self._make_ready(key, self._again.pop(key))
                self._cond.notify_all()

    def _log_failure(self, key: Hashable, exc: Exception) -> None:
        now = time.monotonic()
        with self._cond:
            if now - self._last_log < self.log_every_s:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last_log = self._suppressed, 0, now
        more = f" ({suppressed} more failure(s) since the last report)" if suppressed else ""
        log.warning("reconcile of %s failed, retrying within %gs: %s%s", key, self.max_backoff_s, exc, more)
