"""A plan's applies sent at once: they overlap, a failure still fails the reconcile (after the other writes have
finished), and a Service that failed to apply is tried again by the next reconcile."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from infleet.controller.apply import apply_plan, fan_out_on, in_turn
from infleet.controller.manifests import ContainerOverrides, Owner, PoolRuntime, Workload
from tests.unit.controller.fakekube import FakeKube

OWNER = Owner("infleet.io/v1alpha1", "InferenceDeployment", "chat", "ns", "uid-1")
POOL = PoolRuntime(name="l4", device="cuda", node_selector={}, resource_name="nvidia.com/gpu", devices_per_replica=1,
                   units_per_device=1, default_requests={})  # fmt: skip


def serving(replicas: int) -> Workload:
    return Workload(OWNER, POOL, "serving", replicas, "m", ContainerOverrides(), "s3://m")


def test_writes_overlap_when_fanned_out_and_not_in_turn() -> None:
    barrier = threading.Barrier(2, timeout=1)  # each write waits for the other: only overlapping writes pass
    with ThreadPoolExecutor(2) as pool:
        fan_out_on(pool)([barrier.wait, barrier.wait])
    barrier.reset()
    with pytest.raises(threading.BrokenBarrierError):
        in_turn([barrier.wait, barrier.wait])


def test_a_failed_write_fails_the_whole_apply_once_the_others_are_done() -> None:
    done: list[str] = []
    started = threading.Event()

    def slow() -> None:
        started.wait(2)
        time.sleep(0.3)  # still running when the other write has failed
        done.append("slow")

    def failing() -> None:
        started.set()
        raise ConnectionError("api server down")

    def apply_and_see_what_finished() -> None:
        try:
            fan_out_on(pool)([slow, failing])
        finally:
            finished_when_raised.extend(done)  # read before the executor's exit waits for its threads

    finished_when_raised: list[str] = []
    with ThreadPoolExecutor(2) as pool, pytest.raises(ConnectionError):
        apply_and_see_what_finished()
    assert finished_when_raised == ["slow"]


class ServiceFailsOnce(FakeKube):
    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def apply(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if "/services/" in path and not self.failed:
            self.failed = True
            raise ConnectionError("api server down")
        return super().apply(path, body)


def test_a_service_that_failed_to_apply_is_applied_by_the_next_reconcile() -> None:
    kube = ServiceFailsOnce()
    applied: dict[str, str] = {}
    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(ConnectionError):
            apply_plan(kube, OWNER, [serving(2)], applied_services=applied, fan_out=fan_out_on(pool))  # type: ignore[arg-type]
        assert applied == {}  # not remembered as applied
        assert any("/deployments/" in path for _, path in kube.writes())  # the Deployment went out beside it
        result = apply_plan(kube, OWNER, [serving(2)], applied_services=applied, fan_out=fan_out_on(pool))  # type: ignore[arg-type]
    assert result.applied == {"chat-l4": 2}
    assert [p for _, p in kube.writes() if "/services/" in p] == ["/api/v1/namespaces/ns/services/chat"]
    assert len(applied) == 1
