"""Keep one SLO PrometheusRule next to each InferenceDeployment, when the cluster has the Prometheus Operator.

`desired_rule` decides (pure: which rule, or why none); `SloRules` applies it. The rule is server-side applied
with a controller owner reference to the deployment, so the garbage collector deletes it with the deployment
and the operator needs no delete path. Clusters without the `monitoring.coreos.com/v1` `prometheusrules` API
are normal (kwok, plain kind, a Prometheus without the operator): the rule is skipped with one info log, and
the API is looked up again every `recheck_s` seconds so installing the Prometheus Operator later just works.
A rule that cannot be written (RBAC turned off in the chart, a webhook refusing it) is logged once per cause
and never fails the reconcile: alerts are an add-on to placement, not a precondition of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from infleet.controller.kube import Kube, Obj, is_transient
from infleet.controller.optional_api import OptionalApi, discovery_lists
from infleet.slo import PROMETHEUS_RULES_PLURAL, prometheus_rule_for

log = logging.getLogger("infleet.controller")

MONITORING_API = "/apis/monitoring.coreos.com/v1"


@dataclass(frozen=True)
class RuleDecision:
    rule: Obj | None  # None: keep no rule for this object (see `reason`)
    reason: str


def desired_rule(body: Mapping[str, Any], api_available: bool) -> RuleDecision:
    """The PrometheusRule this deployment should have, or None with the reason it gets none."""
    if not api_available:
        return RuleDecision(None, "the monitoring.coreos.com/v1 prometheusrules API is not installed")
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return RuleDecision(None, "the deployment is being deleted")
    try:
        return RuleDecision(prometheus_rule_for(body), "")
    except ValueError as exc:
        return RuleDecision(None, f"no SLO rule: {exc}")


def rule_path(namespace: str, name: str) -> str:
    return f"{MONITORING_API}/namespaces/{namespace}/{PROMETHEUS_RULES_PLURAL}/{name}"


def has_prometheus_rules(kube: Kube) -> bool:
    """Whether API discovery lists `prometheusrules` in monitoring.coreos.com/v1."""
    return discovery_lists(kube, MONITORING_API, PROMETHEUS_RULES_PLURAL)


class SloRules:
    """Applies `desired_rule`; remembers the API's presence for `recheck_s` and logs each cause only once."""

    def __init__(self, kube: Kube, recheck_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.api = OptionalApi(
            kube,
            MONITORING_API,
            PROMETHEUS_RULES_PLURAL,
            found="PrometheusRule API found: keeping an SLO rule per InferenceDeployment",
            missing="no monitoring.coreos.com/v1 prometheusrules API: SLO alert rules are skipped",
            recheck_s=recheck_s,
            clock=clock,
        )
        self._logged: set[str] = set()

    def api_available(self) -> bool:
        return self.api.available()

    def sync(self, body: Mapping[str, Any]) -> Obj | None:
        """Apply the deployment's rule; returns what was applied (None when skipped or refused)."""
        decision = desired_rule(body, self.api_available())
        meta = body.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        if decision.rule is None:
            if self.api.known and self._once(f"{key}:{decision.reason}"):
                log.warning("%s: %s", key, decision.reason)
            return None
        rmeta = decision.rule["metadata"]
        try:
            return self.kube.apply(rule_path(rmeta["namespace"], rmeta["name"]), decision.rule)
        except ApiException as exc:
            if is_transient(exc):
                raise
            if exc.status == 404:  # the CRD went away since discovery: look again next time
                self.api.recheck()
            if self._once(f"{key}:{exc.status}"):
                log.warning("%s: could not apply PrometheusRule %s: %s %s", key, rmeta["name"], exc.status, exc.reason)
            return None

    def _once(self, cause: str) -> bool:
        if cause in self._logged:
            return False
        self._logged.add(cause)
        return True
