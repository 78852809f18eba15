"""Events off the reconcile path: queued, posted by one thread, dropped and counted when the queue is full."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from infleet.controller.events import EventRecorder
from tests.unit.controller.fakekube import FakeKube

NOW = datetime(2026, 11, 30, tzinfo=UTC)
BODY = {
    "apiVersion": "infleet.io/v1alpha1",
    "kind": "InferenceDeployment",
    "metadata": {"name": "chat", "namespace": "ns", "uid": "u1", "labels": {"big": "x" * 1000}},
    "spec": {"model": {"name": "m"}},
}


def events(kube: FakeKube) -> list[dict[str, Any]]:
    return [o for p, o in kube.objects.items() if p.startswith("/api/v1/namespaces/ns/events/")]


def test_queued_events_are_posted_by_the_recorder_thread_and_name_their_object() -> None:
    kube = FakeKube()
    recorder = EventRecorder(kube)
    recorder.start()
    recorder.record(BODY, [("Normal", "Placement", "placed 2 replicas"), ("Warning", "Saturated", "pool full")], NOW)
    recorder.stop(timeout_s=5)
    posted = sorted(events(kube), key=lambda e: e["reason"])
    assert [(e["type"], e["reason"]) for e in posted] == [("Normal", "Placement"), ("Warning", "Saturated")]
    assert posted[0]["involvedObject"] == {
        "apiVersion": "infleet.io/v1alpha1",
        "kind": "InferenceDeployment",
        "name": "chat",
        "namespace": "ns",
        "uid": "u1",
    }


def test_a_full_queue_drops_and_counts_instead_of_blocking_the_reconcile() -> None:
    kube = FakeKube()
    dropped = []
    recorder = EventRecorder(kube, capacity=2, on_drop=lambda: dropped.append(1))  # not started: nothing drains
    done = threading.Event()

    def reconcile() -> None:
        recorder.record(BODY, [("Normal", f"R{i}", "m") for i in range(5)], NOW)
        done.set()

    threading.Thread(target=reconcile, daemon=True).start()
    assert done.wait(2), "record() blocked on a full queue"
    assert len(dropped) == 3 and recorder.depth() == 2


class FlakyKube(FakeKube):
    """Down for the first create, then up; says when the failure happened."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = threading.Event()

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if not self.failed.is_set():
            self.failed.set()
            raise ConnectionError("api server down")
        return super().create(path, body)


def test_an_api_outage_loses_an_event_and_the_recorder_goes_on() -> None:
    kube = FlakyKube()
    recorder = EventRecorder(kube)
    recorder.start()
    recorder.record(BODY, [("Normal", "Lost", "m")], NOW)
    assert kube.failed.wait(5)
    recorder.record(BODY, [("Normal", "Kept", "m")], NOW)
    recorder.stop(timeout_s=5)
    assert [e["reason"] for e in events(kube)] == ["Kept"]
