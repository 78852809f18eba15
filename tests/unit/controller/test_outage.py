"""An API-server outage: reconciles fail and back off briefly, logs stay bounded, and work resumes within ~2 s of
the server's return (the queue's back-off is capped at 2 s; the client's own retries come first)."""

from __future__ import annotations

import logging
import time

import pytest

from infleet.controller.handlers import Context, on_event, reconcile_key
from infleet.controller.metrics import OperatorMetrics
from infleet.controller.reconcile import Settings
from infleet.controller.workqueue import WorkQueue
from tests.unit.controller.builders import make_infd, make_pool, node
from tests.unit.controller.fakekube import FakeKube


def test_reconciles_resume_within_two_seconds_and_logs_stay_bounded(caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeKube()
    ctx = Context(kube=kube, settings=Settings(), metrics=OperatorMetrics())  # type: ignore[arg-type]
    pool = make_pool("l4-spot").to_dict()
    on_event(ctx, "AcceleratorPool", "ADDED", pool)
    on_event(ctx, "Node", "ADDED", node("n0", "l4-spot", {"nvidia.com/gpu": "4", "cpu": "32", "memory": "64Gi"}))
    body = make_infd(slo={"p99LatencyMs": 2000, "throughput": {"requestsPerSecond": 2}}).to_dict()
    body.update(apiVersion="infleet.io/v1alpha1", kind="InferenceDeployment")
    body["metadata"].update(uid="u", generation=1)
    body["spec"]["model"]["source"] = "s3://m"
    kube.objects["/apis/infleet.io/v1alpha1/namespaces/ns/inferencedeployments/chat"] = body
    on_event(ctx, "InferenceDeployment", "ADDED", body)

    succeeded: list[float] = []

    def work(key: object) -> float | None:
        again = reconcile_key(ctx, key)
        succeeded.append(time.monotonic())
        return again

    queue = WorkQueue(work, workers=1, log_every_s=30.0)
    kube.down = True
    caplog.set_level(logging.WARNING, logger="infleet.controller")
    queue.add(("infd", "ns", "chat"))
    queue.start()
    time.sleep(3.0)  # three seconds of outage: several failed attempts
    assert succeeded == []
    kube.down = False
    back = time.monotonic()
    deadline = back + 5
    while not succeeded and time.monotonic() < deadline:
        time.sleep(0.02)
    queue.stop()
    assert succeeded, "no reconcile after the API server came back"
    assert succeeded[0] - back <= 2.2
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "reconcile of" in r.getMessage()]
    assert len(warnings) == 1  # one report for the whole outage, not one per attempt
