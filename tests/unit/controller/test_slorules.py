"""The per-deployment PrometheusRule: what to keep (pure) and the applier's behaviour at the API seam."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from infleet.controller.slorules import MONITORING_API, SloRules, desired_rule, rule_path
from tests.unit.controller.fakekube import FakeOptionalApiKube


def body(**slo: Any) -> dict[str, Any]:
    return {
        "apiVersion": "infleet.io/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": "chat", "namespace": "ml", "uid": "u-1"},
        "spec": {"slo": {"p99LatencyMs": 2000, **slo}},
    }


def fake_kube(resources: list[str] | None, apply_error: int | None = None) -> FakeOptionalApiKube:
    return FakeOptionalApiKube(MONITORING_API, resources, apply_error)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_rule_is_owned_by_the_deployment_and_alerts_on_its_slos() -> None:
    decision = desired_rule(body(ttftP99Ms=800), api_available=True)
    assert decision.rule is not None
    assert decision.rule["kind"] == "PrometheusRule"
    assert decision.rule["metadata"]["namespace"] == "ml"
    (ref,) = decision.rule["metadata"]["ownerReferences"]
    assert ref["uid"] == "u-1" and ref["controller"] is True
    alerts = {r["alert"] for g in decision.rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == {"InfleetLatencySLOBudgetBurn", "InfleetTTFTSLOBudgetBurn"}


def test_no_rule_without_the_api_while_deleting_or_for_a_bad_slo() -> None:
    assert desired_rule(body(), api_available=False).rule is None
    deleting = body()
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert desired_rule(deleting, api_available=True).rule is None
    bad = desired_rule(body(p99LatencyMs="fast"), api_available=True)
    assert bad.rule is None and "p99LatencyMs" in bad.reason


def test_without_the_api_nothing_is_applied_and_one_info_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    kube = fake_kube(resources=None)
    rules = SloRules(kube, recheck_s=30, clock=Clock())  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="infleet.controller"):
        for _ in range(5):
            assert rules.sync(body()) is None
    assert kube.applied == [] and kube.discoveries == 1
    assert len([r for r in caplog.records if "prometheusrules API" in r.getMessage()]) == 1


def test_api_installed_later_is_found_after_the_recheck_period() -> None:
    kube, clock = fake_kube(resources=["servicemonitors"]), Clock()
    rules = SloRules(kube, recheck_s=30, clock=clock)  # type: ignore[arg-type]
    assert rules.sync(body()) is None
    kube.resources = ["servicemonitors", "prometheusrules"]
    clock.t = 29
    assert rules.sync(body()) is None
    clock.t = 31
    applied = rules.sync(body())
    assert applied is not None
    assert kube.applied[0][0] == rule_path("ml", applied["metadata"]["name"])


def test_a_refused_apply_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    kube = fake_kube(resources=["prometheusrules"], apply_error=403)
    rules = SloRules(kube, clock=Clock())  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="infleet.controller"):
        assert rules.sync(body()) is None
        assert rules.sync(body()) is None
    assert len([r for r in caplog.records if "403" in r.getMessage()]) == 1


def test_a_transient_failure_is_raised_for_kopf_to_retry() -> None:
    rules = SloRules(fake_kube(resources=["prometheusrules"], apply_error=503), clock=Clock())  # type: ignore[arg-type]
    with pytest.raises(ApiException):
        rules.sync(body())
