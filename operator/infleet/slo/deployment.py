"""The SLO PrometheusRule for one InferenceDeployment, read from the object as the API server returns it.

Takes the raw dict (not the pydantic model) so `infleet.slo` stays free of the API package; the operator can
server-side apply the result as-is. The ownerReference makes Kubernetes delete the rule with its deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infleet.slo.burnrate import DEFAULT_RUNBOOK_URL, burn_rate_alerts

PROMETHEUS_RULES_PLURAL = "prometheusrules"  # monitoring.coreos.com/v1; absent unless the Prometheus Operator is


def prometheus_rule_for(infd: Mapping[str, Any], *, runbook_url: str = DEFAULT_RUNBOOK_URL,
                        labels: dict[str, str] | None = None) -> dict[str, Any]:
    """PrometheusRule with the burn-rate alerts for ``spec.slo.p99LatencyMs`` (and ``ttftP99Ms`` if set).

    Raises ValueError, naming the field, when the object lacks what the rule needs or a target cannot be
    measured by the worker histograms."""
    meta = infd.get("metadata") or {}
    name, namespace, uid = meta.get("name"), meta.get("namespace"), meta.get("uid")
    if not (name and namespace and uid):
        raise ValueError("InferenceDeployment needs metadata.name, metadata.namespace and metadata.uid")
    slo = (infd.get("spec") or {}).get("slo") or {}
    p99_ms = slo.get("p99LatencyMs")
    if not isinstance(p99_ms, int | float) or isinstance(p99_ms, bool):
        raise ValueError(f"{namespace}/{name}: spec.slo.p99LatencyMs must be a number, got {p99_ms!r}")
    ttft_ms = slo.get("ttftP99Ms")
    if ttft_ms is not None and (not isinstance(ttft_ms, int | float) or isinstance(ttft_ms, bool)):
        raise ValueError(f"{namespace}/{name}: spec.slo.ttftP99Ms must be a number, got {ttft_ms!r}")
    try:
        ttft_s = None if ttft_ms is None else ttft_ms / 1000
        rule = burn_rate_alerts(namespace, name, p99_ms / 1000, ttft_target_s=ttft_s, runbook_url=runbook_url,
                                labels=labels)
    except ValueError as exc:
        raise ValueError(f"{namespace}/{name}: {exc}") from exc
    rule["metadata"]["ownerReferences"] = [{
        "apiVersion": infd.get("apiVersion", "infleet.io/v1alpha1"),
        "kind": infd.get("kind", "InferenceDeployment"),
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }]
    return rule
