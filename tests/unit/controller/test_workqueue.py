"""The reconcile queue: de-duplication, one reconcile per key at a time, requeue-after, back-off, leadership."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Hashable

from infleet.controller.workqueue import WorkQueue


def wait_for(check, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False


def test_keys_are_deduplicated_and_never_run_twice_at_once() -> None:
    running: set[Hashable] = set()
    overlap = []
    seen: list[Hashable] = []
    gate = threading.Event()

    def work(key: Hashable) -> float | None:
        if key in running:
            overlap.append(key)
        running.add(key)
        gate.wait(1)
        seen.append(key)
        running.discard(key)
        return None

    q = WorkQueue(work, workers=4)
    for _ in range(5):
        q.add("a")
    q.start()
    assert wait_for(lambda: "a" in running)
    q.add("a")  # while it runs: once more afterwards, not concurrently
    q.add("b")
    gate.set()
    assert wait_for(lambda: seen.count("a") == 2 and "b" in seen)
    time.sleep(0.1)
    q.stop()
    assert seen.count("a") == 2 and overlap == []


def test_requeue_after_and_backoff_then_recovery() -> None:
    calls: list[float] = []
    failing = {"n": 2}

    def work(key: Hashable) -> float | None:
        calls.append(time.monotonic())
        if failing["n"] > 0:
            failing["n"] -= 1
            raise ConnectionError("api server down")
        return 0.05 if len(calls) < 5 else None

    q = WorkQueue(work, workers=1, base_backoff_s=0.05, max_backoff_s=0.1)
    q.add("k")
    q.start()
    assert wait_for(lambda: len(calls) >= 5)
    time.sleep(0.2)
    q.stop()
    assert len(calls) == 5  # two failures retried, then requeued twice after 50 ms, then only on events
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(g >= 0.04 for g in gaps) and max(gaps) < 1.0


def test_only_the_active_replica_processes_and_a_takeover_starts_warm() -> None:
    leading = {"v": False}
    seen: list[Hashable] = []
    q = WorkQueue(lambda k: seen.append(k) or None, workers=2, is_active=lambda: leading["v"])  # type: ignore[func-returns-value]
    q.start()
    q.add("x")
    time.sleep(0.2)
    assert seen == []
    leading["v"] = True
    assert wait_for(lambda: seen == ["x"], timeout=2)
    q.stop()


def test_stop_waits_for_in_flight_work_and_starts_nothing_new() -> None:
    started = threading.Event()
    done: list[Hashable] = []

    def work(key: Hashable) -> float | None:
        started.set()
        time.sleep(0.2)
        done.append(key)
        return None

    q = WorkQueue(work, workers=1)
    q.start()
    q.add("a")
    assert started.wait(2)
    q.add("b")
    t0 = time.monotonic()
    q.stop(timeout_s=5)
    assert done == ["a"] and time.monotonic() - t0 < 2


def test_urgent_keys_jump_the_line_and_urgency_survives_a_rerun() -> None:
    seen: list[Hashable] = []
    gate = threading.Event()

    def work(key: Hashable) -> float | None:
        if key == "first":
            gate.wait(2)
        seen.append(key)
        return None

    lanes: list[str] = []
    q = WorkQueue(work, workers=1, on_wait=lambda lane, waited_s: lanes.append(lane))
    q.add("first")
    q.start()
    assert wait_for(lambda: q.depth() == 0)  # "first" is running and holds the only worker
    for key in ("old-1", "old-2", "new", "old-3"):
        q.add(key, urgent=key == "new")
    q.add("old-2", urgent=True)  # an edit to a queued key moves it ahead, once
    q.add("first", urgent=True)  # edited while it runs: runs again, ahead of the ordinary lane
    q.add("new")  # a later ordinary event does not demote it
    gate.set()
    assert wait_for(lambda: len(seen) == 6)
    q.stop()
    assert seen == ["first", "new", "old-2", "first", "old-1", "old-3"]
    assert lanes == ["normal", "urgent", "urgent", "urgent", "normal", "normal"]


def test_ordinary_events_coalesce_into_one_reconcile_and_urgent_ones_do_not_wait() -> None:
    seen: list[tuple[Hashable, float]] = []
    q = WorkQueue(lambda k: seen.append((k, time.monotonic())) or 30.0, workers=2, coalesce_s=0.3)  # type: ignore[func-returns-value]
    q.start()
    t0 = time.monotonic()
    for _ in range(5):  # e.g. four pods of one deployment turning ready one after another
        q.add("pods-changed")
        time.sleep(0.02)
    q.add("edited", urgent=True)
    assert wait_for(lambda: len(seen) == 2)
    time.sleep(0.5)
    q.stop()
    runs = dict(seen)
    assert [k for k, _ in seen] == ["edited", "pods-changed"]  # one run for five events; the urgent one first
    assert runs["edited"] - t0 < 0.25 <= runs["pods-changed"] - t0
    assert q.depth() == 2  # each is scheduled once more, for its resync in 30 s, not once per event
