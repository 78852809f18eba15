"""The per-deployment InferencePool: what is rendered (pure) and the applier's behaviour at the API seam."""

from __future__ import annotations

import logging

import pytest
from kubernetes.client.exceptions import ApiException

from infleet.controller.inferencepool import (
    INFERENCE_API,
    EndpointPicker,
    InferencePools,
    inference_pool_path,
    render_inference_pool,
)
from infleet.controller.manifests import Owner, render_service
from tests.unit.controller.fakekube import FakeOptionalApiKube

OWNER = Owner("infleet.io/v1alpha1", "InferenceDeployment", "chat", "ml", "u-1")


def fake_kube(resources: list[str] | None, apply_error: int | None = None) -> FakeOptionalApiKube:
    return FakeOptionalApiKube(INFERENCE_API, resources, apply_error)


def test_the_pool_selects_exactly_what_the_service_selects() -> None:
    pool = render_inference_pool(OWNER)
    service = render_service(OWNER)
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["metadata"]["name"] == service["metadata"]["name"] == "chat"
    assert pool["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert pool["spec"]["selector"]["matchLabels"]["infleet.io/role"] == "serving"
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    assert pool["spec"]["endpointPickerRef"] == {"name": "chat-epp", "port": {"number": 9002},
                                                 "failureMode": "FailOpen"}
    (ref,) = pool["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("InferenceDeployment", "u-1", True)


def test_endpoint_picker_is_configurable_and_validated() -> None:
    pool = render_inference_pool(OWNER, EndpointPicker(service_template="epp-{deployment}", port=9100,
                                                       failure_mode="FailClose"))
    assert pool["spec"]["endpointPickerRef"] == {"name": "epp-chat", "port": {"number": 9100},
                                                 "failureMode": "FailClose"}
    with pytest.raises(ValueError, match="port"):
        EndpointPicker(port=0)
    with pytest.raises(ValueError, match="deployment"):
        EndpointPicker(service_template="fixed")


def test_without_the_api_nothing_is_applied_and_discovery_is_cached() -> None:
    kube = fake_kube(None)
    now = [0.0]
    pools = InferencePools(kube, recheck_s=30, clock=lambda: now[0])  # type: ignore[arg-type]
    assert pools.sync(OWNER) is None
    assert pools.sync(OWNER) is None
    assert kube.discoveries == 1
    kube.resources = ["inferencepools", "inferencepools/status"]
    now[0] = 31.0
    applied = pools.sync(OWNER)
    assert applied is not None
    assert kube.applied == [(inference_pool_path("ml", "chat"), applied)]


def test_a_refusal_is_logged_once_and_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    kube = fake_kube(["inferencepools"], apply_error=403)
    pools = InferencePools(kube)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="infleet.controller"):
        assert pools.sync(OWNER) is None
        assert pools.sync(OWNER) is None
    assert sum("could not apply InferencePool" in r.message for r in caplog.records) == 1


def test_a_transient_error_is_raised_for_the_reconcile_to_retry() -> None:
    pools = InferencePools(fake_kube(["inferencepools"], apply_error=503))  # type: ignore[arg-type]
    with pytest.raises(ApiException):
        pools.sync(OWNER)


def test_a_vanished_crd_triggers_a_new_discovery() -> None:
    kube = fake_kube(["inferencepools"], apply_error=404)
    pools = InferencePools(kube, recheck_s=3600)  # type: ignore[arg-type]
    assert pools.sync(OWNER) is None
    kube.resources, kube.apply_error = None, None
    assert pools.sync(OWNER) is None
    assert kube.discoveries == 2
